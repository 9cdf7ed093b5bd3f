"""Egress: which proxy (if any) a request to an upstream URL goes through, and
the agent that sends it there (design: docs/design/upstream.md, "TLS and
egress").

- A :class:`Route` says which proxy a URL goes through; :func:`default_route`
  makes it from the configuration or, when that says nothing, from the
  environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``);
  :func:`upstream_route` applies an upstream's own ``proxy`` field.
- :class:`EgressAgent` is the ``IAgent`` that follows a route: direct TCP,
  a tunnel through an HTTP proxy (``CONNECT``) or a SOCKS5 proxy for https
  URLs (and for http URLs through SOCKS5), absolute-form requests through an
  HTTP proxy for http URLs (twisted's ``ProxyAgent``).  The tunnels are in
  :mod:`zmirror.upstream.tunnels`.

Proxy URLs and ``no_proxy`` lists (:class:`~zmirror.config.proxyurl.ProxyURL`,
:func:`~zmirror.config.proxyurl.parse_proxy`, :class:`~zmirror.config.proxyurl.NoProxy`)
are read by :mod:`zmirror.config.proxyurl`, leniently here (the environment's
and a registry row's values, as curl reads them).  Proxy credentials never
appear in messages: a :class:`ProxyURL` is shown by its ``netloc`` or
:meth:`ProxyURL.masked`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from twisted.internet import defer
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ProxyAgent, URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer

from zmirror.config.proxyurl import NoProxy, ProxyURL, parse_proxy
from zmirror.upstream.tunnels import ProxyEndpoint, ProxyError, TunnelEndpoint, handshake_for, tcp_endpoint


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


__all__ = ["DIRECT", "EgressAgent", "EgressEndpoints", "ProxyError", "Route", "default_route", "upstream_route"]
