"""A broken upstream blob body is resumed (Range) and clients never notice.

Fake upstreams (zmirror.testing.FakeRegistry) cut, reset, stall, ignore Range,
answer with a wrong Content-Range or another total, or corrupt; with and
without the cache.  Over real TCP and the kernel copy: tests/test_kernelcopy.py.
"""

import os

import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.trial import unittest
from twisted.web._newclient import ResponseFailed

from tests.fixtures.helpers import coro
from tests.fixtures.proxyenv import ProxyEnv
from tests.fixtures.cache import CacheTestBase
from zmirror.metrics import Metrics
from zmirror.testing import FakeRegistry
from zmirror.upstream.blobs import ResumeOrder
from zmirror.upstream.models import Upstream


def blob_gets(reg):
    """(Range header or None) of each blob GET ``reg`` answered."""
    return [h.get("range", [None])[0] for m, _host, p, h in reg.requests if m == "GET" and "/blobs/" in p]


class RelayResumeTests(unittest.TestCase):
    """No cache: the pass-through relay resumes."""

    def setUp(self):
        self.data = os.urandom(300_000)
        self.up1, self.up2 = FakeRegistry(), FakeRegistry()
        self.digest = self.up1.add_blob(self.data)
        self.up2.add_blob(self.data)
        self.path = f"/v2/library/x/blobs/{self.digest}"
        self.metrics = Metrics()
        self.env = ProxyEnv([("up1.fake", self.up1), ("up2.fake", self.up2)], metrics=self.metrics)

    def get(self, headers=None):
        return self.env.request("GET", self.path, headers=headers)

    def record(self):
        return self.env.log.records[-1]

    def assert_whole(self, resp, body):
        self.assertEqual(resp.code, 200)
        self.assertEqual(len(body), len(self.data))
        self.assertEqual(body, self.data)
        self.assertEqual(self.record().bytes, len(self.data))

    def test_cut_is_resumed_from_the_same_upstream(self):
        self.up1.faults[self.path] = ["truncate"]
        resp, body = self.get()
        self.assert_whole(resp, body)
        self.assertEqual(blob_gets(self.up1), [None, f"bytes={len(self.data) // 2}-"])
        self.assertEqual(blob_gets(self.up2), [])
        self.assertEqual((self.record().resumes, self.record().upstream), (1, "up1.fake"))
        self.assertEqual(self.metrics.blob_resumes.labels("up1.fake", "ok")._value.get(), 1)
        self.assertEqual(self.metrics.upstream_blob_bytes.labels("up1.fake")._value.get(), len(self.data))

    def test_reset_is_resumed(self):
        self.up1.faults[self.path] = ["reset"]
        self.assert_whole(*self.get())
        self.assertEqual(self.record().resumes, 1)

    def test_second_break_goes_to_the_next_upstream(self):
        self.up1.faults[self.path] = ["truncate", "truncate"]
        self.assert_whole(*self.get())
        half, quarter = len(self.data) // 2, (len(self.data) - len(self.data) // 2) // 2
        self.assertEqual(blob_gets(self.up1), [None, f"bytes={half}-"])
        self.assertEqual(blob_gets(self.up2), [f"bytes={half + quarter}-"])
        self.assertEqual((self.record().resumes, self.record().upstream), (2, "up1.fake,up2.fake"))
        b1 = self.metrics.upstream_blob_bytes.labels("up1.fake")._value.get()
        b2 = self.metrics.upstream_blob_bytes.labels("up2.fake")._value.get()
        self.assertEqual(b1 + b2, len(self.data))
        self.assertGreater(b2, 0)

    def test_upstream_that_ignores_range_is_read_from_the_start(self):
        self.up1.faults[self.path] = ["truncate", "norange"]
        resp, body = self.get()
        self.assert_whole(resp, body)  # no byte twice: the first half of the 200 was skipped
        self.assertEqual(self.record().resumes, 1)

    def test_wrong_content_range_fails_over(self):
        for fault in ("badstart", "othertotal"):
            self.up1.requests.clear()
            self.up2.requests.clear()
            self.up1.faults[self.path] = ["truncate", fault]
            self.assert_whole(*self.get())
            self.assertEqual(len(blob_gets(self.up1)), 2, fault)
            self.assertEqual(len(blob_gets(self.up2)), 1, fault)
            self.assertEqual(self.record().upstream, "up1.fake,up2.fake", fault)

    def test_more_bytes_than_announced_are_dropped(self):
        self.up1.faults[self.path] = ["truncate", "extra"]
        self.assert_whole(*self.get())

    def test_stall_is_resumed_after_the_idle_timeout(self):
        self.up1.faults[self.path] = ["stall"]

        async def go():
            resp = await self.env.client.get("http://proxy.test" + self.path)
            return resp, await treq.content(resp)

        d = ensureDeferred(go())
        for _ in range(50):
            for _ in range(20):
                self.env.agent.flush()
                self.env.client.flush()
            if d.called:
                break
            self.env.clock.advance(31)  # idle_timeout is 30
        resp, body = self.env.pump(d)
        self.assert_whole(resp, body)
        self.assertEqual(len(blob_gets(self.up1)), 2)

    def test_corrupt_resumed_body_aborts_the_client(self):
        self.up1.faults[self.path] = ["truncate", "corrupt"]
        with self.assertRaises(ResponseFailed):
            self.get()
        self.assertLess(self.record().bytes, len(self.data))

    def test_breaking_everywhere_aborts_after_the_attempts(self):
        self.up1.faults[self.path] = ["truncate"] * 3
        self.up2.faults[self.path] = ["truncate"] * 3
        with self.assertRaises(ResponseFailed):
            self.get()
        self.assertEqual(len(blob_gets(self.up1)) + len(blob_gets(self.up2)), 4)  # the first + 3 resumes
        self.assertEqual(self.record().resumes, 3)

    def test_resume_off(self):
        from zmirror.registry.build import build_proxy

        self.env.proxy = build_proxy(self.env.pool, self.env.clock, idle_timeout=30, resume_attempts=0)
        self.env.routes.proxy = self.env.proxy
        self.up1.faults[self.path] = ["truncate"]
        with self.assertRaises(ResponseFailed):
            self.get()
        self.assertEqual(len(blob_gets(self.up1)), 1)

    def test_client_range_is_not_resumed_but_passed_on(self):
        resp, body = self.get({"Range": "bytes=10-19"})
        self.assertEqual((resp.code, body), (206, self.data[10:20]))


class ResumeOrderTests(unittest.TestCase):
    def test_same_once_then_by_priority(self):
        a, b, c = (Upstream(i, n, f"http://{n}") for i, n in enumerate("abc", start=1))
        order = ResumeOrder()
        order.broke(a)
        self.assertEqual(order.candidates(a, [a, b, c]), [a, b, c])
        order.broke(a)
        self.assertEqual(order.candidates(a, [a, b, c]), [b, c])
        order.broke(b)
        self.assertEqual(order.candidates(b, [a, b, c]), [b, c])


class CachedResumeTests(CacheTestBase):
    """The cache download resumes; every client of it sees one answer."""

    def path(self):
        return f"/v2/library/x/blobs/{self.digest}"

    @coro
    async def test_every_client_gets_the_whole_blob(self):
        await self.start()
        self.up.faults[self.path()] = ["truncate"]
        gets = [ensureDeferred(self.env.arequest("GET", self.path())) for _ in range(8)]
        gets.append(ensureDeferred(self.env.arequest("GET", self.path(), headers={"Range": "bytes=100-199"})))
        results = await DeferredList(gets, consumeErrors=True)
        for ok, value in results[:8]:
            self.assertTrue(ok, value)
            self.assertEqual((value[0].code, value[1]), (200, self.data))
        ok, (resp, body) = results[8]
        self.assertTrue(ok)
        self.assertEqual((resp.code, body), (206, self.data[100:200]))
        self.assertEqual(blob_gets(self.up), [None, f"bytes={len(self.data) // 2}-"])
        self.assertEqual(self.blobs.path(self.digest).read_bytes(), self.data)
        self.assertEqual(os.listdir(self.base / "cache" / "tmp"), [])
        self.assertEqual({r.resumes for r in self.env.log.records}, {1})

    @coro
    async def test_ignored_range_and_a_reset(self):
        await self.start()
        self.up.faults[self.path()] = ["reset", "norange"]
        resp, body = await self.env.arequest("GET", self.path())
        self.assertEqual((resp.code, body), (200, self.data))
        self.assertEqual(self.blobs.path(self.digest).read_bytes(), self.data)

    @coro
    async def test_corrupt_resume_is_thrown_away(self):
        await self.start()
        self.up.faults[self.path()] = ["truncate", "corrupt"]
        with self.assertRaises(ResponseFailed):
            await self.env.arequest("GET", self.path())
        self.assertIsNone(self.blobs.lookup(self.digest))
        self.assertFalse(self.blobs.path(self.digest).exists())
        self.assertEqual(self.blobs.stats["verify_failures"], 1)
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(os.listdir(self.base / "cache" / "tmp"), [])

    @coro
    async def test_cache_failing_relays_and_resumes(self):
        await self.start()
        self.blobs.store_failed("test: disk gone")
        self.up.faults[self.path()] = ["truncate"]
        resp, body = await self.env.arequest("GET", self.path())
        self.assertEqual((resp.code, body), (200, self.data))
        self.assertIsNone(self.blobs.lookup(self.digest))
        self.assertEqual(self.env.log.records[-1].resumes, 1)


class ProxyEnvResumeConfigTests(unittest.TestCase):
    def test_config_keys(self):
        from zmirror.config import UpstreamConfig

        c = UpstreamConfig()
        self.assertEqual((c.resume_attempts, c.resume_deadline), (3, 300.0))
