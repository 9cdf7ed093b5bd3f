"""The audit trail: the rows a scripted session of admin API calls leaves (exactly what
was done, secrets masked), GET /api/audit's filters and hostile queries, the store's
masking and retention with an injected clock; SQLite and PostgreSQL."""

import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.admin import ADMIN, T0, AdminTestMixin, basic
from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import on_postgresql
from zmirror.admin.audit import action_of
from zmirror.admin.http import Route
from zmirror.config import DEFAULT_CONFIG, load_config
from zmirror.db.auditlog import AuditFilter, AuditRetentionService, AuditStore, mask

PASSWORD = "Secr3t-pass!x"
NEW_PASSWORD = "0ther-Secr3t!y"
REG_PASSWORD = "upstream-pw-123"


class FakeCache:
    """A cache for DELETE /api/cache (only "enabled" matters)."""


class FakePurge:
    def __init__(self):
        self.scopes = []

    async def purge(self, scope):
        self.scopes.append(scope)
        return {"blobs": 1, "manifests": 2, "tags": 3}


def _has(value, needle: str) -> bool:
    return needle in repr(value)


class MaskTests(unittest.TestCase):
    def test_mask(self):
        got = mask({"username": "bob", "password": "x", "password_hash": "$argon2",
                    "client_key": "-----BEGIN", "proxy": "http://u:pw@proxy:3128",
                    "nested": [{"secret": "s", "token": ""}], "enabled": True, "has_password": True})
        self.assertEqual(got, {"username": "bob", "password": "****", "password_hash": "****",
                               "client_key": "****", "proxy": "http://u:****@proxy:3128",
                               "nested": [{"secret": "****", "token": ""}], "enabled": True,
                               "has_password": True})

    def test_actions(self):
        cases = [("/registries", "POST", "registry.create"),
                 ("/registries/<rid>", "PUT", "registry.update"),
                 ("/users/<uid>", "DELETE", "user.delete"),
                 ("/whitelists", "POST", "whitelist.create"),
                 ("/sync/jobs", "POST", "sync.job.create"),
                 ("/sync/jobs/<jid>/run", "POST", "sync.job.run"),
                 ("/me/password", "PUT", "admin.password"),
                 ("/cache/rules/<rid>", "PUT", "cache.rule.update"),
                 ("/registries/<rid>/test", "POST", None),
                 ("/cache/retention/dry-run", "POST", None),
                 ("/users", "GET", None)]
        for path, method, action in cases:
            self.assertEqual(action_of(Route(path, (method,))), action, path)
        self.assertEqual(action_of(Route("/cache", ("DELETE",), audit="cache.purge")), "cache.purge")


class AuditApiTests(AdminTestMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.audit = AuditStore(self.db, self.clock, node="n1")
        self.purge = FakePurge()
        self.client = self.stub(self.make_api(audit=self.audit, cache=FakeCache(),
                                              cache_purge=self.purge))

    async def rows(self, **flt):
        return (await self.audit.list(AuditFilter(**flt), limit=500))["entries"][::-1]

    @coro
    async def test_scripted_session(self):
        r = await self.call("POST", "/api/registries",
                            {"name": "hub", "url": "https://hub.example", "username": "u",
                             "password": REG_PASSWORD})
        self.assertEqual(r[0], 201, r)
        rid = r[2]["id"]
        self.clock.advance(1)
        r = await self.call("PUT", f"/api/registries/{rid}", {"priority": 7})
        self.assertEqual(r[0], 200, r)
        r = await self.call("POST", "/api/users", {"username": "bob", "password": PASSWORD})
        self.assertEqual(r[0], 201, r)
        uid = r[2]["id"]
        r = await self.call("PUT", f"/api/users/{uid}", {"password": NEW_PASSWORD})
        self.assertEqual(r[0], 200, r)
        r = await self.call("POST", "/api/whitelists", {"prefix": "library/nginx"})
        self.assertEqual(r[0], 201, r)
        wid = r[2]["id"]
        r = await self.call("DELETE", f"/api/whitelists/{wid}")
        self.assertEqual(r[0], 204, r)
        r = await self.call("DELETE", "/api/cache?repository=nginx")
        self.assertEqual(r[0], 200, r)
        # reads, probes and refused changes leave no row
        await self.call("GET", "/api/registries")
        r = await self.call("POST", "/api/users", {"username": "bob", "password": PASSWORD})
        self.assertEqual(r[0], 409)
        r = await self.call("PUT", f"/api/registries/{rid}", {"priority": "high"})
        self.assertEqual(r[0], 400)
        r = await self.call("DELETE", f"/api/registries/{rid}")
        self.assertEqual(r[0], 204, r)

        rows = await self.rows()
        self.assertEqual(
            [(x["action"], x["target"]) for x in rows],
            [("registry.create", f"registries/{rid}"), ("registry.update", f"registries/{rid}"),
             ("user.create", f"users/{uid}"), ("user.update", f"users/{uid}"),
             ("whitelist.create", f"whitelists/{wid}"), ("whitelist.delete", f"whitelists/{wid}"),
             ("cache.purge", "cache?repository=nginx"), ("registry.delete", f"registries/{rid}")])
        for x in rows:
            self.assertEqual((x["actor"], x["node"], x["client_ip"]), (ADMIN[0], "n1", "127.0.0.1"))
            for secret in (PASSWORD, NEW_PASSWORD, REG_PASSWORD, ADMIN[1], "$argon2"):
                self.assertFalse(_has(x, secret), (secret, x))
        create, update = rows[0], rows[1]
        self.assertIsNone(create["before"])
        self.assertEqual((create["after"]["name"], create["after"]["url"]), ("hub", "https://hub.example"))
        self.assertEqual(update["before"]["priority"], create["after"]["priority"])
        self.assertEqual(update["after"]["priority"], 7)
        self.assertEqual(rows[0]["at"], T0)
        self.assertEqual(rows[1]["at"], T0 + 1)
        self.assertEqual(rows[3]["before"]["username"], "bob")
        self.assertEqual(rows[5]["before"]["prefix"], "library/nginx")
        self.assertIsNone(rows[5]["after"])
        self.assertEqual(rows[6]["after"], {"deleted": {"blobs": 1, "manifests": 2, "tags": 3}})
        self.assertEqual(rows[7]["before"]["name"], "hub")

    @coro
    async def test_list_and_filters(self):
        for i, (actor, action, target) in enumerate([
                ("admin", "registry.create", "registries/1"), ("cli:root", "user.create", "users/1"),
                ("admin", "registry.update", "registries/1"), ("admin", "user.delete", "users/1")]):
            self.clock.advance(10)
            await self.audit.append(actor=actor, action=action, target=target)
        code, _h, obj = await self.call("GET", "/api/audit")
        self.assertEqual((code, obj["total"]), (200, 4))
        self.assertEqual([x["action"] for x in obj["entries"]],
                         ["user.delete", "registry.update", "user.create", "registry.create"])
        for q, expected in [("actor=cli:root", ["user.create"]),
                            ("action=registry.", ["registry.update", "registry.create"]),
                            ("action=user.delete", ["user.delete"]),
                            ("target=registries/1", ["registry.update", "registry.create"]),
                            (f"since={T0 + 20}&until={T0 + 40}", ["registry.update", "user.create"]),
                            ("limit=1&offset=1", ["registry.update"])]:
            code, _h, obj = await self.call("GET", "/api/audit?" + q)
            self.assertEqual(code, 200, q)
            self.assertEqual([x["action"] for x in obj["entries"]], expected, q)
        code, _h, obj = await self.call("GET", "/api/audit?limit=1&offset=1")
        self.assertEqual(obj["total"], 4)

    @coro
    async def test_hostile_query(self):
        for q, field in [("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"),
                         ("offset=-1", "offset"), ("since=yesterday", "since"), ("since=nan", "since"),
                         ("since=inf", "since"), ("since=10&until=5", "until"), ("actor=", "actor"),
                         ("action=" + "a" * 300, "action"), ("target=%01", "target"),
                         ("colour=red", "colour")]:
            code, _h, obj = await self.call("GET", "/api/audit?" + q)
            self.assertEqual(code, 400, q)
            self.assertIn(field, obj["fields"], q)

    @coro
    async def test_needs_admin(self):
        code, _h, _obj = await self.call("GET", "/api/audit", auth=False)
        self.assertEqual(code, 401)

    @coro
    async def test_retention(self):
        clock = Clock()
        clock.advance(T0)
        store = AuditStore(self.db, clock, node="n1")
        await store.append(actor="admin", action="user.create", target="users/1")
        clock.advance(5 * 86400)
        await store.append(actor="admin", action="user.delete", target="users/1")
        service = AuditRetentionService(store, clock, retention_days=3, interval=3600, first_delay=60)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual((await store.list())["total"], 2)
        clock.advance(60)
        self.assertEqual([x["action"] for x in (await store.list())["entries"]], ["user.delete"])
        clock.advance(3 * 86400)
        self.assertEqual((await store.list())["total"], 0)
        # 0 days: everything is kept
        await store.append(actor="admin", action="user.create")
        self.assertEqual(await store.prune(0), 0)
        self.assertEqual((await store.list())["total"], 1)


class AdminPasswordAuditTests(AdminTestMixin, unittest.TestCase):
    """The admin API on a real config.toml (PUT /me/password writes it)."""

    password = "Current-pass-1"

    def setUp(self):
        super().setUp()
        data = Path(self.mktemp()).resolve() / "data"
        data.mkdir(parents=True)
        path = data / "config.toml"
        path.write_text(DEFAULT_CONFIG.replace('password = "admin123"', f'password = "{self.password}"'))
        os.chmod(path, 0o600)
        self.config = load_config(data)
        self.auth = basic("admin", self.password)
        self.audit = AuditStore(self.db, self.clock, node="n1")
        self.client = self.stub(self.make_api(audit=self.audit))

    async def rows(self):
        return (await self.audit.list())["entries"]

    @coro
    async def test_admin_password_masked(self):
        r = await self.call("PUT", "/api/me/password",
                            {"current_password": self.password, "new_password": NEW_PASSWORD + "Zz9"})
        self.assertIn(r[0], (200, 204), r)
        rows = await self.rows()
        self.assertEqual([x["action"] for x in rows], ["admin.password"])
        for secret in (self.password, NEW_PASSWORD + "Zz9"):
            self.assertFalse(_has(rows[0], secret))


AuditApiPostgresTests = on_postgresql(AuditApiTests)
