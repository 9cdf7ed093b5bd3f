"""/api/users and /api/whitelists: success and error paths against the real stores."""

from __future__ import annotations

from twisted.trial import unittest

from tests.fixtures.helpers import coro
from tests.fixtures.admin import T0, AdminTestMixin


class ChangeMixin:
    async def assertUnchanged(self, method, path, body=None, status=400, *fields, **kw):
        before = self.db.snapshot()
        obj = self.assertError(await self.call(method, path, body, **kw), status, *fields)
        self.assertEqual(self.db.snapshot(), before)
        return obj


class UserRouteTests(ChangeMixin, AdminTestMixin, unittest.TestCase):
    async def create(self, **body):
        body.setdefault("username", "bob")
        body.setdefault("password", "bob-password")
        code, _h, obj = await self.call("POST", "/api/users", body)
        self.assertEqual(code, 201, obj)
        return obj

    @coro
    async def test_create_list_get_never_a_hash(self):
        made = await self.create()
        self.assertEqual(made, {"id": made["id"], "username": "bob", "enabled": True,
                                "created_at": T0, "updated_at": T0, "last_login_at": None})
        code, _h, obj = await self.call("GET", "/api/users")
        self.assertEqual(code, 200)
        self.assertEqual(obj, {"items": [made]})
        code, _h, obj = await self.call("GET", f"/api/users/{made['id']}")
        self.assertEqual(obj, made)
        stored = self.db.conn.execute("SELECT password_hash FROM users").fetchone()[0]
        self.assertTrue(stored.startswith("$"))
        self.assertNotIn("bob-password", stored)
        ok, _ = await self.passwords.verify("bob-password", stored)
        self.assertTrue(ok)

    @coro
    async def test_create_disabled(self):
        made = await self.create(username="ci.bot_1", enabled=False)
        self.assertIs(made["enabled"], False)

    @coro
    async def test_create_errors(self):
        await self.create()
        await self.assertUnchanged("POST", "/api/users", {"username": "BOB", "password": "x"},
                                   409, "username")
        obj = await self.assertUnchanged("POST", "/api/users",
                                         {"username": "admin", "password": "whatever"}, 400,
                                         "username")
        self.assertIn("admin", obj["fields"]["username"])
        await self.assertUnchanged("POST", "/api/users", {"username": "ADMIN", "password": "x"},
                                   400, "username")
        obj = await self.assertUnchanged("POST", "/api/users", {}, 400, "username", "password")
        self.assertEqual(obj["fields"], {"username": "required", "password": "required"})
        await self.assertUnchanged("POST", "/api/users",
                                   {"username": "a b", "password": "x", "role": "admin"}, 400,
                                   "username", "role")
        await self.assertUnchanged("POST", "/api/users", {"username": "x:y", "password": "x"},
                                   400, "username")
        await self.assertUnchanged("POST", "/api/users", {"username": 1, "password": 2,
                                                          "enabled": 1}, 400,
                                   "username", "password", "enabled")
        await self.assertUnchanged("POST", "/api/users", {"username": "carol", "password": ""},
                                   400, "password")
        await self.assertUnchanged("POST", "/api/users", raw=b"[1,")
        await self.assertUnchanged("POST", "/api/users", {"username": "carol", "password": "pw"},
                                   415, content_type="application/x-www-form-urlencoded")

    @coro
    async def test_update(self):
        made = await self.create()
        self.clock.advance(5)
        code, _h, obj = await self.call("PUT", f"/api/users/{made['id']}", {"enabled": False})
        self.assertEqual(code, 200, obj)
        self.assertIs(obj["enabled"], False)
        self.assertEqual(obj["updated_at"], T0 + 5)
        old_hash = self.db.conn.execute("SELECT password_hash FROM users").fetchone()[0]
        code, _h, obj = await self.call("PUT", f"/api/users/{made['id']}",
                                        {"password": "new-password", "id": made["id"]})
        self.assertEqual(code, 200, obj)
        self.assertNotIn("password", obj)
        self.assertNotIn("password_hash", obj)
        new_hash = self.db.conn.execute("SELECT password_hash FROM users").fetchone()[0]
        self.assertNotEqual(new_hash, old_hash)
        ok, _ = await self.passwords.verify("new-password", new_hash)
        self.assertTrue(ok)

    @coro
    async def test_update_errors(self):
        made = await self.create()
        path = f"/api/users/{made['id']}"
        await self.assertUnchanged("PUT", path, {"username": "renamed"}, 400, "username")
        await self.assertUnchanged("PUT", path, {"enabled": "no"}, 400, "enabled")
        await self.assertUnchanged("PUT", path, {"password": "fine", "enabled": None}, 400,
                                   "enabled")
        await self.assertUnchanged("PUT", path, {}, 400)
        await self.assertUnchanged("PUT", path, {"id": made["id"] + 1, "enabled": False}, 400, "id")
        await self.assertUnchanged("PUT", "/api/users/999", {"enabled": False}, 404)
        await self.assertUnchanged("PUT", "/api/users/bob", {"enabled": False}, 404)

    @coro
    async def test_delete(self):
        made = await self.create()
        code, _h, obj = await self.call("DELETE", f"/api/users/{made['id']}")
        self.assertEqual((code, obj), (204, None))
        await self.assertUnchanged("DELETE", f"/api/users/{made['id']}", None, 404)
        self.assertError(await self.call("GET", f"/api/users/{made['id']}"), 404)
        _c, _h, obj = await self.call("GET", "/api/users")
        self.assertEqual(obj, {"items": []})


class WhitelistRouteTests(ChangeMixin, AdminTestMixin, unittest.TestCase):
    async def create(self, **body):
        body.setdefault("prefix", "library/")
        code, _h, obj = await self.call("POST", "/api/whitelists", body)
        self.assertEqual(code, 201, obj)
        return obj

    @coro
    async def test_crud(self):
        made = await self.create(prefix=" myorg ", note="our images")
        self.assertEqual(made, {"id": made["id"], "prefix": "myorg", "enabled": True,
                                "note": "our images", "created_at": T0, "updated_at": T0})
        _c, _h, obj = await self.call("GET", "/api/whitelists")
        self.assertEqual(obj, {"items": [made]})
        self.clock.advance(1)
        code, _h, obj = await self.call("PUT", f"/api/whitelists/{made['id']}",
                                        {"enabled": False, "note": ""})
        self.assertEqual(code, 200, obj)
        self.assertEqual((obj["enabled"], obj["note"], obj["updated_at"]), (False, "", T0 + 1))
        code, _h, obj = await self.call("DELETE", f"/api/whitelists/{made['id']}")
        self.assertEqual(code, 204)
        await self.assertUnchanged("DELETE", f"/api/whitelists/{made['id']}", None, 404)

    @coro
    async def test_errors(self):
        made = await self.create(prefix="library/nginx")
        await self.assertUnchanged("POST", "/api/whitelists", {"prefix": "library/nginx"}, 409,
                                   "prefix")
        for bad in ("", "*", "UPPER", "/abs", "a*b", "a//b", 5, None):
            await self.assertUnchanged("POST", "/api/whitelists", {"prefix": bad}, 400, "prefix")
        await self.assertUnchanged("POST", "/api/whitelists", {}, 400, "prefix")
        await self.assertUnchanged("POST", "/api/whitelists", {"prefix": "x", "extra": 1}, 400,
                                   "extra")
        await self.assertUnchanged("POST", "/api/whitelists", {"prefix": "x", "note": 3}, 400,
                                   "note")
        await self.assertUnchanged("POST", "/api/whitelists", {"prefix": "x", "enabled": "1"}, 400,
                                   "enabled")
        other = await self.create(prefix="other")
        path = f"/api/whitelists/{other['id']}"
        await self.assertUnchanged("PUT", path, {"prefix": "library/nginx"}, 409, "prefix")
        await self.assertUnchanged("PUT", path, {"prefix": "Bad Prefix"}, 400, "prefix")
        await self.assertUnchanged("PUT", path, {}, 400)
        await self.assertUnchanged("PUT", path, {"id": made["id"], "note": "x"}, 400, "id")
        await self.assertUnchanged("PUT", "/api/whitelists/123", {"note": "x"}, 404)
        self.assertError(await self.call("GET", "/api/whitelists/123"), 404)

    @coro
    async def test_error_messages_name_the_field_once(self):
        """The reason a validator gives may start with the field's name ("prefix must
        not be empty"): the answer says it once, and the field's reason without it."""
        for bad, reason in (("", "must not be empty"), ("  ", "must not be empty"),
                            (5, "must be a string"),
                            ("x" * 300, "is longer than 255 characters"),
                            ("/abs", "must not start with '/'")):
            obj = await self.assertUnchanged("POST", "/api/whitelists", {"prefix": bad}, 400,
                                             "prefix")
            self.assertEqual(obj["fields"], {"prefix": reason})
            self.assertEqual(obj["error"], f"invalid input: prefix {reason}")
            self.assertNotIn("prefix prefix", obj["error"])
        # a reason that does not read on after the name gets a colon
        obj = await self.assertUnchanged("POST", "/api/whitelists", {"prefix": "UPPER"}, 400)
        self.assertEqual(obj["error"], "invalid input: prefix: repository names are lower case")
        obj = await self.assertUnchanged("POST", "/api/whitelists", {"prefix": "", "note": 3}, 400)
        self.assertEqual(obj["error"], "invalid input: prefix must not be empty, note must be a string")

    @coro
    async def test_match(self):
        entry = await self.create(prefix="nginx")
        await self.create(prefix="library/redis", enabled=False)
        code, _h, obj = await self.call("GET", "/api/whitelists/match?repository=nginx")
        self.assertEqual(code, 200, obj)
        self.assertEqual(obj, {"repository": "library/nginx", "allowed": True,
                               "matched": {"id": entry["id"], "prefix": "nginx"},
                               "mode": "whitelist"})
        _c, _h, obj = await self.call("GET", "/api/whitelists/match?repository=redis")
        self.assertEqual(obj, {"repository": "library/redis", "allowed": False, "matched": None,
                               "mode": "whitelist"})
        # a change applies at once (the store's matcher is replaced after the commit)
        await self.call("PUT", f"/api/whitelists/{entry['id']}", {"enabled": False})
        _c, _h, obj = await self.call("GET", "/api/whitelists/match?repository=library/nginx")
        self.assertIs(obj["allowed"], False)

    @coro
    async def test_match_modes(self):
        from tests.fixtures.admin import make_config

        for mode, allowed in (("all", True), ("none", False)):
            self.config = make_config(self.mktemp(), anonymous=mode)
            self.client = self.stub(self.make_api())
            _c, _h, obj = await self.call("GET", "/api/whitelists/match?repository=a/b")
            self.assertEqual((obj["mode"], obj["allowed"], obj["matched"]), (mode, allowed, None))

    @coro
    async def test_match_errors(self):
        for q in ("", "?repository=", "?repository=Bad/Name", "?repository=a/../b",
                  "?repo=nginx", "?repository=a&repository=b"):
            self.assertError(await self.call("GET", "/api/whitelists/match" + q), 400)


# the same tests against a real PostgreSQL (tests/fixtures/pgserver.py)
from tests.fixtures.pgserver import on_postgresql  # noqa: E402

UserRoutePostgresTests = on_postgresql(UserRouteTests)
WhitelistRoutePostgresTests = on_postgresql(WhitelistRouteTests)
