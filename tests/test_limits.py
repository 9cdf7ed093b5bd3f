"""Request body limits, enforced by the HTTP channel before a body is read.

The pull API (/v2) takes no bodies, /token at most 8 KiB, /api at most 64 KiB.
These tests talk raw HTTP over real TCP to the Site built by zmirror.wiring.build
and look at what the server's channel read and whether it made a temp file.
"""

from __future__ import annotations

import json
import tempfile as real_tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory
from twisted.trial import unittest
from twisted.web import http

from tests.fixtures.helpers import admin_password_line, coro, start_services, write_default_config
from tests.fixtures.admin import basic
from tests.fixtures.rawhttp import HUGE, RawClient, parse
from zmirror import httpchannel
from zmirror.admin import validate
from zmirror.auth import tokenservice
from zmirror.config import load_config
from zmirror.httpchannel import LINGER_BYTES
from zmirror.wiring import API_MAX_BODY, TOKEN_MAX_BODY, body_limits, build

# the HTTP channel's body limits, as wired
body_cap = body_limits().body_cap
refusal_for = body_limits().refusal_for

MIB = 1024 * 1024
PIECE = 64 * 1024


def identity_body(_n: int) -> bytes:
    return b"\0" * PIECE


def chunked_body(_n: int) -> bytes:
    return b"%x\r\n" % PIECE + b"\0" * PIECE + b"\r\n"


class CountingTempfile:
    """Stands in for the ``tempfile`` module seen by twisted.web.http."""

    def __init__(self):
        self.created = 0

    def TemporaryFile(self, *a, **kw):
        self.created += 1
        return real_tempfile.TemporaryFile(*a, **kw)


class Constants(unittest.TestCase):
    def test_one_token_cap(self):
        self.assertEqual(TOKEN_MAX_BODY, 8 * 1024)
        self.assertIs(TOKEN_MAX_BODY, tokenservice.MAX_BODY)
        self.assertEqual(API_MAX_BODY, 64 * 1024)
        self.assertIs(API_MAX_BODY, validate.MAX_BODY)
        self.assertLess(httpchannel.LINGER_BYTES + 2 * PIECE, MIB)

    def test_areas_are_decided_on_the_decoded_path(self):
        self.assertEqual(body_cap(b"/v2/x/blobs/uploads/abc"), ("v2", 0))
        self.assertEqual(body_cap(b"/v2"), ("v2", 0))
        self.assertEqual(body_cap(b"/%762/x"), ("v2", 0))
        self.assertEqual(body_cap(b"/token?service=x"), ("token", TOKEN_MAX_BODY))
        self.assertEqual(body_cap(b"/%74oken"), ("token", TOKEN_MAX_BODY))
        self.assertEqual(body_cap(b"/api/users"), ("api", API_MAX_BODY))
        self.assertEqual(body_cap(b"/api%2Fusers"), ("api", API_MAX_BODY))
        self.assertEqual(body_cap(b"/api"), ("api", API_MAX_BODY))
        # anything else takes no body, odd spellings included
        for path in (b"/", b"/apix", b"/token/", b"//token", b"/healthz", b"*", b"http://h/api/x"):
            self.assertEqual(body_cap(path), ("other", 0), path)

    def test_refusals(self):
        self.assertIsNone(refusal_for(b"GET", b"/v2/", 0))
        self.assertIsNone(refusal_for(b"POST", b"/token", TOKEN_MAX_BODY))
        self.assertIsNone(refusal_for(b"POST", b"/token", None))  # chunked: counted as it comes
        self.assertIsNone(refusal_for(b"PATCH", b"/api/users/1", API_MAX_BODY))
        status, body, headers = refusal_for(b"PUT", b"/v2/x/blobs/uploads/abc", HUGE)
        self.assertEqual((status, json.loads(body)["errors"][0]["code"]), (405, "UNSUPPORTED"))
        self.assertIn((b"Docker-Distribution-API-Version", b"registry/2.0"), headers)
        status, body, _ = refusal_for(b"GET", b"/v2/", None)
        self.assertEqual((status, json.loads(body)["errors"][0]["code"]), (413, "SIZE_INVALID"))
        status, body, _ = refusal_for(b"POST", b"/token", TOKEN_MAX_BODY + 1)
        self.assertEqual((status, json.loads(body)["error"]), (413, "invalid_request"))
        status, body, _ = refusal_for(b"POST", b"/api/users", API_MAX_BODY + 1)
        self.assertEqual(status, 413)
        self.assertIn("65536", json.loads(body)["error"])
        status, body, _ = refusal_for(b"POST", b"/", 5)
        self.assertEqual((status, set(json.loads(body))), (405, {"error"}))
        status, _, _ = refusal_for(b"GET", b"/assets/x.js", 5)
        self.assertEqual(status, 413)


ADMIN_PASSWORD = "Limits-admin-pw-1"


class OverTCP(unittest.TestCase):
    """Against the Site of the wired application, listening on 127.0.0.1."""

    def setUp(self):
        data = Path(self.mktemp()).resolve()
        write_default_config(data, admin_password_line(ADMIN_PASSWORD))
        self.config = load_config(data)
        self.components = build(self.config, reactor)
        self.top = start_services(self.components)
        site = self.components.site
        self.channels = []
        original = site.buildProtocol

        def build_protocol(addr):
            channel = original(addr)
            self.channels.append(channel)
            return channel

        site.buildProtocol = build_protocol
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.tempfiles = CountingTempfile()
        self.patch(http, "tempfile", self.tempfiles)

    def tearDown(self):
        async def stop():
            await self.port.stopListening()
            await self.top.stopService()

        return Deferred.fromCoroutine(stop())

    async def send(self, head: bytes, body=None, limit: int = HUGE,
                   deaf: bool = False) -> tuple[int, dict, bytes, RawClient]:
        client = RawClient(head, body, limit, deaf)
        factory = ClientFactory.forProtocol(lambda: client)
        reactor.connectTCP("127.0.0.1", self.port.getHost().port, factory)
        client.done.addTimeout(30, reactor)
        raw = await client.done
        status, headers, data = parse(raw)
        return status, headers, data, client

    def read_by_server(self) -> int:
        self.assertEqual(len(self.channels), 1)
        return self.channels[0].bytes_received

    def assertStoredNothing(self):
        self.assertEqual(self.tempfiles.created, 0, "a request body went to a temp file")

    @coro
    async def test_huge_put_with_content_length_refused_before_reading(self):
        status, headers, body, client = await self.send(
            b"PUT /v2/x/blobs/uploads/abc HTTP/1.1\r\nHost: t\r\n"
            b"Content-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n" % HUGE,
            identity_body)
        self.assertEqual(status, 405)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "UNSUPPORTED")
        self.assertEqual(headers[b"docker-distribution-api-version"], b"registry/2.0")
        self.assertEqual(headers[b"connection"], b"close")
        self.assertEqual(headers[b"allow"], b"GET, HEAD")
        self.assertLess(self.read_by_server(), MIB)
        self.assertStoredNothing()

    @coro
    async def test_client_that_keeps_sending_is_cut_off(self):
        client = RawClient(
            b"PUT /v2/x/blobs/uploads/abc HTTP/1.1\r\nHost: t\r\n"
            b"Content-Length: %d\r\n\r\n" % HUGE, identity_body, deaf=True)
        reactor.connectTCP("127.0.0.1", self.port.getHost().port, ClientFactory.forProtocol(lambda: client))
        client.done.addTimeout(30, reactor)
        await client.done
        self.assertLess(client.sent, HUGE)
        self.assertLess(self.read_by_server(), MIB)
        self.assertStoredNothing()

    @coro
    async def test_huge_chunked_put_refused_before_reading(self):
        status, _, body, _ = await self.send(
            b"PUT /v2/x/blobs/uploads/abc HTTP/1.1\r\nHost: t\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n", chunked_body)
        self.assertEqual(status, 405)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "UNSUPPORTED")
        self.assertLess(self.read_by_server(), MIB)
        self.assertStoredNothing()

    @coro
    async def test_body_on_a_pull_is_413(self):
        status, _, body, _ = await self.send(
            b"GET /v2/library/nginx/manifests/latest HTTP/1.1\r\nHost: t\r\n"
            b"Content-Length: %d\r\n\r\n" % HUGE, identity_body)
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "SIZE_INVALID")
        self.assertLess(self.read_by_server(), MIB)
        self.assertStoredNothing()

    @coro
    async def test_expect_continue_gets_the_refusal_not_100(self):
        status, _, body, client = await self.send(
            b"PUT /v2/x/blobs/uploads/abc HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % HUGE)
        self.assertNotIn(b"100 Continue", client.received)
        self.assertEqual(status, 405)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "UNSUPPORTED")

    @coro
    async def test_token_over_cap_announced(self):
        status, _, body, client = await self.send(
            b"POST /token HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % (TOKEN_MAX_BODY + 1))
        self.assertNotIn(b"100 Continue", client.received)
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(body)["error"], "invalid_request")

    @coro
    async def test_token_at_cap_reaches_the_service(self):
        form = b"grant_type=password&username=admin&password=" + b"x" * (TOKEN_MAX_BODY - 44)
        self.assertEqual(len(form), TOKEN_MAX_BODY)
        status, _, body, _ = await self.send(
            b"POST /token HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(form) + form)
        # the service itself judged it: a bad password (or a 400 from its field checks), not 413
        self.assertIn(status, (400, 401))
        self.assertIn("error", json.loads(body))

    @coro
    async def test_huge_chunked_token_body_stopped_at_the_cap(self):
        status, headers, body, _ = await self.send(
            b"POST /token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n", chunked_body)
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(body)["error"], "invalid_request")
        self.assertEqual(headers[b"connection"], b"close")
        self.assertLess(self.read_by_server(), TOKEN_MAX_BODY + PIECE + LINGER_BYTES + 2 * PIECE)
        self.assertStoredNothing()

    @coro
    async def test_huge_chunked_api_body_stopped_at_the_cap(self):
        auth = basic("admin", ADMIN_PASSWORD)["Authorization"].encode()
        status, _, body, _ = await self.send(
            b"POST /api/registries HTTP/1.1\r\nHost: t\r\nAuthorization: " + auth + b"\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", chunked_body)
        self.assertEqual(status, 413)
        self.assertIn(str(API_MAX_BODY), json.loads(body)["error"])
        self.assertLess(self.read_by_server(), MIB)
        self.assertStoredNothing()

    @coro
    async def test_small_chunked_api_body_is_accepted(self):
        auth = basic("admin", ADMIN_PASSWORD)["Authorization"].encode()
        doc = json.dumps({"name": "Local", "url": "http://127.0.0.1:9/", "priority": 0}).encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(doc[i:i + 10]), doc[i:i + 10])
                          for i in range(0, len(doc), 10)) + b"0\r\n\r\n"
        status, _, body, _ = await self.send(
            b"POST /api/registries HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: " + auth +
            b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        self.assertEqual(status, 201, body)
        self.assertEqual(json.loads(body)["name"], "Local")
        self.assertStoredNothing()  # a bounded chunked body is kept in memory

    @coro
    async def test_keep_alive_pulls_still_work(self):
        # two pipelined bodiless requests on one connection: both answered, nothing refused
        status, _, _, client = await self.send(
            b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        self.assertIn(status, (200, 401))
        self.assertEqual(client.received.count(b"HTTP/1.1 "), 2)

    @coro
    async def test_chunked_body_then_another_request_on_the_same_connection(self):
        form = b"grant_type=password&username=nobody&password=x"
        chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(form), form)
        status, _, _, client = await self.send(
            b"POST /token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks +
            b"GET /v2/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        self.assertEqual(status, 401)  # the token service judged the form: unknown user
        # the second request was parsed from a clean state and answered too, nothing refused
        self.assertEqual(client.received.count(b"HTTP/1.1 "), 2)
        self.assertNotIn(b" 413 ", client.received)
        self.assertStoredNothing()
