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


def _old_parse_range(value, size):
    """The hand-written parser _parse_range replaced (reference for valid single ranges)."""
    from zmirror.registry.proxy import _UNSATISFIABLE

    if not value:
        return None
    value = value.strip()
    if not value.lower().startswith("bytes=") or "," in value:
        return None
    first, sep, last = value[6:].strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return _UNSATISFIABLE
            return (max(size - n, 0), size - 1) if size else _UNSATISFIABLE
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or start >= size or end < start:
        return _UNSATISFIABLE
    return start, min(end, size - 1)


class RangeParsingTests(unittest.TestCase):
    sizes = st.integers(min_value=0, max_value=1 << 40)
    positions = st.integers(min_value=0, max_value=1 << 41)

    @given(size=sizes, first=positions, length=st.integers(min_value=0, max_value=1 << 41),
           open_end=st.booleans())
    @settings(max_examples=300)
    def test_first_last_ranges_as_before(self, size, first, length, open_end):
        from zmirror.registry.proxy import _parse_range

        value = f"bytes={first}-" if open_end else f"bytes={first}-{first + length}"
        self.assertEqual(_parse_range(value, size), _old_parse_range(value, size))

    @given(size=sizes, n=st.integers(min_value=1, max_value=1 << 41))
    @settings(max_examples=200)
    def test_suffix_ranges_as_before(self, size, n):
        from zmirror.registry.proxy import _parse_range

        value = f"bytes=-{n}"
        self.assertEqual(_parse_range(value, size), _old_parse_range(value, size))

    @given(value=st.text(max_size=40), size=sizes)
    @settings(max_examples=300)
    def test_any_header_gives_a_range_all_or_416(self, value, size):
        from zmirror.registry.proxy import _UNSATISFIABLE, _parse_range

        r = _parse_range(value, size)
        if r is not None and r is not _UNSATISFIABLE:
            start, end = r
            self.assertTrue(0 <= start <= end < size, (value, size, r))

    def test_forms_sent_whole(self):
        from zmirror.registry.proxy import _parse_range

        for value in ("bytes=0-1,5-6", "items=0-5", "bytes=5", "bytes=+1-2", "bytes=1_0-20", "bytes=x-",
                      "bytes=5-3", "bytes=-0", "bytes=-", ""):
            self.assertIsNone(_parse_range(value, 100), value)

    def test_unsatisfiable_answers_416_with_the_size(self):
        import json

        up = FakeRegistry()
        data = os.urandom(1000)
        digest = up.add_blob(data)
        env = ProxyEnv([("up1.fake", up)])
        path = f"/v2/library/x/blobs/{digest}"
        # the fake upstream answers 416 itself; the proxy relays it as RANGE_INVALID
        resp, body = env.request("GET", path, headers={"Range": "bytes=1000-"})
        self.assertEqual(resp.code, 416)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "RANGE_INVALID")
        self.assertEqual(resp.headers.getRawHeaders(b"content-range"), [b"bytes */1000"])


class CachedRangeTests(CacheTestBase):
    @deferred_test
    async def test_ranges_from_the_cache(self):
        await self.start()
        path = f"/v2/library/x/blobs/{self.digest}"
        size = len(self.data)
        await self.env.arequest("GET", path)
        for value, status, want in (("bytes=10-19", 206, self.data[10:20]),
                                    ("bytes=-5", 206, self.data[-5:]),
                                    (f"bytes={size - 3}-{size + 50}", 206, self.data[-3:]),
                                    ("bytes=0-1,4-5", 200, self.data),
                                    ("bytes=9-2", 200, self.data)):
            resp, body = await self.env.arequest("GET", path, headers={"Range": value})
            self.assertEqual((resp.code, body), (status, want), value)
        resp, body = await self.env.arequest("GET", path, headers={"Range": f"bytes={size}-"})
        self.assertEqual(resp.code, 416)
        self.assertEqual(resp.headers.getRawHeaders(b"content-range"), [f"bytes */{size}".encode()])
