"""/api/registries: every route's success and error paths, and RegistryStore."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.admin import T0, AdminTestMixin
from tests.fixtures.helpers import coro
from zmirror.db.errors import Conflict, NotFound
from zmirror.db.registries import RegistryStore, normalize_url

HUB = "https://registry-1.docker.io"


class RegistryRouteTests(AdminTestMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.published = []
        self.registries.subscribe(self.published.append)

    async def create(self, **body):
        body.setdefault("name", "Quay")
        body.setdefault("url", "https://quay.io")
        code, _h, obj = await self.call("POST", "/api/registries", body)
        self.assertEqual(code, 201, obj)
        return obj

    async def assertUnchanged(self, method, path, body=None, status=400, *fields, **kw):
        """The request fails with ``status`` and leaves the database as it was."""
        before = self.db.snapshot()
        published = len(self.published)
        obj = self.assertError(await self.call(method, path, body, **kw), status, *fields)
        self.assertEqual(self.db.snapshot(), before)
        self.assertEqual(len(self.published), published)
        return obj

    # --- list / get ----------------------------------------------------------------

    @coro
    async def test_list_seeded_with_health_unknown(self):
        code, headers, obj = await self.call("GET", "/api/registries")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        [hub] = obj["items"]
        self.assertEqual(hub["name"], "Docker Hub")
        self.assertEqual(hub["url"], HUB)
        self.assertEqual(hub["priority"], 1)
        self.assertIs(hub["enabled"], True)
        self.assertIs(hub["has_password"], False)
        self.assertNotIn("password", hub)
        self.assertEqual(hub["health"], {"state": "unknown", "last_error": None,
                                         "last_latency_ms": None, "last_checked_at": None,
                                         "consecutive_failures": 0})
        self.assertEqual(set(hub), {"id", "name", "url", "priority", "enabled", "username",
                                    "has_password", "created_at", "updated_at", "health", "rate_limit",
                                    "namespace", "proxy", "tls_verify", "ca", "client_cert",
                                    "has_client_key", "server_name"})
        self.assertEqual((hub["proxy"], hub["tls_verify"], hub["ca"], hub["client_cert"],
                          hub["has_client_key"], hub["server_name"]), (None, True, "", "", False, ""))
        self.assertIsNone(hub["rate_limit"])  # no upstream said anything about its limit yet
        self.assertEqual(hub["namespace"], "docker.io")  # the seeded row, migrated

    @coro
    async def test_list_sorted_by_priority_then_id_with_live_health(self):
        a = await self.create(name="A", priority=50)
        b = await self.create(name="B", priority=0)
        c = await self.create(name="C", priority=50)
        self.upstreams.healths = {
            b["id"]: {"state": "down", "last_error": "connection refused", "last_latency_ms": None,
                      "last_checked_at": T0, "consecutive_failures": 3, "internal": "x"},
            a["id"]: {"state": "up", "last_latency_ms": 8.5},
        }
        _c, _h, obj = await self.call("GET", "/api/registries")
        self.assertEqual([r["name"] for r in obj["items"]], ["B", "Docker Hub", "A", "C"])
        by = {r["name"]: r["health"] for r in obj["items"]}
        self.assertEqual(by["B"]["state"], "down")
        self.assertEqual(by["B"]["last_error"], "connection refused")
        self.assertEqual(by["B"]["consecutive_failures"], 3)
        self.assertNotIn("internal", by["B"])
        self.assertEqual(by["A"]["state"], "up")
        self.assertEqual(by["A"]["last_latency_ms"], 8.5)
        self.assertEqual(by["A"]["consecutive_failures"], 0)
        self.assertEqual(by["C"]["state"], "unknown")
        self.assertEqual(c["health"]["state"], "unknown")

    @coro
    async def test_health_unknown_without_proxy_core(self):
        self.client = self.stub(self.make_api(upstreams=None))
        _c, _h, obj = await self.call("GET", "/api/registries")
        self.assertEqual(obj["items"][0]["health"]["state"], "unknown")

    @coro
    async def test_get(self):
        made = await self.create(username="bot", password="pw")
        code, _h, obj = await self.call("GET", f"/api/registries/{made['id']}")
        self.assertEqual(code, 200)
        self.assertEqual(obj, made)
        self.assertIs(obj["has_password"], True)
        self.assertNotIn("password", obj)

    @coro
    async def test_get_unknown_id(self):
        for path in ("/api/registries/999", "/api/registries/abc", "/api/registries/0",
                     "/api/registries/-1", "/api/registries/99999999999999999999999",
                     "/api/registries/1.5"):
            self.assertError(await self.call("GET", path), 404)

    # --- create ------------------------------------------------------------------------

    @coro
    async def test_create_defaults_and_normalization(self):
        obj = await self.create(name="  GHCR ", url="https://GHCR.io/")
        self.assertEqual(obj["name"], "GHCR")
        self.assertEqual(obj["url"], "https://ghcr.io")
        self.assertEqual(obj["priority"], 100)
        self.assertIs(obj["enabled"], True)
        self.assertEqual(obj["username"], "")
        self.assertIs(obj["has_password"], False)
        self.assertEqual(obj["created_at"], T0)
        self.assertEqual(obj["updated_at"], T0)
        row = self.db.conn.execute("SELECT name, url FROM registries WHERE id = ?",
                                   (obj["id"],)).fetchone()
        self.assertEqual(row, ("GHCR", "https://ghcr.io"))

    @coro
    async def test_namespace_validated_and_normalized(self):
        obj = await self.create()
        self.assertEqual(obj["namespace"], "docker.io")  # the default
        obj = await self.create(name="G", url="https://ghcr.io", namespace=" GHCR.io ")
        self.assertEqual(obj["namespace"], "ghcr.io")
        self.assertEqual(self.published[-1][-1]["namespace"], "ghcr.io")  # the proxy core sees it
        for alias in ("index.docker.io", "registry-1.docker.io", "Docker.IO"):
            obj = await self.create(name=alias, namespace=alias)
            self.assertEqual(obj["namespace"], "docker.io")
        obj = await self.create(name="L", url="http://10.0.0.5:5000", namespace="registry.local:5000")
        self.assertEqual(obj["namespace"], "registry.local:5000")
        for bad in ("", "nodot", "https://ghcr.io", "ghcr.io/owner", "a b.io", "x.io:0", 5, None, ["x"]):
            await self.assertUnchanged("POST", "/api/registries",
                                       {"name": "Bad", "url": "https://x.io", "namespace": bad},
                                       400, "namespace")
        rid = obj["id"]
        code, _h, out = await self.call("PUT", f"/api/registries/{rid}", {"namespace": "Quay.io"})
        self.assertEqual((code, out["namespace"]), (200, "quay.io"))
        await self.assertUnchanged("PUT", f"/api/registries/{rid}", {"namespace": "nodot"}, 400, "namespace")

    @coro
    async def test_create_full_and_subscribers_get_full_list_with_password(self):
        obj = await self.create(name="Private", url="http://10.0.0.5:5000/prefix", priority=7,
                                enabled=False, username="bot", password="p:w d")
        self.assertEqual(obj["url"], "http://10.0.0.5:5000/prefix")
        self.assertEqual((obj["priority"], obj["enabled"], obj["username"]), (7, False, "bot"))
        self.assertIs(obj["has_password"], True)
        self.assertEqual(len(self.published), 1)
        rows = self.published[0]
        self.assertEqual([r["name"] for r in rows], ["Docker Hub", "Private"])
        self.assertEqual(rows[1]["password"], "p:w d")
        self.assertIs(rows[1]["enabled"], False)

    @coro
    async def test_create_bad_json(self):
        for raw in (b"{", b"", b"null x", b"\xff\xfe", b"NaN", b'{"name": "a",}'):
            obj = await self.assertUnchanged("POST", "/api/registries", raw=raw)
            self.assertEqual(obj["fields"], {})

    @coro
    async def test_create_not_an_object(self):
        for body in ([], "x", 1, None):
            raw = json.dumps(body).encode()
            await self.assertUnchanged("POST", "/api/registries", raw=raw)

    @coro
    async def test_create_wrong_types(self):
        obj = await self.assertUnchanged(
            "POST", "/api/registries",
            {"name": 5, "url": ["x"], "priority": "1", "enabled": "yes", "username": None,
             "password": 1}, 400,
            "name", "url", "priority", "enabled", "username", "password")
        self.assertEqual(obj["fields"]["priority"], "must be an integer")
        self.assertEqual(obj["fields"]["enabled"], "must be true or false")
        await self.assertUnchanged("POST", "/api/registries",
                                   {"name": "x", "url": HUB, "priority": True}, 400, "priority")
        await self.assertUnchanged("POST", "/api/registries",
                                   {"name": "x", "url": HUB, "priority": 1.5}, 400, "priority")
        await self.assertUnchanged("POST", "/api/registries",
                                   {"name": "x", "url": HUB, "priority": -1}, 400, "priority")

    @coro
    async def test_create_missing_and_unknown_fields(self):
        obj = await self.assertUnchanged("POST", "/api/registries", {}, 400, "name", "url")
        self.assertEqual(obj["fields"], {"name": "required", "url": "required"})
        obj = await self.assertUnchanged("POST", "/api/registries",
                                         {"name": "x", "url": HUB, "colour": "red", "id": 3},
                                         400, "colour", "id")
        self.assertEqual(obj["fields"]["colour"], "unknown field")
        await self.assertUnchanged("POST", "/api/registries", {"name": "  ", "url": HUB}, 400,
                                   "name")
        await self.assertUnchanged("POST", "/api/registries", {"name": "x" * 101, "url": HUB},
                                   400, "name")
        await self.assertUnchanged("POST", "/api/registries",
                                   {"name": "x", "url": HUB, "username": "a:b"}, 400, "username")

    @coro
    async def test_create_bad_urls(self):
        for url in ("ftp://example.com", "example.com", "https://user:pw@example.com",
                    "https://user@example.com", "https://example.com/?x=1", "https://example.com?",
                    "https://example.com/#frag", "https://", "http://exa mple.com",
                    "https://example.com:99999", "https://example.com:0", "javascript:alert(1)",
                    "", "https://example.com/\\x", "https://" + "a" * 3000 + ".com"):
            obj = await self.assertUnchanged("POST", "/api/registries", {"name": "x", "url": url},
                                             400, "url")
            self.assertNotIn("name", obj["fields"], url)

    @coro
    async def test_create_needs_json_content_type(self):
        # a cross-site HTML form can only send form/text content types
        await self.assertUnchanged("POST", "/api/registries", {"name": "x", "url": HUB}, 415,
                                   content_type="text/plain")
        await self.assertUnchanged("POST", "/api/registries", {"name": "x", "url": HUB}, 415,
                                   content_type=None)
        code, _h, _o = await self.call("POST", "/api/registries", {"name": "x", "url": HUB},
                                       content_type="application/json; charset=utf-8")
        self.assertEqual(code, 201)

    @coro
    async def test_create_body_too_large(self):
        body = {"name": "x", "url": HUB, "password": "p" * 70000}
        await self.assertUnchanged("POST", "/api/registries", body, 413)

    @coro
    async def test_create_duplicate_name(self):
        await self.create(name="Quay")
        obj = await self.assertUnchanged("POST", "/api/registries",
                                         {"name": "quay", "url": "https://other.example"}, 409,
                                         "name")
        self.assertIn("name", obj["error"])

    # --- update --------------------------------------------------------------------------

    @coro
    async def test_update_partial_and_password_semantics(self):
        made = await self.create(username="bot", password="old")
        self.clock.advance(10)
        code, _h, obj = await self.call("PUT", f"/api/registries/{made['id']}",
                                        {"priority": 3, "enabled": False})
        self.assertEqual(code, 200, obj)
        self.assertEqual((obj["priority"], obj["enabled"], obj["name"]), (3, False, "Quay"))
        self.assertIs(obj["has_password"], True)  # omitted keeps it
        self.assertEqual(obj["updated_at"], T0 + 10)
        self.assertEqual(obj["created_at"], T0)
        self.assertEqual(self.published[-1][-1]["password"], "old")
        _c, _h, obj = await self.call("PUT", f"/api/registries/{made['id']}",
                                      {"password": "new", "id": made["id"]})
        self.assertEqual(self.published[-1][-1]["password"], "new")
        _c, _h, obj = await self.call("PUT", f"/api/registries/{made['id']}", {"password": ""})
        self.assertIs(obj["has_password"], False)
        self.assertEqual(self.published[-1][-1]["password"], "")
        _c, _h, obj = await self.call("PUT", f"/api/registries/{made['id']}",
                                      {"url": "https://mirror.example/v/"})
        self.assertEqual(obj["url"], "https://mirror.example/v")

    @coro
    async def test_update_with_id_in_body(self):
        made = await self.create()
        code, _h, obj = await self.call("PUT", "/api/registries",
                                        {"id": made["id"], "name": "Renamed"})
        self.assertEqual(code, 200, obj)
        self.assertEqual(obj["name"], "Renamed")
        await self.assertUnchanged("PUT", "/api/registries", {"name": "x"}, 400, "id")
        await self.assertUnchanged("PUT", "/api/registries", {"id": "1", "name": "x"}, 400, "id")
        await self.assertUnchanged("PUT", "/api/registries", {"id": 999, "name": "x"}, 404)
        await self.assertUnchanged("PUT", "/api/registries", {"id": made["id"]}, 400)

    @coro
    async def test_update_errors_change_nothing(self):
        made = await self.create()
        other = await self.create(name="Other", url="https://other.example")
        path = f"/api/registries/{made['id']}"
        await self.assertUnchanged("PUT", path, {"name": "other"}, 409, "name")
        await self.assertUnchanged("PUT", path, {"url": "ftp://x"}, 400, "url")
        # one bad field spoils the whole request: the good one is not applied either
        await self.assertUnchanged("PUT", path, {"name": "Fine", "priority": "high"}, 400,
                                   "priority")
        await self.assertUnchanged("PUT", path, {"id": other["id"], "name": "x"}, 400, "id")
        await self.assertUnchanged("PUT", path, {"nmae": "typo"}, 400, "nmae")
        await self.assertUnchanged("PUT", path, {}, 400)
        await self.assertUnchanged("PUT", path, raw=b"{oops")
        await self.assertUnchanged("PUT", "/api/registries/4242", {"name": "x"}, 404)
        await self.assertUnchanged("PUT", "/api/registries/nope", {"name": "x"}, 404)

    @coro
    async def test_rename_to_own_name_in_other_case(self):
        made = await self.create(name="Quay")
        code, _h, obj = await self.call("PUT", f"/api/registries/{made['id']}", {"name": "QUAY"})
        self.assertEqual(code, 200)
        self.assertEqual(obj["name"], "QUAY")

    # --- delete ----------------------------------------------------------------------------

    @coro
    async def test_delete(self):
        made = await self.create()
        code, headers, obj = await self.call("DELETE", f"/api/registries/{made['id']}")
        self.assertEqual(code, 204)
        self.assertIsNone(obj)
        self.assertEqual([r["name"] for r in self.published[-1]], ["Docker Hub"])
        await self.assertUnchanged("DELETE", f"/api/registries/{made['id']}", None, 404)
        await self.assertUnchanged("DELETE", "/api/registries/x", None, 404)
        _c, _h, obj = await self.call("GET", "/api/registries")
        self.assertEqual(len(obj["items"]), 1)

    # --- test (probe) ------------------------------------------------------------------------

    @coro
    async def test_probe(self):
        made = await self.create(username="bot", password="pw")
        code, _h, obj = await self.call("POST", f"/api/registries/{made['id']}/test")
        self.assertEqual(code, 200, obj)
        self.assertEqual(obj, {"ok": True, "status": 200, "latency_ms": 12.5, "auth": "bearer",
                               "error": None, "steps": []})
        [row] = self.upstreams.probes
        self.assertEqual((row["id"], row["url"], row["password"]), (made["id"], "https://quay.io", "pw"))

    @coro
    async def test_probe_failure_shapes(self):
        self.upstreams.probe_result = {"ok": False, "error": "connection refused", "extra": 1}
        _c, _h, obj = await self.call("POST", "/api/registries/1/test")
        self.assertEqual(obj, {"ok": False, "status": None, "latency_ms": None, "auth": "unknown",
                               "error": "connection refused", "steps": []})
        self.upstreams.probe_result = RuntimeError("boom")
        code, _h, obj = await self.call("POST", "/api/registries/1/test")
        self.assertEqual(code, 200)
        self.assertIs(obj["ok"], False)
        self.assertIn("RuntimeError", obj["error"])
        self.flushLoggedErrors(RuntimeError)

    @coro
    async def test_probe_errors(self):
        self.assertError(await self.call("POST", "/api/registries/77/test"), 404)
        self.client = self.stub(self.make_api(upstreams=None))
        self.assertError(await self.call("POST", "/api/registries/1/test"), 503)
        self.assertError(await self.call("POST", "/api/registries/77/test"), 404)

    @coro
    async def test_wrong_method(self):
        self.assertError(await self.call("PATCH", "/api/registries/1", {"name": "x"}), 405)
        self.assertError(await self.call("GET", "/api/registries/1/test"), 405)


class FieldWordingTests(unittest.TestCase):
    """How the 400 answers word a field's problem (zmirror.admin.validate)."""

    def test_the_name_limit_is_the_api_s(self):
        from zmirror.admin.registries import NAME_MAX, REGISTRY_FIELDS
        from zmirror.admin.validate import Invalid, check

        self.assertEqual(NAME_MAX, 100)
        check({"name": "x" * NAME_MAX, "url": HUB}, REGISTRY_FIELDS)
        with self.assertRaises(Invalid) as e:
            check({"name": "x" * (NAME_MAX + 1), "url": HUB}, REGISTRY_FIELDS)
        self.assertEqual(e.exception.fields, {"name": "must be at most 100 characters"})
        self.assertEqual(e.exception.message, "invalid input: name must be at most 100 characters")

    def test_no_field_name_twice(self):
        from zmirror.admin.validate import Invalid, field_phrase, field_reason, invalid

        self.assertEqual(field_reason("prefix", "prefix must not be empty"), "must not be empty")
        self.assertEqual(field_reason("prefix", "Prefix is longer than 5"), "is longer than 5")
        self.assertEqual(field_reason("prefix", "prefix"), "prefix")
        self.assertEqual(field_reason("proxy", "proxy URL has no host"), "proxy URL has no host")
        self.assertEqual(field_phrase("proxy", "proxy URL has no host"), "proxy URL has no host")
        self.assertEqual(field_reason("name", "must not be empty"), "must not be empty")
        self.assertEqual(field_phrase("prefix", "prefix must not be empty"),
                         "prefix must not be empty")
        self.assertEqual(field_phrase("digest", "give either repository or digest, not both"),
                         "digest: give either repository or digest, not both")
        self.assertEqual(field_phrase("id", "required"), "id required")
        e = invalid({"prefix": "prefix must not be empty", "note": "must be a string"})
        self.assertEqual(e.message, "invalid input: prefix must not be empty, note must be a string")
        self.assertEqual(e.fields, {"prefix": "must not be empty", "note": "must be a string"})
        self.assertEqual(invalid({"page": "must be at least 1"}, "query").message,
                         "invalid query: page must be at least 1")
        # whoever builds an Invalid gets the field reasons without the name
        self.assertEqual(Invalid("x", {"url": "url must not be empty"}).fields,
                         {"url": "must not be empty"})

    @coro
    async def test_a_store_s_refusal_names_the_field_once(self):
        from zmirror.admin.http import store_call
        from zmirror.admin.validate import Invalid
        from zmirror.db.errors import InvalidField

        def refuse(**values):
            raise InvalidField("prefix", "prefix must not contain NUL characters")

        with self.assertRaises(Invalid) as e:
            await store_call(refuse, {"prefix": "a"}, "prefix")
        self.assertEqual(e.exception.message, "invalid input: prefix must not contain NUL characters")
        self.assertEqual(e.exception.fields, {"prefix": "must not contain NUL characters"})


class NormalizeUrlTests(unittest.TestCase):
    def test_good(self):
        cases = {
            "https://registry-1.docker.io": "https://registry-1.docker.io",
            " HTTPS://Quay.IO/ ": "https://quay.io",
            "http://127.0.0.1:5000": "http://127.0.0.1:5000",
            "http://[::1]:5000/x/y/": "http://[::1]:5000/x/y",
        }
        for raw, want in cases.items():
            self.assertEqual(normalize_url(raw), want)

    def test_bad(self):
        for raw in (None, 1, "", "//x", "mailto:a@b", "https://a@b", "https://b?x", "https://b#",
                    "https://b:abc", "http://b\n.example"):
            with self.assertRaises(ValueError):
                normalize_url(raw)


class RegistryStoreRealDatabaseTests(unittest.TestCase):
    """The store on the real adbapi pools (threads), as in production."""

    def setUp(self):
        from tests.fixtures.pgserver import temp_database

        self.db = temp_database(self)
        self.clock = Clock()
        self.store = RegistryStore(self.db, self.clock)
        self.seen = []
        self.unsubscribe = self.store.subscribe(self.seen.append)

    @coro
    async def test_crud_and_notifications(self):
        row = await self.store.create("Quay", "https://quay.io/", priority=5, username="u",
                                      password="p")
        self.assertEqual(row["url"], "https://quay.io")
        self.assertEqual([r["name"] for r in self.seen[-1]], ["Docker Hub", "Quay"])
        row = await self.store.update(row["id"], priority=0)
        self.assertEqual([r["name"] for r in self.seen[-1]], ["Quay", "Docker Hub"])
        self.assertEqual(await self.store.get(row["id"]), row)
        with self.assertRaises(TypeError):
            await self.store.update(row["id"], colour="red")
        await self.store.delete(row["id"])
        self.assertEqual(len(self.seen), 3)
        with self.assertRaises(NotFound):
            await self.store.get(row["id"])
        with self.assertRaises(NotFound):
            await self.store.update(row["id"], name="x")
        with self.assertRaises(NotFound):
            await self.store.delete(row["id"])
        with self.assertRaises(ValueError):
            await self.store.create("x", "ftp://x")
        self.assertEqual(len(self.seen), 3)
        self.unsubscribe()
        await self.store.create("Later", "https://later.example")
        self.assertEqual(len(self.seen), 3)
        published = []
        self.store.subscribe(published.append)
        rows = await self.store.publish()
        self.assertEqual(published, [rows])

    @coro
    async def test_failing_subscriber_does_not_break_changes(self):
        def bad(rows):
            raise RuntimeError("subscriber bug")

        self.store.subscribe(bad)
        row = await self.store.create("Quay", "https://quay.io")
        self.assertEqual(row["name"], "Quay")
        self.assertEqual(len(self.seen), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @coro
    async def test_concurrent_duplicate_creates(self):
        ds = [Deferred.fromCoroutine(self.store.create("Same", f"https://h{i}.example"))
              for i in range(20)]
        results = await DeferredList(ds, consumeErrors=True)
        ok = [r for success, r in results if success]
        failed = [r for success, r in results if not success]
        self.assertEqual(len(ok), 1)
        self.assertEqual(len(failed), 19)
        for f in failed:
            self.assertIsInstance(f.value, Conflict)
            self.assertEqual(f.value.field, "name")
        rows = await self.db.query("SELECT count(*) AS n FROM registries WHERE name = 'Same'")
        self.assertEqual(rows, [{"n": 1}])


# the same tests against a real PostgreSQL (tests/fixtures/pgserver.py)
from tests.fixtures.pgserver import on_postgresql  # noqa: E402

RegistryRoutePostgresTests = on_postgresql(RegistryRouteTests)
RegistryStoreRealDatabasePostgresTests = on_postgresql(RegistryStoreRealDatabaseTests)
