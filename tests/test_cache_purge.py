"""Purge and invalidate (zmirror/cache/purge.py): by namespace, repository, tag,
digest or everything; shared blobs stay while another repository uses them; a
reader is never cut; invalidate makes the next pull revalidate (HEAD), stale
serving unchanged; the CLI's rows are applied by the poll."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.fixtures.cache import CacheTestBase
from tests.fixtures.helpers import coro
from zmirror.cache.blobindex import BlobEntry
from zmirror.cache.purge import CachePurge, Scope, history, namespace_of_name, record
from zmirror.testing import sha256

CONFIG_MT = "application/vnd.docker.container.image.v1+json"


def manifest_of(*digests: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"mediaType": CONFIG_MT, "digest": digests[0], "size": 1},
                       "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                   "digest": d, "size": 1} for d in digests[1:]]}).encode()


class PurgeBase(CacheTestBase):
    def setUp(self):
        super().setUp()
        self.env.clock.advance(100_000)  # fetch times well above 0 (what an invalidation writes)
        self.purger = CachePurge(self.db, reactor, blobs=self.blobs, manifests=self.manifests, node="n1")
        self.shared = os.urandom(1000)
        self.own = os.urandom(2000)
        self.d_shared = self.up.add_blob(self.shared)
        self.d_own = self.up.add_blob(self.own)
        self.m_a = self.up.add_manifest("library/a", "v1", manifest_of(self.d_shared, self.d_own))
        self.m_b = self.up.add_manifest("library/b", "v1", manifest_of(self.d_shared))

    async def pull(self, repo: str, tag: str = "v1", blobs=()):
        resp, body = await self.env.arequest("GET", f"/v2/{repo}/manifests/{tag}")
        self.assertEqual(resp.code, 200, body)
        for d in blobs:
            resp, body = await self.env.arequest("GET", f"/v2/{repo}/blobs/{d}")
            self.assertEqual(resp.code, 200)
            for _ in range(200):
                if self.blobs.knows(d, repo):
                    break
                await deferLater(reactor, 0.01, lambda: None)
        await self.blobs.flush_index()
        return body

    async def fill(self):
        await self.start()
        await self.pull("library/a", blobs=(self.d_shared, self.d_own))
        await self.pull("library/b", blobs=(self.d_shared,))
        self.assertEqual(set(self.blobs.entries), {self.d_shared, self.d_own})

    def manifest_requests(self):
        return [r[0] for r in self.up.requests if "/manifests/" in r[2]]

    async def rows(self, sql, params=()):
        return await self.db.query(sql, params)


class PurgeTests(PurgeBase):
    @coro
    async def test_repository_purge_keeps_blobs_another_repository_uses(self):
        await self.fill()
        done = await self.purger.purge(Scope(repository="library/a"))
        self.assertEqual(done, {"blobs": 1, "manifests": 1, "tags": 1})
        self.assertEqual(set(self.blobs.entries), {self.d_shared})
        self.assertEqual(self.blobs.entries[self.d_shared].repos, {"library/b"})
        self.assertFalse(self.blobs.path(self.d_own).exists() and self.blobs.lookup(self.d_own))
        await self.blobs.flush_index()
        rows = await self.rows("SELECT digest, repository FROM cache_blob_repos ORDER BY digest")
        self.assertEqual([(r["digest"], r["repository"]) for r in rows], [(self.d_shared, "library/b")])
        self.assertEqual(await self.rows("SELECT * FROM cache_tags WHERE repository = 'library/a'"), [])
        # library/b is still a hit everywhere; library/a is fetched again
        before = len(self.manifest_requests())
        await self.pull("library/b", blobs=(self.d_shared,))
        self.assertEqual(len(self.manifest_requests()), before)
        await self.pull("library/a")
        self.assertEqual(self.manifest_requests()[before:], ["GET"])
        # the record of purges
        hist = await self.db.read(history, 10)
        self.assertEqual([(h["action"], h["repository"], h["origin"]) for h in hist],
                         [("purge", "library/a", "n1")])

    @coro
    async def test_tag_purge_removes_the_tag_only(self):
        await self.fill()
        done = await self.purger.purge(Scope(repository="library/a", tag="v1"))
        self.assertEqual(done, {"blobs": 0, "manifests": 0, "tags": 1})
        self.assertEqual(set(self.blobs.entries), {self.d_shared, self.d_own})
        self.assertEqual(len(await self.rows("SELECT * FROM cache_manifests")), 2)
        before = len(self.manifest_requests())
        await self.pull("library/a")  # the tag is gone: fetched again
        self.assertEqual(self.manifest_requests()[before:], ["GET"])

    @coro
    async def test_digest_and_everything(self):
        await self.fill()
        done = await self.purger.purge(Scope(digest=self.d_own))
        self.assertEqual(done["blobs"], 1)
        self.assertIsNone(self.blobs.lookup(self.d_own))
        done = await self.purger.purge(Scope(digest=self.m_b))
        self.assertEqual((done["manifests"], done["tags"]), (1, 1))
        done = await self.purger.purge(Scope())
        self.assertEqual(done["blobs"], 1)
        self.assertEqual(self.blobs.entries, {})
        self.assertEqual(await self.rows("SELECT * FROM cache_manifests"), [])
        self.assertEqual(self.manifests.tags, {})

    @coro
    async def test_namespace_purge(self):
        await self.start()
        now = reactor.seconds()
        for digest, repos in (("sha256:" + "1" * 64, {"ghcr.io/o/x"}),
                              ("sha256:" + "2" * 64, {"ghcr.io/o/x", "library/y"}),
                              ("sha256:" + "3" * 64, {"library/y"})):
            self.blobs._add(BlobEntry(digest, 10, now, repos=set(repos)))
        self.assertEqual(namespace_of_name("ghcr.io/o/x"), "ghcr.io")
        self.assertEqual(namespace_of_name("library/y"), "docker.io")
        self.assertEqual(namespace_of_name("localhost/y"), "localhost")
        done = await self.purger.purge(Scope(namespace="ghcr.io"))
        self.assertEqual(done["blobs"], 1)
        self.assertEqual(sorted(self.blobs.entries), ["sha256:" + "2" * 64, "sha256:" + "3" * 64])
        self.assertEqual(self.blobs.entries["sha256:" + "2" * 64].repos, {"library/y"})

    @coro
    async def test_a_purge_never_cuts_a_reader(self):
        await self.fill()
        e = self.blobs.lookup(self.d_own)
        f = self.blobs.open_file(e)
        await self.purger.purge(Scope(repository="library/a"))
        path = self.blobs.path(self.d_own)
        self.assertTrue(path.exists())  # still being read
        self.assertEqual(f.read(), self.own)
        f.close()
        self.blobs.release(e)
        for _ in range(200):
            if not path.exists():
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertFalse(path.exists())


class PurgeDuringDownloadTests(PurgeBase):
    @coro
    async def test_a_purge_during_a_download_neither_cuts_nor_corrupts_it(self):
        await self.fill()
        from twisted.internet.defer import ensureDeferred

        pull = ensureDeferred(self.env.arequest("GET", f"/v2/library/a/blobs/{self.digest}"))
        for _ in range(2000):
            if self.blobs.running(self.digest) is not None or pull.called:
                break
            await deferLater(reactor, 0.001, lambda: None)
        # what the purge does on this node, while the download runs (its shared part, a
        # database write first, would give the download time to finish)
        self.assertIsNotNone(self.blobs.running(self.digest), "the download runs while the purge comes")
        applied = ensureDeferred(self.purger.apply(Scope()))
        await applied
        resp, body = await pull
        self.assertEqual((resp.code, sha256(body)), (200, self.digest))  # whole and verified
        for _ in range(500):
            if self.blobs.lookup(self.digest) is not None:
                break
            await deferLater(reactor, 0.01, lambda: None)
        # the download finished after the purge: kept, and its file is the right one
        self.assertEqual(sha256(self.blobs.path(self.digest).read_bytes()), self.digest)


class InvalidateTests(PurgeBase):
    @coro
    async def test_next_pull_revalidates_with_a_head(self):
        await self.fill()
        await self.pull("library/a")
        self.assertEqual(self.manifest_requests(), ["GET", "GET"])  # the second pull was fresh
        n = await self.purger.invalidate("library/a", "v1")
        self.assertEqual(n, 1)
        rows = await self.rows("SELECT fetched_at FROM cache_tags WHERE repository = 'library/a'")
        self.assertEqual([r["fetched_at"] for r in rows], [0])
        await self.pull("library/a")
        self.assertEqual(self.manifest_requests()[2:], ["HEAD"])  # revalidated, not fetched
        await self.pull("library/a")
        self.assertEqual(self.manifest_requests()[2:], ["HEAD"])  # fresh again
        hits = self.manifests.stats["hits"]
        self.assertGreaterEqual(hits, 2)

    @coro
    async def test_stale_served_while_the_upstream_fails(self):
        await self.fill()
        await self.purger.invalidate("library/a", None)  # every tag of the repository
        self.up.faults["/v2/library/a/manifests/v1"] = [503, 503]
        body = await self.pull("library/a")
        self.assertEqual(sha256(body), self.m_a)
        self.assertEqual(self.manifests.stats["stale_served"], 1)

    @coro
    async def test_a_moved_tag_is_fetched(self):
        await self.fill()
        await self.purger.invalidate("library/a", "v1")
        new = self.up.add_manifest("library/a", "v1", manifest_of(self.d_own))
        body = await self.pull("library/a")
        self.assertEqual(sha256(body), new)
        self.assertEqual(self.manifest_requests()[2:], ["HEAD", "GET"])


class CliRowTests(PurgeBase):
    @coro
    async def test_rows_written_elsewhere_are_applied_by_the_poll(self):
        await self.fill()
        self.assertEqual(await self.purger.poll(), 0)  # the first poll notes the newest row
        # what `zmirror cache purge` writes (another process, no bus)
        await self.db.write(record, Scope(repository="library/a"), "cli", reactor.seconds())
        self.assertIn(self.d_own, self.blobs.entries)
        self.assertEqual(await self.purger.poll(), 1)
        self.assertNotIn(self.d_own, self.blobs.entries)
        self.assertEqual(await self.purger.poll(), 0)  # applied once
        # its own requests are not applied twice
        await self.purger.purge(Scope(repository="library/b"))
        applied = self.purger.applied
        self.assertEqual(await self.purger.poll(), 0)
        self.assertEqual(self.purger.applied, applied)

    @coro
    async def test_a_row_committed_late_below_a_newer_one_is_applied(self):
        await self.fill()
        await self.purger.poll()
        start = self.purger._start

        def row(txn, rid, repository):
            txn.execute("INSERT INTO cache_purges (id, action, repository, origin, created_at) "
                        "VALUES (?, 'purge', ?, 'cli', 0)", (rid, repository))

        await self.db.write(row, start + 5, "library/b")
        self.assertEqual(await self.purger.poll(), 1)
        await self.db.write(row, start + 3, "library/a")  # its transaction committed later
        self.assertEqual(await self.purger.poll(), 1)
        self.assertEqual(self.blobs.entries, {})
        self.assertEqual(await self.purger.poll(), 0)

    @coro
    async def test_rows_from_before_the_start_are_not_applied(self):
        await self.fill()
        await self.db.write(record, Scope(repository="library/a"), "cli", reactor.seconds())
        fresh = CachePurge(self.db, reactor, blobs=self.blobs, manifests=self.manifests)
        await fresh.poll()
        self.assertEqual(await fresh.poll(), 0)
        self.assertIn(self.d_own, self.blobs.entries)

    def test_event_validation(self):
        good = {"action": "purge", "repository": "library/a", "tag": "v1", "digest": None, "namespace": None}
        self.assertEqual(Scope.from_event(good), Scope(repository="library/a", tag="v1"))
        for bad in (None, [], {"action": "drop"}, dict(good, tag="../x"), dict(good, repository=None),
                    dict(good, digest="sha256:zz"), dict(good, namespace=5)):
            self.assertIsNone(Scope.from_event(bad), bad)
