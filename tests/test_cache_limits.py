"""The blob cache's bounds (zmirror.cache.blobs, zmirror.cache.download): transfer
threads, temp bytes and orphaned downloads."""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.fixtures.cache import CacheTestBase
from tests.fixtures.helpers import coro


class _Held:
    """Start a cache download of ``path`` and keep it running (the fake upstream
    stalls after half the body), optionally with a client following it."""

    def __init__(self, case, path):
        from zmirror.oci.reference import parse_path
        from zmirror.registry.routes import PullRequest

        self.case = case
        self.result = None
        d = Deferred.fromCoroutine(case.env.proxy.pull(PullRequest(parse_path(path), b"GET")))
        d.addCallback(lambda r: setattr(self, "result", r))
        self.d = d

    async def ready(self):
        for _ in range(500):
            self.case.env.agent.flush()
            if self.d.called:
                break
            await deferLater(reactor, 0.001, lambda: None)
        self.followers_before = len(self.result.download.followers) if self.result else 0
        return self.result

    def follow(self):
        """A client that reads the download; returns the request (close it to leave)."""
        from tests.fixtures.rawhttp import make_request

        _channel, _client, request = make_request()
        self.sent = Deferred.fromCoroutine(self.result.send(request))
        self.case.assertEqual(len(self.result.download.followers), 1 + self.followers_before)
        return request


def client_leaves(request):
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    request.connectionLost(Failure(ConnectionLost()))


class _LimitTestBase(CacheTestBase):
    max_size = 7 << 20

    def held_blob(self, size=3 << 20):
        data = os.urandom(size)
        digest = self.up.add_blob(data)
        path = f"/v2/library/x/blobs/{digest}"
        self.up.faults[path] = ["stall"]
        return digest, path

    def tmp_files(self):
        return os.listdir(self.base / "cache" / "tmp")


class TransferLimitTests(_LimitTestBase):
    cache_options = {"transfer_threads": 1}

    @coro
    async def test_no_thread_free_relays_uncached(self):
        await self.start()
        held, held_path = self.held_blob()
        result = await _Held(self, held_path).ready()
        self.assertEqual(result.status, 200)
        self.assertEqual(self.blobs.transfers.free, 0)
        path = f"/v2/library/x/blobs/{self.digest}"
        resp, body = await self.env.arequest("GET", path)
        self.assertEqual((resp.code, body), (200, self.data))  # relayed, and verified inline
        self.assertIsNone(self.blobs.lookup(self.digest))
        self.assertEqual(list(self.blobs.downloads), [held])
        self.assertEqual(self.blobs.stats["relayed_over_limits"], 1)


class TempBytesLimitTests(_LimitTestBase):

    @coro
    async def test_download_over_the_temp_budget_relays_uncached(self):
        await self.start()
        held, held_path = self.held_blob(3 << 20)
        await _Held(self, held_path).ready()
        big = os.urandom(5 << 20)  # 3 + 5 MiB in flight would exceed max_size (7 MiB)
        digest = self.up.add_blob(big)
        resp, body = await self.env.arequest("GET", f"/v2/library/x/blobs/{digest}")
        self.assertEqual((resp.code, body), (200, big))
        self.assertIsNone(self.blobs.lookup(digest))
        self.assertEqual(self.blobs.temp_bytes(), 3 << 20)
        self.assertEqual(len(self.tmp_files()), 1)  # only the held download's
        self.assertEqual(self.blobs.stats["relayed_over_limits"], 1)
        # what fits (3 + 3 MiB) is still cached
        resp, body = await self.env.arequest("GET", f"/v2/library/x/blobs/{self.digest}")
        self.assertEqual(body, self.data)
        self.assertIsNotNone(self.blobs.lookup(self.digest))


class TempBytesSettingTests(_LimitTestBase):
    """The temp limit set apart from the cache size ([cache] max_temp_size)."""
    max_size = 1 << 30
    cache_options = {"max_temp_bytes": 5 << 20}

    @coro
    async def test_temp_limit_below_the_cache_size(self):
        await self.start()
        await _Held(self, self.held_blob(3 << 20)[1]).ready()
        # 3 + 3 MiB fits the cache (1 GiB) but not the temp limit (5 MiB)
        resp, body = await self.env.arequest("GET", f"/v2/library/x/blobs/{self.digest}")
        self.assertEqual((resp.code, body), (200, self.data))
        self.assertIsNone(self.blobs.lookup(self.digest))
        self.assertEqual(self.blobs.stats["relayed_over_limits"], 1)
        self.assertEqual(self.blobs.summary()["max_temp_bytes"], 5 << 20)


class OrphanLimitTests(_LimitTestBase):
    cache_options = {"max_orphans": 1}
    max_size = 1 << 30

    @coro
    async def test_orphans_beyond_the_cap_are_aborted(self):
        await self.start()
        first, first_path = self.held_blob()
        second, second_path = self.held_blob()
        kept = _Held(self, first_path)
        await kept.ready()
        client = kept.follow()
        dropped = _Held(self, second_path)
        await dropped.ready()
        other = dropped.follow()
        self.assertEqual(len(self.tmp_files()), 2)
        client_leaves(client)  # the first orphan: within the cap, it is finished
        self.assertEqual(self.blobs.downloads[first].state, "running")
        self.assertTrue(self.blobs.downloads[first].orphaned)
        client_leaves(other)  # a second one: aborted, its temp file removed
        self.assertNotIn(second, self.blobs.downloads)
        self.assertEqual(dropped.result.download.state, "failed")
        self.assertEqual(self.blobs.stats["orphans_aborted"], 1)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.tmp_files()), 1)
        self.assertEqual(self.blobs.transfers.busy, 1)  # the aborted one's thread is back
        # a client that comes back to the kept one makes it wanted again
        again = _Held(self, first_path)
        await again.ready()
        self.assertIs(again.result.download, self.blobs.downloads[first])
        again.follow()
        self.assertFalse(self.blobs.downloads[first].orphaned)

    @coro
    async def test_download_left_before_the_upstream_answered(self):
        """Every caller went away while the fetch was pending: an orphan from the start."""
        self.blobs.max_orphan_bytes = 1 << 20  # less than the blob: never finished unwatched
        await self.start()
        digest, path = self.held_blob()
        gate = Deferred()
        real = self.env.agent.request

        def held(method, uri, headers=None, bodyProducer=None):
            if b"/blobs/" not in uri:
                return real(method, uri, headers, bodyProducer)
            d = Deferred()  # the upstream answers once the gate opens
            gate.addCallback(lambda _: real(method, uri, headers, bodyProducer).chainDeferred(d))
            return d

        self.env.agent.request = held
        caller = _Held(self, path)
        caller.d.addErrback(lambda f: None)
        self.assertIn(digest, self.env.proxy.blob_source.starting)
        caller.d.cancel()  # detaches only this caller; the fetch goes on
        gate.callback(None)
        for _ in range(500):
            self.env.agent.flush()
            if digest not in self.env.proxy.blob_source.starting:
                break
            await deferLater(reactor, 0.001, lambda: None)
        self.assertNotIn(digest, self.env.proxy.blob_source.starting)
        self.assertNotIn(digest, self.blobs.downloads)
        self.assertEqual(self.blobs.stats["orphans_aborted"], 1)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.tmp_files(), [])
