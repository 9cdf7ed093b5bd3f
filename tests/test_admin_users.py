"""/api/users and /api/whitelists: success and error paths against the real stores."""

from __future__ import annotations

from twisted.trial import unittest

from tests.fixtures.helpers import coro
from tests.fixtures.admin import T0, AdminTestMixin, basic

POLICY = {"min_length": 8, "max_length": 1024}


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
                                "created_at": T0, "updated_at": T0, "last_login_at": None,
                                "scopes": []})
        code, _h, obj = await self.call("GET", "/api/users")
        self.assertEqual(code, 200)
        self.assertEqual(obj, {"items": [made], "password_policy": POLICY, "max_scopes": 100})
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
        await self.assertUnchanged("POST", "/api/users", {"username": "BOB", "password": "bob-password-2"},
                                   409, "username")
        obj = await self.assertUnchanged("POST", "/api/users",
                                         {"username": "admin", "password": "whatever"}, 400,
                                         "username")
        self.assertIn("admin", obj["fields"]["username"])
        await self.assertUnchanged("POST", "/api/users", {"username": "ADMIN", "password": "admin-pass-1"},
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
        self.assertEqual(obj, {"items": [], "password_policy": POLICY, "max_scopes": 100})


class PasswordPolicyRouteTests(ChangeMixin, AdminTestMixin, unittest.TestCase):
    """One password policy: a new or changed registry user's password follows the admin's."""

    @coro
    async def test_short_passwords_refused_with_the_field_error(self):
        for bad, message in (("x", "must be at least 8 characters"),
                             ("seven-7", "must be at least 8 characters"),
                             ("bell\u0007-pass", "must not contain control characters"),
                             ("y" * 1025, "must be at most 1024 characters")):
            obj = await self.assertUnchanged("POST", "/api/users",
                                             {"username": "carol", "password": bad}, 400, "password")
            self.assertEqual(obj["fields"], {"password": message})
        code, _h, made = await self.call("POST", "/api/users",
                                         {"username": "carol", "password": "eight-ch"})
        self.assertEqual(code, 201, made)
        obj = await self.assertUnchanged("PUT", f"/api/users/{made['id']}", {"password": "x"},
                                         400, "password")
        self.assertEqual(obj["fields"], {"password": "must be at least 8 characters"})
        # the admin's own password change applies the same rule, word for word
        obj = self.assertError(await self.call("PUT", "/api/me/password", {
            "current_password": "s3cret-admin", "new_password": "x"}), 400, "new_password")
        self.assertEqual(obj["fields"]["new_password"], "must be at least 8 characters")

    @coro
    async def test_a_user_with_an_old_short_password_is_not_locked_out(self):
        row = await self.users.create_with_hash("old", self.passwords.hash_sync("pw"))
        code, _h, obj = await self.call("PUT", f"/api/users/{row['id']}", {"enabled": False})
        self.assertEqual(code, 200, obj)
        code, _h, obj = await self.call("PUT", f"/api/users/{row['id']}", {"enabled": True})
        self.assertEqual(code, 200, obj)
        user = await self.access.authenticator.authenticate("old", "pw", "10.0.0.1")
        self.assertEqual(user["username"], "old")


class LockoutRouteTests(AdminTestMixin, unittest.TestCase):
    """/api/lockouts: the locks by name, and the unlock every node follows."""

    def lock_account(self, name, n=5, ip="10.0.0.1"):
        for _ in range(n):  # [lockout] of the admin tests: 5 per account
            self.lockout.failure("user:" + name, ip)

    async def listing(self):
        code, _h, obj = await self.call("GET", "/api/lockouts")
        self.assertEqual(code, 200, obj)
        return obj["items"]

    @coro
    async def test_list_and_unlock_an_account(self):
        self.assertEqual(await self.listing(), [])
        self.lock_account("Mallory")
        self.clock.advance(10)
        (lock,) = await self.listing()
        self.assertEqual({k: lock[k] for k in ("kind", "name", "login", "failures", "retry_after")},
                         {"kind": "account", "name": "Mallory", "login": "registry",
                          "failures": 5, "retry_after": 290})
        self.assertRegex(lock["id"], "^[0-9a-f]{34}$")
        self.assertTrue(self.lockout.check("user:mallory", "10.9.9.9"))
        code, _h, obj = await self.call("DELETE", "/api/lockouts/mallory")
        self.assertEqual(code, 200, obj)
        self.assertEqual([x["name"] for x in obj["released"]], ["Mallory"])
        self.assertEqual(self.lockout.check("user:mallory", "10.9.9.9"), 0)
        self.assertEqual(self.lockout.failures("user:mallory"), 0)
        self.assertEqual(await self.listing(), [])
        self.assertError(await self.call("DELETE", "/api/lockouts/mallory"), 404)
        # the lock's id works too
        self.lock_account("eve")
        (lock,) = await self.listing()
        code, _h, obj = await self.call("DELETE", f"/api/lockouts/{lock['id']}")
        self.assertEqual(code, 200, obj)
        self.assertEqual(await self.listing(), [])

    @coro
    async def test_unlock_an_address(self):
        for i in range(50):  # 50 per address
            self.lockout.failure(f"user:guess{i}", "192.0.2.7")
        locks = await self.listing()
        addr = [x for x in locks if x["kind"] == "address"]
        self.assertEqual([(x["name"], x["login"]) for x in addr], [("192.0.2.7", None)])
        code, _h, obj = await self.call("DELETE", "/api/lockouts/192.0.2.7")
        self.assertEqual(code, 200, obj)
        self.assertEqual(self.lockout.check("", "192.0.2.7"), 0)

    @coro
    async def test_the_admin_logins_lock_is_listed_and_lifted_too(self):
        for _ in range(5):
            code, _h, _obj = await self.call("GET", "/api/me", auth=basic("admin", "wrong"))
            self.assertEqual(code, 401)
        # the admin is locked out of its own API: a second admin session cannot exist,
        # but the CLI (the same rows) can unlock it; here straight through the records
        (lock,) = [x for x in await self.access.lockout_records.list() if x["kind"] == "account"]
        self.assertEqual((lock["name"], lock["login"]), ("admin", "admin"))
        released = await self.access.lockout_records.unlock("admin")
        self.assertEqual([x["login"] for x in released], ["admin"])
        code, _h, _obj = await self.call("GET", "/api/me")
        self.assertEqual(code, 200)

    @coro
    async def test_bad_names(self):
        for bad in ("%01x", "a" * 201, "%20"):
            obj = self.assertError(await self.call("DELETE", f"/api/lockouts/{bad}"), 400, "name")
            self.assertNotIn("\x01", obj["error"])
        self.assertError(await self.call("GET", "/api/lockouts?x=1"), 400)
        self.assertError(await self.call("GET", "/api/lockouts", auth=False), 401)

    @coro
    async def test_an_unlock_reaches_every_node(self):
        """Two nodes on one database (their lockouts keyed alike, as on PostgreSQL):
        node B counted node A's failures without the name; an unlock through A's
        API reaches B at its next poll; one through the rows (the CLI) reaches both."""
        from zmirror.auth.lockout import Lockout
        from zmirror.auth.lockoutrecords import LockoutRecords
        from zmirror.db.lockouts import LockoutStore

        secret = b"k" * 32
        a = Lockout(self.clock, max_account=5, max_ip=50, secret=secret)
        b = Lockout(self.clock, max_account=5, max_ip=50, secret=secret)
        ra = LockoutRecords(a, LockoutStore(self.db), clock=self.clock, node="a", shared=True)
        rb = LockoutRecords(b, LockoutStore(self.db), clock=self.clock, node="b", shared=True)
        a.listen(type("Bus", (), {"failed": lambda _s, keys, at: b.record_remote(keys, at),
                                  "cleared": lambda _s, key: None})())
        await rb.poll()  # B's first poll: nothing released yet
        for _ in range(5):
            a.failure("user:trudy", "10.0.0.5")
        self.assertTrue(b.check("user:trudy", ""))
        names = [(x["name"], x["node"]) for x in await rb.list()]
        self.assertEqual(names, [("trudy", "a")], "B lists A's row by name")
        self.clock.advance(1)
        self.assertEqual([x["name"] for x in await ra.unlock("trudy")], ["trudy"])
        self.assertEqual(a.check("user:trudy", ""), 0)
        self.assertTrue(b.check("user:trudy", ""), "B follows at its next poll")
        self.assertEqual(await rb.poll(), 1)
        self.assertEqual(b.check("user:trudy", ""), 0)
        # the CLI marks the rows released; both nodes follow
        for _ in range(5):
            a.failure("user:trudy", "10.0.0.5")
        self.clock.advance(1)
        released = await LockoutStore(self.db).release(self.clock.seconds(), name="TRUDY")
        self.assertEqual(len(released), 1)
        self.assertEqual((await ra.poll(), await rb.poll()), (1, 1))
        self.assertEqual((a.check("user:trudy", ""), b.check("user:trudy", "")), (0, 0))
        self.assertEqual(await rb.poll(), 0, "a release is applied once")


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
LockoutRoutePostgresTests = on_postgresql(LockoutRouteTests)
