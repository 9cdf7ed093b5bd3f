"""Egress proxies (zmirror/upstream/egress.py, tunnels.py, agents.py) and the
step-by-step connection test (connectiontest.py).

The route and handshake tests need nothing (the proxy URL and no_proxy grammar
is tested in tests/test_proxyurl.py); the others use the real reactor, a real
twisted.web site over TLS with a CA made here, and real proxies started by
tests/fixtures/proxies.py: tinyproxy (HTTP CONNECT and absolute-form, Basic
authentication) and microsocks (SOCKS5 with a user name and password), whose
own logs show the tunnels.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from tests.fixtures.helpers import coro, free_port, temp_dir
from tests.fixtures.proxies import serve_tls, start_microsocks, start_tinyproxy, wait_log
from tests.fixtures.tlsregistry import TestPKI
from zmirror.config.proxyurl import NoProxy, ProxyURL
from zmirror.testing import FakeRegistry
from zmirror.upstream.agents import UpstreamAgents
from zmirror.upstream.client import UpstreamClient
from zmirror.upstream.connectiontest import trace
from zmirror.upstream.egress import DIRECT, Route, default_route, upstream_route
from zmirror.upstream.models import Upstream
from zmirror.upstream.tlsconfig import TLSSettings
from zmirror.upstream.tunnels import HTTPConnect, ProxyError, Relay, Socks5

TIMEOUT = 5.0


class Routes(unittest.TestCase):
    def test_config_route(self):
        r = default_route("http://p:3128", "internal.test", environ={"HTTPS_PROXY": "http://other:1"})
        self.assertEqual(r.proxy_for("https", "registry-1.docker.io", 443).host, "p")
        self.assertEqual(r.proxy_for("http", "registry-1.docker.io", 80).host, "p")
        self.assertIsNone(r.proxy_for("https", "a.internal.test", 443))

    def test_environment_when_the_config_says_nothing(self):
        env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:1", "HTTP_PROXY": "",
               "ALL_PROXY": "socks5h://all:1080", "NO_PROXY": "10.0.0.0/8"}
        r = default_route("", "", environ=env)
        self.assertEqual(r.proxy_for("https", "h", 443).host, "lower")  # lower case wins, as in curl
        self.assertEqual(r.proxy_for("http", "h", 80).host, "all")  # empty is unset: ALL_PROXY
        self.assertIsNone(r.proxy_for("https", "10.2.3.4", 443))
        self.assertEqual(default_route("", "", environ={"http_proxy": "h:3128"}).proxy_for("https", "x", 443), None)
        self.assertEqual(default_route("", "", environ=None), DIRECT)
        self.assertEqual(default_route("", "", environ={}), DIRECT)

    def test_invalid_environment_names_the_variable_not_the_value(self):
        with self.assertRaises(ValueError) as e:
            default_route(environ={"https_proxy": "ftp://u:secret@h"})
        self.assertIn("https_proxy", str(e.exception))
        self.assertNotIn("secret", str(e.exception))
        with self.assertRaises(ValueError) as e:
            default_route("gopher://u:secret@h")
        self.assertIn("[upstream] proxy", str(e.exception))

    def test_upstream_field_overrides(self):
        default = default_route("http://p:3128", "direct.test")
        self.assertIs(upstream_route(default, None), default)
        self.assertEqual(upstream_route(default, ""), DIRECT)
        own = upstream_route(default, "socks5h://s:1080")
        self.assertEqual(own.proxy_for("https", "direct.test", 443).host, "s")  # its own proxy: no no_proxy
        with self.assertRaises(ValueError):
            upstream_route(default, "nonsense://x")


class Handshakes(unittest.TestCase):
    proxy = ProxyURL("http", "127.0.0.1", 3128, "u", "p w")

    def test_connect_request_and_answer_bytes_kept(self):
        h = HTTPConnect(self.proxy, "registry.test", 443)
        self.assertEqual(h.start(), b"CONNECT registry.test:443 HTTP/1.1\r\nHost: registry.test:443\r\n"
                                    b"Proxy-Authorization: Basic dTpwIHc=\r\n\r\n")
        answer = b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\nTUNNEL-BYTES"
        for b in answer[:-13]:
            self.assertEqual(h.feed(bytes([b])), (b"", None))
        self.assertEqual(h.feed(answer[-13:]), (b"", b"\nTUNNEL-BYTES"[1:]))
        self.assertIn(b"CONNECT [::1]:5000 ", HTTPConnect(ProxyURL("http", "p", 1), "::1", 5000).start())

    def test_connect_refused_and_nonsense(self):
        with self.assertRaises(ProxyError) as e:
            HTTPConnect(self.proxy, "r", 443).feed(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n")
        self.assertEqual(str(e.exception),
                         "proxy 127.0.0.1:3128 refused CONNECT: 407 Proxy Authentication Required")
        with self.assertRaises(ProxyError) as e:
            HTTPConnect(self.proxy, "r", 443).feed(b"SSH-2.0-OpenSSH\r\n\r\n")
        self.assertIn("did not answer CONNECT with HTTP", str(e.exception))
        with self.assertRaises(ProxyError) as e:
            HTTPConnect(self.proxy, "r", 443).feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 5000)
        self.assertIn("over-long", str(e.exception))

    def test_socks5_with_password(self):
        s = Socks5(ProxyURL("socks5h", "127.0.0.1", 1080, "user", "pw"), "registry.test", 443)
        self.assertEqual(s.start(), b"\x05\x02\x00\x02")
        self.assertEqual(s.feed(b"\x05\x02"), (b"\x01\x04user\x02pw", None))
        self.assertEqual(s.feed(b"\x01\x00"), (b"\x05\x01\x00\x03\x0dregistry.test\x01\xbb", None))
        self.assertEqual(s.feed(b"\x05\x00\x00\x01\x7f\x00"), (b"", None))
        self.assertEqual(s.feed(b"\x00\x01\x12\x34first"), (b"", b"first"))

    def test_socks5_addresses_and_failures(self):
        s = Socks5(ProxyURL("socks5", "h", 1080), "10.1.2.3", 80)
        self.assertEqual(s.start(), b"\x05\x01\x00")
        self.assertEqual(s.feed(b"\x05\x00"), (b"\x05\x01\x00\x01\x0a\x01\x02\x03\x00\x50", None))
        s6 = Socks5(ProxyURL("socks5", "h", 1080), "::1", 80)
        s6.start()
        self.assertEqual(s6.feed(b"\x05\x00")[0][3:4], b"\x04")
        bad_auth = Socks5(ProxyURL("socks5h", "h", 1080, "u", "p"), "r", 443)
        bad_auth.feed(b"\x05\x02")
        with self.assertRaises(ProxyError) as e:
            bad_auth.feed(b"\x01\x01")
        self.assertEqual(str(e.exception), "SOCKS5 proxy h:1080: authentication failed")
        with self.assertRaises(ProxyError) as e:
            Socks5(ProxyURL("socks5h", "h", 1080), "r", 443).feed(b"\x05\xff")
        self.assertIn("requires authentication", str(e.exception))
        refused = Socks5(ProxyURL("socks5h", "h", 1080), "r", 443)
        refused.feed(b"\x05\x00")
        with self.assertRaises(ProxyError) as e:
            refused.feed(b"\x05\x05\x00\x01")
        self.assertEqual(str(e.exception), "SOCKS5 proxy h:1080 could not connect to r:443: connection refused")


class Recorder(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = None

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason=None):
        self.lost = reason


class RelayProtocol(unittest.TestCase):
    def test_bytes_after_the_handshake_reach_the_tunnel(self):
        from twisted.internet.task import Clock

        clock = Clock()
        relay, t = Relay(), StringTransport()
        relay.makeConnection(t)
        done = relay.run(HTTPConnect(ProxyURL("http", "p", 1), "r", 443), clock, 5)
        self.assertTrue(t.value().startswith(b"CONNECT r:443 HTTP/1.1\r\n"))
        relay.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nfirst")
        first = self.successResultOf(done)
        inner = Recorder()
        relay.attach(inner, first)
        relay.dataReceived(b" second")
        self.assertEqual(inner.data, b"first second")
        self.assertIs(inner.transport, t)
        relay.connectionLost(None)
        self.assertIsNone(inner.lost)  # forwarded (the reason as given)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stalled_or_closing_proxy(self):
        from twisted.internet.task import Clock

        clock = Clock()
        relay, t = Relay(), StringTransport()
        relay.makeConnection(t)
        done = relay.run(HTTPConnect(ProxyURL("http", "p", 1), "r", 443), clock, 5)
        clock.advance(5)
        self.assertIn("did not complete the handshake within 5s", str(self.failureResultOf(done, ProxyError).value))
        self.assertTrue(t.disconnecting or t.disconnected)
        relay2 = Relay()
        relay2.makeConnection(StringTransport())
        done2 = relay2.run(Socks5(ProxyURL("socks5h", "s", 1), "r", 443), clock, 5)
        relay2.connectionLost(None)
        self.assertIn("SOCKS5 proxy s:1 closed the connection", str(self.failureResultOf(done2, ProxyError).value))
        relay3 = Relay()
        relay3.makeConnection(StringTransport())
        relay3.connectionLost(None)  # before the handshake began
        done3 = relay3.run(HTTPConnect(ProxyURL("http", "p", 1), "r", 443), clock, 5)
        self.assertIn("closed the connection before the handshake", str(self.failureResultOf(done3, ProxyError).value))
        self.assertEqual(clock.getDelayedCalls(), [])


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello over " + (b"tls" if request.isSecure() else b"http")


class World:
    """A TLS site and a plain HTTP site on 127.0.0.1 (a CA made here)."""

    def __init__(self, case):
        from twisted.web.server import Site

        self.pki = TestPKI(temp_dir(case))
        self.tls_port, _site = serve_tls(case, Hello(), self.pki.server)
        site = Site(Hello())
        site.noisy = False
        plain = reactor.listenTCP(0, site, interface="127.0.0.1")
        case.addCleanup(plain.stopListening)
        self.plain_port = plain.getHost().port

    def upstream(self, host="127.0.0.1", proxy=None, ca=True, **tls):
        return Upstream(id=1, name="up", url=f"https://{host}:{self.tls_port}", proxy=proxy,
                        tls=TLSSettings(ca=self.pki.ca.cert_pem if ca else "", **tls))


async def get(agents, up, url):
    resp = await agents.agent_for(up).request(b"GET", url.encode(), Headers(), None)
    return resp.code, await readBody(resp)


class Through(unittest.TestCase):
    timeout = 20
    """Requests through a real Agent, real proxies, real TLS."""

    def setUp(self):
        self.world = World(self)

    def agents(self, **kw):
        agents = UpstreamAgents(reactor, connect_timeout=kw.pop("connect_timeout", TIMEOUT), **kw)
        self.addCleanup(agents.close)
        return agents

    @coro
    async def test_https_through_http_connect_with_basic_auth(self):
        tp = start_tinyproxy(self)
        agents = self.agents(proxy=tp.url())
        up = self.world.upstream()
        for _ in range(2):  # the second request reuses the tunnel (one CONNECT)
            self.assertEqual(await get(agents, up, f"{up.url}/v2/"), (200, b"hello over tls"))
        log = wait_log(tp, f"CONNECT 127.0.0.1:{self.world.tls_port} HTTP/1.1")
        self.assertEqual(log.count("CONNECT 127.0.0.1:"), 1, log)

    @coro
    async def test_http_through_http_proxy_in_absolute_form(self):
        tp = start_tinyproxy(self)
        agents = self.agents(proxy=tp.url())
        up = self.world.upstream()
        url = f"http://127.0.0.1:{self.world.plain_port}/v2/"
        self.assertEqual(await get(agents, up, url), (200, b"hello over http"))
        wait_log(tp, f"GET {url} HTTP/1.1")

    @coro
    async def test_wrong_proxy_password(self):
        tp = start_tinyproxy(self)
        agents = self.agents(proxy=tp.url(password="wrong-secret"))
        up = self.world.upstream()
        with self.assertRaises(ProxyError) as e:
            await get(agents, up, f"{up.url}/v2/")
        # (tinyproxy answers 401 where RFC 9110 says 407)
        self.assertEqual(str(e.exception), f"proxy 127.0.0.1:{tp.port} refused CONNECT: 401 Unauthorized")
        self.assertNotIn("wrong-secret", str(e.exception))
        url = f"http://127.0.0.1:{self.world.plain_port}/v2/"
        resp = await agents.agent_for(up).request(b"GET", url.encode(), Headers(), None)
        self.assertEqual(resp.code, 401)  # absolute form: the proxy's own answer
        resp.deliverBody(Protocol())

    @coro
    async def test_407_to_an_absolute_form_request(self):
        from twisted.web.server import Site

        class Refusing(Resource):
            isLeaf = True

            def render(self, request):
                request.setResponseCode(407, b"Proxy Authentication Required")
                request.setHeader(b"Proxy-Authenticate", b'Basic realm="egress"')
                self.auth = request.getHeader(b"proxy-authorization")
                return b"no"

        refusing = Refusing()
        listening = reactor.listenTCP(0, Site(refusing), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        agents = self.agents(proxy=f"http://u:wrong-secret@127.0.0.1:{port}")
        with self.assertRaises(ProxyError) as e:
            await get(agents, self.world.upstream(), f"http://127.0.0.1:{self.world.plain_port}/v2/")
        self.assertEqual(str(e.exception), f"proxy 127.0.0.1:{port} refused the request: "
                                           "407 Proxy Authentication Required")
        self.assertEqual(refusing.auth, b"Basic dTp3cm9uZy1zZWNyZXQ=")
        await deferLater(reactor, 0.05)  # the connection back in its pool (closed in cleanup)

    @coro
    async def test_https_through_socks5h_and_socks5(self):
        ms = start_microsocks(self)
        up = self.world.upstream(host="localhost")
        for scheme, seen in (("socks5h", "localhost"), ("socks5", "127.0.0.1")):
            agents = self.agents(proxy=ms.url(scheme=scheme))
            self.assertEqual(await get(agents, up, f"{up.url}/v2/"), (200, b"hello over tls"))
            # socks5h: the proxy resolved the name; socks5: it got the address resolved here
            wait_log(ms, f"connected to {seen}:{self.world.tls_port}")
        agents = self.agents(proxy=ms.url(scheme="socks5h"))
        url = f"http://127.0.0.1:{self.world.plain_port}/v2/"
        self.assertEqual(await get(agents, up, url), (200, b"hello over http"))  # a plain tunnel
        wait_log(ms, f"connected to 127.0.0.1:{self.world.plain_port}")

    @coro
    async def test_socks5_wrong_password(self):
        ms = start_microsocks(self)
        agents = self.agents(proxy=ms.url(password="wrong-secret"))
        up = self.world.upstream()
        with self.assertRaises(ProxyError) as e:
            await get(agents, up, f"{up.url}/v2/")
        self.assertEqual(str(e.exception), f"SOCKS5 proxy 127.0.0.1:{ms.port}: authentication failed")

    @coro
    async def test_no_proxy_and_direct_bypass(self):
        tp = start_tinyproxy(self)
        agents = self.agents(proxy=tp.url(), no_proxy="localhost")
        self.assertEqual(await get(agents, self.world.upstream(host="localhost"),
                                   f"https://localhost:{self.world.tls_port}/v2/"), (200, b"hello over tls"))
        direct = self.world.upstream(proxy="")  # the upstream's own "" = direct
        self.assertEqual(await get(agents, direct, f"{direct.url}/v2/"), (200, b"hello over tls"))
        self.assertNotIn("Request (", tp.log())

    @coro
    async def test_environment(self):
        tp = start_tinyproxy(self)
        ms = start_microsocks(self)
        env = {"https_proxy": ms.url(), "HTTPS_PROXY": "http://127.0.0.1:1", "http_proxy": tp.url(),
               "no_proxy": "example.invalid"}
        agents = self.agents(environ=env)
        up = self.world.upstream()
        self.assertEqual(await get(agents, up, f"{up.url}/v2/"), (200, b"hello over tls"))
        wait_log(ms, f"connected to 127.0.0.1:{self.world.tls_port}")
        url = f"http://127.0.0.1:{self.world.plain_port}/v2/"
        self.assertEqual(await get(agents, up, url), (200, b"hello over http"))
        wait_log(tp, f"GET {url}")
        # the config's settings (even only no_proxy) replace the environment's
        agents = self.agents(no_proxy="example.invalid", environ=env)
        self.assertEqual(agents.default_route, Route.via(None, NoProxy.parse("example.invalid")))

    @coro
    async def test_upstream_proxy_overrides_and_keys(self):
        tp = start_tinyproxy(self)
        agents = self.agents(proxy="http://127.0.0.1:1")  # a default that does not work
        up = self.world.upstream(proxy=tp.url())
        self.assertEqual(await get(agents, up, f"{up.url}/v2/"), (200, b"hello over tls"))
        wait_log(tp, "CONNECT 127.0.0.1:")
        self.assertIsNot(agents.agent_for(up), agents.agent_for(self.world.upstream()))
        self.assertIs(agents.agent_for(up), agents.agent_for(self.world.upstream(proxy=tp.url())))
        bad = self.world.upstream(proxy="ftp://u:secret@h")
        with self.assertRaises(ValueError):
            agents.agent_for(bad)
        agents.retain([up, bad])
        self.assertEqual(len(agents._agents), 1)

    @coro
    async def test_unreachable_or_stalled_proxy_fails_in_time(self):
        port = free_port()
        agents = self.agents(proxy=f"http://127.0.0.1:{port}")
        up = self.world.upstream()
        with self.assertRaises(ProxyError) as e:
            await get(agents, up, f"{up.url}/v2/")
        self.assertEqual(str(e.exception), f"cannot connect to proxy 127.0.0.1:{port}: connection refused")
        with self.assertRaises(ProxyError) as e:  # absolute form too
            await get(agents, up, f"http://127.0.0.1:{self.world.plain_port}/")
        self.assertIn("cannot connect to proxy", str(e.exception))

        silent = socket.socket()  # accepts (the kernel does) and never answers
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        for scheme in ("http", "socks5h"):
            agents = self.agents(proxy=f"{scheme}://127.0.0.1:{silent.getsockname()[1]}", connect_timeout=0.3)
            start = reactor.seconds()
            with self.assertRaises(ProxyError) as e:
                await get(agents, up, f"{up.url}/v2/")
            self.assertIn("did not complete the handshake within 0.3s", str(e.exception))
            self.assertLess(reactor.seconds() - start, 3)

    @coro
    async def test_cancel_while_connecting_through_a_stalled_proxy(self):
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        agents = self.agents(proxy=f"http://127.0.0.1:{silent.getsockname()[1]}", connect_timeout=30)
        up = self.world.upstream()
        d = agents.agent_for(up).request(b"GET", f"{up.url}/v2/".encode(), Headers(), None)
        wait = Deferred()
        reactor.callLater(0.2, wait.callback, None)
        await wait
        d.cancel()
        failure = self.failureResultOf(d)
        self.assertFalse(failure.check(ProxyError))


class ConnectionTest(unittest.TestCase):
    timeout = 20
    """``trace``: dns → tcp → proxy → tls, up to the first failure."""

    def setUp(self):
        self.world = World(self)

    def agents(self, **kw):
        return UpstreamAgents(reactor, connect_timeout=kw.pop("connect_timeout", TIMEOUT), **kw)

    def assertSteps(self, steps, expected):
        self.assertEqual([(s["step"], s["ok"]) for s in steps], expected, steps)
        for s in steps:
            self.assertEqual(set(s), {"step", "ok", "ms", "detail"})

    @coro
    async def test_direct(self):
        steps = await trace(reactor, self.agents(), self.world.upstream(host="localhost"))
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("tls", True)])
        self.assertIn("127.0.0.1", steps[0]["detail"])
        self.assertIn("certificate 127.0.0.1 (issuer zmirror test CA)", steps[2]["detail"])

    @coro
    async def test_certificate_failures(self):
        steps = await trace(reactor, self.agents(), self.world.upstream(ca=False))
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("tls", False)])
        self.assertEqual(steps[2]["detail"], "certificate verify failed: unable to get local issuer certificate")
        steps = await trace(reactor, self.agents(), self.world.upstream(server_name="other.test"))
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("tls", False)])
        self.assertIn("certificate name mismatch: expected other.test", steps[2]["detail"])
        steps = await trace(reactor, self.agents(), self.world.upstream(ca=False, verify=False))
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("tls", True)])
        self.assertIn("verification off", steps[2]["detail"])

    @coro
    async def test_through_proxies(self):
        tp = start_tinyproxy(self)
        ms = start_microsocks(self)
        up = self.world.upstream()
        steps = await trace(reactor, self.agents(proxy=tp.url()), up)
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("proxy", True), ("tls", True)])
        self.assertIn(f"proxy 127.0.0.1:{tp.port}", steps[1]["detail"])
        wait_log(tp, f"CONNECT 127.0.0.1:{self.world.tls_port}")
        steps = await trace(reactor, self.agents(proxy=ms.url()), up)
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("proxy", True), ("tls", True)])
        steps = await trace(reactor, self.agents(proxy=tp.url(password="wrong-secret")), up)
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("proxy", False)])
        self.assertEqual(steps[2]["detail"], f"proxy 127.0.0.1:{tp.port} refused CONNECT: 401 Unauthorized")
        self.assertNotIn("secret", repr(steps))
        steps = await trace(reactor, self.agents(proxy=ms.url(password="wrong-secret")), up)
        self.assertEqual(steps[-1]["detail"], f"SOCKS5 proxy 127.0.0.1:{ms.port}: authentication failed")
        plain = Upstream(id=2, name="p", url=f"http://127.0.0.1:{self.world.plain_port}")
        steps = await trace(reactor, self.agents(proxy=tp.url()), plain)
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("proxy", True)])

    @coro
    async def test_failures_before_tls(self):
        port = free_port()
        steps = await trace(reactor, self.agents(), Upstream(id=1, name="x", url=f"https://127.0.0.1:{port}"))
        self.assertSteps(steps, [("dns", True), ("tcp", False)])
        self.assertEqual(steps[1]["detail"], f"cannot connect to 127.0.0.1:{port}: connection refused")
        steps = await trace(reactor, self.agents(proxy=f"http://127.0.0.1:{port}"), self.world.upstream())
        self.assertEqual(steps[1]["detail"], f"cannot connect to proxy 127.0.0.1:{port}: connection refused")
        steps = await trace(reactor, self.agents(), Upstream(id=1, name="x", url="https://nonexistent.invalid"))
        self.assertSteps(steps, [("dns", False)])
        steps = await trace(reactor, self.agents(), self.world.upstream(proxy="ftp://u:secret@h"))
        self.assertSteps(steps, [("proxy", False)])
        self.assertNotIn("secret", repr(steps))

    @coro
    async def test_stalled_proxy_and_unresolvable_names(self):
        silent = socket.socket()  # accepts (the kernel does) and never answers
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        stalled = f"socks5h://127.0.0.1:{silent.getsockname()[1]}"
        steps = await trace(reactor, self.agents(proxy=stalled, connect_timeout=0.3), self.world.upstream())
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("proxy", False)])
        self.assertIn("did not complete the handshake within 0.3s", steps[2]["detail"])
        ms = start_microsocks(self)
        up = Upstream(id=1, name="x", url="https://nonexistent.invalid", proxy=ms.url(scheme="socks5"))
        steps = await trace(reactor, self.agents(), up)  # socks5://: the name is resolved here
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("proxy", False)])
        self.assertIn("cannot resolve nonexistent.invalid", steps[2]["detail"])
        up = Upstream(id=1, name="x", url="https://nonexistent.invalid", proxy=ms.url(scheme="socks5h"))
        steps = await trace(reactor, self.agents(), up)  # socks5h://: the proxy resolves it, and cannot
        self.assertSteps(steps, [("dns", True), ("tcp", True), ("proxy", False)])
        self.assertIn(f"SOCKS5 proxy 127.0.0.1:{ms.port} could not connect to nonexistent.invalid:443",
                      steps[2]["detail"])

    @coro
    async def test_plain_http_has_no_tls_step(self):
        plain = Upstream(id=2, name="p", url=f"http://127.0.0.1:{self.world.plain_port}")
        steps = await trace(reactor, self.agents(), plain)
        self.assertSteps(steps, [("dns", True), ("tcp", True)])



class DockerHubLookalike(unittest.TestCase):
    """A registry whose token realm and blob CDN are other hosts (here: other
    TLS ports of 127.0.0.1), as Docker Hub's are: the token fetch and the CDN
    hop of a blob GET go through the upstream's proxy like the registry's own
    requests, through the real UpstreamClient."""

    timeout = 30

    def setUp(self):
        self.pki = TestPKI(temp_dir(self))
        self.fake = FakeRegistry(auth="token")
        self.data = b"layer bytes " * 5000
        self.digest = self.fake.add_blob(self.data)
        ports = [serve_tls(self, self.fake.resource(), self.pki.server)[0] for _ in range(3)]
        self.reg_port, self.auth_port, self.cdn_port = ports
        self.fake.realm = f"https://127.0.0.1:{self.auth_port}/token"
        self.fake.cdn = f"https://127.0.0.1:{self.cdn_port}"

    async def pull_blob(self, proxy: str) -> None:
        agents = UpstreamAgents(reactor, connect_timeout=TIMEOUT, proxy=proxy)
        self.addCleanup(agents.close)
        client = UpstreamClient(agents, reactor)
        up = Upstream(id=1, name="hub", url=f"https://127.0.0.1:{self.reg_port}",
                      tls=TLSSettings(ca=self.pki.ca.cert_pem))
        resp = await client.request(up, b"GET", f"/v2/library/x/blobs/{self.digest}",
                                    scope="repository:library/x:pull")
        self.assertEqual((resp.code, await readBody(resp)), (200, self.data))
        self.assertEqual(len(self.fake.token_requests), 1)
        cdn = [r for r in self.fake.requests if r[2].startswith("/cdn/")]
        self.assertEqual(len(cdn), 1, self.fake.requests)
        self.assertNotIn("authorization", cdn[0][3], "credentials never go to the CDN host")

    @coro
    async def test_through_http_connect(self):
        tp = start_tinyproxy(self)
        await self.pull_blob(tp.url())
        for port in (self.reg_port, self.auth_port, self.cdn_port):
            wait_log(tp, f"CONNECT 127.0.0.1:{port} HTTP/1.1")

    @coro
    async def test_through_socks5h(self):
        ms = start_microsocks(self)
        await self.pull_blob(ms.url(scheme="socks5h"))
        for port in (self.reg_port, self.auth_port, self.cdn_port):
            wait_log(ms, f"connected to 127.0.0.1:{port}")
