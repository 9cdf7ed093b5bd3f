"""/api/users carries ``scopes``: normalized on the way in, hostile values → 400 with the
``scopes`` field error and nothing written."""

from __future__ import annotations

from twisted.trial import unittest

from tests.fixtures.admin import T0, AdminTestMixin
from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import on_postgresql
from zmirror.auth.scopes import MAX_SCOPES


class UserScopesRouteTests(AdminTestMixin, unittest.TestCase):
    async def assertUnchanged(self, method, path, body=None, status=400, *fields):
        before = self.db.snapshot()
        obj = self.assertError(await self.call(method, path, body), status, *fields)
        self.assertEqual(self.db.snapshot(), before)
        return obj

    async def create(self, **body):
        body.setdefault("username", "sam")
        body.setdefault("password", "sam-password")
        code, _h, obj = await self.call("POST", "/api/users", body)
        self.assertEqual(code, 201, obj)
        return obj

    @coro
    async def test_create_get_update_clear(self):
        made = await self.create(scopes=["docker.io/library/*", "GHCR.IO/myorg/**", "nginx",
                                         "library/nginx"])
        self.assertEqual(made["scopes"], ["library/*", "ghcr.io/myorg/**", "library/nginx"])
        code, _h, obj = await self.call("GET", f"/api/users/{made['id']}")
        self.assertEqual(obj["scopes"], made["scopes"])
        code, _h, obj = await self.call("GET", "/api/users")
        self.assertEqual(obj["items"][0]["scopes"], made["scopes"])
        self.assertEqual(obj["max_scopes"], MAX_SCOPES)
        self.clock.advance(3)
        code, _h, obj = await self.call("PUT", f"/api/users/{made['id']}", {"scopes": ["quay.io/x/*"]})
        self.assertEqual(code, 200, obj)
        self.assertEqual((obj["scopes"], obj["updated_at"]), (["quay.io/x/*"], T0 + 3))
        # another change keeps them
        code, _h, obj = await self.call("PUT", f"/api/users/{made['id']}", {"enabled": False})
        self.assertEqual(obj["scopes"], ["quay.io/x/*"])
        for clear in ([], None, ["**"]):
            await self.call("PUT", f"/api/users/{made['id']}", {"scopes": ["a/b"]})
            code, _h, obj = await self.call("PUT", f"/api/users/{made['id']}", {"scopes": clear})
            self.assertEqual((code, obj["scopes"]), (200, []), clear)
        # a user created without scopes has none (everything)
        other = await self.create(username="una")
        self.assertEqual(other["scopes"], [])

    @coro
    async def test_hostile_values(self):
        made = await self.create(scopes=["library/*"])
        path = f"/api/users/{made['id']}"
        for bad, words in (
            ("library/*", "list"), ({"x": 1}, "list"), (7, "list"), ([7], "item 1"),
            ([["a"]], "item 1"), ([""], "empty"), (["Upper/Case"], "lower case"),
            (["a/**b"], "'**'"), (["*.io/x"], "host"), (["x" * 1000], "at most"),
            (["<script>alert(1)</script>"], "not a repository name component"),
            (["ok/x"] * (MAX_SCOPES + 1), f"at most {MAX_SCOPES}"),
        ):
            obj = await self.assertUnchanged("POST", "/api/users",
                                             {"username": "eve", "password": "eve-password",
                                              "scopes": bad}, 400, "scopes")
            self.assertIn(words, obj["fields"]["scopes"], bad)
            self.assertLess(len(obj["fields"]["scopes"]), 300)  # the value is quoted, bounded
            obj = await self.assertUnchanged("PUT", path, {"scopes": bad}, 400, "scopes")
            self.assertIn(words, obj["fields"]["scopes"], bad)
        # every bad field at once
        obj = await self.assertUnchanged("POST", "/api/users",
                                         {"username": "a b", "password": "eve-password",
                                          "scopes": ["A"]}, 400, "username", "scopes")
        self.assertIn("scopes", obj["error"])


UserScopesRoutePostgresTests = on_postgresql(UserScopesRouteTests)
