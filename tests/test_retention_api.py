"""/api/cache/rules, /api/cache/pins, /api/cache/retention/{dry-run,run}: the rules and
pins stored (SQLite and PostgreSQL), hostile input → 400 with field errors, the pass
called with the right rule."""

from twisted.trial import unittest

from tests.fixtures.admin import AdminTestMixin
from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import on_postgresql
from zmirror.db.retention import RetentionStore

DIGEST = "sha256:" + "ab" * 32


class FakeBlobs:
    max_size = 50_000_000_000


class FakePass:
    def __init__(self):
        self.calls = []

    async def dry_run(self, rule=None):
        self.calls.append(("dry-run", rule))
        return {"blobs": 1, "bytes": 10, "tags": 0, "manifests": 0, "items": []}

    async def run(self):
        self.calls.append(("run", None))
        return {"blobs": 2, "bytes": 20, "tags": 1, "manifests": 1, "items": []}

    async def refresh_pins(self):
        self.calls.append(("pins", None))


class RetentionApiTests(AdminTestMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.store = RetentionStore(self.db, self.clock)
        self.retention = FakePass()
        self.client = self.stub(self.make_api(retention_store=self.store, retention=self.retention,
                                              cache=FakeBlobs()))

    @coro
    async def test_rules_crud(self):
        code, _h, obj = await self.call("GET", "/api/cache/rules")
        self.assertEqual((code, obj), (200, {"rules": [], "max_size": 50_000_000_000}))
        code, _h, rule = await self.call("POST", "/api/cache/rules",
                                         {"namespace": "Docker.IO", "max_age_days": 30, "max_size": "10GB"})
        self.assertEqual(code, 201, rule)
        self.assertEqual((rule["namespace"], rule["max_age_days"], rule["max_size"], rule["enabled"], rule["note"]),
                         ("docker.io", 30, 10_000_000_000, True, ""))
        code, _h, obj = await self.call("POST", "/api/cache/rules", {"namespace": "docker.io", "max_age_days": 5})
        self.assertError((code, _h, obj), 409, "namespace")
        rid = rule["id"]
        code, _h, obj = await self.call("PUT", f"/api/cache/rules/{rid}", {"max_age_days": None, "note": "hub"})
        self.assertEqual((code, obj["max_age_days"], obj["max_size"], obj["note"]), (200, None, 10_000_000_000, "hub"))
        # both limits cleared: refused
        r = await self.call("PUT", f"/api/cache/rules/{rid}", {"max_size": None})
        self.assertError(r, 400, "max_size")
        code, _h, obj = await self.call("GET", "/api/cache/rules")
        self.assertEqual([x["id"] for x in obj["rules"]], [rid])
        code, _h, _obj = await self.call("DELETE", f"/api/cache/rules/{rid}")
        self.assertEqual(code, 204)
        code, _h, _obj = await self.call("DELETE", f"/api/cache/rules/{rid}")
        self.assertEqual(code, 404)

    @coro
    async def test_hostile_rules(self):
        cases = [
            ({}, "namespace"),
            ({"namespace": "docker.io"}, "max_age_days"),
            ({"namespace": "nohost", "max_age_days": 1}, "namespace"),
            ({"namespace": "docker.io", "max_age_days": 0}, "max_age_days"),
            ({"namespace": "docker.io", "max_age_days": "7"}, "max_age_days"),
            ({"namespace": "docker.io", "max_age_days": 10**9}, "max_age_days"),
            ({"namespace": "docker.io", "max_age_days": True}, "max_age_days"),
            ({"namespace": "docker.io", "max_size": -5}, "max_size"),
            ({"namespace": "docker.io", "max_size": "lots"}, "max_size"),
            ({"namespace": "docker.io", "max_size": 0}, "max_size"),
            ({"namespace": "docker.io", "max_size": 1.5}, "max_size"),
            ({"namespace": "docker.io", "max_size": "9" * 100}, "max_size"),
            ({"namespace": "docker.io", "max_age_days": 1, "enabled": "yes"}, "enabled"),
            ({"namespace": "docker.io", "max_age_days": 1, "note": "x\x00"}, "note"),
            ({"namespace": "docker.io", "max_age_days": 1, "colour": 1}, "colour"),
            ({"namespace": ["docker.io"], "max_age_days": 1}, "namespace"),
        ]
        for body, field in cases:
            self.assertError(await self.call("POST", "/api/cache/rules", body), 400, field)
        self.assertError(await self.call("POST", "/api/cache/rules", raw=b"[1"), 400)
        self.assertError(await self.call("POST", "/api/cache/rules", raw=b"{}", content_type="text/plain"), 415)
        self.assertError(await self.call("PUT", "/api/cache/rules/abc", {"note": ""}), 404)
        self.assertError(await self.call("PUT", "/api/cache/rules/99", {"note": ""}), 404)
        self.assertEqual(await self.store.rules(), [])

    @coro
    async def test_pins(self):
        code, _h, pin = await self.call("POST", "/api/cache/pins", {"pattern": "nginx:1.27", "note": "base"})
        self.assertEqual(code, 201, pin)
        self.assertEqual((pin["pattern"], pin["source"], pin["note"]), ("library/nginx:1.27", "admin", "base"))
        self.assertError(await self.call("POST", "/api/cache/pins", {"pattern": "docker.io/library/nginx:1.27"}),
                         409, "pattern")
        code, _h, p2 = await self.call("POST", "/api/cache/pins", {"pattern": "ghcr.io/o/**"})
        self.assertEqual(code, 201)
        code, _h, obj = await self.call("GET", "/api/cache/pins")
        self.assertEqual([p["pattern"] for p in obj["pins"]], ["library/nginx:1.27", "ghcr.io/o/**"])
        code, _h, _obj = await self.call("DELETE", f"/api/cache/pins/{p2['id']}")
        self.assertEqual(code, 204)
        self.assertEqual(self.retention.calls, [("pins", None)] * 3)
        for bad in ["", "A/B", "x@sha256:zz", 7, None, "a b", "x" * 400, "ghcr.io/**@" + DIGEST]:
            self.assertError(await self.call("POST", "/api/cache/pins", {"pattern": bad}), 400, "pattern")
        self.assertError(await self.call("POST", "/api/cache/pins", {}), 400, "pattern")
        self.assertError(await self.call("DELETE", "/api/cache/pins/12345"), 404)

    @coro
    async def test_dry_run_and_run(self):
        code, _h, obj = await self.call("POST", "/api/cache/retention/dry-run", {})
        self.assertEqual((code, obj["bytes"]), (200, 10))
        code, _h, obj = await self.call("POST", "/api/cache/retention/dry-run",
                                        {"rule": {"namespace": "ghcr.io", "max_size": "1GB",
                                                  "id": 3, "created_at": 1, "updated_at": 2}})
        self.assertEqual(code, 200, obj)
        rule = self.retention.calls[-1][1]
        self.assertEqual((rule.namespace, rule.max_age_days, rule.max_size), ("ghcr.io", None, 1_000_000_000))
        self.assertEqual(self.retention.calls[0], ("dry-run", None))
        for body, field in [({"rule": 5}, "rule"), ({"rule": {"namespace": "ghcr.io"}}, "rule.max_age_days"),
                            ({"rule": {"namespace": "x", "max_age_days": 1}}, "rule.namespace"),
                            ({"rules": {}}, "rules")]:
            self.assertError(await self.call("POST", "/api/cache/retention/dry-run", body), 400, field)
        code, _h, obj = await self.call("POST", "/api/cache/retention/run", {})
        self.assertEqual((code, obj["blobs"]), (200, 2))
        self.assertError(await self.call("POST", "/api/cache/retention/run", {"now": 1}), 400, "now")
        self.assertEqual(len(self.retention.calls), 3)

    @coro
    async def test_admin_only_and_disabled_cache(self):
        code, _h, _obj = await self.call("GET", "/api/cache/rules", auth=False)
        self.assertEqual(code, 401)
        code, _h, _obj = await self.call("POST", "/api/cache/retention/run", {}, auth=False)
        self.assertEqual(code, 401)
        self.assertEqual(self.retention.calls, [])
        self.client = self.stub(self.make_api(retention_store=self.store))
        self.assertError(await self.call("POST", "/api/cache/retention/dry-run", {}), 503)
        code, _h, obj = await self.call("GET", "/api/cache/rules")
        self.assertEqual((code, obj["max_size"]), (200, None))


RetentionApiPostgresTests = on_postgresql(RetentionApiTests)
