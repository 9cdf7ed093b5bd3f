"""zmirror.upstream.blobs: blobs relayed from the upstreams without the cache (verified,
never publicly cacheable when partial), and the values an upstream sends on the blob path
checked."""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest
from twisted.web._newclient import ResponseFailed

from tests.fixtures.proxyenv import ProxyEnv
from tests.fixtures.upstream import (BAD_CONTENT_TYPES, BDIGEST, BLOB, BPATH, OCTET, blob_answer,
                                     pull_blob, script_world)
from zmirror.registry.build import build_proxy
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
        self.env.routes.proxy = build_proxy(self.env.pool, self.env.clock, idle_timeout=30)

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


class BlobUpstreamValueTests(unittest.TestCase):
    """Values an upstream sends on the blob path and we copy to the client are
    checked: replaced (Content-Type) or a bad answer that fails over."""

    world = staticmethod(script_world)
    pull = staticmethod(pull_blob)

    def on(self, w, host, method, factory):
        w.agent.on(method, f"http://{host}{BPATH}", factory)

    def failed_over(self, w, d):
        result = self.successResultOf(d)
        self.assertEqual(w.health(1)["state"], "down")
        self.assertEqual(w.health(2)["state"], "up")
        return result

    def upstream_error(self, d):
        from zmirror.oci.errors import RegistryError

        err = self.failureResultOf(d, RegistryError).value
        self.assertEqual((err.status, err.code), (502, "UPSTREAM_ERROR"))

    # Content-Type: replaced by application/octet-stream when invalid
    def test_invalid_content_type_replaced(self):
        for ctype in BAD_CONTENT_TYPES:
            for method in (b"GET", b"HEAD"):
                w = self.world()
                self.on(w, "a.fake", method.decode(), lambda: blob_answer(ctype=ctype))
                result = self.successResultOf(self.pull(w, method))
                self.assertEqual((result.status, result.headers[b"Content-Type"]), (200, OCTET), (ctype, method))
                self.assertEqual(w.health(1)["state"], "up")

    def test_valid_content_type_passed_on(self):
        for ctype in (b"application/vnd.docker.image.rootfs.diff.tar.gzip", b"application/x-tar; q=1",
                      b" application/octet-stream\t"):
            w = self.world()
            self.on(w, "a.fake", "GET", lambda: blob_answer(ctype=ctype))
            result = self.successResultOf(self.pull(w))
            self.assertEqual(result.headers[b"Content-Type"], ctype.strip(b" \t"))

    def test_blob_content_type_never_unsafe(self):
        from zmirror.transfer.interfaces import CONTENT_TYPE_MAX, blob_content_type

        @given(st.one_of(st.binary(max_size=300), st.text(max_size=300), st.none()))
        @settings(max_examples=300)
        def check(value):
            out = blob_content_type(value)
            self.assertLessEqual(len(out), CONTENT_TYPE_MAX)
            self.assertTrue(all(0x20 <= c < 0x7f or c == 0x09 for c in out), out)
            self.assertIn(b"/", out)

        check()

    # HEAD: the length is required and must be digits
    def test_head_content_length_invalid_fails_over(self):
        for length in (b"\xb2", b"12a", b"-1", b"1e3", b"", b"1" * 19, b"\xd9\xa3", None):
            w = self.world(("a.fake", "b.fake"))
            self.on(w, "a.fake", "HEAD", lambda: blob_answer(body=b"", length=length))
            self.on(w, "b.fake", "HEAD", lambda: blob_answer(body=b"", length=b"100"))
            result = self.failed_over(w, self.pull(w, b"HEAD"))
            self.assertEqual((result.status, result.content_length), (200, 100), length)

    def test_head_content_length_invalid_everywhere_is_502(self):
        w = self.world()
        self.on(w, "a.fake", "HEAD", lambda: blob_answer(body=b"", length=b"\xb2"))
        self.upstream_error(self.pull(w, b"HEAD"))

    def test_head_answered_with_a_range_fails_over(self):
        w = self.world(("a.fake", "b.fake"))
        self.on(w, "a.fake", "HEAD", lambda: blob_answer(206, {b"Content-Range": b"bytes 0-9/100"}, b""))
        self.on(w, "b.fake", "HEAD", lambda: blob_answer(body=b"", length=b"100"))
        self.assertEqual(self.failed_over(w, self.pull(w, b"HEAD")).content_length, 100)

    # 206 / 416: Content-Range must be well formed (and agree with the body)
    def test_partial_answer_content_range_invalid_fails_over(self):
        good = lambda: blob_answer(206, {b"Content-Range": b"bytes 0-9/100"}, BLOB[:10])  # noqa: E731
        for cr in (None, b"bytes 0-9/\xb2", b"bytes 9-0/100", b"bytes 0-9/5", b"bytes 0-9/*",
                   b"items 0-9/100", b"bytes 0-19/100", b"bytes \xb2-9/100", b"bytes 0-9/100, 10-19/100",
                   b"bytes 0-9/100\rX-Injected: 1", b"bytes 0-9/" + b"9" * 19):
            w = self.world(("a.fake", "b.fake"))
            self.on(w, "a.fake", "GET",
                    lambda: blob_answer(206, {b"Content-Range": cr} if cr is not None else {}, BLOB[:10]))
            self.on(w, "b.fake", "GET", good)
            result = self.failed_over(w, self.pull(w, range="bytes=0-9"))
            self.assertEqual((result.status, result.headers[b"Content-Range"]), (206, b"bytes 0-9/100"), cr)
            self.assertEqual(result.expected_length, 10)

    def test_partial_answer_content_range_respelled(self):
        w = self.world()
        self.on(w, "a.fake", "GET", lambda: blob_answer(206, {b"Content-Range": b"  BYTES 0-9/100 "}, BLOB[:10]))
        result = self.successResultOf(self.pull(w, range="bytes=0-9"))
        self.assertEqual(result.headers[b"Content-Range"], b"bytes 0-9/100")

    def test_partial_answer_to_a_request_without_range_fails_over(self):
        w = self.world(("a.fake", "b.fake"))
        self.on(w, "a.fake", "GET", lambda: blob_answer(206, {b"Content-Range": b"bytes 0-9/100"}, BLOB[:10]))
        self.on(w, "b.fake", "GET", lambda: blob_answer())
        result = self.failed_over(w, self.pull(w))
        self.assertEqual((result.status, result.expected_digest), (200, BDIGEST))

    def test_unsatisfiable_answer_content_range_invalid_fails_over(self):
        from zmirror.oci.errors import RegistryError

        for cr in (b"bytes */\xb2", b"bytes */x", b"bytes 0-9/100", b"bytes */100\rX-Injected: 1"):
            w = self.world(("a.fake", "b.fake"))
            self.on(w, "a.fake", "GET", lambda: blob_answer(416, {b"Content-Range": cr}, b""))
            self.on(w, "b.fake", "GET", lambda: blob_answer(416, {b"Content-Range": b"bytes */100"}, b""))
            err = self.failureResultOf(self.pull(w, range="bytes=500-"), RegistryError).value
            self.assertEqual((err.code, err.headers), ("RANGE_INVALID", {b"Content-Range": b"bytes */100"}), cr)
            self.assertEqual(w.health(1)["state"], "down")

    def test_only_a_single_range_goes_upstream(self):
        w = self.world()
        sent = []
        request = w.agent.request

        def record(method, uri, headers=None, bodyProducer=None):
            sent.append(headers.getRawHeaders(b"range") if headers is not None else None)
            return request(method, uri, headers, bodyProducer)

        w.agent.request = record
        self.on(w, "a.fake", "GET", lambda: blob_answer())
        for rng, upstream in (("bytes=0-1,5-6", None), ("items=0-5", None), ("bytes=5-3", None),
                              ("bytes=0-9", [b"bytes=0-9"]), ("bytes=-5", [b"bytes=-5"])):
            del sent[:]
            self.successResultOf(self.pull(w, range=rng))
            self.assertEqual(sent, [upstream], rng)
