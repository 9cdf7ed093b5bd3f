"""``zmirror cache show|purge|invalidate``: the CLI writes a purge request (and the
shared rows' part); a running node applies it to its own blobs and memory with its
poll of cache_purges.  SQLite and PostgreSQL."""

from __future__ import annotations

import json

from twisted.internet import reactor

from tests.fixtures.cache import stop_transfers
from tests.fixtures.cli import CLIWithAPICase
from tests.fixtures.helpers import coro
from zmirror.cache.blobindex import BlobEntry
from zmirror.cache.blobs import CacheBlobs
from zmirror.cache.manifests import Manifest, ManifestCache
from zmirror.cache.purge import CachePurge
from zmirror.nodes import NodeHeartbeat
from zmirror.testing import sha256

MT = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = [MT]


class CacheCLITests(CLIWithAPICase):
    def setUp(self):
        super().setUp()
        self.blobs = CacheBlobs(self.mktemp(), self.db, reactor, max_size=1 << 30)
        self.addCleanup(stop_transfers, self.blobs)
        self.manifests = ManifestCache(self.db, self.clock, ttl=300)
        self.node = CachePurge(self.db, self.clock, blobs=self.blobs, manifests=self.manifests, node="n1")
        self.layer = sha256(b"layer")
        self.blobs._add(BlobEntry(self.layer, 5, self.clock.seconds(), repos={"library/app"}))
        body = json.dumps({"schemaVersion": 2, "mediaType": MT, "layers": [{"digest": self.layer}]}).encode()
        self.manifests.store("library/app", "1.0", Manifest(sha256(body), MT, body))

    @coro
    async def test_purge_from_the_cli_reaches_the_running_node(self):
        await self.node.poll()  # started
        code, out, err = self.cli("cache", "purge", "--repository", "app")
        self.assertEqual(code, 0, err)
        self.assertIn("1 manifests, 1 tags deleted", out)
        self.assertIn("within 2 s", err)
        self.assertIn(self.layer, self.blobs.entries)  # the node's files: the node's job
        self.assertEqual(await self.node.poll(), 1)
        self.assertNotIn(self.layer, self.blobs.entries)
        self.assertNotIn(("library/app", "1.0"), self.manifests.tags)
        shown = json.loads(self.ok("cache", "show", "--json"))
        self.assertEqual([(p["origin"], p["repository"]) for p in shown["purges"]], [("cli", "library/app")])

    @coro
    async def test_invalidate_from_the_cli(self):
        await self.node.poll()
        self.assertTrue(self.manifests.fresh(await self.manifests.tag("library/app", "1.0", ACCEPT)))
        out = self.ok("cache", "invalidate", "library/app", "--tag", "1.0")
        self.assertIn("invalidated 1 tag(s) of library/app", out)
        await self.node.poll()
        entry = await self.manifests.tag("library/app", "1.0", ACCEPT)
        self.assertFalse(self.manifests.fresh(entry))
        tags = json.loads(self.ok("cache", "show", "--repository", "app", "--json"))["tags"]
        self.assertEqual([(t["tag"], t["fresh"]) for t in tags], [("1.0", False)])

    @coro
    async def test_show(self):
        await NodeHeartbeat(self.db, self.clock, node="n1", figures=lambda: {
            "hits": 3, "misses": 1, "bytes_from_cache": 2048, "bytes_from_upstream": 0,
            "manifest_gets_avoided": 2}).beat()
        out = self.ok("cache", "show")
        self.assertIn("n1", out)
        self.assertIn("75.0%", out)
        self.assertIn("docker.io", out)
        stats = json.loads(self.ok("cache", "show", "--json"))["stats"]
        self.assertEqual(stats["cluster"]["manifest_gets_avoided"], 2)

    def test_refusals(self):
        for argv in (("cache", "purge"), ("cache", "purge", "--tag", "v1"),
                     ("cache", "purge", "--repository", "UP"), ("cache", "purge", "--digest", "sha256:x"),
                     ("cache", "purge", "--all", "--repository", "a"),
                     ("cache", "purge", "--namespace", "nohost"),
                     ("cache", "invalidate", "a", "--tag", "../x"), ("cache", "show", "--repository", "A B")):
            self.refused(*argv)


class PostgresCacheCLITests(CacheCLITests):
    backend = "postgresql"
