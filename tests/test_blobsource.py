"""The blob sources behind one interface (zmirror.transfer.interfaces.IBlobSource), and the
pull-through source relaying verified blobs while the cache cannot store."""

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web._newclient import ResponseFailed
from zope.interface.verify import verifyObject

from tests.fixtures.cache import CacheTestBase
from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import temp_database
from tests.fixtures.rawhttp import make_request
from tests.fixtures.upstream import OneAgent
from zmirror.cache.blobs import CacheBlobs
from zmirror.registry.blobs import PullThroughBlobs
from zmirror.oci.errors import RegistryError
from zmirror.registry.build import build_proxy
from zmirror.registry.proxy import Proxy
from zmirror.oci.reference import parse_path
from zmirror.registry.routes import PullRequest
from zmirror.testing import MemoryBlobs, sha256
from zmirror.transfer.interfaces import IBlobBody, IBlobSource
from zmirror.upstream.blobs import RemoteBlobs
from zmirror.upstream.health import UpstreamHealth
from zmirror.upstream.pool import UpstreamPool
from zmirror.upstream.failover import Failover

DATA = b"0123456789" * 10
DIGEST = sha256(DATA)


def pull(proxy, method=b"GET", range=None, name="library/x"):
    p = PullRequest(path=parse_path(f"/v2/{name}/blobs/{DIGEST}"), method=method, range=range,
                    base_url="http://proxy.test")
    return Deferred.fromCoroutine(proxy.pull(p))


def result_of(d):
    out = []
    d.addBoth(out.append)
    return out[0]


class ProtocolTests(unittest.TestCase):
    def test_sources_provide_the_interface(self):
        db = temp_database(self, reactor)
        cache = CacheBlobs(self.mktemp(), db, reactor, max_size=1 << 20)
        self.addCleanup(cache.transfers.stop)
        pool = UpstreamPool(OneAgent(None), Clock(), health=UpstreamHealth(Clock()))
        remote = RemoteBlobs(Failover(pool, Clock()), Clock())
        for source in (cache, remote, PullThroughBlobs(cache, remote), PullThroughBlobs(None, remote),
                       MemoryBlobs()):
            self.assertTrue(verifyObject(IBlobSource, source), source)

    def test_proxy_builds_a_pull_through_source(self):
        db = temp_database(self, reactor)
        cache = CacheBlobs(self.mktemp(), db, reactor, max_size=1 << 20)
        self.addCleanup(cache.transfers.stop)
        proxy = build_proxy(UpstreamPool(OneAgent(None), Clock(), health=UpstreamHealth(Clock())), Clock(), blobs=cache)
        self.assertIsInstance(proxy.blob_source, PullThroughBlobs)
        self.assertIs(proxy.blob_source.local, cache)
        self.assertIs(proxy.blob_source.remote.threads, cache.transfers)


class ProxyOverASourceTests(unittest.TestCase):
    """Proxy.blob only asks its source and shapes headers."""

    def setUp(self):
        self.source = MemoryBlobs({("library/x", DIGEST): DATA})
        self.proxy = Proxy(blob_source=self.source, manifest_source=None, tag_source=None)

    def test_whole_blob_headers_and_body(self):
        body = result_of(pull(self.proxy))
        self.assertTrue(verifyObject(IBlobBody, body))
        self.assertEqual(body.status, 200)
        self.assertEqual(body.headers[b"Docker-Content-Digest"], DIGEST.encode())
        self.assertEqual(body.headers[b"Etag"], f'"{DIGEST}"'.encode())
        self.assertEqual(body.headers[b"Content-Length"], str(len(DATA)).encode())
        self.assertEqual(body.headers[b"Cache-Control"], b"public, max-age=31536000, immutable")
        _channel, client, request = make_request()
        result_of(Deferred.fromCoroutine(body.send(request)))
        self.assertTrue(client.value().endswith(DATA))
        self.assertEqual(self.source.requests, [("GET", "library/x", DIGEST, None)])

    def test_unverified_range_is_not_stored_downstream(self):
        body = result_of(pull(self.proxy, range="bytes=10-19"))
        self.assertEqual(body.status, 206)
        self.assertEqual(body.headers[b"Content-Range"], b"bytes 10-19/100")
        self.assertEqual(body.headers[b"Cache-Control"], b"no-store")
        self.assertEqual(body.data, DATA[10:20])

    def test_head_asks_stat(self):
        result = result_of(pull(self.proxy, method=b"HEAD"))
        self.assertEqual((result.status, result.content_length, result.head), (200, len(DATA), True))
        self.assertEqual(self.source.requests, [("HEAD", "library/x", DIGEST, None)])

    def test_unknown_blob_is_the_sources_error(self):
        failure = result_of(pull(self.proxy, name="library/y"))
        self.assertIsInstance(failure.value, RegistryError)
        self.assertEqual(failure.value.code, "BLOB_UNKNOWN")


class PassThroughWhileCacheFailsTests(CacheTestBase):
    def setUp(self):
        super().setUp()
        self.env.routes.proxy = build_proxy(self.env.pool, self.env.clock, idle_timeout=30, blobs=self.blobs,
                                      manifests=self.manifests)

    @coro
    async def test_relayed_uncached_blob_is_verified(self):
        await self.start()
        self.blobs.store_failed("disk full (test)")
        path = f"/v2/library/x/blobs/{self.digest}"
        self.up.faults[path] = ["corrupt"]
        with self.assertRaises(ResponseFailed):
            await self.env.arequest("GET", path)
        resp, body = await self.env.arequest("GET", path, headers={"Range": "bytes=0-9"})
        self.assertEqual((resp.code, body), (206, self.data[:10]))
        self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertIsNone(self.blobs.lookup(self.digest))
