"""Upstream requests (zmirror/upstream/client.py): connections reused across error answers,
a client that leaves is not an upstream failure, small bodies read within a deadline.

A real twisted.web upstream on 127.0.0.1 and the real Agent + HTTPConnectionPool
built by ``zmirror.upstream.build.build_upstreams``: the upstream's factory counts the
connections it accepts.  Small unwanted bodies (401 before the token retry,
404, 5xx) are read to the end so their connection goes back to the pool; a
huge or stalled unwanted body is still cut off.  The other tests script the upstream
(tests/fixtures/upstream.py), or stall a real one.
"""

import base64
import json
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.internet.error import ConnectionLost

from tests.fixtures.helpers import coro
from tests.fixtures.upstream import (DOCKER_V2, MANIFEST, TAGS_PATH, TAG_PATH, FakeResponse, OneAgent, World,
                                     manifest_response, token_challenge)
from zmirror.config import Config, UpstreamConfig
from zmirror.oci.errors import RegistryError
from zmirror.httpbody import DRAIN_LIMIT, discard, failure_text
from zmirror.oci.reference import parse_path
from zmirror.registry.build import build_proxy
from zmirror.registry.routes import PullRequest
from zmirror.upstream.build import build_upstreams
from zmirror.upstream.health import UpstreamHealth
from zmirror.upstream.pool import UpstreamPool
from zmirror.upstream.failover import Failover

USER, PASSWORD = "puller", "s3cret"


class Upstream(Resource):
    """A registry that knows no repository: 401 until authenticated, then 404.

    ``auth``: "basic" or "bearer" (token from ``/token`` on the same server).
    Paths with ``/broken/`` answer 503; ``/huge/`` a 404 announcing 16 MiB
    (one chunk written, the rest never); ``/stall/`` a 404 announcing 100
    bytes of which 10 are written.
    """

    isLeaf = True

    def __init__(self, auth: str):
        super().__init__()
        self.auth = auth
        self.base = ""
        self.open_requests: list = []  # (request, notifyFinish Deferred) left NOT_DONE_YET

    def _error(self, request, code: int, body: dict) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    def render(self, request):
        path = request.path.decode()
        if path == "/token":
            return self._error(request, 200, {"token": "tok-" + "x" * 40, "expires_in": 300})
        authz = (request.getHeader(b"authorization") or b"").decode()
        if self.auth == "basic":
            good = authz == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            challenge = b'Basic realm="test"'
        else:
            good = authz.startswith("Bearer tok-")
            challenge = (f'Bearer realm="{self.base}/token",service="test",'
                         f'scope="repository:x:pull"').encode()
        if not good:
            request.setHeader(b"www-authenticate", challenge)
            return self._error(request, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "log in"}]})
        if "/broken/" in path:
            return self._error(request, 503, {"errors": [{"code": "UNAVAILABLE", "message": "x" * 300}]})
        if "/huge/" in path or "/stall/" in path:
            huge = "/huge/" in path
            request.setResponseCode(404)
            request.setHeader(b"content-length", str(16 << 20 if huge else 100).encode())
            request.write(b"y" * (1 << 16) if huge else b"z" * 10)
            self.open_requests.append((request, request.notifyFinish()))
            return NOT_DONE_YET
        return self._error(request, 404, {"errors": [{"code": "NAME_UNKNOWN", "message": "no such repo"}]})


class CountingSite(Site):
    """Counts the connections it accepts; ``closed()``: all of them are gone."""

    noisy = False  # its own start line is not what the log test looks for

    def __init__(self, resource):
        super().__init__(resource)
        self.connections = 0
        self.lost: list[Deferred] = []

    def buildProtocol(self, addr):
        self.connections += 1
        proto = super().buildProtocol(addr)
        lost: Deferred = Deferred()
        self.lost.append(lost)
        original = proto.connectionLost

        def connectionLost(reason):
            original(reason)
            lost.callback(None)

        proto.connectionLost = connectionLost
        return proto

    def closed(self) -> Deferred:
        return DeferredList(self.lost)


class Env:
    """A fake upstream on 127.0.0.1 and the UpstreamPool wiring builds for it."""

    def __init__(self, case: unittest.TestCase, auth: str):
        self.resource = Upstream(auth)
        self.site = CountingSite(self.resource)
        port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        case.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.resource.base = self.base
        config = Config(data_dir=Path(case.mktemp()), config_path=Path("/nonexistent"),
                        upstream=UpstreamConfig(connect_timeout=10.0, cooldown=0.0))
        self.pool = build_upstreams(config, reactor).pool
        self.pool.set_registries([{"id": 1, "name": "up", "url": self.base, "priority": 1,
                                   "username": USER if auth == "basic" else "",
                                   "password": PASSWORD if auth == "basic" else ""}])
        self.failover = Failover(self.pool, reactor)
        case.addCleanup(self.close)

    async def close(self):
        for request, _ in self.resource.open_requests:
            if not request.finished and not request._disconnected:
                request.transport.abortConnection()
        await self.pool.close()
        await self.site.closed()

    async def fetch(self, method: bytes, path: str):
        """Failover.fetch of ``path``; the RegistryError every test here expects."""
        try:
            await self.failover.fetch(method, path, {}, name="library/x", unknown_code="MANIFEST_UNKNOWN")
        except RegistryError as e:
            return e
        raise AssertionError(f"{method!r} {path} did not fail")


class ConnectionReuseTests(unittest.TestCase):
    timeout = 30
    N = 20

    async def sequential(self, env: Env, method: bytes, template: str, code: str):
        for i in range(self.N):
            err = await env.fetch(method, template.format(i=i))
            self.assertEqual(err.code, code)

    @coro
    async def test_basic_auth_manifest_404s_reuse_a_connection(self):
        env = Env(self, "basic")
        await self.sequential(env, b"GET", "/v2/library/seq{i}/manifests/latest", "MANIFEST_UNKNOWN")
        # two answers each (401, then 404 with credentials): without reuse, 2 * N
        self.assertLessEqual(env.site.connections, 2)

    @coro
    async def test_bearer_token_then_404_reuses_a_connection(self):
        env = Env(self, "bearer")
        await self.sequential(env, b"GET", "/v2/library/seq{i}/tags/list", "MANIFEST_UNKNOWN")
        self.assertLessEqual(env.site.connections, 2)

    @coro
    async def test_head_404s_reuse_a_connection(self):
        env = Env(self, "basic")
        await self.sequential(env, b"HEAD", "/v2/library/seq{i}/manifests/latest", "MANIFEST_UNKNOWN")
        self.assertLessEqual(env.site.connections, 2)

    @coro
    async def test_5xx_with_small_bodies_reuse_a_connection(self):
        env = Env(self, "basic")
        await self.sequential(env, b"GET", "/v2/broken/seq{i}/manifests/latest", "UPSTREAM_ERROR")
        self.assertLessEqual(env.site.connections, 2)

    @coro
    async def test_no_factory_start_stop_lines_are_logged(self):
        lines: list[str] = []

        def observer(event):
            lines.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        env = Env(self, "basic")
        await self.sequential(env, b"GET", "/v2/library/seq{i}/manifests/latest", "MANIFEST_UNKNOWN")
        await env.pool.close()
        noisy = [line for line in lines if "factory" in line.lower()]
        self.assertEqual(noisy, [])
        self.assertGreater(env.site.connections, 0)


class DrainLimitTests(unittest.TestCase):
    """Bodies not worth reading are cut off, as before."""

    timeout = 30

    async def response(self, env: Env, path: str):
        auth = env.pool.upstreams[0].basic_auth()
        return await env.pool.client.send(env.pool.upstreams[0], b"GET", env.base + path, {}, auth)

    @coro
    async def test_huge_error_body_is_aborted_not_read(self):
        env = Env(self, "basic")
        resp = await self.response(env, "/v2/huge/x/manifests/latest")
        self.assertEqual(resp.code, 404)
        self.assertGreater(resp.length, DRAIN_LIMIT)
        reused = await discard(resp, env.pool.clock)
        self.assertFalse(reused)
        (request, finished), = env.resource.open_requests
        failure, = await finished.addErrback(lambda f: [f])  # the upstream saw its connection cut
        self.assertIsInstance(failure, Failure)
        # the next request needs a new connection: the cut one did not go back to the pool
        await env.fetch(b"GET", "/v2/library/next/manifests/latest")
        self.assertEqual(env.site.connections, 2)

    @coro
    async def test_stalled_error_body_is_aborted_after_the_timeout(self):
        clock = Clock()
        env = Env(self, "basic")
        resp = await self.response(env, "/v2/stall/x/manifests/latest")
        self.assertEqual(resp.length, 100)
        drained = discard(resp, clock, timeout=5.0)
        (request, finished), = env.resource.open_requests
        # the 10 bytes that came do not end it; nothing is cut before the deadline
        for _ in range(3):
            await deferLater(0)
        self.assertFalse(drained.called)
        self.assertFalse(finished.called)
        clock.advance(5.0)
        self.assertFalse(await drained)
        failure, = await finished.addErrback(lambda f: [f])
        self.assertIsInstance(failure, Failure)

    @coro
    async def test_small_body_done_reports_reuse(self):
        env = Env(self, "basic")
        resp = await self.response(env, "/v2/library/x/manifests/latest")
        self.assertEqual(resp.code, 404)
        self.assertTrue(await discard(resp, env.pool.clock))

    def test_without_a_clock_the_body_is_aborted(self):
        stopped = []

        class Transport:
            def stopProducing(self):
                stopped.append(True)

        class Response:
            length = 10

            def deliverBody(self, protocol):
                protocol.makeConnection(Transport())

        d = discard(Response())
        self.assertEqual(stopped, [True])
        self.assertFalse(self.successResultOf(d))


def deferLater(delay: float) -> Deferred:
    from twisted.internet.task import deferLater as later

    return later(reactor, delay, lambda: None)


class FailureTextTests(unittest.TestCase):
    def test_response_failed_is_readable(self):
        from twisted.web._newclient import _DataLoss

        f = Failure(ResponseFailed([Failure(ConnectionLost("gone")), Failure(_DataLoss())]))
        text = failure_text(f)
        self.assertNotIn("twisted.python.failure.Failure", text)
        self.assertNotIn("<", text)
        self.assertIn("ConnectionLost", text)
        self.assertIn("gone", text)
        self.assertIn("_DataLoss", text)

    def test_plain_failure(self):
        self.assertEqual(failure_text(Failure(ValueError("gone"))), "ValueError: gone")
        self.assertEqual(failure_text(KeyError()), "KeyError")


class BrokenBlobReasonTests(unittest.TestCase):
    """A blob body that broke is reported with a readable reason, not a list of Failures."""

    def test_relay_outcome_names_the_wrapped_errors(self):
        from twisted.internet.testing import StringTransport
        from twisted.web._newclient import _DataLoss
        from twisted.web.http import HTTPChannel, Request

        from zmirror.upstream.relay import BlobRelay

        channel = HTTPChannel()
        channel.makeConnection(StringTransport())
        request = Request(channel, False)
        request.method = b"GET"
        request.clientproto = b"HTTP/1.1"
        relay = BlobRelay(request, Clock(), expected_length=100, idle_timeout=10)
        relay.makeConnection(StringTransport())
        relay.dataReceived(b"x" * 40)
        relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost("reset by peer")),
                                                     Failure(_DataLoss())])))
        request.connectionLost(Failure(ConnectionLost()))  # the outcome comes once the client is gone
        reason = relay.outcome.reason
        self.assertFalse(relay.outcome.complete)
        self.assertIn("after 40 bytes", reason)
        self.assertIn("ConnectionLost", reason)
        self.assertIn("reset by peer", reason)
        self.assertNotIn("twisted.python.failure.Failure", reason)


class CancellationTests(unittest.TestCase):
    def _client_leaves_three_times(self, path, factory):
        w = World()
        w.agent.on("GET", "http://a.fake" + path, factory)
        for _ in range(3):
            d = w.pull(path)
            self.assertNoResult(d)
            d.cancel()
            self.failureResultOf(d, CancelledError)
        h = w.health()
        self.assertEqual(h["consecutive_failures"], 0)
        self.assertNotIn(h["state"], ("down", "cooldown"))
        self.assertEqual([u.name for u in w.pool.candidates()], ["a.fake"])
        # and the half-read body's connection was closed, not left reading
        self.assertEqual(len(w.agent.responses), 3)
        self.assertTrue(all(r.transport.stopped for r in w.agent.responses))

    def test_manifest_body_read(self):
        self._client_leaves_three_times(TAG_PATH, lambda: manifest_response(MANIFEST[:10], stall=True))

    def test_tags_body_read(self):
        self._client_leaves_three_times(
            TAGS_PATH, lambda: FakeResponse(200, {b"Content-Type": b"application/json"}, b'{"na', stall=True))


class BodyTimeoutTests(unittest.TestCase):
    def test_token_body_read_times_out_and_closes(self):
        w = World()
        w.agent.on("GET", "http://a.fake" + TAG_PATH, token_challenge())
        w.agent.on("GET", "http://auth.fake/token?service=s&scope=repository%3Alibrary%2Fx%3Apull",
                   lambda: FakeResponse(200, {}, b'{"tok', stall=True))
        d = w.pull(TAG_PATH)
        self.assertNoResult(d)
        w.clock.advance(w.pool.client.body_timeout + 1)
        self.assertUpstreamError(d)
        token_resp = [r for r in w.agent.responses if r.code == 200][0]
        self.assertTrue(token_resp.transport.stopped)
        self.assertEqual(w.pool.client.tokens.fetching, 0)  # and the next pull can fetch again

    def assertUpstreamError(self, d):
        err = self.failureResultOf(d, RegistryError).value
        self.assertEqual((err.status, err.code), (502, "UPSTREAM_ERROR"))

    def _stalls(self, path, factory):
        w = World(idle_timeout=30)
        w.agent.on("GET", "http://a.fake" + path, factory)
        d = w.pull(path)
        self.assertNoResult(d)
        w.clock.advance(31)
        self.assertUpstreamError(d)
        self.assertTrue(w.agent.responses[0].transport.stopped, "the stalled connection was left open")
        self.assertIn("within", w.health()["last_error"])
        self.assertEqual(w.clock.getDelayedCalls(), [])

    def test_manifest_body_read_times_out_and_closes(self):
        self._stalls(TAG_PATH, lambda: manifest_response(MANIFEST[:5], stall=True))

    def test_tags_body_read_times_out_and_closes(self):
        self._stalls(TAGS_PATH, lambda: FakeResponse(200, {}, b'{"t', stall=True))


class RealConnectionTests(unittest.TestCase):
    """Over real TCP with twisted.web's Agent: a body read that times out closes
    the upstream connection (seen from the server's side)."""

    @coro
    async def test_stalled_manifest_body_closes_the_connection(self):
        from twisted.internet.task import deferLater
        from twisted.web.client import Agent
        from twisted.web.resource import Resource
        from twisted.web.server import NOT_DONE_YET, Site

        lost = Deferred()

        class Stall(Resource):
            isLeaf = True

            def render_GET(self, request):
                request.setHeader(b"Content-Type", DOCKER_V2.encode())
                request.setHeader(b"Content-Length", str(len(MANIFEST)).encode())
                request.write(MANIFEST[:10])
                request.notifyFinish().addBoth(lambda r: lost.called or lost.callback([r]))
                return NOT_DONE_YET

        port = reactor.listenTCP(0, Site(Stall()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        host = f"127.0.0.1:{port.getHost().port}"
        clock = Clock()
        pool = UpstreamPool(OneAgent(Agent(reactor)), clock, health=UpstreamHealth(clock), header_timeout=10)
        pool.set_registries([{"id": 1, "name": "a", "url": f"http://{host}", "priority": 1, "enabled": 1}])
        proxy = build_proxy(pool, clock, idle_timeout=30)
        d = Deferred.fromCoroutine(proxy.pull(PullRequest(path=parse_path(TAG_PATH), method=b"GET")))
        while not any(c.getTime() == 30 for c in clock.getDelayedCalls()):  # the body read began
            await deferLater(reactor, 0.01, lambda: None)
        clock.advance(31)
        with self.assertRaises(RegistryError):
            await d
        [reason] = await lost
        self.assertIsInstance(reason, Failure)  # the request never finished: its connection was closed
