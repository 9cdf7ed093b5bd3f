"""zmirror.transfer: a client's Range header resolved against a blob's size."""

import os

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from tests.fixtures.proxyenv import ProxyEnv
from zmirror.testing import FakeRegistry


def _old_parse_range(value, size):
    """The hand-written parser _parse_range replaced (reference for valid single ranges)."""
    from zmirror.transfer.ranges import UNSATISFIABLE as _UNSATISFIABLE

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
        from zmirror.transfer.ranges import resolve_range as _parse_range

        value = f"bytes={first}-" if open_end else f"bytes={first}-{first + length}"
        self.assertEqual(_parse_range(value, size), _old_parse_range(value, size))

    @given(size=sizes, n=st.integers(min_value=1, max_value=1 << 41))
    @settings(max_examples=200)
    def test_suffix_ranges_as_before(self, size, n):
        from zmirror.transfer.ranges import resolve_range as _parse_range

        value = f"bytes=-{n}"
        self.assertEqual(_parse_range(value, size), _old_parse_range(value, size))

    @given(value=st.text(max_size=40), size=sizes)
    @settings(max_examples=300)
    def test_any_header_gives_a_range_all_or_416(self, value, size):
        from zmirror.transfer.ranges import UNSATISFIABLE as _UNSATISFIABLE, resolve_range as _parse_range

        r = _parse_range(value, size)
        if r is not None and r is not _UNSATISFIABLE:
            start, end = r
            self.assertTrue(0 <= start <= end < size, (value, size, r))

    def test_forms_sent_whole(self):
        from zmirror.transfer.ranges import resolve_range as _parse_range

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
