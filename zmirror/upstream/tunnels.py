"""Connections through an egress proxy: the HTTP ``CONNECT`` and SOCKS5
(RFC 1928, user name and password RFC 1929) handshakes as small state
machines, and :class:`TunnelEndpoint`, which connects to the proxy, runs the
handshake (bounded in size and time) and then hands the connection to the
caller's protocol, TLS included when the caller wraps it (design:
docs/design/upstream.md, "TLS and egress").

Every failure is a :class:`ProxyError` whose message names the proxy by
``host:port`` and never holds its credentials.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Optional

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

MAX_CONNECT_ANSWER = 16 * 1024  # bytes of a proxy's answer to CONNECT (status line and headers)


class ProxyError(Exception):
    """A connection through a proxy failed: cannot connect to it, it refused,
    it stalled, it answered nonsense.  The message names the proxy by
    ``host:port`` only."""


def ip_literal(host: str) -> Optional[ipaddress._BaseAddress]:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def tcp_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """A TCP endpoint to ``host``:``port``: an IP literal is connected to as it
    is (no resolver thread); a name is resolved by the reactor's resolver (off
    the reactor thread) and its addresses tried as ``HostnameEndpoint`` does."""
    ip = ip_literal(host)
    if ip is None:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    kind = TCP4ClientEndpoint if ip.version == 4 else TCP6ClientEndpoint
    return kind(reactor, str(ip), port, timeout=timeout)


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self):
        self.addresses: list = []
        self.done: Deferred = Deferred()

    def resolutionBegan(self, resolution):
        pass

    def addressResolved(self, address):
        if address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self):
        if not self.done.called:  # not timed out
            self.done.callback(self.addresses)


def resolve(reactor: Any, host: str, port: int, timeout: float) -> Deferred:
    """The addresses of ``host`` (a list of IP strings, in the resolver's
    order) from the reactor's resolver: an IP literal is its own address; no
    address is ``DNSLookupError``; no answer within ``timeout`` is
    ``TimeoutError``."""
    ip = ip_literal(host)
    if ip is not None:
        return succeed([str(ip)])
    receiver = _Addresses()
    reactor.nameResolver.resolveHostName(receiver, host, port)
    d = receiver.done

    def check(addresses):
        if not addresses:
            raise ierror.DNSLookupError(host)
        return addresses

    d.addCallback(check)
    d.addTimeout(timeout, reactor)
    return d


def connect_reason(e: BaseException, timeout: float) -> str:
    """A short reason for a failed TCP connection."""
    if isinstance(e, ierror.ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (ierror.TimeoutError, TimeoutError)):
        return f"no connection within {timeout:g}s"
    if isinstance(e, ierror.DNSLookupError):
        return "host name not found"
    if isinstance(e, ierror.NoRouteError):
        return "no route to host"
    return type(e).__name__


def _cancelled(e: BaseException) -> bool:
    return isinstance(e, (CancelledError, ierror.ConnectingCancelledError))


@implementer(IStreamClientEndpoint)
class ProxyEndpoint:
    """A TCP connection to ``proxy`` itself; a failure is a ProxyError
    ("cannot connect to proxy host:port: connection refused")."""

    def __init__(self, reactor: Any, proxy: Any, timeout: float):
        self.proxy = proxy
        self.timeout = timeout
        self.endpoint = tcp_endpoint(reactor, proxy.host, proxy.port, timeout)

    def connect(self, protocolFactory):
        d = self.endpoint.connect(protocolFactory)

        def failed(f: Failure):
            if _cancelled(f.value):
                return f
            raise ProxyError(f"cannot connect to proxy {self.proxy.netloc}: {connect_reason(f.value, self.timeout)}")

        return d.addErrback(failed)


_STATUS = re.compile(rb"^HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?$")


class HTTPConnect:
    """The ``CONNECT host:port`` handshake with an HTTP proxy (Basic
    ``Proxy-Authorization`` when the proxy URL has credentials): done at the
    end of a 2xx answer's headers; what follows belongs to the tunnel."""

    def __init__(self, proxy: Any, host: str, port: int):
        self.proxy = proxy
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.label = f"proxy {proxy.netloc}"
        self.buf = b""

    def start(self) -> bytes:
        lines = [f"CONNECT {self.target} HTTP/1.1", f"Host: {self.target}"]
        head = "\r\n".join(lines).encode("ascii") + b"\r\n"
        if self.proxy.has_credentials:
            head += b"Proxy-Authorization: " + self.proxy.basic_auth() + b"\r\n"
        return head + b"\r\n"

    def feed(self, data: bytes) -> tuple[bytes, Optional[bytes]]:
        """(bytes to send, None) while not done; (b"", the bytes after the
        answer) when the tunnel is open; ProxyError when refused."""
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_CONNECT_ANSWER:
                raise ProxyError(f"{self.label} sent an over-long answer to CONNECT")
            return b"", None
        if end > MAX_CONNECT_ANSWER:
            raise ProxyError(f"{self.label} sent an over-long answer to CONNECT")
        status = self.buf[:end].split(b"\r\n", 1)[0]
        m = _STATUS.match(status)
        if m is None:
            raise ProxyError(f"{self.label} did not answer CONNECT with HTTP")
        code = int(m.group(1))
        if not 200 <= code < 300:
            reason = re.sub(rb"[^\x20-\x7e]", b"?", (m.group(2) or b"")[:80]).decode("ascii").strip()
            raise ProxyError(f"{self.label} refused CONNECT: {code} {reason}".rstrip())
        return b"", self.buf[end + 4:]


_SOCKS_REPLIES = {
    1: "general failure", 2: "connection not allowed by its rules", 3: "network unreachable",
    4: "host unreachable", 5: "connection refused", 6: "TTL expired", 7: "command not supported",
    8: "address type not supported",
}


class Socks5:
    """The SOCKS5 handshake (no authentication, or user name and password),
    then ``CONNECT`` to ``address`` (an IP literal, or a host name the proxy
    resolves) and ``port``."""

    def __init__(self, proxy: Any, address: str, port: int):
        self.proxy = proxy
        self.address = address
        self.port = port
        self.label = f"SOCKS5 proxy {proxy.netloc}"
        self.state = "method"
        self.buf = b""

    @classmethod
    def start_for(cls, reactor: Any, proxy: Any, host: str, port: int, timeout: float = 30.0):
        """The handshake for ``host`` (a Deferred when ``socks5://`` needs the
        name resolved here first)."""
        if proxy.scheme == "socks5h" or ip_literal(host) is not None:
            return cls(proxy, host, port)

        def failed(f: Failure):
            if _cancelled(f.value):
                return f
            raise ProxyError(f"cannot resolve {host} for the SOCKS5 proxy {proxy.netloc} "
                             f"(socks5:// resolves names here, socks5h:// at the proxy): "
                             f"{connect_reason(f.value, timeout)}")

        d = resolve(reactor, host, port, timeout)
        return d.addCallbacks(lambda addresses: cls(proxy, addresses[0], port), failed)

    def start(self) -> bytes:
        return bytes([5, 2, 0, 2]) if self.proxy.has_credentials else bytes([5, 1, 0])

    def _connect_request(self) -> bytes:
        ip = ip_literal(self.address)
        if ip is None:
            name = self.address.encode("idna")
            if len(name) > 255:
                raise ProxyError(f"{self.label}: host name too long")
            addr = bytes([3, len(name)]) + name
        else:
            addr = bytes([1 if ip.version == 4 else 4]) + ip.packed
        return bytes([5, 1, 0]) + addr + self.port.to_bytes(2, "big")

    def feed(self, data: bytes) -> tuple[bytes, Optional[bytes]]:
        self.buf += data
        out = b""
        while True:
            if self.state == "method":
                if len(self.buf) < 2:
                    return out, None
                ver, method = self.buf[0], self.buf[1]
                self.buf = self.buf[2:]
                if ver != 5:
                    raise ProxyError(f"{self.label} did not answer as a SOCKS5 proxy")
                if method == 0:
                    out += self._connect_request()
                    self.state = "connect"
                elif method == 2 and self.proxy.has_credentials:
                    user, pw = self.proxy.username.encode(), self.proxy.password.encode()
                    out += bytes([1, len(user)]) + user + bytes([len(pw)]) + pw
                    self.state = "auth"
                elif method == 0xFF:
                    raise ProxyError(f"{self.label}: " + ("accepts none of our authentication methods"
                                     if self.proxy.has_credentials else
                                     "requires authentication (a user name and password in the proxy URL)"))
                else:
                    raise ProxyError(f"{self.label} chose an authentication method we did not offer ({method})")
            elif self.state == "auth":
                if len(self.buf) < 2:
                    return out, None
                status = self.buf[1]
                self.buf = self.buf[2:]
                if status != 0:
                    raise ProxyError(f"{self.label}: authentication failed")
                out += self._connect_request()
                self.state = "connect"
            else:
                if len(self.buf) < 2:
                    return out, None
                ver, rep = self.buf[:2]
                if ver != 5:
                    raise ProxyError(f"{self.label} did not answer as a SOCKS5 proxy")
                if rep != 0:
                    why = _SOCKS_REPLIES.get(rep, f"error {rep}")
                    raise ProxyError(f"{self.label} could not connect to {self.address}:{self.port}: {why}")
                if len(self.buf) < 5:
                    return out, None
                atyp = self.buf[3]
                size = {1: 4, 4: 16, 3: 1 + self.buf[4]}.get(atyp)
                if size is None:
                    raise ProxyError(f"{self.label} answered an unknown address type ({atyp})")
                total = 4 + size + 2
                if len(self.buf) < total:
                    return out, None
                return out, self.buf[total:]


def handshake_for(reactor: Any, proxy: Any, host: str, port: int, timeout: float) -> Any:
    """The handshake that opens a tunnel to ``host``:``port`` through
    ``proxy`` (a Deferred of it when a ``socks5://`` proxy needs the name
    resolved here first)."""
    if proxy.scheme == "http":
        return HTTPConnect(proxy, host, port)
    return Socks5.start_for(reactor, proxy, host, port, timeout)


class Relay(Protocol):
    """The protocol of a connection to a proxy: :meth:`run` runs a handshake
    on it; :meth:`attach` then gives the connection to another protocol
    (everything received goes on to it)."""

    def __init__(self):
        self.inner: Optional[Protocol] = None
        self._handshake: Any = None
        self._done: Optional[Deferred] = None
        self._timer: Any = None
        self._early = b""
        self._lost = False

    def run(self, handshake: Any, clock: Any, timeout: float) -> Deferred:
        """Fires with the bytes received after the handshake (the tunnel's
        first bytes); ProxyError when it fails or takes more than ``timeout``."""
        self._handshake = handshake
        if self._lost:
            return fail(ProxyError(f"{handshake.label} closed the connection before the handshake"))
        self._done = Deferred(self._cancel)
        self._timer = clock.callLater(timeout, self._timed_out, timeout)
        done = self._done
        self.transport.write(handshake.start())
        if self._early:
            early, self._early = self._early, b""
            self.dataReceived(early)
        return done

    def _cancel(self, _d: Deferred) -> None:
        self._done = None  # the Deferred fails with CancelledError
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.transport.abortConnection()

    def _finish(self, result: Any) -> None:
        d, self._done = self._done, None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if d is not None:
            (d.errback if isinstance(result, Failure) else d.callback)(result)

    def _timed_out(self, timeout: float) -> None:
        self._finish(Failure(ProxyError(f"{self._handshake.label} did not complete the handshake "
                                        f"within {timeout:g}s")))
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if self._done is None:
            self._early += data
            return
        try:
            out, rest = self._handshake.feed(data)
        except ProxyError as e:
            self._finish(Failure(e))
            self.transport.abortConnection()
            return
        if out:
            self.transport.write(out)
        if rest is not None:
            self._finish(rest)

    def connectionLost(self, reason: Failure = None) -> None:
        self._lost = True
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif self._done is not None:
            self._finish(Failure(ProxyError(f"{self._handshake.label} closed the connection during the handshake")))

    def attach(self, protocol: Protocol, first: bytes = b"") -> None:
        self.inner = protocol
        protocol.makeConnection(self.transport)
        if first:
            protocol.dataReceived(first)


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """A connection through a proxy: ``to_proxy`` (an endpoint to the proxy)
    is connected, ``handshake()`` (a handshake, or a Deferred of one) is run
    within ``timeout``, then the protocol of the factory given to
    :meth:`connect` gets the connection and the bytes after the handshake."""

    def __init__(self, reactor: Any, to_proxy: IStreamClientEndpoint, handshake: Any, proxy: Any, *,
                 timeout: float):
        self.reactor = reactor
        self.to_proxy = to_proxy
        self.handshake = handshake
        self.proxy = proxy
        self.timeout = timeout

    def connect(self, protocolFactory) -> Deferred:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory):
        handshake = await maybeDeferred(self.handshake)
        relay = await self.to_proxy.connect(Factory.forProtocol(Relay))
        first = await relay.run(handshake, self.reactor, self.timeout)
        protocol = protocolFactory.buildProtocol(relay.transport.getPeer())
        if protocol is None:
            relay.transport.abortConnection()
            raise ierror.ConnectError(string="the protocol factory made no protocol")
        relay.attach(protocol, first)
        return protocol


__all__ = ["HTTPConnect", "MAX_CONNECT_ANSWER", "ProxyEndpoint", "ProxyError", "Relay", "Socks5",
           "TunnelEndpoint", "connect_reason", "handshake_for", "ip_literal", "resolve", "tcp_endpoint"]
