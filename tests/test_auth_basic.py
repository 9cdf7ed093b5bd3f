"""The one ``Authorization: Basic`` parser (werkzeug's), used by /v2, /token and /api."""

import base64

from twisted.trial import unittest

from tests.fixtures.auth import make_env
from tests.fixtures.helpers import coro
from tests.fixtures.admin import AdminTestMixin
from zmirror.auth.credentials import parse_basic


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class ParseBasicTests(unittest.TestCase):
    def test_good(self):
        for header, expected in (
            ("Basic " + b64(b"alice:pw"), ("alice", "pw")),
            (b"Basic " + b64(b"alice:pw").encode(), ("alice", "pw")),
            ("basic " + b64(b"alice:pw"), ("alice", "pw")),
            ("BASIC  " + b64(b"alice:pw") + " ", ("alice", "pw")),
            ("Basic " + b64(b"alice:p:w:"), ("alice", "p:w:")),
            ("Basic " + b64(b"alice:"), ("alice", "")),
            ("Basic " + b64(b":"), ("", "")),
            ("Basic " + b64("用户:密:码".encode()), ("用户", "密:码")),
            (b"Basic " + b64("zoë:pässwörd".encode()).encode(), ("zoë", "pässwörd")),
        ):
            self.assertEqual(parse_basic(header), expected, header)

    def test_malformed(self):
        for header in (None, b"", "", b"Basic", b"Basic ", "Basic " + b64(b"no-colon"),
                       "Basic !!!notbase64", "Basic abc=", "Basic " + b64(b"\xff\xfe:x"),
                       "Basic " + b64(b"latin1-\xe9:x"), "Basic é".encode("utf-8"),
                       b"Basic \xff\xfe", "Bearer abc", "Digest username=admin",
                       "Basic\t" + b64(b"a:b"), "Negotiate " + b64(b"a:b")):
            self.assertIsNone(parse_basic(header), header)


class SameParserEverywhereTests(AdminTestMixin, unittest.TestCase):
    """UTF-8 and ':' in passwords, and malformed headers, on every endpoint."""

    @coro
    async def test_registry_token_and_admin(self):
        import dataclasses

        pw = "pä:ss:wörd"
        env = make_env(self)
        await env.accounts.create("alice", pw)
        good = "Basic " + b64(f"alice:{pw}".encode())
        resp, _b = await env.call("GET", "http://mirror/token?account=alice",
                                  headers={b"Authorization": [good.encode()]})
        self.assertEqual(resp.code, 200)
        resp, _b = await env.call("GET", "http://mirror/v2/",
                                  headers={b"Authorization": [good.encode()]})
        self.assertEqual(resp.code, 200)
        self.config = dataclasses.replace(self.config, admin=dataclasses.replace(
            self.config.admin, username="管理员", password=pw))
        self.client = self.stub(self.make_api())
        code, _h, obj = await self.call("GET", "/api/me", auth={
            "Authorization": "Basic " + b64(f"管理员:{pw}".encode())})
        self.assertEqual(code, 200, obj)
        for bad in ("Basic " + b64(b"alice"), "Basic " + b64(b"\xff:x"), "Basic !!"):
            resp, body = await env.json("GET", "http://mirror/token?account=alice",
                                        headers={b"Authorization": [bad.encode()]})
            self.assertEqual((resp.code, body["details"]), (401, "malformed Basic credentials"))
            resp, body = await env.json("GET", "http://mirror/v2/",
                                        headers={b"Authorization": [bad.encode()]})
            self.assertEqual(resp.code, 401)
            self.assertEqual(body["errors"][0]["message"], "malformed Basic credentials")
            code, headers, obj = await self.call("GET", "/api/me", auth={"Authorization": bad})
            self.assertEqual((code, obj["error"]), (401, "authentication required"))
        # a malformed header is not a failed login
        self.assertEqual(env.lockout.failures("user:alice"), 0)
