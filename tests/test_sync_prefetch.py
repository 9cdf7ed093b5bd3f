"""PullThroughBlobs.prefetch and a whole sync run over the real pull path (blob and
manifest caches, a fake upstream): one upstream GET per blob whoever asks, nothing
fetched again when cached, a multi-arch image fills the cache."""

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from tests.fixtures.cache import CacheTestBase
from tests.fixtures.helpers import coro
from zmirror.cache.download import CacheUnavailable
from zmirror.db.syncjobs import empty_progress
from zmirror.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from zmirror.registry.blobs import DownloadFailed
from zmirror.sync.runner import SyncRun
from zmirror.sync.service import LocalBlobs
from zmirror.testing import sha256


class PrefetchTests(CacheTestBase):
    async def pumped(self, d: Deferred, timeout: float = 20.0):
        """Let the fake upstream answer (and the real reactor run: DB, threads) until ``d`` fires."""
        deadline = reactor.seconds() + timeout
        while not d.called and reactor.seconds() < deadline:
            self.env.agent.flush()
            self.env.client.flush()
            await deferLater(reactor, 0.001, lambda: None)
        return await d

    @coro
    async def test_prefetch_then_cached(self):
        await self.start()
        source = self.env.proxy.blob_source
        seen = []
        fetched = await self.pumped(ensureDeferred(source.prefetch("library/x", self.digest,
                                                                   on_download=seen.append)))
        self.assertTrue(fetched)
        self.assertEqual([(dl.digest, dl.state, dl.written) for dl in seen], [(self.digest, "done", len(self.data))])
        self.assertEqual(self.blobs.path(self.digest).read_bytes(), self.data)
        self.assertEqual(len(self.blob_gets()), 1)
        before = len(self.up.requests)
        self.assertFalse(await self.pumped(ensureDeferred(source.prefetch("library/x", self.digest))))
        self.assertEqual(len(self.up.requests), before)  # cached: no upstream request at all

    @coro
    async def test_a_broken_download_is_an_error_of_the_item(self):
        await self.start()
        self.up.faults[f"/v2/library/x/blobs/{self.digest}"] = ["corrupt"] * 4
        d = ensureDeferred(self.env.proxy.blob_source.prefetch("library/x", self.digest))
        with self.assertRaises(DownloadFailed):
            await self.pumped(d)
        self.assertIsNone(self.blobs.lookup(self.digest))

    @coro
    async def test_client_and_prefetch_share_one_download(self):
        await self.start()
        source = self.env.proxy.blob_source
        path = f"/v2/library/x/blobs/{self.digest}"
        client = ensureDeferred(self.env.arequest("GET", path))
        job = ensureDeferred(source.prefetch("library/x", self.digest))
        results = await DeferredList([client, ensureDeferred(self.pumped(job))], consumeErrors=True)
        (ok1, (resp, body)), (ok2, fetched) = results
        self.assertTrue(ok1 and ok2)
        self.assertEqual(body, self.data)
        self.assertEqual(len(self.blob_gets()), 1)

    @coro
    async def test_cancelled_prefetch_leaves_the_client_its_download(self):
        await self.start()
        source = self.env.proxy.blob_source
        path = f"/v2/library/x/blobs/{self.digest}"
        job = ensureDeferred(source.prefetch("library/x", self.digest))
        client = ensureDeferred(self.env.arequest("GET", path))
        for _ in range(20):
            self.env.agent.flush()
            await deferLater(reactor, 0.001, lambda: None)
        job.cancel()
        resp, body = await client
        self.assertEqual(body, self.data)
        self.assertEqual(len(self.blob_gets()), 1)

    @coro
    async def test_a_run_fills_the_cache_with_every_platform(self):
        await self.start()
        blobs = {}
        entries = []
        for arch in ("amd64", "arm64"):
            layer, config = os.urandom(200_000), json.dumps({"architecture": arch}).encode()
            blobs[sha256(layer)], blobs[sha256(config)] = layer, config
            for data in (layer, config):
                self.up.add_blob(data)
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": sha256(config), "size": len(config)},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                           "digest": sha256(layer), "size": len(layer)}]}).encode()
            entries.append({"mediaType": OCI_MANIFEST, "size": len(body),
                            "digest": self.up.add_manifest("library/app", None, body, OCI_MANIFEST),
                            "platform": {"os": "linux", "architecture": arch}})
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
        self.up.add_manifest("library/app", "1.0", index, OCI_INDEX)
        proxy = self.env.proxy
        state = {"id": 1, "state": "running", "pause_reason": None, "resume_at": None, **empty_progress()}
        run = SyncRun(state, {"images": ["app:1.0"], "platforms": [], "concurrency": 2},
                      manifests=proxy.manifest_source, tags=proxy.tag_source,
                      blobs=LocalBlobs(proxy.blob_source), clock=self.env.clock)
        self.assertEqual(await self.pumped(Deferred.fromCoroutine(run.run())), "succeeded", state["errors"])
        self.assertEqual(state["blobs"], {"done": 4, "skipped": 0, "total": 4})
        for digest, data in blobs.items():
            self.assertEqual(self.blobs.path(digest).read_bytes(), data)
        gets = len(self.blob_gets())
        self.assertEqual(gets, 4)
        # a second run: the tag is fresh, every blob cached: no upstream request
        before = len(self.up.requests)
        state2 = {"id": 2, "state": "running", "pause_reason": None, "resume_at": None, **empty_progress()}
        run2 = SyncRun(state2, {"images": ["app:1.0"], "platforms": [], "concurrency": 2},
                       manifests=proxy.manifest_source, tags=proxy.tag_source,
                       blobs=LocalBlobs(proxy.blob_source), clock=self.env.clock)
        self.assertEqual(await self.pumped(Deferred.fromCoroutine(run2.run())), "succeeded")
        self.assertEqual(state2["blobs"], {"done": 4, "skipped": 4, "total": 4})
        self.assertEqual((len(self.up.requests), state2["upstream_requests"]), (before, 0))


class _BusySource:
    """A blob source whose cache has no room for the first ``busy`` prefetches."""

    def __init__(self, busy: int, storing: bool = True):
        self.busy = busy
        self.calls = 0
        self.local = self
        self._storing = storing

    def storing(self):
        return self._storing

    async def prefetch(self, repo, digest, *, record=None, on_download=None):
        self.calls += 1
        if self.calls <= self.busy:
            raise CacheUnavailable("no transfer thread free")
        return True


class LocalBlobsTests(unittest.TestCase):
    def test_waits_while_the_cache_is_busy_with_clients(self):
        clock = Clock()
        source = _BusySource(busy=2)
        d = Deferred.fromCoroutine(LocalBlobs(source, clock, busy_wait=1.0).fetch("library/x", "d", 1, None))
        self.assertNoResult(d)
        clock.advance(1)
        self.assertNoResult(d)
        clock.advance(1)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(source.calls, 3)

    def test_gives_up_when_not_storing_or_after_its_tries(self):
        clock = Clock()
        d = Deferred.fromCoroutine(LocalBlobs(_BusySource(busy=9, storing=False), clock).fetch("r", "d", 1, None))
        self.failureResultOf(d, CacheUnavailable)
        source = _BusySource(busy=9)
        d = Deferred.fromCoroutine(LocalBlobs(source, clock, busy_tries=3).fetch("r", "d", 1, None))
        clock.advance(1)
        clock.advance(1)
        self.failureResultOf(d, CacheUnavailable)
        self.assertEqual(source.calls, 3)
