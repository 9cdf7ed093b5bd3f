"""zmirror.upstream.blobs: blobs relayed from the upstreams without the cache (verified, never publicly cacheable when partial), and the values an upstream sends on the blob path checked."""

from twisted.trial import unittest
from twisted.web._newclient import ResponseFailed

from tests.fixtures.proxyenv import ProxyEnv
from zmirror.registry.proxy import Proxy
from zmirror.testing import FakeRegistry


class VerifiedPassThroughTests(unittest.TestCase):
    """Blobs relayed uncached go out as ``public, immutable``: a CDN would keep a
    corrupt one for a year unless it never ends as complete."""

    def setUp(self):
        self.up = FakeRegistry()
        self.data = bytes(range(256)) * 4096
        self.digest = self.up.add_blob(self.data)
        self.path = f"/v2/library/x/blobs/{self.digest}"
        self.env = ProxyEnv([("up1.fake", self.up)])
        # the proxy as the wiring builds it: no option to turn verification on
        self.env.routes.proxy = Proxy(self.env.pool, self.env.clock, idle_timeout=30)

    def test_corrupt_full_blob_never_completes(self):
        self.up.faults[self.path] = ["corrupt"]
        with self.assertRaises(ResponseFailed):
            self.env.request("GET", self.path)
        rec = self.env.log.records[-1]
        self.assertLess(rec.bytes, len(self.data))  # the last bytes were held back

    def test_good_full_blob_is_immutable(self):
        resp, body = self.env.request("GET", self.path)
        self.assertEqual((resp.code, body), (200, self.data))
        self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"public, max-age=31536000, immutable"])

    def test_head_over_http_answers_the_upstream_length(self):
        resp, body = self.env.request("HEAD", self.path)
        self.assertEqual((resp.code, body), (200, b""))
        self.assertEqual(resp.headers.getRawHeaders(b"content-length"), [str(len(self.data)).encode()])

    def test_ranged_answer_is_not_publicly_cacheable(self):
        resp, body = self.env.request("GET", self.path, headers={"Range": "bytes=100-199"})
        self.assertEqual((resp.code, body), (206, self.data[100:200]))
        self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"no-store"])
