"""The admin's "Test connection", step by step: resolve the host (the
proxy's when proxied), connect to it, open the tunnel through the proxy, make
the TLS handshake with the upstream's TLS settings (design:
docs/design/upstream.md, "TLS and egress").  Each step is a dict
``{"step", "ok", "ms", "detail"}``; the list ends at the first failed step.
Made the same way as the upstream's connections are (the route of
:class:`zmirror.upstream.agents.UpstreamAgents`, the tunnels of
:mod:`zmirror.upstream.tunnels`), on one connection that is closed at the end;
details never hold credentials."""

from __future__ import annotations

from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from zmirror.upstream.models import Upstream, origin_of
from zmirror.upstream.tlsconfig import TLSPolicy, tls_failure_reason
from zmirror.upstream.tunnels import (ProxyError, Relay, connect_reason, handshake_for, ip_literal, resolve,
                                      tcp_endpoint)

@implementer(IHandshakeListener)
class _Handshake(Protocol):
    def __init__(self):
        self.done: Deferred = Deferred()

    def handshakeCompleted(self):
        if not self.done.called:
            self.done.callback(None)

    def connectionLost(self, reason=None):
        if not self.done.called:
            self.done.errback(reason)


def _cert_names(conn: SSL.Connection) -> str:
    try:
        cert = conn.get_peer_certificate()
        subject = cert.get_subject().CN or "?"
        issuer = cert.get_issuer().CN or "?"
        return f"certificate {subject} (issuer {issuer})"
    except Exception:
        return "no certificate"


class _Steps:
    def __init__(self, reactor: Any):
        self.reactor = reactor
        self.steps: list = []
        self._t = 0.0

    def start(self) -> None:
        self._t = self.reactor.seconds()

    def add(self, step: str, ok: bool, detail: str, timed: bool = True) -> bool:
        ms = round((self.reactor.seconds() - self._t) * 1000, 1) if timed else None
        self.steps.append({"step": step, "ok": ok, "ms": ms, "detail": detail})
        return ok


async def trace(reactor: Any, agents: Any, up: Upstream, *, timeout: Optional[float] = None) -> list:
    """The steps of a connection to ``up``'s registry as ``agents`` (an
    :class:`~zmirror.upstream.agents.UpstreamAgents`: its route and connect
    timeout) would make it: ``dns``, ``tcp``, ``proxy`` (with a proxy),
    ``tls`` (https), up to the first that fails."""
    timeout = timeout or agents.connect_timeout
    steps = _Steps(reactor)
    scheme, host, port = origin_of(up.url)
    if not host:
        steps.add("dns", False, "the registry URL has no host", timed=False)
        return steps.steps
    try:
        proxy = agents.route_for(up).proxy_for(scheme, host, port)
    except ValueError as e:
        steps.add("proxy", False, str(e), timed=False)
        return steps.steps
    name, to_port = (proxy.host, proxy.port) if proxy is not None else (host, port)
    what = f"proxy {proxy.netloc}" if proxy is not None else f"{host}:{port}"

    steps.start()
    try:
        addresses = await resolve(reactor, name, to_port, timeout)
    except Exception as e:
        steps.add("dns", False, f"cannot resolve {name}: {connect_reason(e, timeout)}")
        return steps.steps
    literal = ip_literal(name) is not None
    steps.add("dns", True, f"{name} is an IP address" if literal else f"{name}: {', '.join(addresses[:4])}")

    relay = None
    try:
        steps.start()
        failure = None
        for address in addresses[:4]:
            try:
                relay = await tcp_endpoint(reactor, address, to_port, timeout).connect(Factory.forProtocol(Relay))
                break
            except Exception as e:
                failure = e
        if relay is None:
            steps.add("tcp", False, f"cannot connect to {what}: {connect_reason(failure, timeout)}")
            return steps.steps
        peer = relay.transport.getPeer()
        steps.add("tcp", True, f"connected to {what} at {peer.host}:{peer.port}")

        first = b""
        if proxy is not None:
            if proxy.scheme == "http" and scheme == "http":
                steps.add("proxy", True, f"http:// requests go to the proxy {proxy.netloc} in absolute form "
                                         "(no tunnel)", timed=False)
                return steps.steps
            steps.start()
            try:
                handshake = await maybeDeferred(handshake_for, reactor, proxy, host, port, timeout)
                first = await relay.run(handshake, reactor, timeout)
            except ProxyError as e:
                steps.add("proxy", False, str(e))
                return steps.steps
            kind = "CONNECT" if proxy.scheme == "http" else proxy.scheme.upper()
            steps.add("proxy", True, f"{kind} tunnel to {host}:{port} through {proxy.netloc} open")

        if scheme == "https":
            await _tls_step(reactor, steps, relay, first, up, host, port, timeout)
        return steps.steps
    finally:
        if relay is not None and relay.transport is not None:
            relay.transport.abortConnection()


async def _tls_step(reactor: Any, steps: _Steps, relay: Relay, first: bytes, up: Upstream, host: str,
                    port: int, timeout: float) -> None:
    steps.start()
    try:
        creator = TLSPolicy(up.tls, host).creatorForNetloc(host.encode("ascii"), port)
    except ValueError as e:
        steps.add("tls", False, str(e), timed=False)
        return
    probe = _Handshake()
    tls = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: probe)).buildProtocol(None)
    timer = reactor.callLater(timeout, relay.transport.abortConnection)
    try:
        relay.attach(tls, first)
        await probe.done
    except Exception as e:
        if not timer.active():
            steps.add("tls", False, f"no TLS handshake within {timeout:g}s")
        else:
            reason = tls_failure_reason(e)
            if not reason and type(e).__name__ in ("ConnectionDone", "ConnectionLost"):
                reason = "the connection closed during the TLS handshake"
            steps.add("tls", False, reason or f"TLS handshake failed: {type(e).__name__}")
        return
    finally:
        if timer.active():
            timer.cancel()
    conn = tls.getHandle()
    note = " (verification off)" if not up.tls.verify else ""
    steps.add("tls", True, f"{conn.get_protocol_version_name()} {conn.get_cipher_name()}, "
                           f"{_cert_names(conn)}{note}")


__all__ = ["trace"]
