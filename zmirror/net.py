"""Client address and public base URL of a request, honouring trusted proxies only."""

from __future__ import annotations

import ipaddress
from typing import Iterable


class TrustedProxies:
    """A set of IP networks whose ``X-Forwarded-*`` headers are believed."""

    def __init__(self, entries: Iterable[str] = ()):
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries]

    def reload(self, entries: Iterable[str]) -> None:
        """Replace the networks in place: every holder of this object sees the change."""
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries]

    def trusts(self, ip: str) -> bool:
        if not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)


def peer_ip(request) -> str:
    addr = request.getClientAddress()
    return getattr(addr, "host", "") or ""


def _forwarded(request, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return ",".join(v.decode("latin-1") for v in values)


def client_ip(request, trusted: TrustedProxies) -> str:
    """The client's IP: the peer, or — when the peer is a trusted proxy — the
    right-most untrusted address of ``X-Forwarded-For``."""
    ip = peer_ip(request)
    if not trusted.trusts(ip):
        return ip
    xff = _forwarded(request, b"x-forwarded-for")
    if not xff:
        return ip
    hops = [h.strip() for h in xff.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return ip
        if not trusted.trusts(hop):
            return hop
    return hops[0] if hops else ip


def request_host(request, trusted: TrustedProxies) -> str:
    """The host name (``name[:port]``) the client addressed: ``Host``, or —
    when the peer is a trusted proxy — the first ``X-Forwarded-Host``."""
    host_header = request.getHeader(b"host")
    host = host_header.decode("latin-1") if host_header else ""
    if trusted.trusts(peer_ip(request)):
        fhost = _forwarded(request, b"x-forwarded-host")
        if fhost:
            host = fhost.split(",")[0].strip()
    return host


def base_url(request, trusted: TrustedProxies, external_url: str = "") -> str:
    """``scheme://host[:port]`` the client used to reach us (no trailing slash)."""
    if external_url:
        return external_url.rstrip("/")
    scheme = "https" if request.isSecure() else "http"
    host_header = request.getHeader(b"host")
    host = host_header.decode("latin-1") if host_header else ""
    if trusted.trusts(peer_ip(request)):
        proto = _forwarded(request, b"x-forwarded-proto")
        fhost = _forwarded(request, b"x-forwarded-host")
        if proto:
            proto = proto.split(",")[0].strip().lower()
            if proto in ("http", "https"):
                scheme = proto
        if fhost:
            host = fhost.split(",")[0].strip()
    if not host or any(c in host for c in "/\\@ \t\r\n\"'<>"):
        h = request.getHost()
        host = f"{h.host}:{h.port}"
    return f"{scheme}://{host}"
