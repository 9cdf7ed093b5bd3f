"""HTTP framing at the channel and router: the request read deadline (slowloris), the
connection cap, header size limits (431/414), reason phrases, doubled slashes (no
redirect built from the Host header) and absolute-form request targets.

The deadline's semantics are tested with an injected clock (MemoryReactorClock as the
site's reactor, StringTransport); the rest over real TCP against the wired Site."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.fixtures.helpers import admin_password_line, coro, start_services, write_default_config
from tests.fixtures.admin import basic
from tests.fixtures.rawhttp import RawClient, parse
from zmirror.config import load_config
from zmirror.httpchannel import (LimitedRequest, LimitedSite, PlainHTTPChannel, origin_form,
                                 reason_phrase)
from zmirror.wiring import body_limits, build

ADMIN_PASSWORD = "Framing-admin-pw-1"
PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def status_line(raw: bytes) -> bytes:
    return raw.split(b"\r\n", 1)[0]


class Pending(Resource):
    """``/slow`` is never answered (a request being served); anything else is ``ok``."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.pending = []

    def render(self, request):
        if request.path == b"/slow":
            self.pending.append(request)
            return NOT_DONE_YET
        request.setHeader(b"Content-Length", b"2")
        return b"ok"


class ReadDeadline(unittest.TestCase):
    """The deadline runs on the site's reactor (here a clock) from a request's first byte."""

    def connect(self, read_timeout=20.0):
        self.clock = MemoryReactorClock()
        self.resource = Pending()
        site = LimitedSite(self.resource, reactor=self.clock, read_timeout=read_timeout,
                           limits=body_limits())
        channel = site.buildProtocol(PEER)
        self.assertIsInstance(channel, PlainHTTPChannel)
        transport = StringTransport()
        channel.makeConnection(transport)
        return site, channel, transport

    def test_trickled_head_gets_408_at_the_deadline(self):
        _, channel, transport = self.connect()
        channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        for _ in range(4):  # a header line every 4.5 s keeps Twisted's idle timeout at bay
            self.clock.advance(4.5)
            channel.dataReceived(b"X-A: b\r\n")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(2.1)  # 20.1 s since the first byte
        raw = transport.value()
        self.assertEqual(status_line(raw), b"HTTP/1.1 408 Request Time-out")
        status, headers, body = parse(raw)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "BAD_REQUEST")  # /v2 format
        self.assertEqual(headers[b"connection"], b"close")
        self.assertEqual(int(headers[b"content-length"]), len(body))
        self.assertTrue(transport.disconnecting)
        # nothing more is parsed or answered
        channel.dataReceived(b"\r\n")
        self.assertEqual(transport.value(), raw)

    def test_head_before_the_line_is_known_gets_plain_json(self):
        _, channel, transport = self.connect(read_timeout=5)
        channel.dataReceived(b"GE")
        self.clock.advance(5)
        status, _, body = parse(transport.value())
        self.assertEqual((status, set(json.loads(body))), (408, {"error"}))

    def test_every_request_of_a_keep_alive_connection_has_its_own_deadline(self):
        _, channel, transport = self.connect()
        channel.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 1)
        self.clock.advance(15)  # idle between requests: not the read deadline
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"GET /ok HTTP/1.1\r\n")
        self.clock.advance(19.9)
        self.assertNotIn(b" 408 ", transport.value())
        self.clock.advance(0.2)
        self.assertIn(b"HTTP/1.1 408 ", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_pipelined_partial_request_gets_a_deadline(self):
        _, channel, transport = self.connect()
        channel.dataReceived(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\n")
        self.clock.advance(20.1)
        self.assertIn(b"HTTP/1.1 408 ", transport.value())

    def test_trickled_body_gets_408(self):
        _, channel, transport = self.connect()
        channel.dataReceived(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        self.clock.advance(20.1)
        status, _, body = parse(transport.value())
        self.assertEqual(status, 408)
        self.assertEqual(json.loads(body)["error"], "invalid_request")  # /token format

    def test_no_deadline_while_a_request_is_served(self):
        _, channel, transport = self.connect()
        channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /o")  # next one pipelined
        self.assertEqual(len(self.resource.pending), 1)
        self.clock.advance(50)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        # answered: the buffered request now has its deadline
        request = self.resource.pending[0]
        request.setHeader(b"Content-Length", b"0")
        request.finish()
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.clock.advance(20.1)
        self.assertIn(b"HTTP/1.1 408 ", transport.value())

    def test_zero_turns_it_off(self):
        _, channel, transport = self.connect(read_timeout=0)
        channel.dataReceived(b"GET /ok HTTP/1.1\r\n")
        self.clock.advance(59)
        self.assertEqual(transport.value(), b"")

    def test_a_closed_connection_leaves_no_call(self):
        _, channel, transport = self.connect()
        channel.dataReceived(b"GET /ok HTTP/1.1\r\n")
        channel.connectionLost(None)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])


class Reasons(unittest.TestCase):
    def test_missing_reason_phrases(self):
        self.assertEqual(reason_phrase(429), b"Too Many Requests")
        self.assertEqual(reason_phrase(431), b"Request Header Fields Too Large")
        self.assertEqual(reason_phrase(308), b"Permanent Redirect")
        self.assertEqual(reason_phrase(404), b"Not Found")

    def test_request_uses_them(self):
        from twisted.web.test.requesthelper import DummyChannel

        request = LimitedRequest(DummyChannel())
        request.setResponseCode(429)
        self.assertEqual(request.code_message, b"Too Many Requests")
        request.setResponseCode(429, b"Slow Down")
        self.assertEqual(request.code_message, b"Slow Down")


class OriginForm(unittest.TestCase):
    def test_absolute_targets(self):
        self.assertEqual(origin_form(b"http://x/v2/"), (b"/v2/", b"x"))
        self.assertEqual(origin_form(b"HTTPS://x:5000/v2/a?b=1"), (b"/v2/a?b=1", b"x:5000"))
        self.assertEqual(origin_form(b"http://x"), (b"/", b"x"))
        self.assertEqual(origin_form(b"http://x?q"), (b"/?q", b"x"))
        for target in (b"/v2/", b"*", b"ftp://x/v2/", b"http:///v2/", b"http://u@x/v2/"):
            self.assertEqual(origin_form(target), (target, None), target)


class OverTCP(unittest.TestCase):
    """Against the Site of the wired application, listening on 127.0.0.1."""

    replacements: dict = {}

    def setUp(self):
        data = Path(self.mktemp()).resolve()
        write_default_config(data, {**admin_password_line(ADMIN_PASSWORD), **self.replacements})
        self.config = load_config(data)
        self.components = build(self.config, reactor)
        self.top = start_services(self.components)
        self.site = self.components.site
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")

    def tearDown(self):
        async def stop():
            await self.port.stopListening()
            await self.top.stopService()

        return Deferred.fromCoroutine(stop())

    def open(self, head: bytes) -> RawClient:
        client = RawClient(head)
        reactor.connectTCP("127.0.0.1", self.port.getHost().port,
                           ClientFactory.forProtocol(lambda: client))
        client.done.addTimeout(30, reactor)
        return client

    async def until(self, check) -> None:
        """Wait (at most the test's timeout) for the server side to catch up."""
        while not check():
            d = Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d

    async def send(self, head: bytes) -> tuple[int, dict, bytes, bytes]:
        raw = await self.open(head).done
        status, headers, body = parse(raw)
        return status, headers, body, raw


class Framing(OverTCP):
    @coro
    async def test_long_header_line_gets_431(self):
        status, headers, body, raw = await self.send(
            b"GET /v2/ HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (17 * 1024) + b"\r\n\r\n")
        self.assertEqual(status_line(raw), b"HTTP/1.1 431 Request Header Fields Too Large")
        self.assertEqual(json.loads(body)["errors"][0]["code"], "BAD_REQUEST")
        self.assertEqual(headers[b"connection"], b"close")

    @coro
    async def test_long_line_without_end_gets_431(self):
        # the line never ends: answered as soon as it passes the limit
        status, _, body, _ = await self.send(
            b"GET /api/me HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (17 * 1024))
        self.assertEqual(status, 431)
        self.assertEqual(set(json.loads(body)), {"error", "fields"})  # /api format

    @coro
    async def test_headers_over_the_total_size_get_431(self):
        lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
        status, _, body, _ = await self.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + lines + b"\r\n")
        self.assertEqual(status, 431)
        self.assertIn("error", json.loads(body))

    @coro
    async def test_too_many_headers_get_431(self):
        lines = b"".join(b"X%d: v\r\n" % i for i in range(600))
        status, _, body, _ = await self.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + lines + b"\r\n")
        self.assertEqual(status, 431)
        self.assertIn("header fields", json.loads(body)["error"])

    @coro
    async def test_long_request_line_gets_414(self):
        status, _, body, raw = await self.send(b"GET /v2/" + b"a" * (17 * 1024) + b" HTTP/1.1\r\n\r\n")
        self.assertEqual(status_line(raw), b"HTTP/1.1 414 Request-URI Too Long")
        self.assertIn("error", json.loads(body))

    @coro
    async def test_malformed_header_gets_a_json_400(self):
        status, headers, body, _ = await self.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nno colon\r\n\r\n")
        self.assertEqual(status, 400)
        self.assertEqual(int(headers[b"content-length"]), len(body))
        self.assertIn("error", json.loads(body))

    @coro
    async def test_doubled_slashes_are_404_or_405_never_a_redirect(self):
        auth = basic("admin", ADMIN_PASSWORD)["Authorization"].encode()
        cases = [
            (b"DELETE /api//registries", (404, 405), "api"),
            (b"GET /api//", (404,), "api"),
            (b"GET /api//registries", (404,), "api"),
            (b"POST /v2//x/manifests/latest", (404, 405), "v2"),
            (b"GET /v2//", (404,), "v2"),
            (b"GET /v2//library/x/manifests/latest", (400,), "v2"),  # the registry's NAME_INVALID
            # Klein rebuilds the path from Twisted's segments: "//v2/" routes as "/v2/"
            (b"GET //v2/", (401,), "v2"),
            (b"GET //healthz", (200,), "other"),
        ]
        for line, statuses, area in cases:
            status, headers, body, _ = await self.send(
                line + b" HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n"
                b"Authorization: " + auth + b"\r\n\r\n")
            self.assertIn(status, statuses, (line, status, body))
            self.assertNotIn(b"location", headers, line)
            self.assertNotIn(b"evil.example", body, line)
            doc = json.loads(body)
            if area == "v2":
                self.assertIn(doc["errors"][0]["code"],
                              ("NOT_FOUND", "UNSUPPORTED", "NAME_INVALID", "UNAUTHORIZED"),
                              line)
                self.assertEqual(headers[b"docker-distribution-api-version"], b"registry/2.0")
            elif area == "api":
                self.assertEqual(set(doc), {"error", "fields"}, line)
            else:
                self.assertIsInstance(doc, dict, line)

    @coro
    async def test_absolute_form_is_routed_by_its_path(self):
        origin = await self.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        absolute = await self.send(b"GET http://elsewhere.example/healthz HTTP/1.1\r\nHost: t\r\n"
                                   b"Connection: close\r\n\r\n")
        self.assertEqual(absolute[0], origin[0])
        self.assertEqual(json.loads(absolute[2]), json.loads(origin[2]))
        # the target's authority stands for the Host header (RFC 9112 3.2.2): the token realm
        status, headers, _, _ = await self.send(
            b"GET http://mirror.example:5000/v2/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        self.assertEqual(status, 401)
        self.assertIn(b'realm="http://mirror.example:5000/token"', headers[b"www-authenticate"])
        # and it gets the body limits of its path
        status, _, body, _ = await self.send(
            b"PUT http://x/v2/x/blobs/uploads/abc HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual((status, json.loads(body)["errors"][0]["code"]), (405, "UNSUPPORTED"))

    @coro
    async def test_429_has_its_reason_phrase(self):
        # more parallel wrong logins than max_queued_verifications are not all checked
        heads = [b"GET /api/registries HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                 b"Authorization: " + basic("admin", "wrong-%d" % i)["Authorization"].encode() +
                 b"\r\n\r\n" for i in range(40)]
        clients = [self.open(h) for h in heads]
        raws = [await c.done for c in clients]
        lines = {status_line(r) for r in raws}
        self.assertIn(b"HTTP/1.1 429 Too Many Requests", lines)
        self.assertFalse([line for line in lines if b"Unknown Status" in line])


class ReadDeadlineOverTCP(OverTCP):
    replacements = {"read_timeout = 20": "read_timeout = 0.5"}

    @coro
    async def test_slow_head_is_answered_408_and_closed(self):
        status, headers, body, _ = await self.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        self.assertEqual(status, 408)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "BAD_REQUEST")
        self.assertEqual(headers[b"connection"], b"close")
        await self.until(lambda: self.site.open_connections == 0)  # closed on the server too


class ConnectionCap(OverTCP):
    replacements = {"max_connections = 1000": "max_connections = 2"}

    @coro
    async def test_a_connection_over_the_cap_gets_503(self):
        idle = [self.open(b""), self.open(b"")]
        await self.until(lambda: self.site.open_connections == 2)
        status, headers, body, raw = await self.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        self.assertEqual(status_line(raw), b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(headers[b"retry-after"], b"1")
        self.assertEqual(json.loads(body), {"error": "too many connections"})
        self.assertEqual(self.site.refused_connections, 1)
        self.assertEqual(self.site.open_connections, 2)
        # one goes: a new connection is served again
        idle[0].transport.loseConnection()
        await idle[0].done
        await self.until(lambda: self.site.open_connections == 1)
        status, _, _, _ = await self.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        self.assertEqual(status, 200)
        self.assertEqual(self.site.refused_connections, 1)
        idle[1].transport.loseConnection()
        await idle[1].done

    @coro
    async def test_metrics_show_connections(self):
        text = self.components.metrics.exposition().decode()
        self.assertIn("zmirror_http_connections ", text)
        self.assertIn("zmirror_http_connections_refused 0.0", text)


class RoutingRedirects(unittest.TestCase):
    """A werkzeug routing redirect (strict_slashes) never goes out with its Location."""

    def test_top_app_and_admin_answer_404(self):
        from twisted.python.failure import Failure
        from twisted.web.test.requesthelper import DummyRequest
        from werkzeug.routing import RequestRedirect

        from zmirror.admin.http import klein_error
        from zmirror.app import ZMirrorApp

        for path, handler in ((b"/v2/x", ZMirrorApp(None)._unexpected),
                              (b"/api/x", klein_error)):
            request = DummyRequest(path.split(b"/")[1:])
            request.path = path
            try:
                raise RequestRedirect("http://evil.example/x/")
            except RequestRedirect:
                failure = Failure()
            body = handler(request, failure)
            self.assertEqual(request.responseCode, 404, path)
            self.assertIsNone(request.responseHeaders.getRawHeaders(b"location"), path)
            self.assertNotIn(b"evil.example", body, path)
