"""Egress proxy URLs and ``no_proxy`` lists: the one grammar of both, read
leniently from the environment (``HTTPS_PROXY``, ``NO_PROXY``… as curl reads
them) and strictly from the configuration and the admin API (``[upstream]
proxy`` / ``no_proxy``, a registry's ``proxy``).

- :func:`parse_proxy` reads a proxy URL (``http://``, ``socks5://``,
  ``socks5h://``; credentials percent-decoded) into a :class:`ProxyURL`;
  :class:`NoProxy` is a ``no_proxy`` list (host names, domain suffixes, IPs,
  CIDRs, ``*``, optional ``:port``).  Both take ``strict=True`` for the
  configuration's and the admin API's form.
- :func:`check_proxy_url` and :func:`check_no_proxy` check and normalize
  those settings; :func:`mask_proxy_url` shows a proxy URL with its password
  as ``****``; :func:`proxy_password` and :func:`with_proxy_password` keep a
  stored password when the masked one is sent back.

"" means direct.  Errors never repeat a proxy URL (it may hold a password): a
:class:`ProxyURL` is shown by its ``netloc`` or :meth:`ProxyURL.masked`.
What connects through a proxy: :mod:`zmirror.upstream.egress`.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional
from urllib.parse import quote, unquote, urlsplit

PROXY_SCHEMES = ("http", "socks5", "socks5h")
# curl's default proxy port for every scheme it takes without a port (CURL_DEFAULT_PROXY_PORT)
DEFAULT_PROXY_PORT = 1080
MASK = "****"  # what a proxy password looks like in answers, and sent back: "keep it"
INVALID = "(invalid proxy URL)"
PROXY_URL_MAX = 2048
NO_PROXY_MAX = 8192


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

    def _url(self, password: str) -> str:
        user = ""
        if self.has_credentials:
            user = quote(self.username, safe="") + (f":{password}" if self.password else "") + "@"
        return f"{self.scheme}://{user}{self.netloc}"

    def masked(self) -> str:
        """The URL to show: the password replaced by ``****``."""
        return self._url(MASK)

    def url(self) -> str:
        """The URL with its password (percent-encoded): what is stored, never
        what a message shows."""
        return self._url(quote(self.password, safe=""))


_VISIBLE = re.compile(r"^[\x21-\x7e]+$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_STRICT_FORM = "proxy URL must be scheme://[user:password@]host:port with nothing after the port"


@lru_cache(maxsize=256)
def parse_proxy(url: str, strict: bool = False) -> ProxyURL:
    """The :class:`ProxyURL` of ``url``, or ValueError with a message that
    does not repeat the URL (it may hold a password).  Without a port the
    proxy's port is 1080, as for curl; without a scheme it is an HTTP proxy,
    unless ``strict`` (the configuration's and the admin API's form: the
    scheme is required, at most :data:`PROXY_URL_MAX` characters, no
    backslash, not even an empty ``?`` or ``#`` after the port)."""
    url = url.strip()
    if not url:
        raise ValueError("proxy URL is empty")
    if strict and len(url) > PROXY_URL_MAX:
        raise ValueError(f"proxy URL must be at most {PROXY_URL_MAX} characters")
    if not _VISIBLE.match(url):
        raise ValueError("proxy URL has spaces, control or non-ASCII characters")
    if not _SCHEME.match(url):
        if strict:
            raise ValueError("proxy URL must start with http://, socks5:// or socks5h://")
        url = "http://" + url
    if strict and ("\\" in url or url.endswith(("?", "#"))):
        raise ValueError(_STRICT_FORM)
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        raise ValueError("proxy URL has an invalid host or port") from None
    scheme = u.scheme.lower()
    if scheme not in PROXY_SCHEMES:
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


def check_proxy_url(value: Any) -> str:
    """``value`` (``[upstream] proxy``, a registry's ``proxy``) as a proxy URL
    in its normal form (scheme and host in lower case, the port written out,
    credentials percent-encoded), or "" (direct).  The scheme is required
    (``parse_proxy(…, strict=True)``).  Raises ValueError with a one-line
    reason that does not repeat the value."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    return parse_proxy(value, strict=True).url() if value else ""


def mask_proxy_url(url: Optional[str]) -> Optional[str]:
    """``url`` with its password shown as ``****`` (None and "" as they are; a
    value that is no proxy URL as a placeholder that shows nothing of it)."""
    if not url:
        return url
    try:
        return parse_proxy(url).masked()
    except ValueError:  # a row written by hand: it might hold a password anywhere
        return INVALID


def proxy_password(url: Optional[str]) -> str:
    """The password of a proxy URL, percent-decoded ("" without one, or for a
    value that is no proxy URL)."""
    if not url:
        return ""
    try:
        return parse_proxy(url).password
    except ValueError:
        return ""


def with_proxy_password(url: str, password: str) -> str:
    """The proxy URL ``url`` (with a user) with ``password`` as its password,
    in its normal form."""
    return dataclasses.replace(parse_proxy(url), password=password).url()


@dataclass(frozen=True)
class _Entry:
    kind: str  # "all" | "name" | "net"
    value: Any  # the domain (no leading dot) or an ip_network
    port: Optional[int] = None
    text: str = ""  # the entry as written, in lower case


_NO_PROXY_ITEM = re.compile(r"^[a-z0-9._*:/\[\]%-]{1,255}$")
# a name entry in strict form: name, .name or *.name (an optional trailing dot)
_NO_PROXY_NAME = re.compile(r"^(\*\.|\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")


def _split_port(entry: str) -> tuple[str, Optional[int]]:
    if entry.startswith("["):  # [v6] or [v6]:port
        host, _, rest = entry[1:].partition("]")
        return host, (int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None)
    if entry.count(":") == 1:
        host, _, p = entry.partition(":")
        if p.isdigit():
            return host, int(p)
    return entry, None


def _no_proxy_entry(raw: str, strict: bool) -> Optional[_Entry]:
    """The entry ``raw`` (lower case) means; None for one that means nothing
    (or ValueError when ``strict``)."""
    junk = ValueError(f"{raw[:60]!r} is not a host name, domain, IP address or CIDR")
    if strict and not _NO_PROXY_ITEM.match(raw):
        raise junk
    if raw == "*":
        return _Entry("all", None, text=raw)
    net = raw.replace("[", "").replace("]", "") if raw.startswith("[") and "]/" in raw else raw  # [v6]/bits
    try:  # an IP or CIDR without port (v6 ones have several colons)
        return _Entry("net", ipaddress.ip_network(net.strip("[]"), strict=False), text=raw)
    except ValueError:
        pass
    host, port = _split_port(net)
    if strict and port is not None and not 0 < port < 65536:
        raise ValueError(f"{raw[:60]!r} has an invalid port")
    try:
        return _Entry("net", ipaddress.ip_network(host, strict=False), port, raw)
    except ValueError:
        pass
    if strict and (raw.startswith("[") or not _NO_PROXY_NAME.match(host)):
        raise junk
    name = host.lstrip("*").lstrip(".").rstrip(".")
    return _Entry("name", name, port, raw) if name else None


@dataclass(frozen=True)
class NoProxy:
    """A ``no_proxy`` list, as curl and Go read it: entries separated by commas
    or spaces; ``*`` is every host; ``example.com`` and ``.example.com`` (or
    ``*.example.com``) match that domain and every name under it; an IP
    address or CIDR matches the IP literals in it (``10.0.0.0/8``, ``::1``);
    ``:port`` after an entry limits it to that port.  Names are compared
    without case and trailing dot; nothing is resolved."""

    text: str = ""
    entries: tuple = ()

    @classmethod
    def parse(cls, text: str, *, strict: bool = False) -> "NoProxy":
        """The list ``text``.  Leniently (the environment's) an entry that means
        nothing is passed over; ``strict`` (the configuration's form) raises
        ValueError naming the first entry that is not a host name, ``.domain``,
        ``*.domain``, IP address or CIDR (each with an optional ``:port``) or
        ``*``, and for a text longer than :data:`NO_PROXY_MAX`."""
        text = text or ""
        if strict and len(text) > NO_PROXY_MAX:
            raise ValueError(f"must be at most {NO_PROXY_MAX} characters")
        entries = []
        for raw in re.split(r"[,\s]+", text):
            entry = _no_proxy_entry(raw.lower(), strict) if raw else None
            if entry is not None:
                entries.append(entry)
        return cls(text, tuple(entries))

    def normalized(self) -> str:
        """The entries, comma-separated, in lower case."""
        return ",".join(e.text for e in self.entries)

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


def check_no_proxy(value: Any) -> str:
    """``[upstream] no_proxy`` (:meth:`NoProxy.parse` with ``strict``), its
    entries returned comma-separated in lower case.  Raises ValueError with a
    one-line reason."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return NoProxy.parse(value, strict=True).normalized()


__all__ = ["DEFAULT_PROXY_PORT", "INVALID", "MASK", "NO_PROXY_MAX", "PROXY_SCHEMES", "PROXY_URL_MAX", "NoProxy",
           "ProxyURL", "check_no_proxy", "check_proxy_url", "mask_proxy_url", "parse_proxy", "proxy_password",
           "with_proxy_password"]
