"""The pull-through blob cache (zmirror.cache.blobs): verified blob store, single-flight,
eviction, reader counts, Range from the cache, index writes that survive failures and keep
their order (the upkeep service: tests/test_cache_upkeep.py; the limits on transfer threads,
temp bytes and orphaned downloads: tests/test_cache_limits.py; manifests: tests/test_manifests.py)."""

import json
import os
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest
from twisted.web._newclient import ResponseFailed

from tests.fixtures.cache import CacheTestBase
from tests.fixtures.helpers import coro, eventually, spy_constructor
from zmirror.testing import DOCKER_V2

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_V2, "layers": []}).encode()


class BlobCacheTests(CacheTestBase):
    @coro
    async def test_miss_then_hit(self):
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        resp, body = await self.env.arequest("GET", path)
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, self.data)
        self.assertEqual(self.env.log.records[-1].cache_hit, False)
        # verified and renamed into place
        stored = self.blobs.path(self.digest)
        self.assertEqual(stored.read_bytes(), self.data)
        self.assertEqual(os.listdir(self.base / "cache" / "tmp"), [])
        resp, body = await self.env.arequest("GET", path)
        self.assertEqual(body, self.data)
        self.assertEqual(resp.headers.getRawHeaders(b"docker-content-digest"), [self.digest.encode()])
        self.assertEqual(len(self.blob_gets()), 1)  # second pull local
        self.assertEqual(self.env.log.records[-1].cache_hit, True)
        self.assertEqual(self.env.log.records[-1].bytes, len(self.data))
        # Range and HEAD from the cache
        resp, body = await self.env.arequest("GET", path, headers={"Range": "bytes=10-19"})
        self.assertEqual(resp.code, 206)
        self.assertEqual(body, self.data[10:20])
        self.assertEqual(resp.headers.getRawHeaders(b"content-range"),
                         [f"bytes 10-19/{len(self.data)}".encode()])
        resp, body = await self.env.arequest("GET", path, headers={"Range": "bytes=-5"})
        self.assertEqual(body, self.data[-5:])
        resp, body = await self.env.arequest("GET", path, headers={"Range": f"bytes={len(self.data)}-"})
        self.assertEqual(resp.code, 416)
        resp, body = await self.env.arequest("HEAD", path)
        self.assertEqual((resp.code, body), (200, b""))
        self.assertEqual(len(self.blob_gets()), 1)
        self.assertEqual(self.blobs.summary()["hits"], 5)

    @coro
    async def test_single_flight(self):
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        results = await DeferredList([ensureDeferred(self.env.arequest("GET", path)) for _ in range(8)],
                                     consumeErrors=True)
        for ok, value in results:
            self.assertTrue(ok, value)
            resp, body = value
            self.assertEqual(resp.code, 200)
            self.assertEqual(body, self.data)
        self.assertEqual(len(self.blob_gets()), 1)

    async def _expect_nothing_cached(self, fault):
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        # a broken body is resumed (tests/test_resume.py): these break every time
        self.up.faults[path] = [fault] * 4
        with self.assertRaises(ResponseFailed):
            await self.env.arequest("GET", path)
        self.assertIsNone(self.blobs.lookup(self.digest))
        self.assertFalse(self.blobs.path(self.digest).exists())
        self.assertEqual(os.listdir(self.base / "cache" / "tmp"), [])
        # the next request fetches again and succeeds
        self.up.faults[path] = []
        resp, body = await self.env.arequest("GET", path)
        self.assertEqual(body, self.data)
        self.assertIsNotNone(self.blobs.lookup(self.digest))

    @coro
    async def test_corrupt_upstream_not_cached(self):
        await self._expect_nothing_cached("corrupt")
        self.assertEqual(self.blobs.stats["verify_failures"], 1)

    @coro
    async def test_truncated_upstream_not_cached(self):
        await self._expect_nothing_cached("truncate")

    @coro
    async def test_restart_drops_a_file_cut_short(self):
        """After a crash a renamed blob may have lost its tail (never written out):
        its size no longer matches the index, so it is deleted and fetched again."""
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        await self.env.arequest("GET", path)
        await self.blobs.flush_index()
        stored = self.blobs.path(self.digest)
        with open(stored, "r+b") as f:
            f.truncate(len(self.data) // 3)
        self.make_env()
        await self.start()
        self.assertIsNone(self.blobs.lookup(self.digest))
        self.assertFalse(stored.exists())
        rows = await self.db.query("SELECT digest FROM cache_blobs")
        self.assertEqual(rows, [])
        resp, body = await self.env.arequest("GET", path)
        self.assertEqual(body, self.data)
        self.assertEqual(stored.read_bytes(), self.data)
        self.assertEqual(len(self.blob_gets()), 2)

    @coro
    async def test_restart_verifies_files_the_index_lost(self):
        good = os.urandom(70_000)
        good_digest = self.up.add_blob(good)
        bad_digest = self.up.add_blob(os.urandom(50_000))
        await self.start()
        for digest, content in ((good_digest, good), (bad_digest, b"\0" * 50_000)):
            p = self.blobs.path(digest)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content)  # in place, but no index row
        self.make_env()
        await self.start()
        self.assertEqual(self.blobs.lookup(good_digest).size, len(good))
        self.assertIsNone(self.blobs.lookup(bad_digest))
        self.assertFalse(self.blobs.path(bad_digest).exists())
        rows = await self.db.query("SELECT digest FROM cache_blobs")
        self.assertEqual([r["digest"] for r in rows], [good_digest])
        # the adopted blob is served (after the upstream confirms the repository has it)
        resp, body = await self.env.arequest("GET", f"/v2/library/x/blobs/{good_digest}")
        self.assertEqual(body, good)
        self.assertEqual(self.env.log.records[-1].cache_hit, True)

    @coro
    async def test_restart_deletes_unindexed_files_beyond_the_verification_budget(self):
        from zmirror.cache import blobindex as blobmod

        await self.start()
        p = self.blobs.path(self.digest)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.data)
        self.patch(blobmod, "ADOPT_VERIFY_MAX", len(self.data) - 1)
        self.make_env()
        await self.start()
        self.assertIsNone(self.blobs.lookup(self.digest))
        self.assertFalse(p.exists())  # a cache: fetched again when asked for

    @coro
    async def test_restart_keeps_index_and_cleans_tmp(self):
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        await self.env.arequest("GET", path)
        await self.blobs.flush_index()
        (self.base / "cache" / "tmp" / "leftover.partial").write_bytes(b"half a blob")
        self.make_env()
        await self.start()
        self.assertEqual(os.listdir(self.base / "cache" / "tmp"), [])
        self.assertIsNotNone(self.blobs.lookup(self.digest))
        resp, body = await self.env.arequest("GET", path)
        self.assertEqual(body, self.data)
        self.assertEqual(len(self.blob_gets()), 1)

    @coro
    async def test_delete(self):
        await self.start()
        await self.env.arequest("GET", f"/v2/library/x/blobs/{self.digest}")
        other = self.up.add_blob(b"other blob")
        await self.env.arequest("GET", f"/v2/library/y/blobs/{other}")
        self.assertEqual(await self.blobs.delete(repository="library/x"), 1)
        self.assertIsNone(self.blobs.lookup(self.digest))
        self.assertIsNotNone(self.blobs.lookup(other))
        self.assertEqual(await self.blobs.delete(), 1)
        self.assertEqual(self.blobs.size, 0)


class CrossRepositoryTests(CacheTestBase):
    @coro
    async def test_cached_blob_not_served_for_repository_that_lacks_it(self):
        await self.start()
        await self.env.arequest("GET", f"/v2/private/repo/blobs/{self.digest}")
        # another repository asks for the same digest: the upstream is asked first
        self.up.faults[f"/v2/public/repo/blobs/{self.digest}"] = [404]
        resp, body = await self.env.arequest("GET", f"/v2/public/repo/blobs/{self.digest}")
        self.assertEqual(resp.code, 404)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "BLOB_UNKNOWN")
        # where the upstream confirms it, the cached copy is served (HEAD only upstream)
        resp, body = await self.env.arequest("GET", f"/v2/other/repo/blobs/{self.digest}")
        self.assertEqual(body, self.data)
        self.assertEqual(len(self.blob_gets()), 1)
        self.assertIn("other/repo", self.blobs.lookup(self.digest).repos)


class EvictionTests(CacheTestBase):
    max_size = 7 << 20  # room for two 3 MiB blobs

    @coro
    async def test_blob_larger_than_the_cache_is_served_not_kept(self):
        await self.start()
        await self.env.arequest("GET", f"/v2/library/x/blobs/{self.digest}")
        huge = os.urandom(8 << 20)
        digest = self.up.add_blob(huge)
        resp, body = await self.env.arequest("GET", f"/v2/library/x/blobs/{digest}")
        self.assertEqual(body, huge)

        self.assertIsNone(self.blobs.lookup(digest))
        await eventually(lambda: not self.blobs.path(digest).exists(), what="the unlink")
        self.assertIsNotNone(self.blobs.lookup(self.digest))  # the rest of the cache survives

    @coro
    async def test_lru_order_and_readers(self):
        await self.start()
        blobs = [os.urandom(3 << 20) for _ in range(3)]
        digests = [self.up.add_blob(b) for b in blobs]
        for d in digests[:2]:
            await self.env.arequest("GET", f"/v2/library/x/blobs/{d}")
        # touch the first: the second becomes least recently used
        await self.env.arequest("GET", f"/v2/library/x/blobs/{digests[0]}")
        # a reader holds the second open while the third arrives
        entry = self.blobs.lookup(digests[1])
        f = self.blobs.open_file(entry)
        await self.env.arequest("GET", f"/v2/library/x/blobs/{digests[2]}")
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.05, lambda: None)
        self.assertIsNotNone(self.blobs.lookup(digests[0]))
        self.assertIsNone(self.blobs.lookup(digests[1]))
        self.assertIsNotNone(self.blobs.lookup(digests[2]))
        self.assertLessEqual(self.blobs.size, self.max_size)
        # still readable by its reader, unlinked when released
        self.assertEqual(os.pread(f.fileno(), 10, 0), blobs[1][:10])
        self.assertTrue(self.blobs.path(digests[1]).exists())
        f.close()
        self.blobs.release(entry)
        await eventually(lambda: not self.blobs.path(digests[1]).exists(), what="the unlink")

    @coro
    async def test_deleted_while_read_then_fetched_again_keeps_new_copy(self):
        # found by tests/e2e/test_cache_e2e.py: the old copy's deferred unlink went by path
        # and removed the copy fetched after the delete (index said cached, file gone)
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        await self.env.arequest("GET", path)
        old = self.blobs.lookup(self.digest)
        f = self.blobs.open_file(old)  # a slow reader of the old copy
        self.assertEqual(await self.blobs.delete(digest=self.digest), 1)
        resp, body = await self.env.arequest("GET", path)  # fetched and cached again
        self.assertEqual(body, self.data)
        self.assertIsNotNone(self.blobs.lookup(self.digest))
        self.assertEqual(os.pread(f.fileno(), 10, 0), self.data[:10])
        f.close()
        self.blobs.release(old)
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.blobs.path(self.digest).read_bytes(), self.data)
        resp, body = await self.env.arequest("GET", path)
        self.assertEqual(body, self.data)
        self.assertEqual(len(self.blob_gets()), 2)


class CreatorLeavesTests(CacheTestBase):
    """The request that started a download goes away before the upstream answered
    (found by tests/e2e/test_cache_e2e.py: a client that had joined got a 502
    "response failed: CancelledError" and the upstream was marked failed)."""

    @coro
    async def test_joined_request_survives_creator_cancel(self):
        from twisted.internet.task import deferLater

        from zmirror.oci.reference import parse_path
        from zmirror.registry.routes import PullRequest

        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        gate = Deferred()
        real = self.env.agent.request

        def held(method, uri, headers=None, bodyProducer=None):
            if b"/blobs/" not in uri:
                return real(method, uri, headers, bodyProducer)
            d = Deferred()  # cancellable like an Agent request still waiting for headers
            gate.addCallback(lambda _: real(method, uri, headers, bodyProducer).chainDeferred(d))
            return d

        self.env.agent.request = held

        def pull():
            return Deferred.fromCoroutine(self.env.proxy.pull(PullRequest(parse_path(path), b"GET")))

        creator = pull()
        joined = pull()
        creator.addErrback(lambda f: None)  # its client left: cancelled below
        creator.cancel()
        gate.callback(None)
        for _ in range(200):
            self.env.agent.flush()
            if joined.called:
                break
            await deferLater(reactor, 0.001, lambda: None)
        result = await joined  # a result to send, not the creator's cancellation
        self.assertEqual(result.status, 200)
        # nobody reads it, the download still completes and is cached
        for _ in range(2000):
            self.env.agent.flush()
            if self.blobs.lookup(self.digest) is not None:
                break
            await deferLater(reactor, 0.001, lambda: None)
        self.assertIsNotNone(self.blobs.lookup(self.digest))
        self.assertEqual(len(self.blob_gets()), 1)
        self.assertEqual(self.env.pool.upstreams[0].health.consecutive_failures, 0)

    @coro
    async def test_temp_file_not_creatable_relays_without_caching(self):
        import shutil

        from zmirror.cache import blobs as blobmod

        await self.start()
        tmp = self.base / "cache" / "tmp"
        shutil.rmtree(tmp)
        tmp.write_bytes(b"not a directory")  # the download's temp file cannot be created
        path = f"/v2/library/x/blobs/{self.digest}"
        resp, body = await self.env.arequest("GET", path, timeout=5)
        self.assertEqual((resp.code, body), (200, self.data))  # relayed, not a 503
        self.assertEqual(self.blobs.downloads, {})
        self.assertIsNone(self.blobs.lookup(self.digest))
        summary = self.blobs.summary()
        self.assertFalse(summary["storing"])
        self.assertIn("cannot create a temporary file", summary["store_error"])
        self.assertEqual(summary["write_failures"], 1)
        # meanwhile misses go straight to upstream, without trying the disk again
        resp, body = await self.env.arequest("GET", path, timeout=5)
        self.assertEqual((resp.code, body), (200, self.data))
        self.assertEqual(self.blobs.summary()["write_failures"], 1)
        self.assertIs(self.env.log.records[-1].cache_hit, False)  # logged as a miss
        self.assertEqual(self.blobs.summary()["misses"], 2)
        self.assertEqual(len(self.blob_gets()), 3)
        # after STORE_RETRY seconds the cache tries again
        tmp.unlink()
        self.blobs._store_failed_at -= blobmod.STORE_RETRY
        resp, body = await self.env.arequest("GET", path)
        self.assertEqual((resp.code, body), (200, self.data))
        self.assertTrue(self.blobs.storing())
        self.assertIsNotNone(self.blobs.lookup(self.digest))

    @coro
    async def test_write_error_mid_download_then_relay(self):
        """The disk fails while a blob is written (full, I/O error): its client is
        cut off (the bytes are nowhere), later misses are relayed uncached."""
        import errno

        from zmirror.cache import download as downloadmod

        class FailingFile:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, name):
                return getattr(self.f, name)

        real = downloadmod.DigestWorker

        class Worker(real):
            def __init__(self, *a, file=None, **kw):
                super().__init__(*a, file=FailingFile(file), **kw)

        self.patch(downloadmod, "DigestWorker", Worker)
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        with self.assertRaises(ResponseFailed):
            await self.env.arequest("GET", path, timeout=5)
        self.assertIsNone(self.blobs.lookup(self.digest))
        self.assertEqual(os.listdir(self.base / "cache" / "tmp"), [])
        self.assertFalse(self.blobs.storing())
        self.assertIn("No space left", self.blobs.summary()["store_error"])
        resp, body = await self.env.arequest("GET", path, timeout=5)
        self.assertEqual((resp.code, body), (200, self.data))
        self.assertIsNone(self.blobs.lookup(self.digest))


class _SlowQueries:
    """A Database whose queries wait for ``gate``: a cache start that takes its time."""

    def __init__(self, db):
        self.db = db
        self.gate = Deferred()

    def __getattr__(self, name):
        return getattr(self.db, name)

    async def query(self, *a):
        if not self.gate.called:
            waiter = Deferred()
            self.gate.addCallback(lambda r: (waiter.callback(None), r)[1])
            await waiter
        return await self.db.query(*a)


class StartupTests(CacheTestBase):
    """Requests that arrive while the caches load their index at start wait for it
    (found by tests/e2e/test_cache_e2e.py: with 60k cached blobs, a pull right after a
    restart with the upstream down answered 502 instead of the cached blob)."""

    async def restart_slowly(self):
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.1, lambda: None)  # let the async index writes land
        self.make_env()
        self.blobs.db = _SlowQueries(self.db)
        self.manifests.db = _SlowQueries(self.db)
        started = DeferredList([Deferred.fromCoroutine(self.blobs.start()),
                                Deferred.fromCoroutine(self.manifests.start())], fireOnOneErrback=True)
        del self.env.agent.agents["up1.fake"]  # only the cache can answer
        return started

    async def check_waits(self, started, method, path):
        from twisted.internet.task import deferLater

        req = ensureDeferred(self.env.arequest(method, path))
        await deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(req.called, "answered before the cache index was loaded")
        self.blobs.db.gate.callback(None)
        self.manifests.db.gate.callback(None)
        await started
        resp, body = await req
        self.assertEqual(resp.code, 200)
        return body

    @coro
    async def test_blob_request_waits_for_the_index(self):
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        await self.env.arequest("GET", path)
        started = await self.restart_slowly()
        body = await self.check_waits(started, "GET", path)
        self.assertEqual(body, self.data)
        self.assertEqual(len(self.blob_gets()), 1)
        self.assertEqual(os.listdir(self.base / "cache" / "tmp"), [])

    @coro
    async def test_manifest_request_waits_for_the_index(self):
        await self.start()
        tag_path = "/v2/library/nginx/manifests/latest"
        self.up.add_manifest("library/nginx", "latest", MANIFEST)
        await self.env.arequest("GET", tag_path)
        started = await self.restart_slowly()
        body = await self.check_waits(started, "GET", tag_path)
        self.assertEqual(body, MANIFEST)


class SendfileTests(unittest.TestCase):
    """Cached blobs go out with sendfile(2) over a real TCP connection."""

    @coro
    async def test_file_served_by_sendfile(self):
        import treq
        from twisted.web.resource import Resource
        from twisted.web.server import NOT_DONE_YET, Site

        from zmirror.transfer import follower
        from zmirror.transfer.bodies import FileBody

        data = os.urandom((5 << 20) + 123)
        path = Path(self.mktemp())
        path.write_bytes(data)
        used = spy_constructor(self, follower, "_SendfileWriter")

        class Blob(Resource):
            isLeaf = True

            def render_GET(self, request):
                rng = request.getHeader(b"range")
                start, end, status = 0, None, 200
                headers = {b"Content-Length": str(len(data)).encode()}
                if rng:
                    start, end, status = 1000, 1999, 206
                    headers = {b"Content-Length": b"1000"}
                result = FileBody(status, headers, open(path, "rb", buffering=0), len(data),
                                    start, end, reactor=reactor)
                d = Deferred.fromCoroutine(result.send(request))
                d.addCallback(lambda _: request.finish())
                return NOT_DONE_YET

        port = reactor.listenTCP(0, Site(Blob()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/blob"
        from twisted.web.client import HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        resp = await treq.get(url, pool=pool)
        body = await treq.content(resp)
        self.assertEqual(len(body), len(data))
        self.assertEqual(body, data)
        resp = await treq.get(url, headers={"Range": "bytes=1000-1999"}, pool=pool)
        self.assertEqual(await treq.content(resp), data[1000:2000])
        self.assertEqual(len(used), 2)


class HeadReaderCountTests(CacheTestBase):
    @coro
    async def test_head_hits_take_no_reader(self):
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        await self.env.arequest("GET", path)
        entry = self.blobs.lookup(self.digest)
        for _ in range(3):
            resp, body = await self.env.arequest("HEAD", path)
            self.assertEqual((resp.code, body), (200, b""))
        self.assertEqual(self.blobs.summary()["hits"], 3)
        self.assertEqual(entry.readers, 0)

    @coro
    async def test_blob_read_during_heads_survives_eviction(self):
        """The invariant the reader count exists for: never unlink a blob while it is read."""
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        await self.env.arequest("GET", path)
        entry = self.blobs.lookup(self.digest)
        f = self.blobs.open_file(entry)  # a slow reader
        for _ in range(3):
            await self.env.arequest("HEAD", path)
        await self.blobs.delete(digest=self.digest)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(self.blobs.path(self.digest).exists())
        f.close()
        self.blobs.release(entry)
        await eventually(lambda: not self.blobs.path(self.digest).exists(), what="the unlink")


class CachedRangeTests(CacheTestBase):
    @coro
    async def test_ranges_from_the_cache(self):
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        size = len(self.data)
        await self.env.arequest("GET", path)
        for value, status, want in (("bytes=10-19", 206, self.data[10:20]),
                                    ("bytes=-5", 206, self.data[-5:]),
                                    (f"bytes={size - 3}-{size + 50}", 206, self.data[-3:]),
                                    ("bytes=0-1,4-5", 200, self.data),
                                    ("bytes=9-2", 200, self.data)):
            resp, body = await self.env.arequest("GET", path, headers={"Range": value})
            self.assertEqual((resp.code, body), (status, want), value)
        resp, body = await self.env.arequest("GET", path, headers={"Range": f"bytes={size}-"})
        self.assertEqual(resp.code, 416)
        self.assertEqual(resp.headers.getRawHeaders(b"content-range"), [f"bytes */{size}".encode()])


class _FailingWrites:
    """A Database whose next ``failures`` writes fail."""

    def __init__(self, db, failures=1):
        self.db = db
        self.failures = failures

    def __getattr__(self, name):
        return getattr(self.db, name)

    def write(self, *a):
        if self.failures:
            self.failures -= 1
            from twisted.internet.defer import fail

            return fail(RuntimeError("database is locked (test)"))
        return self.db.write(*a)


class IndexWriteFailureTests(CacheTestBase):
    @coro
    async def test_failed_write_keeps_rows_dirty(self):
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        await self.env.arequest("GET", path)
        await self.blobs.flush_index()
        self.env.clock.advance(0)
        entry = self.blobs.lookup(self.digest)
        self.patch(self.blobs, "reactor", Clock())
        self.blobs.reactor.advance(10 ** 9)  # a later access time
        self.blobs.touch(entry, "library/y")
        self.blobs.db = _FailingWrites(self.db)
        with self.assertRaises(RuntimeError):
            await self.blobs.flush_index()
        self.assertIn(self.digest, self.blobs._dirty)
        await self.blobs.flush_index()  # the next flush writes them
        self.assertEqual(self.blobs._dirty, set())
        rows = await self.db.query("SELECT last_access FROM cache_blobs WHERE digest = ?", (self.digest,))
        self.assertEqual(float(rows[0]["last_access"]), 10.0 ** 9)
        repos = await self.db.query("SELECT repository FROM cache_blob_repos WHERE digest = ?", (self.digest,))
        self.assertIn("library/y", {r["repository"] for r in repos})


class _FailingQueries:
    def __init__(self, db, failures=1):
        self.db, self.failures = db, failures

    def __getattr__(self, name):
        return getattr(self.db, name)

    def query(self, *a):
        if self.failures:
            self.failures -= 1
            from twisted.internet.defer import fail

            return fail(RuntimeError("database is locked (test)"))
        return self.db.query(*a)


class RetriedStartTests(CacheTestBase):
    @coro
    async def test_retried_start_keeps_running_downloads_temp_files(self):
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        await self.env.arequest("GET", path)
        await self.blobs.flush_index()
        self.make_env()
        self.blobs.db = _FailingQueries(self.db)
        with self.assertRaises(RuntimeError):
            await self.blobs.start()
        self.assertFalse(self.blobs.loading.closed)  # requests are not held by a failed start
        # a download started meanwhile has its temp file in tmp/
        running = self.base / "cache" / "tmp" / "in-flight.partial"
        running.write_bytes(b"half a blob")
        await self.blobs.start()  # the retry
        self.assertTrue(running.exists())
        self.assertIsNotNone(self.blobs.lookup(self.digest))
        resp, body = await self.env.arequest("GET", path)
        self.assertEqual(body, self.data)
        self.assertEqual(len(self.blob_gets()), 1)


class FlushOrderTests(CacheTestBase):
    @coro
    async def test_flush_waits_for_the_flush_in_flight(self):
        """A flush that finds nothing dirty because a running flush took it all must
        still wait for that write (found by test_restart_drops_a_file_cut_short: the
        index write of a new blob landed after the restart had read the index)."""
        await self.start()
        await self.env.arequest("GET", f"/v2/library/x/blobs/{self.digest}")
        await self.blobs.flush_index()
        entry = self.blobs.lookup(self.digest)
        gate = Deferred()
        real = self.db.write

        class SlowWrites:
            def __getattr__(_self, name):
                return getattr(self.db, name)

            def write(_self, *a):
                d = Deferred()
                gate.addCallback(lambda _: real(*a).chainDeferred(d))
                return d

        self.blobs.db = SlowWrites()
        self.blobs.touch(entry, "library/late")
        first = Deferred.fromCoroutine(self.blobs.flush_index())  # takes the dirty row, waits
        second = Deferred.fromCoroutine(self.blobs.flush_index())
        await deferLater(reactor, 0.01, lambda: None)
        self.assertFalse(second.called)  # the row is not written yet
        gate.callback(None)
        await second
        await first
        repos = await self.db.query("SELECT repository FROM cache_blob_repos WHERE digest = ?", (self.digest,))
        self.assertIn("library/late", {r["repository"] for r in repos})
