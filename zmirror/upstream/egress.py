"""Egress: which proxy (if any) a request to an upstream URL goes through, and
the agent that sends it there (design: docs/design/upstream.md, "TLS and
egress").

- :func:`parse_proxy` reads a proxy URL (``http://``, ``socks5://``,
  ``socks5h://``, credentials percent-decoded) into a :class:`ProxyURL`;
  :class:`NoProxy` is a ``no_proxy`` list (host names, domain suffixes, IPs,
  CIDRs, ``*``, optional ``:port``), as curl and Go read it.
- A :class:`Route` says which proxy a URL goes through; :func:`default_route`
  makes it from the configuration or, when that says nothing, from the
  environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``);
  :func:`upstream_route` applies an upstream's own ``proxy`` field.
- :class:`EgressAgent` is the ``IAgent`` that follows a route: direct TCP,
  a tunnel through an HTTP proxy (``CONNECT``) or a SOCKS5 proxy for https
  URLs (and for http URLs through SOCKS5), absolute-form requests through an
  HTTP proxy for http URLs (twisted's ``ProxyAgent``).  The tunnels are in
  :mod:`zmirror.upstream.tunnels`.

Proxy credentials never appear in messages: a :class:`ProxyURL` is shown by
its ``netloc`` or :meth:`ProxyURL.masked`.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping, Optional
from urllib.parse import quote, unquote, urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ProxyAgent, URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer

from zmirror.upstream.tunnels import ProxyEndpoint, ProxyError, TunnelEndpoint, handshake_for, tcp_endpoint

SCHEMES = ("http", "socks5", "socks5h")
# curl's default proxy port for every scheme it takes without a port (CURL_DEFAULT_PROXY_PORT)
DEFAULT_PROXY_PORT = 1080


@dataclass(frozen=True)
class ProxyURL:
    """One proxy: ``scheme`` is ``http``, ``socks5`` (target names resolved
    here) or ``socks5h`` (resolved by the proxy)."""

    scheme: str
    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def netloc(self) -> str:
        """``host:port`` (an IPv6 address in brackets): how messages name it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)

    def basic_auth(self) -> bytes:
        return b"Basic " + base64.b64encode(f"{self.username}:{self.password}".encode())

    def masked(self) -> str:
        """The URL to show: the password replaced by ``****``."""
        user = ""
        if self.has_credentials:
            user = quote(self.username, safe="") + (":****" if self.password else "") + "@"
        return f"{self.scheme}://{user}{self.netloc}"


_VISIBLE = re.compile(r"^[\x21-\x7e]+$")


@lru_cache(maxsize=256)
def parse_proxy(url: str) -> ProxyURL:
    """The :class:`ProxyURL` of ``url``, or ValueError with a message that
    does not repeat the URL (it may hold a password).  Without a scheme the
    proxy is an HTTP proxy and without a port 1080, as for curl."""
    url = url.strip()
    if not url:
        raise ValueError("proxy URL is empty")
    if not _VISIBLE.match(url):
        raise ValueError("proxy URL has spaces, control or non-ASCII characters")
    if "://" not in url:
        url = "http://" + url
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        raise ValueError("proxy URL has an invalid host or port") from None
    scheme = u.scheme.lower()
    if scheme not in SCHEMES:
        if scheme == "https":
            raise ValueError("proxy URL scheme https:// (TLS to the proxy) is not supported: use http://")
        raise ValueError(f"proxy URL scheme {scheme!r} is not supported (http, socks5, socks5h)")
    if not u.hostname:
        raise ValueError("proxy URL has no host")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise ValueError("proxy URL has a path, query or fragment (expected scheme://[user:password@]host:port)")
    if port == 0:
        raise ValueError("proxy URL has port 0")
    user, password = unquote(u.username or ""), unquote(u.password or "")
    if scheme.startswith("socks5") and (len(user.encode()) > 255 or len(password.encode()) > 255):
        raise ValueError("SOCKS5 proxy user name and password are at most 255 bytes each")
    return ProxyURL(scheme, u.hostname.lower(), port or DEFAULT_PROXY_PORT, user, password)


def masked(url: Optional[str]) -> Optional[str]:
    """``url`` with its password shown as ``****`` (None and "" as they are; an
    unreadable URL as a placeholder that shows nothing of it)."""
    if not url:
        return url
    try:
        return parse_proxy(url).masked()
    except ValueError:
        return "(invalid proxy URL)"


@dataclass(frozen=True)
class _Entry:
    kind: str  # "all" | "name" | "net"
    value: Any  # the domain (no leading dot) or an ip_network
    port: Optional[int] = None


def _split_port(entry: str) -> tuple[str, Optional[int]]:
    if entry.startswith("["):  # [v6] or [v6]:port
        host, _, rest = entry[1:].partition("]")
        return host, (int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None)
    if entry.count(":") == 1:
        host, _, p = entry.partition(":")
        if p.isdigit():
            return host, int(p)
    return entry, None


@dataclass(frozen=True)
class NoProxy:
    """A ``no_proxy`` list: entries separated by commas or spaces; ``*`` is
    every host; ``example.com`` and ``.example.com`` (or ``*.example.com``)
    match that domain and every name under it; an IP address or CIDR matches
    the IP literals in it (``10.0.0.0/8``, ``::1``); ``:port`` after an entry
    limits it to that port.  Names are compared without case and trailing dot;
    nothing is resolved."""

    text: str = ""
    entries: tuple = ()

    @classmethod
    def parse(cls, text: str) -> "NoProxy":
        entries = []
        for raw in re.split(r"[,\s]+", text or ""):
            raw = raw.strip().lower()
            if not raw:
                continue
            if raw == "*":
                entries.append(_Entry("all", None))
                continue
            if raw.startswith("[") and "]/" in raw:  # [v6]/bits
                raw = raw.replace("[", "").replace("]", "")
            try:  # an IP or CIDR without port (v6 ones have several colons)
                entries.append(_Entry("net", ipaddress.ip_network(raw.strip("[]"), strict=False)))
                continue
            except ValueError:
                pass
            host, port = _split_port(raw)
            try:
                entries.append(_Entry("net", ipaddress.ip_network(host, strict=False), port))
                continue
            except ValueError:
                pass
            name = host.lstrip("*").lstrip(".").rstrip(".")
            if name:
                entries.append(_Entry("name", name, port))
        return cls(text or "", tuple(entries))

    def matches(self, host: str, port: int) -> bool:
        """Whether a request to ``host``:``port`` goes direct."""
        host = host.strip("[]").lower().rstrip(".")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        for e in self.entries:
            if e.port is not None and e.port != port:
                continue
            if e.kind == "all":
                return True
            if e.kind == "net":
                if ip is not None and ip.version == e.value.version and ip in e.value:
                    return True
            elif host == e.value or host.endswith("." + e.value):
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.entries)


@dataclass(frozen=True)
class Route:
    """Which proxy requests go through: ``https`` for https URLs, ``http``
    for http ones (None: direct), except for the hosts ``no_proxy`` names."""

    http: Optional[ProxyURL] = None
    https: Optional[ProxyURL] = None
    no_proxy: NoProxy = field(default_factory=NoProxy)

    @classmethod
    def via(cls, proxy: Optional[ProxyURL], no_proxy: Optional[NoProxy] = None) -> "Route":
        return cls(proxy, proxy, no_proxy or NoProxy())

    def proxy_for(self, scheme: str, host: str, port: int) -> Optional[ProxyURL]:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.no_proxy.matches(host, port):
            return None
        return proxy

    @property
    def direct(self) -> bool:
        return self.http is None and self.https is None


DIRECT = Route()


def _env(environ: Mapping, *names: str) -> tuple[str, str]:
    """The first of the variables ``names`` set (each in lower case, then in
    upper case: curl's lower case one wins; empty counts as unset): (its name,
    its value), or ("", "")."""
    for name in names:
        for var in (name.lower(), name.upper()):
            value = (environ.get(var) or "").strip()
            if value:
                return var, value
    return "", ""


def default_route(proxy: str = "", no_proxy: str = "", environ: Optional[Mapping] = None) -> Route:
    """The route of the ``[upstream]`` ``proxy`` / ``no_proxy`` settings; when
    both are empty and ``environ`` is given, the environment's: ``https_proxy``
    for https URLs, ``http_proxy`` for http ones, ``all_proxy`` for both where
    those are unset, ``no_proxy`` (each in lower or upper case, lower case
    first).  ValueError (naming the setting, never its value) for a proxy URL
    that cannot be used."""
    if proxy or no_proxy or environ is None:
        return Route.via(_parse_named(proxy, "[upstream] proxy") if proxy else None, NoProxy.parse(no_proxy))
    routes = []
    for names in (("HTTP_PROXY", "ALL_PROXY"), ("HTTPS_PROXY", "ALL_PROXY")):
        var, value = _env(environ, *names)
        routes.append(_parse_named(value, var) if value else None)
    return Route(routes[0], routes[1], NoProxy.parse(_env(environ, "NO_PROXY")[1]))


def _parse_named(url: str, what: str) -> ProxyURL:
    try:
        return parse_proxy(url)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def upstream_route(default: Route, proxy: Optional[str]) -> Route:
    """The route of an upstream whose ``proxy`` field is ``proxy``: None = the
    default route, "" = direct, else every request of it through that proxy
    (the default's ``no_proxy`` does not apply).  ValueError for a proxy URL
    that cannot be used."""
    if proxy is None:
        return default
    if not proxy.strip():
        return DIRECT
    return Route.via(_parse_named(proxy, "proxy"))


@implementer(IAgentEndpointFactory)
class EgressEndpoints:
    """The endpoint a connection for a URI is made with: direct, or a tunnel
    through the route's proxy; under TLS (``policy``) for https URIs."""

    def __init__(self, reactor: Any, route: Route, policy: Any, *, timeout: float):
        self.reactor = reactor
        self.route = route
        self.policy = policy
        self.timeout = timeout

    def endpointForURI(self, uri: URI):
        scheme = uri.scheme.decode("ascii")
        host = uri.host.decode("ascii")
        proxy = self.route.proxy_for(scheme, host, uri.port)
        endpoint = self.tunnel(proxy, host, uri.port) if proxy is not None else \
            tcp_endpoint(self.reactor, host, uri.port, self.timeout)
        if scheme == "https":
            return wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint

    def tunnel(self, proxy: ProxyURL, host: str, port: int) -> TunnelEndpoint:
        """A connection to ``host``:``port`` through ``proxy`` (plain TCP as
        far as the caller sees: TLS goes on top)."""
        to_proxy = ProxyEndpoint(self.reactor, proxy, self.timeout)
        handshake = lambda: handshake_for(self.reactor, proxy, host, port, self.timeout)  # noqa: E731
        return TunnelEndpoint(self.reactor, to_proxy, handshake, proxy, timeout=self.timeout)


@implementer(IAgent)
class EgressAgent:
    """The ``IAgent`` of one route and TLS policy (``policy`` an
    ``IPolicyForHTTPS``; None: twisted's browser-like default), its
    connections kept in ``pool``: http URLs through an HTTP proxy go as
    absolute-form requests (with ``Proxy-Authorization``), everything else
    through :class:`EgressEndpoints`."""

    def __init__(self, reactor: Any, route: Route, policy: Any = None, *, pool: Any = None,
                 connect_timeout: float = 30.0):
        self.reactor = reactor
        self.route = route
        self.pool = pool
        self.connect_timeout = connect_timeout
        self.endpoints = EgressEndpoints(reactor, route, policy or BrowserLikePolicyForHTTPS(),
                                         timeout=connect_timeout)
        self._agent = Agent.usingEndpointFactory(reactor, self.endpoints, pool=pool)
        self._forwarding: dict = {}  # ProxyURL -> ProxyAgent

    def request(self, method: bytes, uri: bytes, headers: Optional[Headers] = None, bodyProducer=None):
        try:
            u = URI.fromBytes(uri)
            proxy = self.route.proxy_for(u.scheme.decode("ascii"), u.host.decode("ascii"), u.port)
        except Exception:
            return defer.fail()
        if proxy is None or proxy.scheme != "http" or u.scheme != b"http":
            return self._agent.request(method, uri, headers, bodyProducer)
        agent = self._forwarding.get(proxy)
        if agent is None:
            endpoint = ProxyEndpoint(self.reactor, proxy, self.connect_timeout)
            agent = self._forwarding[proxy] = ProxyAgent(endpoint, self.reactor, self.pool)
        if proxy.has_credentials:
            headers = headers.copy() if headers is not None else Headers()
            headers.setRawHeaders(b"Proxy-Authorization", [proxy.basic_auth()])
        return agent.request(method, uri, headers, bodyProducer).addCallback(_not_refused, proxy)


class _Drop(Protocol):
    def connectionMade(self):
        self.transport.stopProducing()  # the connection is closed


def _not_refused(response: Any, proxy: ProxyURL) -> Any:
    """``response``, unless it is the proxy's own 407 (a ProxyError then)."""
    if response.code != 407:
        return response
    response.deliverBody(_Drop())
    phrase = re.sub(r"[^\x20-\x7e]", "?", response.phrase.decode("latin-1")[:80])
    raise ProxyError(f"proxy {proxy.netloc} refused the request: 407 {phrase}".rstrip())


__all__ = ["DEFAULT_PROXY_PORT", "DIRECT", "EgressAgent", "EgressEndpoints", "NoProxy", "ProxyError",
           "ProxyURL", "Route", "default_route", "masked", "parse_proxy", "upstream_route"]
