"""Blob path hardening ("Safe to expose"): reader counts, verified pass-through,
index flushes that survive failures, bounded transfer threads and temp bytes,
orphaned downloads, Range parsing."""

import os

from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest
from twisted.web._newclient import ResponseFailed

from tests.test_cache import CacheTestBase, deferred_test
from tests.proxyenv import ProxyEnv
from zmirror.registry.proxy import Proxy
from zmirror.testing import FakeRegistry


class HeadReaderCountTests(CacheTestBase):
    @deferred_test
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

    @deferred_test
    async def test_blob_read_during_heads_survives_eviction(self):
        """The invariant the reader count exists for: never unlink a blob while it is read."""
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        await self.env.arequest("GET", path)
        entry = self.blobs.lookup(self.digest)
        f = self.blobs.open(entry)  # a slow reader
        for _ in range(3):
            await self.env.arequest("HEAD", path)
        await self.blobs.delete(digest=self.digest)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(self.blobs.path(self.digest).exists())
        f.close()
        self.blobs.release(entry)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(self.blobs.path(self.digest).exists())
