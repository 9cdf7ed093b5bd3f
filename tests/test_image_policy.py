"""The image policy: the evaluator (allow/deny, namespaces, tags, digest pins, order),
the rule store (SQLite and PostgreSQL), and the hooks in the pull path (refused before
any upstream request; a tag refused once it resolved to a pinned digest)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import on_postgresql, temp_database
from zmirror.auth.imagepolicy import CLIENT_MESSAGE, ImagePolicy
from zmirror.db.errors import Conflict, InvalidField, NotFound
from zmirror.db.policyrules import PolicyRuleStore
from zmirror.metrics import Metrics
from zmirror.oci.errors import RegistryError
from zmirror.oci.names import Repo
from zmirror.oci.reference import BLOB, MANIFEST, TAGS, RegistryPath

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def policy(*rules, metrics=None) -> ImagePolicy:
    p = ImagePolicy(metrics=metrics)
    p.set_rules([{"id": i + 1, "action": a, "pattern": pat, "note": "", "position": (i + 1) * 10,
                  "enabled": True} for i, (a, pat) in enumerate(rules)])
    return p


def allowed(p: ImagePolicy, name: str, **kw) -> bool:
    return p.decide(name, **kw).allowed


class EvaluatorTests(unittest.TestCase):
    def test_no_rules_allow_everything(self):
        p = policy()
        d = p.decide("library/nginx", tag="latest")
        self.assertEqual((d.allowed, d.rule, d.reason), (True, None, "no_rules"))
        p.check(RegistryPath(MANIFEST, "library/nginx", "latest"))  # no error

    def test_allow_list_per_namespace(self):
        p = policy(("allow", "library/*"), ("allow", "bitnami/*"))
        self.assertTrue(allowed(p, "library/nginx", tag="1"))
        self.assertTrue(allowed(p, "bitnami/redis", tag="1"))
        d = p.decide("someone/else", tag="1")
        self.assertEqual((d.allowed, d.rule, d.reason), (False, None, "no_allow_rule"))
        self.assertFalse(allowed(p, "library/a/b"))  # '*' stays within one component
        # other namespaces have no rules: everything there
        self.assertTrue(allowed(p, "ghcr.io/any/thing", tag="x"))
        self.assertEqual(p.decide("library/nginx").rule["pattern"], "library/*")

    def test_deny_wins_whatever_the_order(self):
        p = policy(("allow", "library/*"), ("deny", "*:latest"), ("deny", "library/busybox"))
        self.assertTrue(allowed(p, "library/nginx", tag="1.25"))
        d = p.decide("library/nginx", tag="latest")
        self.assertEqual((d.allowed, d.rule["pattern"], d.reason),
                         (False, "*:latest", "deny_rule"))
        self.assertFalse(allowed(p, "library/busybox", tag="1"))
        self.assertFalse(allowed(p, "library/busybox"))  # blobs and tag lists too
        # a tag deny cannot decide a pull without a tag
        self.assertTrue(allowed(p, "library/nginx"))
        self.assertTrue(allowed(p, "library/nginx", digest=D1))

    def test_reported_rule_is_first_by_position(self):
        p = policy(("deny", "library/nginx"), ("deny", "library/*"))
        self.assertEqual(p.decide("library/nginx", tag="1").rule["id"], 1)
        p.set_rules([{"id": 1, "action": "deny", "pattern": "library/nginx", "position": 20},
                     {"id": 2, "action": "deny", "pattern": "library/*", "position": 10}])
        self.assertEqual(p.decide("library/nginx", tag="1").rule["id"], 2)

    def test_everywhere_rules_and_namespaces(self):
        p = policy(("deny", "**"), ("allow", "ghcr.io/team/**"))
        self.assertFalse(allowed(p, "library/nginx", tag="1"))
        self.assertFalse(allowed(p, Repo("ghcr.io", "team/x"), tag="1"))  # deny wins
        p = policy(("allow", "ghcr.io/team/**"))
        self.assertTrue(allowed(p, Repo("ghcr.io", "team/a/b"), tag="1"))
        self.assertFalse(allowed(p, Repo("ghcr.io", "other/a"), tag="1"))
        self.assertTrue(allowed(p, "library/nginx", tag="1"))  # docker.io has no rules
        self.assertTrue(allowed(p, Repo("ghcr.io.example.com", "team/a"), tag="1"))

    def test_digest_pins(self):
        p = policy(("deny", f"library/nginx@{D1}"))
        self.assertFalse(allowed(p, "library/nginx", digest=D1))
        self.assertTrue(allowed(p, "library/nginx", digest=D2))
        self.assertTrue(allowed(p, "library/nginx", tag="latest"))  # not resolved yet
        self.assertFalse(allowed(p, "library/nginx", tag="latest", digest=D1))  # resolved to it
        self.assertTrue(allowed(p, "library/redis", digest=D1))
        with self.assertRaises(RegistryError):
            p.check_resolved(RegistryPath(MANIFEST, "library/nginx", "latest"), D1)
        p.check_resolved(RegistryPath(MANIFEST, "library/nginx", "latest"), D2)
        # an allow pin: only that manifest of the repository, its blobs and tag list
        p = policy(("allow", f"library/nginx@{D1}"))
        self.assertTrue(allowed(p, "library/nginx", digest=D1))
        self.assertFalse(allowed(p, "library/nginx", digest=D2))
        self.assertTrue(allowed(p, "library/nginx"))
        self.assertFalse(allowed(p, "library/nginx", tag="x", digest=D2))

    def test_digest_pulls_held_to_repository_rules(self):
        p = policy(("allow", "library/nginx:1.*"))
        self.assertTrue(allowed(p, "library/nginx", tag="1.25"))
        self.assertFalse(allowed(p, "library/nginx", tag="latest"))
        self.assertTrue(allowed(p, "library/nginx", digest=D1))  # its repository is allowed
        self.assertFalse(allowed(p, "library/redis", digest=D1))

    def test_disabled_and_broken_rows_skipped(self):
        p = ImagePolicy()
        p.set_rules([{"id": 1, "action": "deny", "pattern": "library/*", "enabled": False},
                     {"id": 2, "action": "deny", "pattern": "Not A Pattern", "enabled": True}])
        self.assertEqual(p.count, 0)
        self.assertTrue(allowed(p, "library/nginx"))

    def test_check_raises_denied_with_rule_internal_and_counts(self):
        metrics = Metrics()
        p = policy(("deny", "library/nginx"), metrics=metrics)
        for kind, ref in ((MANIFEST, "latest"), (MANIFEST, D1), (BLOB, D1), (TAGS, "")):
            with self.assertRaises(RegistryError) as cm:
                p.check(RegistryPath(kind, "library/nginx", ref))
            e = cm.exception
            self.assertEqual((e.code, e.status, e.message), ("DENIED", 403, CLIENT_MESSAGE))
            self.assertNotIn(b"rule", e.body())  # the rule is for the admin's log only
            self.assertEqual(e.internal["rule"]["pattern"], "library/nginx")
        self.assertEqual(metrics.policy_refusals.labels("deny_rule")._value.get(), 4)
        self.assertIn(b'zmirror_policy_refusals_total{reason="deny_rule"} 4.0',
                      metrics.exposition())

    @given(st.sampled_from(["library/nginx", "library/redis", "bitnami/redis", "a/b/c"]),
           st.sampled_from(["latest", "1.25", "v2"]),
           st.lists(st.tuples(st.sampled_from(["allow", "deny"]),
                              st.sampled_from(["library/*", "**", "*:latest", "bitnami/**",
                                               "library/nginx", "a/**:v*"])), max_size=5))
    @settings(max_examples=200, deadline=None)
    def test_property_deny_never_loses_and_allow_list_binds(self, name, tag, rules):
        p = policy(*rules)
        d = p.decide(name, tag=tag)
        from zmirror.oci.patterns import parse_ref_pattern
        matching = [(a, parse_ref_pattern(t)) for a, t in rules]
        if any(a == "deny" and pat.matches(name, tag=tag) for a, pat in matching):
            self.assertFalse(d.allowed)
        elif any(a == "allow" for a, _ in matching):
            self.assertEqual(d.allowed, any(a == "allow" and pat.matches(name, tag=tag)
                                            for a, pat in matching))
        else:
            self.assertTrue(d.allowed)
        # adding a deny rule never allows more
        if d.allowed is False:
            self.assertFalse(policy(*rules, ("deny", "library/nginx")).decide(name, tag=tag).allowed)


class StoreTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.db = temp_database(self)
        self.store = PolicyRuleStore(self.db, self.clock)
        self.policy = ImagePolicy(self.store)
        self.seen = []
        self.store.subscribe(self.seen.append)

    @coro
    async def test_crud_normalizes_and_publishes(self):
        self.assertFalse(self.policy.loaded)
        await self.policy.ready()
        self.assertTrue(self.policy.loaded)
        r = await self.store.create("deny", " docker.io/nginx:latest ", note="no latest")
        self.assertEqual((r["action"], r["pattern"], r["enabled"], r["note"], r["position"]),
                         ("deny", "library/nginx:latest", True, "no latest", 10))
        self.assertFalse(self.policy.decide("library/nginx", tag="latest").allowed)
        r2 = await self.store.create("allow", "library/*")
        self.assertEqual(r2["position"], 20)
        self.assertEqual([x["id"] for x in self.seen[-1]], [r["id"], r2["id"]])
        with self.assertRaises(Conflict):
            await self.store.create("deny", "nginx:latest")
        self.clock.advance(5)
        up = await self.store.update(r["id"], enabled=False, position=30)
        self.assertEqual((up["enabled"], up["position"], up["updated_at"]), (False, 30, 1005))
        self.assertTrue(self.policy.decide("library/nginx", tag="latest").allowed)
        self.assertEqual([x["id"] for x in self.seen[-1]], [r2["id"]])
        self.assertEqual([x["id"] for x in await self.store.list()], [r2["id"], r["id"]])
        await self.store.delete(r["id"])
        with self.assertRaises(NotFound):
            await self.store.get(r["id"])
        with self.assertRaises(NotFound):
            await self.store.delete(r["id"])

    @coro
    async def test_bad_fields(self):
        for kw, field in (({"action": "maybe", "pattern": "a"}, "action"),
                          ({"action": "deny", "pattern": ""}, "pattern"),
                          ({"action": "deny", "pattern": "A/B"}, "pattern"),
                          ({"action": "deny", "pattern": 7}, "pattern"),
                          ({"action": "deny", "pattern": "a\x00b"}, "pattern"),
                          ({"action": "deny", "pattern": "a", "position": -1}, "position"),
                          ({"action": "deny", "pattern": "a", "position": True}, "position"),
                          ({"action": "deny", "pattern": "a", "note": 3}, "note"),
                          ({"action": "deny", "pattern": "a", "enabled": "yes"}, "enabled")):
            with self.assertRaises(InvalidField) as cm:
                await self.store.create(**kw)
            self.assertEqual(cm.exception.field, field)
        self.assertEqual(await self.store.list(), [])


StorePostgresTests = on_postgresql(StoreTests)


MANIFEST_BODY = b'{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "layers": []}'


class PolicyOnly:
    """The registry policy reduced to the image policy (RegistryRoutes' interface)."""

    def __init__(self, image_policy):
        self.image_policy = image_policy

    async def authorize_ping(self, request):
        from zmirror.identity import Identity
        return Identity()

    async def authorize(self, request, path):
        from zmirror.identity import Identity
        self.image_policy.check(path)
        return Identity()


class PullPathTests(unittest.TestCase):
    """Against a fake upstream: a refused pull never reaches it; a tag that resolves
    to a pinned digest is refused before its body is sent."""

    def setUp(self):
        from tests.fixtures.proxyenv import ProxyEnv
        from zmirror.testing import FakeRegistry

        self.up = FakeRegistry()
        self.digest = self.up.add_manifest("library/nginx", "latest", MANIFEST_BODY)
        self.up.add_manifest("library/nginx", "stable", MANIFEST_BODY)
        self.blob = self.up.add_blob(b"layer")
        self.policy = ImagePolicy()
        self.env = ProxyEnv([("up1.fake", self.up)], policy=PolicyOnly(self.policy))
        self.env.proxy.image_policy = self.policy

    def code(self, path):
        import json
        resp, body = self.env.request("GET", path)
        return resp.code, (json.loads(body)["errors"][0] if resp.code >= 400 else None)

    def test_deny_repository_no_upstream_request(self):
        self.policy.set_rules([{"id": 1, "action": "deny", "pattern": "library/nginx"}])
        for path in ("/v2/nginx/manifests/latest", f"/v2/nginx/manifests/{self.digest}",
                     f"/v2/nginx/blobs/{self.blob}", "/v2/nginx/tags/list"):
            status, err = self.code(path)
            self.assertEqual((status, err["code"], err["message"]), (403, "DENIED", CLIENT_MESSAGE))
        self.assertEqual(self.env.upstream_paths(self.up), [])
        self.assertEqual({r.kind for r in self.env.log.records}, {"denied"})
        self.policy.set_rules([])
        self.assertEqual(self.code("/v2/nginx/manifests/latest")[0], 200)

    def test_digest_pin_refuses_every_tag_resolving_to_it(self):
        self.policy.set_rules([{"id": 1, "action": "deny", "pattern": f"library/nginx@{self.digest}"}])
        self.assertEqual(self.code(f"/v2/nginx/manifests/{self.digest}")[0], 403)
        self.assertEqual(self.env.upstream_paths(self.up), [])  # refused before asking
        for tag in ("latest", "stable"):
            status, err = self.code(f"/v2/nginx/manifests/{tag}")
            self.assertEqual((status, err["code"]), (403, "DENIED"), tag)
        self.assertEqual(self.code(f"/v2/nginx/blobs/{self.blob}")[0], 200)

    def test_access_policy_hook(self):
        """AccessPolicy.authorize refuses after the credentials, before the proxy core."""
        from tests.fixtures.auth import make_env

        async def go():
            env = make_env(self)
            await env.whitelists.create("nginx")
            env.policy.image_policy = policy(("deny", "*:latest"))
            resp, body = await env.call("GET", "http://mirror/v2/nginx/manifests/latest")
            self.assertEqual(resp.code, 403)
            self.assertEqual(env.proxy.pulls, [])
            resp, body = await env.call("GET", "http://mirror/v2/nginx/manifests/1.25")
            self.assertEqual(resp.code, 200)
            # a client that may not pull anonymously is asked to log in first (401)
            resp, body = await env.call("GET", "http://mirror/v2/private/x/manifests/latest")
            self.assertEqual(resp.code, 401)

        from twisted.internet.defer import ensureDeferred
        return ensureDeferred(go())


class OtherProcessTests(unittest.TestCase):
    """A rule written by another process (the CLI, another node on SQLite's file) reaches the
    running evaluator through the database watch and the Reloader, as the whitelist does."""

    @coro
    async def test_watch_reports_the_table_and_the_reloader_rereads_it(self):
        import sqlite3

        from zmirror.db.watch import ChangeWatcher
        from zmirror.reload import Reloader, Stores

        db = temp_database(self)
        if getattr(db, "dialect", "sqlite") != "sqlite":
            raise unittest.SkipTest("the SQLite watch")
        watcher = ChangeWatcher.for_database(db)
        self.addCleanup(watcher.close)
        store = PolicyRuleStore(db, Clock())
        evaluator = ImagePolicy(store)
        reloader = Reloader(None, Stores(policy_rules=store))
        self.assertIn("policy_rules", await watcher.check())
        other = sqlite3.connect(str(db.path), isolation_level=None)
        self.addCleanup(other.close)
        other.execute("INSERT INTO policy_rules (action, pattern, created_at, updated_at)"
                      " VALUES ('deny', 'library/nginx', 1, 1)")
        changed = await watcher.check()
        self.assertEqual(changed, {"policy_rules"})
        self.assertTrue(evaluator.decide("library/nginx").allowed)
        await reloader.refresh_stores(changed)
        self.assertFalse(evaluator.decide("library/nginx").allowed)
        other.execute("UPDATE policy_rules SET enabled = 0, updated_at = 2")
        await reloader.refresh_stores(await watcher.check())
        self.assertTrue(evaluator.decide("library/nginx").allowed)


class TwoNodesPostgresTests(unittest.TestCase):
    """Two whole services (makeService) on one PostgreSQL database: a rule added on node a
    refuses pulls on node b within 2 s (the policy_rules trigger, the bus, the Reloader)."""

    def setUp(self):
        from pathlib import Path

        from twisted.internet import reactor

        from tests.fixtures.helpers import write_default_config
        from tests.fixtures.pgserver import fresh_database
        from zmirror.tap import Options, makeService

        self.url = fresh_database(self)
        self.nodes = []
        for name in ("a", "b"):
            data = Path(self.mktemp()).resolve() / name
            write_default_config(data)
            cfg = data / "config.toml"
            line = '# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"'
            cfg.write_text(cfg.read_text().replace(line, f'url = "{self.url}"'))
            opts = Options()
            opts.parseOptions(["--data", str(data), "--listen", "tcp:0:interface=127.0.0.1"])
            top = makeService(opts, reactor)
            top.startService()
            self.addCleanup(top.stopService)
            self.nodes.append(top.components)

    @coro
    async def test_a_rule_added_on_one_node_applies_on_the_other(self):
        import time

        from tests.fixtures.helpers import eventually

        for c in self.nodes:
            await eventually(lambda c=c: c.bus.connects >= 1 and c.table_changes.refreshes >= 1,
                             what="listening")
            await c.table_changes.wait()
        a, b = self.nodes
        evaluator = b.access.policy.image_policy
        self.assertIs(b.proxy.image_policy, evaluator)  # one evaluator, wired into both hooks
        row = await a.access.policy.image_policy.store.create("deny", "library/nginx")
        start = time.monotonic()
        await eventually(lambda: not evaluator.decide("library/nginx").allowed, timeout=2.0,
                         what="the rule on node b")
        self.assertLess(time.monotonic() - start, 2.0)
        await a.access.policy.image_policy.store.delete(row["id"])
        await eventually(lambda: evaluator.decide("library/nginx").allowed, timeout=2.0,
                         what="the rule gone on node b")
