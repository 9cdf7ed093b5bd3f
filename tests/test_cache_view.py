"""The cache view's routes (GET /api/cache/namespaces|images|tags|stats|purges),
DELETE /api/cache and POST /api/cache/invalidate over real caches on a database:
figures, hostile queries and bodies (400 with field errors, never 500)."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.trial import unittest

from tests.fixtures.admin import AdminTestMixin
from tests.fixtures.cache import stop_transfers
from tests.fixtures.helpers import coro
from zmirror.cache.blobindex import BlobEntry
from zmirror.cache.blobs import CacheBlobs
from zmirror.cache.manifests import Manifest, ManifestCache
from zmirror.cache.purge import CachePurge
from zmirror.cache.view import CacheView, node_figures
from zmirror.nodes import NodeHeartbeat
from zmirror.testing import sha256

MT = "application/vnd.docker.distribution.manifest.v2+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def image(*sizes_digests):
    return json.dumps({"schemaVersion": 2, "mediaType": MT,
                       "config": {"digest": sizes_digests[0], "size": 1},
                       "layers": [{"digest": d, "size": 1} for d in sizes_digests[1:]]}).encode()


class CacheViewTests(AdminTestMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.blobs = CacheBlobs(self.mktemp(), self.db, reactor, max_size=1 << 30)
        self.addCleanup(stop_transfers, self.blobs)
        self.manifests = ManifestCache(self.db, self.clock, ttl=300)
        self.purge = CachePurge(self.db, self.clock, blobs=self.blobs, manifests=self.manifests, node="n1")
        self.view = CacheView(self.db, self.clock, blobs=self.blobs, manifests=self.manifests, node="n1")
        self.client = self.stub(self.make_api(cache=self.blobs, manifest_cache=self.manifests,
                                              cache_purge=self.purge, cache_view=self.view))
        d = {n: sha256(n.encode()) for n in ("cfg", "big", "small", "ghcfg")}
        self.d = d
        for name, size, repos in (("cfg", 10, {"library/app", "library/old"}),
                                  ("big", 5000, {"library/app"}),
                                  ("small", 100, {"library/old"}),
                                  ("ghcfg", 7, {"ghcr.io/o/img"})):
            self.blobs._add(BlobEntry(d[name], size, self.clock.seconds(), repos=set(repos)))
        self.m_app = self.store("library/app", "1.0", image(d["cfg"], d["big"]))
        self.clock.advance(10)
        self.m_old = self.store("library/old", "v1", image(d["cfg"], d["small"]))
        self.clock.advance(10)
        # an index whose child is cached: its size is the child's blobs
        child = image(d["ghcfg"])
        self.store("ghcr.io/o/img", None, child)
        index = json.dumps({"schemaVersion": 2, "mediaType": INDEX,
                            "manifests": [{"digest": sha256(child), "mediaType": MT, "size": 1}]}).encode()
        self.manifests.store("ghcr.io/o/img", "latest", Manifest(sha256(index), INDEX, index))
        # library/app was pulled recently (retention's last-pull recording writes this)
        self.db.execute("UPDATE cache_tags SET last_access = ? WHERE repository = 'library/app'",
                        (self.clock.seconds() + 100,))

    def store(self, repo, tag, body):
        m = Manifest(sha256(body), MT, body)
        self.manifests.store(repo, tag, m)
        return m.digest

    @coro
    async def test_namespaces(self):
        code, _h, obj = await self.call("GET", "/api/cache/namespaces")
        self.assertEqual(code, 200, obj)
        by = {n["namespace"]: n for n in obj["namespaces"]}
        self.assertEqual(by["docker.io"], {"namespace": "docker.io", "repositories": 2, "blobs": 3,
                                           "bytes": 5110, "manifests": 2, "tags": 2})
        self.assertEqual((by["ghcr.io"]["blobs"], by["ghcr.io"]["bytes"], by["ghcr.io"]["tags"],
                          by["ghcr.io"]["manifests"]), (1, 7, 1, 2))
        self.assertEqual(obj["namespaces"][0]["namespace"], "docker.io")  # largest first

    @coro
    async def test_images_by_size_and_last_pull(self):
        code, _h, obj = await self.call("GET", "/api/cache/images?sort=size")
        self.assertEqual(code, 200, obj)
        self.assertEqual([(i["repository"], i["tag"], i["size"]) for i in obj["images"]],
                         [("library/app", "1.0", 5010), ("library/old", "v1", 110),
                          ("ghcr.io/o/img", "latest", 7)])
        code, _h, obj = await self.call("GET", "/api/cache/images?sort=last_pull&limit=2")
        self.assertEqual([i["repository"] for i in obj["images"]], ["library/old", "ghcr.io/o/img"])
        self.assertIsNone(obj["images"][0]["last_pull"])  # not recorded: the UI shows fetched_at
        self.assertIsInstance(obj["images"][0]["fetched_at"], float)
        code, _h, obj = await self.call("GET", "/api/cache/images?namespace=ghcr.io")
        self.assertEqual([i["repository"] for i in obj["images"]], ["ghcr.io/o/img"])

    @coro
    async def test_tags_of_a_repository(self):
        code, _h, obj = await self.call("GET", "/api/cache/tags?repository=app")
        self.assertEqual(code, 200, obj)
        self.assertEqual(obj["repository"], "library/app")
        [t] = obj["tags"]
        self.assertEqual((t["tag"], t["digest"], t["media_type"], t["fresh"]), ("1.0", self.m_app, MT, True))
        self.assertEqual(t["last_pull"], self.clock.seconds() + 100)
        self.clock.advance(301)
        code, _h, obj = await self.call("GET", "/api/cache/tags?repository=library/app")
        self.assertFalse(obj["tags"][0]["fresh"])

    @coro
    async def test_invalidate_and_purge_routes(self):
        code, _h, obj = await self.call("POST", "/api/cache/invalidate", {"repository": "app", "tag": "1.0"})
        self.assertEqual((code, obj), (200, {"invalidated": 1}))
        code, _h, obj = await self.call("GET", "/api/cache/tags?repository=app")
        self.assertFalse(obj["tags"][0]["fresh"])
        code, _h, obj = await self.call("DELETE", "/api/cache?repository=library/old&tag=v1")
        self.assertEqual((code, obj), (200, {"deleted": {"blobs": 0, "manifests": 0, "tags": 1}}))
        code, _h, obj = await self.call("DELETE", "/api/cache?repository=library/old")
        self.assertEqual((code, obj["deleted"]["blobs"]), (200, 1))  # small; cfg stays for library/app
        self.assertIn(self.d["cfg"], self.blobs.entries)
        code, _h, obj = await self.call("DELETE", "/api/cache?namespace=ghcr.io")
        self.assertEqual((code, obj["deleted"]), (200, {"blobs": 1, "manifests": 2, "tags": 1}))
        code, _h, obj = await self.call("GET", "/api/cache/purges")
        self.assertEqual([(p["action"], p["namespace"], p["repository"], p["tag"]) for p in obj["purges"]],
                         [("purge", "ghcr.io", None, None), ("purge", None, "library/old", None),
                          ("purge", None, "library/old", "v1"), ("invalidate", None, "library/app", "1.0")])

    @coro
    async def test_stats_of_every_node_and_the_cluster(self):
        self.blobs.stats.update(hits=6, misses=2, bytes_from_cache=1000, bytes_from_upstream=300)
        self.manifests.stats.update(hits=3, misses=1)
        # another node's heartbeat row (written the way nodes.py writes it)
        other = NodeHeartbeat(self.db, self.clock, node="n2", figures=lambda: {
            "hits": 1, "misses": 1, "bytes_from_cache": 10, "bytes_from_upstream": 20,
            "manifest_gets_avoided": 1})
        await other.beat()
        code, _h, obj = await self.call("GET", "/api/cache/stats")
        self.assertEqual(code, 200, obj)
        by = {n["node"]: n for n in obj["nodes"]}
        self.assertEqual(sorted(by), ["n1", "n2"])
        self.assertEqual((by["n1"]["hits"], by["n1"]["misses"], by["n1"]["manifest_gets_avoided"],
                          by["n1"]["hit_ratio"]), (9, 3, 3, 0.75))
        self.assertEqual((by["n2"]["hits"], by["n2"]["bytes_from_upstream"]), (1, 20))
        c = obj["cluster"]
        self.assertEqual((c["hits"], c["misses"], c["bytes_from_cache"], c["bytes_from_upstream"],
                          c["manifest_gets_avoided"], c["hit_ratio"], c["nodes"]),
                         (10, 4, 1010, 320, 4, round(10 / 14, 4), 2))
        code, _h, obj = await self.call("GET", "/api/cache")
        self.assertEqual(obj["manifest_gets_avoided"], 3)
        self.assertEqual(node_figures(self.blobs, self.manifests)["entries"], 4)

    @coro
    async def test_hostile_input_is_a_400_with_fields(self):
        cases = [
            ("DELETE", "/api/cache?tag=v1", None, "tag"),
            ("DELETE", "/api/cache?repository=a&tag=../x", None, "tag"),
            ("DELETE", "/api/cache?namespace=nope", None, "namespace"),
            ("DELETE", "/api/cache?namespace=ghcr.io&repository=a", None, "repository"),
            ("DELETE", "/api/cache?repository=%00", None, "repository"),
            ("DELETE", "/api/cache?repository=" + "a" * 5000, None, "repository"),
            ("GET", "/api/cache/images?sort=colour", None, "sort"),
            ("GET", "/api/cache/images?limit=-1", None, "limit"),
            ("GET", "/api/cache/images?limit=99999999999999999999999", None, "limit"),
            ("GET", "/api/cache/images?namespace=%FF", None, None),
            ("GET", "/api/cache/images?x=1", None, "x"),
            ("GET", "/api/cache/tags", None, "repository"),
            ("GET", "/api/cache/tags?repository=UPPER", None, "repository"),
            ("GET", "/api/cache/purges?limit=abc", None, "limit"),
            ("POST", "/api/cache/invalidate", {}, "repository"),
            ("POST", "/api/cache/invalidate", {"repository": 5}, "repository"),
            ("POST", "/api/cache/invalidate", {"repository": "a", "tag": ["x"]}, "tag"),
            ("POST", "/api/cache/invalidate", {"repository": "a", "colour": 1}, "colour"),
            ("POST", "/api/cache/invalidate", [1, 2], None),
            ("GET", "/api/cache/namespaces?x=1", None, "x"),
            ("GET", "/api/cache/stats?x=1", None, "x"),
        ]
        for method, path, body, field in cases:
            res = await self.call(method, path, body)
            obj = self.assertError(res, 400, *([field] if field else []))
            self.assertNotIn("Traceback", json.dumps(obj))
        res = await self.call("POST", "/api/cache/invalidate", raw=b"{nope")
        self.assertError(res, 400)
        self.assertEqual(len(self.blobs.entries), 4)  # nothing was purged

    @coro
    async def test_without_a_cache_the_view_is_empty(self):
        self.client = self.stub(self.make_api())
        code, _h, obj = await self.call("GET", "/api/cache/stats")
        self.assertEqual((code, obj["nodes"], obj["cluster"]["hits"], obj["cluster"]["hit_ratio"]),
                         (200, [], 0, None))
        for path, key in (("namespaces", "namespaces"), ("images", "images"), ("tags?repository=a", "tags"),
                          ("purges", "purges")):
            code, _h, obj = await self.call("GET", f"/api/cache/{path}")
            self.assertEqual((code, obj[key]), (200, []), path)
        code, _h, obj = await self.call("DELETE", "/api/cache?repository=a")
        self.assertEqual(code, 400, obj)
