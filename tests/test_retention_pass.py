"""The retention pass (zmirror/cache/retentionpass.py) on a real CacheBlobs (temp dir) and
ManifestCache (SQLite, and PostgreSQL where it runs) behind the pull path: age rules,
quotas, pins, shared blobs, readers, the dry run, last-pull recording and a pull after
eviction (re-fetched on demand)."""

import json
import os
import time

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from tests.fixtures.cache import CacheTestBase
from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import on_postgresql
from zmirror.cache.retention import DAY, Rule
from zmirror.cache.retentionpass import RetentionPass
from zmirror.db.retention import RetentionStore
from zmirror.testing import FakeRegistry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def image(up, repo, tag, config: bytes, *layers: bytes):
    cfg = up.add_blob(config)
    ls = [up.add_blob(x) for x in layers]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": cfg, "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                   "digest": d, "size": len(x)} for d, x in zip(ls, layers)]}).encode()
    img = up.add_manifest(repo, None, body, OCI_MANIFEST)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": img, "size": len(body),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    idx = up.add_manifest(repo, tag, index, OCI_INDEX)
    return idx, img, [cfg] + ls


class ShiftedReactor:
    """The reactor, its clock ahead by ``offset`` s: the blob cache's last accesses age."""

    def __init__(self, real):
        self._real = real
        self.offset = 0.0

    def seconds(self):
        return self._real.seconds() + self.offset

    def __getattr__(self, name):
        return getattr(self._real, name)


class RetentionPassTests(CacheTestBase):
    def make_env(self, upstreams=None):
        from tests.fixtures.cache import stop_transfers
        from tests.fixtures.proxyenv import ProxyEnv
        from zmirror.cache.blobs import CacheBlobs
        from zmirror.cache.manifests import ManifestCache

        self.shifted = ShiftedReactor(reactor)
        self.blobs = CacheBlobs(self.base / "cache", self.db, self.shifted, max_size=self.max_size,
                                idle_timeout=30)
        self.addCleanup(stop_transfers, self.blobs)
        self.manifests = ManifestCache(self.db, reactor, ttl=300)
        self.env = ProxyEnv(upstreams or [("up1.fake", self.up)], blobs=self.blobs,
                            manifests=self.manifests)
        self.manifests.clock = self.env.clock

    def setUp(self):
        super().setUp()
        self.t0 = time.time()
        self.env.clock.advance(self.t0)  # the manifests' times follow the test clock
        self.clock = Clock()
        self.clock.advance(self.t0)
        self.store = RetentionStore(self.db, self.clock)
        self.retention = RetentionPass(self.store, self.blobs, self.manifests, self.clock)
        self.layer_a = os.urandom(200_000)
        self.shared = os.urandom(300_000)
        self.shared_digest = self.up.add_blob(self.shared)
        self.a = image(self.up, "library/a", "1", b'{"a":1}', self.layer_a, self.shared)
        self.b = image(self.up, "library/b", "1", b'{"b":1}', os.urandom(100_000), self.shared)

    async def pull(self, repo, tag, accept=OCI_INDEX + ", " + OCI_MANIFEST, query=""):
        h = {"Accept": accept}
        resp, body = await self.env.arequest("GET", f"/v2/{repo}/manifests/{tag}{query}", headers=h)
        self.assertEqual(resp.code, 200, body)
        child = json.loads(body)["manifests"][0]["digest"]
        resp, body = await self.env.arequest("GET", f"/v2/{repo}/manifests/{child}{query}", headers=h)
        self.assertEqual(resp.code, 200)
        doc = json.loads(body)
        out = {}
        for d in [doc["config"]["digest"]] + [x["digest"] for x in doc["layers"]]:
            resp, data = await self.env.arequest("GET", f"/v2/{repo}/blobs/{d}{query}")
            self.assertEqual(resp.code, 200)
            out[d] = data
        await deferLater(reactor, 0.05, lambda: None)  # index writes after the fills
        return out

    def later(self, days):
        """Time passes for the pass, the manifests and the blobs."""
        self.clock.advance(days * DAY)
        self.env.clock.advance(days * DAY)
        self.shifted.offset += days * DAY

    async def rows(self, table):
        return await self.db.query(f"SELECT * FROM {table}")

    @coro
    async def test_age_rule_evicts_and_a_pull_afterwards_refetches(self):
        await self.start()
        first = await self.pull("library/a", "1")
        await self.store.create_rule("docker.io", max_age_days=30)
        self.later(10)
        dry = await self.retention.dry_run()
        self.assertEqual((dry["blobs"], dry["tags"], dry["manifests"]), (0, 0, 0))
        self.later(30)
        dry = await self.retention.dry_run()
        self.assertEqual((dry["blobs"], dry["bytes"], dry["tags"], dry["manifests"]),
                         (3, sum(len(x) for x in first.values()), 1, 2))
        for d in first:  # a dry run removes nothing
            self.assertTrue(self.blobs.path(d).exists())
        out = await self.retention.run()
        self.assertEqual((out["blobs"], out["tags"], out["manifests"]), (3, 1, 2))
        self.assertEqual(out["items"][0]["size"], len(self.shared))  # largest first
        await deferLater(reactor, 0.05, lambda: None)
        for d in first:
            self.assertFalse(self.blobs.path(d).exists())
            self.assertIsNone(self.blobs.lookup(d))
        self.assertEqual(await self.rows("cache_tags"), [])
        self.assertEqual(await self.rows("cache_manifests"), [])
        self.assertEqual(await self.index_rows(), [])
        # the next pull fetches everything again, byte-exact
        gets = len(self.blob_gets())
        again = await self.pull("library/a", "1")
        self.assertEqual(again, first)
        self.assertEqual(len(self.blob_gets()), gets + 3)

    async def index_rows(self):
        return await self.blobs.db.query("SELECT digest FROM cache_blobs")

    @coro
    async def test_recent_pull_keeps_it(self):
        await self.start()
        await self.pull("library/a", "1")
        await self.store.create_rule("docker.io", max_age_days=30)
        self.later(40)
        await self.pull("library/a", "1")  # hits: every last pull recorded again
        out = await self.retention.run()
        self.assertEqual((out["blobs"], out["tags"], out["manifests"]), (0, 0, 0))

    @coro
    async def test_last_pulls_are_written_in_batches(self):
        await self.start()
        await self.pull("library/a", "1")
        await self.manifests.flush_pulls()
        writes = []
        real_write = self.manifests.db.write

        def counting(f, *a, **kw):
            writes.append(f.__name__)
            return real_write(f, *a, **kw)

        self.manifests.db.write = counting
        self.env.clock.advance(100)
        for _ in range(20):
            await self.pull("library/a", "1")
        self.assertEqual(writes, [])  # hits write nothing
        await self.manifests.flush_pulls()
        self.assertEqual(writes, ["_write_pulls"])
        [tag] = await self.rows("cache_tags")
        self.assertEqual(tag["last_access"], self.t0 + 100)
        for m in await self.rows("cache_manifests"):
            self.assertEqual(m["last_access"], self.t0 + 100)

    @coro
    async def test_quota_evicts_least_recently_pulled(self):
        await self.start()
        a = await self.pull("library/a", "1")
        b = await self.pull("library/b", "1")
        total = sum(len(x) for x in {**a, **b}.values())
        await self.store.create_rule("docker.io", max_size=total - 1)
        out = await self.retention.run()
        self.assertEqual(out["blobs"], 1)
        evicted = [d for d in {**a, **b} if self.blobs.lookup(d) is None]
        self.assertEqual(len(evicted), 1)
        self.assertIn(evicted[0], a)  # library/a was pulled first
        self.assertEqual(out["tags"], 0)
        # the tag stays; its evicted blob is fetched again on demand, byte-exact
        self.assertEqual(await self.pull("library/a", "1"), a)
        self.assertIsNotNone(self.blobs.lookup(evicted[0]))

    @coro
    async def test_pins_are_never_evicted(self):
        await self.start()
        a = await self.pull("library/a", "1")
        b = await self.pull("library/b", "1")
        await self.store.create_rule("docker.io", max_age_days=1, max_size=1)
        await self.store.create_pin("library/a:1")
        self.later(5)
        out = await self.retention.run()
        for d in a:
            self.assertIsNotNone(self.blobs.lookup(d), d)
        # b's own blobs go; the layer it shares with library/a stays
        self.assertEqual([d for d in b if self.blobs.lookup(d) is not None], [self.shared_digest])
        self.assertEqual([(r["repository"], r["tag"]) for r in await self.rows("cache_tags")],
                         [("library/a", "1")])
        self.assertEqual(len(await self.rows("cache_manifests")), 2)  # a's index and image
        self.assertEqual(out["tags"], 1)
        # the global LRU skips them too
        self.blobs.max_size = 1
        self.assertEqual(await self.blobs.evict(), 0)
        for d in a:
            self.assertIsNotNone(self.blobs.lookup(d))

    @coro
    async def test_pins_written_elsewhere_reach_the_lru_at_the_next_check(self):
        await self.start()
        a = await self.pull("library/a", "1")
        await self.retention.check_pins()
        self.blobs.max_size = 1
        await self.store.create_pin("library/a")  # e.g. by a sync job: no refresh_pins() call
        await self.retention.check_pins()
        self.assertEqual(await self.blobs.evict(), 0)
        for d in a:
            self.assertIsNotNone(self.blobs.lookup(d))
        await self.store.delete_pin((await self.store.pins())[0]["id"])
        await self.retention.check_pins()
        self.assertEqual(await self.blobs.evict(), 3)

    @coro
    async def test_eviction_during_a_read_does_not_cut_the_reader(self):
        await self.start()
        a = await self.pull("library/a", "1")
        big = max(a, key=lambda d: len(a[d]))
        entry = self.blobs.lookup(big)
        f = self.blobs.open_file(entry)  # a client reading slowly
        await self.store.create_rule("docker.io", max_age_days=1)
        self.later(5)
        out = await self.retention.run()
        self.assertEqual(out["blobs"], 2)  # not the one being read
        await deferLater(reactor, 0.05, lambda: None)
        self.assertIsNotNone(self.blobs.lookup(big))
        data = b"".join(iter(lambda: f.read(65536), b""))
        self.assertEqual(data, a[big])
        f.close()
        self.blobs.release(entry)
        out = await self.retention.run()  # the next pass takes it
        self.assertEqual(out["blobs"], 1)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(self.blobs.path(big).exists())

    @coro
    async def test_dry_run_of_an_unsaved_rule(self):
        await self.start()
        await self.pull("library/a", "1")
        self.later(3)
        out = await self.retention.dry_run(Rule("docker.io", max_age_days=2))
        self.assertEqual((out["blobs"], out["tags"]), (3, 1))
        self.assertEqual(await self.store.rules(), [])
        out = await self.retention.dry_run(Rule("ghcr.io", max_age_days=2))
        self.assertEqual((out["blobs"], out["tags"]), (0, 0))
        self.assertEqual(len(self.blobs.entries), 3)


class SharedAcrossNamespacesTests(CacheTestBase):
    """A blob cached for docker.io and ghcr.io: docker.io's rule lets its membership go,
    ghcr.io (no rule) keeps the file; a pull from docker.io then confirms it upstream
    (a HEAD) and is served from the cache."""

    def make_env(self, upstreams=None):
        self.ghcr = FakeRegistry()
        super().make_env([("up1.fake", self.up), ("ghcr.fake", self.ghcr)])
        self.env.pool.set_registries([
            {"id": 1, "name": "up1.fake", "url": "http://up1.fake", "priority": 1, "enabled": 1,
             "username": "", "password": "", "namespace": "docker.io"},
            {"id": 2, "name": "ghcr.fake", "url": "http://ghcr.fake", "priority": 2, "enabled": 1,
             "username": "", "password": "", "namespace": "ghcr.io"}])

    @coro
    async def test_shared_blob_stays(self):
        await self.start()
        t0 = time.time()
        clock = Clock()
        clock.advance(t0)
        store = RetentionStore(self.db, clock)
        retention = RetentionPass(store, self.blobs, self.manifests, clock)
        self.ghcr.add_blob(self.data)
        for path in (f"/v2/library/x/blobs/{self.digest}", f"/v2/o/x/blobs/{self.digest}?ns=ghcr.io"):
            resp, body = await self.env.arequest("GET", path)
            self.assertEqual((resp.code, body), (200, self.data))
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.blobs.lookup(self.digest).repos, {"library/x", "ghcr.io/o/x"})
        await store.create_rule("docker.io", max_age_days=7)
        clock.advance(10 * DAY)
        out = await retention.run()
        self.assertEqual((out["blobs"], out["bytes"], out["memberships"]), (0, 0, 1))
        self.assertEqual(self.blobs.lookup(self.digest).repos, {"ghcr.io/o/x"})
        await self.blobs.flush_index()
        rows = await self.blobs.db.query("SELECT repository FROM cache_blob_repos")
        self.assertEqual([r["repository"] for r in rows], ["ghcr.io/o/x"])
        self.assertTrue(self.blobs.path(self.digest).exists())
        # docker.io pulls it again: a HEAD upstream, the body from the cache
        gets = len(self.blob_gets())
        resp, body = await self.env.arequest("GET", f"/v2/library/x/blobs/{self.digest}")
        self.assertEqual((resp.code, body), (200, self.data))
        self.assertEqual(len(self.blob_gets()), gets)
        self.assertEqual(self.env.log.records[-1].cache_hit, True)
        # once ghcr.io has a rule that lets it go too, the file goes
        await store.create_rule("ghcr.io", max_age_days=7)
        clock.advance(30 * DAY)
        out = await retention.run()
        self.assertEqual((out["blobs"], out["bytes"]), (1, len(self.data)))


RetentionPassPostgresTests = on_postgresql(RetentionPassTests)


class UpkeepScheduleTests(unittest.TestCase):
    """CacheUpkeep runs the pass 60 s after start then every 600 s, and writes the
    manifests' last pulls with the blob index (every 30 s and at stop)."""

    def test_schedule(self):
        from tests.fixtures.fakes import FailingCache
        from zmirror.cache.upkeep import CacheUpkeep

        class Manifests(FailingCache):
            pull_flushes = 0

            async def flush_pulls(self):
                self.pull_flushes += 1

        class Pass:
            runs = checks = 0

            async def run(self):
                self.runs += 1

            async def check_pins(self):
                self.checks += 1

        blobs, manifests, retention = FailingCache(), Manifests(), Pass()
        clock = Clock()
        upkeep = CacheUpkeep(blobs, manifests, clock, retention=retention)
        upkeep.start()
        clock.advance(30)
        self.assertEqual((blobs.flushes, manifests.pull_flushes, retention.checks, retention.runs), (1, 1, 1, 0))
        clock.advance(30)
        self.assertEqual(retention.runs, 1)
        for _ in range(20):
            clock.advance(30)
        self.assertEqual(retention.runs, 2)  # 60 + 600 s
        self.successResultOf(upkeep.stop())
        self.assertEqual(manifests.pull_flushes, blobs.flushes)  # the last write at stop too
        clock.advance(3600)
        self.assertEqual(retention.runs, 2)
