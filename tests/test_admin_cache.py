"""/api/cache: cache figures and deletion (all, one repository, one digest)."""

from twisted.trial import unittest

from tests.fixtures.helpers import coro
from tests.fixtures.admin import AdminTestMixin

DIGEST = "sha256:" + "ab" * 32


class FakeBlobCache:
    def __init__(self):
        self.deleted = []

    def summary(self):
        return {"size": 300, "max_size": 1000, "entries": 2, "downloads": 0, "hit_ratio": 0.5,
                "hits": 3, "misses": 1, "bytes_from_cache": 200, "bytes_from_upstream": 100,
                "evictions": 0, "verify_failures": 0}

    async def delete(self, *, digest=None, repository=None):
        self.deleted.append((digest, repository))
        return 1


class FakeManifestCache:
    def __init__(self):
        self.deleted = []

    def summary(self):
        return {"tags": 1, "in_memory": 1, "hits": 1, "misses": 3, "stale_served": 0, "revalidated": 0}

    async def delete(self, *, repository=None, digest=None):
        self.deleted.append((digest, repository))
        return 2


class FakePurge:
    def __init__(self):
        self.scopes = []

    async def purge(self, scope):
        self.scopes.append(scope)
        return {"blobs": 1, "manifests": 2, "tags": 3}


class CacheRouteTests(AdminTestMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.blobs, self.manifests = FakeBlobCache(), FakeManifestCache()
        self.client = self.stub(self.make_api(cache=self.blobs, manifest_cache=self.manifests))

    @coro
    async def test_get(self):
        code, _h, obj = await self.call("GET", "/api/cache")
        self.assertEqual(code, 200)
        self.assertEqual((obj["enabled"], obj["size"], obj["entries"]), (True, 300, 2))
        self.assertEqual(obj["hit_ratio"], 0.5)  # (3 + 1) / (3 + 1 + 1 + 3)
        self.assertEqual((obj["bytes_from_cache"], obj["bytes_from_upstream"]), (200, 100))
        self.assertEqual(obj["manifests"]["tags"], 1)
        self.assertEqual((obj["storing"], obj["store_error"]), (True, None))

    @coro
    async def test_delete_all_repository_digest(self):
        purge = FakePurge()
        self.client = self.stub(self.make_api(cache=self.blobs, manifest_cache=self.manifests,
                                              cache_purge=purge))
        code, _h, obj = await self.call("DELETE", "/api/cache")
        self.assertEqual((code, obj), (200, {"deleted": {"blobs": 1, "manifests": 2, "tags": 3}}))
        await self.call("DELETE", "/api/cache?repository=nginx")
        await self.call("DELETE", f"/api/cache?digest={DIGEST}")
        self.assertEqual([(s.digest, s.repository) for s in purge.scopes],
                         [(None, None), (None, "library/nginx"), (DIGEST, None)])

    @coro
    async def test_bad_input(self):
        for q, field in [("repository=../x", "repository"), ("digest=sha256:zz", "digest"),
                         (f"repository=a&digest={DIGEST}", "digest"), ("colour=red", "colour")]:
            code, _h, obj = await self.call("DELETE", f"/api/cache?{q}")
            self.assertEqual(code, 400, q)
            self.assertIn(field, obj["fields"], q)
        self.assertEqual(self.blobs.deleted, [])

    @coro
    async def test_requires_admin(self):
        code, _h, _obj = await self.call("DELETE", "/api/cache", auth=False)
        self.assertEqual(code, 401)
        self.assertEqual(self.blobs.deleted, [])

    @coro
    async def test_disabled(self):
        self.client = self.stub(self.make_api())
        code, _h, obj = await self.call("GET", "/api/cache")
        self.assertEqual((code, obj), (200, {"enabled": False}))
