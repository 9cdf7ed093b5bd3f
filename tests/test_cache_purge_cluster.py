"""Purge and invalidate reach every node: two nodes on one database, each with its
own blob cache, hear each other on a LoopbackHub (zmirror/cluster.py)."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from tests.fixtures.cache import stop_transfers
from tests.fixtures.helpers import coro, temp_dir
from tests.fixtures.pgserver import temp_database
from zmirror.cache.blobindex import BlobEntry
from zmirror.cache.blobs import CacheBlobs
from zmirror.cache.manifests import Manifest, ManifestCache
from zmirror.cache.purge import PURGE_EVENT, CachePurge, Scope
from zmirror.cluster import LoopbackHub
from zmirror.testing import sha256

MT = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = [MT]


class TwoNodes(unittest.TestCase):
    def setUp(self):
        self.db = temp_database(self, reactor)
        self.clock = Clock()
        self.clock.advance(100_000)
        self.hub = LoopbackHub()
        self.nodes = [self.node(name) for name in ("a", "b")]

    def node(self, name):
        bus = self.hub.bus()
        blobs = CacheBlobs(temp_dir(self) / name, temp_database(self, reactor), reactor, max_size=1 << 30)
        self.addCleanup(stop_transfers, blobs)
        manifests = ManifestCache(self.db, self.clock, ttl=300, shared=True, bus=bus)
        purge = CachePurge(self.db, self.clock, blobs=blobs, manifests=manifests, bus=bus, node=name)
        return purge

    def put_blob(self, purge, data: bytes, repos) -> str:
        digest = sha256(data)
        path = purge.blobs.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        purge.blobs._add(BlobEntry(digest, len(data), self.clock.seconds(), repos=set(repos)))
        return digest

    async def settle(self):
        for _ in range(20):
            await deferLater(reactor, 0.01, lambda: None)

    @coro
    async def test_a_repository_purge_on_one_node_empties_both(self):
        a, b = self.nodes
        for n in self.nodes:
            await n.poll()
        shared = self.put_blob(a, b"shared", {"library/x", "library/y"})
        self.put_blob(b, b"shared", {"library/x", "library/y"})
        own_a = self.put_blob(a, b"only x on a", {"library/x"})
        own_b = self.put_blob(b, b"only x on b", {"library/x"})
        body = json.dumps({"schemaVersion": 2, "mediaType": MT, "layers": []}).encode()
        a.manifests.store("library/x", "v1", Manifest(sha256(body), MT, body))
        await self.settle()
        self.assertIsNotNone(await b.manifests.tag("library/x", "v1", ACCEPT))  # b read the shared row

        done = await a.purge(Scope(repository="library/x"))
        self.assertEqual(done, {"blobs": 1, "manifests": 1, "tags": 1})
        self.assertEqual([k for _o, k, _d in self.hub.sent], [PURGE_EVENT])
        await self.settle()
        for n, own in ((a, own_a), (b, own_b)):
            self.assertNotIn(own, n.blobs.entries)
            self.assertFalse(n.blobs.path(own).exists())
            self.assertEqual(n.blobs.entries[shared].repos, {"library/y"})
            self.assertNotIn(("library/x", "v1"), n.manifests.tags)
            self.assertIsNone(await n.manifests.tag("library/x", "v1", ACCEPT))
        # b heard the event: its poll does not apply the row a second time
        applied = b.applied
        self.assertEqual(await b.poll(), 0)
        self.assertEqual(b.applied, applied)

    @coro
    async def test_an_invalidation_reaches_the_memory_of_the_other_node(self):
        a, b = self.nodes
        body = json.dumps({"schemaVersion": 2, "mediaType": MT, "layers": []}).encode()
        a.manifests.store("library/x", "v1", Manifest(sha256(body), MT, body))
        await self.settle()
        entry = await b.manifests.tag("library/x", "v1", ACCEPT)
        self.assertTrue(b.manifests.fresh(entry))
        self.assertEqual(await a.invalidate("library/x", "v1"), 1)
        await self.settle()
        for n in self.nodes:
            entry = await n.manifests.tag("library/x", "v1", ACCEPT)
            self.assertIsNotNone(entry)
            self.assertFalse(n.manifests.fresh(entry), n.node)  # the next pull revalidates

    @coro
    async def test_a_namespace_purge_and_a_digest_purge_reach_the_other_node(self):
        a, b = self.nodes
        gh = self.put_blob(b, b"ghcr", {"ghcr.io/o/img"})
        hub = self.put_blob(b, b"hub", {"library/x"})
        await a.purge(Scope(namespace="ghcr.io"))
        await self.settle()
        self.assertEqual(list(b.blobs.entries), [hub])
        self.assertFalse(b.blobs.path(gh).exists())
        await a.purge(Scope(digest=hub))
        await self.settle()
        self.assertEqual(b.blobs.entries, {})

    def test_an_unusable_event_is_ignored(self):
        b = self.nodes[1]
        for bad in ({"id": "1", "action": "purge"}, {"id": 3, "action": "nuke"}, {"id": True, "action": "purge"}):
            b._heard(bad)
        self.assertEqual(b.applied, 0)
