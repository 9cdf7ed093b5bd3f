"""/api authentication: Basic with the config admin, 401/403/429, and the session routes."""

from __future__ import annotations

import base64
import platform

from twisted.trial import unittest

import twisted
from tests.fixtures.helpers import coro
from tests.fixtures.admin import ADMIN, NO_LOCKOUT, AdminTestMixin, basic, make_config
from zmirror import __version__
from zmirror.auth.passwords import hash_admin_password
from zmirror.config import DEFAULT_ADMIN_PASSWORD

REALM = [b'Basic realm="zmirror-admin"']

# every route of docs/api.md (method, path, body)
ROUTES = [
    ("GET", "/api/me", None),
    ("GET", "/api/version", None),
    ("GET", "/api/registries", None),
    ("POST", "/api/registries", {"name": "x", "url": "https://x.example"}),
    ("PUT", "/api/registries", {"id": 1, "name": "x"}),
    ("GET", "/api/registries/1", None),
    ("PUT", "/api/registries/1", {"name": "x"}),
    ("DELETE", "/api/registries/1", None),
    ("POST", "/api/registries/1/test", None),
    ("POST", "/api/registries/test", {"url": "https://x.example"}),
    ("GET", "/api/whitelists", None),
    ("POST", "/api/whitelists", {"prefix": "library/"}),
    ("GET", "/api/whitelists/match?repository=nginx", None),
    ("PUT", "/api/whitelists/1", {"note": "x"}),
    ("DELETE", "/api/whitelists/1", None),
    ("GET", "/api/users", None),
    ("POST", "/api/users", {"username": "bob", "password": "pw123456"}),
    ("PUT", "/api/users/1", {"enabled": False}),
    ("DELETE", "/api/users/1", None),
    ("GET", "/api/logs", None),
    ("DELETE", "/api/logs", None),
    ("GET", "/api/stats", None),
    ("GET", "/api/nodes", None),
]


class AuthTests(AdminTestMixin, unittest.TestCase):
    async def assertUnauthorized(self, **kw):
        before = self.db.snapshot()
        for method, path, body in ROUTES:
            result = await self.call(method, path, body, **kw)
            obj = self.assertError(result, 401)
            self.assertEqual(result[1].getRawHeaders(b"www-authenticate"), REALM, path)
            self.assertNotIn("items", obj)
        self.assertEqual(self.db.snapshot(), before)
        self.assertEqual(self.upstreams.probes, [])

    @coro
    async def test_every_route_needs_credentials(self):
        await self.assertUnauthorized(auth=None)

    @coro
    async def test_every_route_refuses_bad_password(self):
        # one wrong password per route would lock after 5 tries: a lockout they never reach
        self.config = make_config(self.mktemp(), lockout=NO_LOCKOUT)
        self.client = self.stub(self.make_api())
        await self.assertUnauthorized(auth=basic("admin", "wrong"))

    @coro
    async def test_malformed_headers(self):
        for value in ("Bearer abc", "Basic", "Basic !!!notbase64", "Basic " +
                      base64.b64encode(b"no-colon").decode(), "Basic " +
                      base64.b64encode(b"\xff\xfe:x").decode(), "Digest username=admin",
                      "basic " + base64.b64encode(b"admin:wrong").decode()):
            result = await self.call("GET", "/api/me", auth={"Authorization": value})
            self.assertError(result, 401)
            self.assertEqual(result[1].getRawHeaders(b"www-authenticate"), REALM, value)

    @coro
    async def test_wrong_username_right_password(self):
        self.assertError(await self.call("GET", "/api/me", auth=basic("root", ADMIN[1])), 401)
        self.assertError(await self.call("GET", "/api/me", auth=basic("Admin", ADMIN[1])), 401)

    @coro
    async def test_admin_ok(self):
        code, headers, obj = await self.call("GET", "/api/me")
        self.assertEqual(code, 200)
        self.assertEqual(obj, {"username": "admin", "default_password": False})
        self.assertIsNone(headers.getRawHeaders(b"www-authenticate"))
        self.assertIsNone(headers.getRawHeaders(b"access-control-allow-origin"))
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        # the scheme name is case-insensitive
        token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        code, _h, _o = await self.call("GET", "/api/me", auth={"Authorization": "basic " + token})
        self.assertEqual(code, 200)

    @coro
    async def test_default_password_flag(self):
        self.config = make_config(self.mktemp(), password=DEFAULT_ADMIN_PASSWORD)
        self.client = self.stub(self.make_api())
        _c, _h, obj = await self.call("GET", "/api/me", auth=basic("admin", DEFAULT_ADMIN_PASSWORD))
        self.assertEqual(obj, {"username": "admin", "default_password": True})

    @coro
    async def test_hashed_admin_password(self):
        self.config = make_config(self.mktemp(), password=hash_admin_password("hashed-pw"))
        self.client = self.stub(self.make_api())
        code, _h, obj = await self.call("GET", "/api/me", auth=basic("admin", "hashed-pw"))
        self.assertEqual(code, 200, obj)
        self.assertIs(obj["default_password"], False)
        # again (served from the verified-credentials cache) and a wrong one
        code, _h, _o = await self.call("GET", "/api/me", auth=basic("admin", "hashed-pw"))
        self.assertEqual(code, 200)
        self.assertError(await self.call("GET", "/api/me", auth=basic("admin", "hashed-pW")), 401)
        # the hash itself is not a password
        self.assertError(await self.call("GET", "/api/me",
                                         auth=basic("admin", self.config.admin.password)), 401)

    @coro
    async def test_version(self):
        code, _h, obj = await self.call("GET", "/api/version")
        self.assertEqual(code, 200)
        self.assertEqual(obj, {"version": __version__, "python": platform.python_version(),
                               "twisted": twisted.__version__})

    @coro
    async def test_registry_user_gets_403(self):
        await self.api.accounts.create("bob", "bob-password")
        await self.api.accounts.create("off", "off-password", enabled=False)
        before = self.db.snapshot()
        for method, path, body in ROUTES:
            self.assertError(await self.call(method, path, body, auth=basic("bob", "bob-password")),
                             403)
        self.assertEqual(self.db.snapshot(), before)
        # wrong password or disabled: just a failed login
        result = await self.call("GET", "/api/me", auth=basic("bob", "nope"))
        self.assertError(result, 401)
        self.assertEqual(result[1].getRawHeaders(b"www-authenticate"), REALM)
        self.assertError(await self.call("GET", "/api/me", auth=basic("off", "off-password")), 401)

    @coro
    async def test_lockout_after_failed_logins(self):
        for _ in range(5):
            self.assertError(await self.call("GET", "/api/me", auth=basic("admin", "guess")), 401)
        # locked: even the right password is not looked at
        code, headers, obj = await self.call("GET", "/api/me")
        self.assertEqual(code, 429, obj)
        self.assertEqual(obj["retry_after"], 300)
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"300"])
        self.assertIsInstance(obj["error"], str)
        self.assertEqual(obj["fields"], {})
        self.clock.advance(120)
        code, headers, obj = await self.call("GET", "/api/registries")
        self.assertEqual((code, obj["retry_after"]), (429, 180))
        self.clock.advance(181)
        code, _h, _o = await self.call("GET", "/api/me")
        self.assertEqual(code, 200)

    @coro
    async def test_success_resets_account_failures(self):
        for _ in range(4):
            await self.call("GET", "/api/me", auth=basic("admin", "guess"))
        self.assertEqual((await self.call("GET", "/api/me"))[0], 200)
        for _ in range(4):
            await self.call("GET", "/api/me", auth=basic("admin", "guess"))
        self.assertEqual((await self.call("GET", "/api/me"))[0], 200)

    @coro
    async def test_unknown_route_and_method_are_json(self):
        for method, path, status in (("GET", "/api/nothing", 404), ("GET", "/api", 404),
                                     ("GET", "/api/registries/1/nope", 404),
                                     ("PATCH", "/api/registries", 405),
                                     ("POST", "/api/stats", 405)):
            self.assertError(await self.call(method, path), status)
