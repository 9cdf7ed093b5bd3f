"""The pull-through cache end to end: ``twistd zmirror`` with ``[cache] enabled`` in front of a real
registry that the tests stop, restart and count requests on.

The upstream is an extra open distribution registry of its own (``cacheup``,
started once per process by ``environment.E2EEnvironment.extra_open``) holding the
docker v2 image, the OCI index and the big image built by the shared harness,
so stopping it disturbs no other test.  Upstream fetches are counted in its
access log (one ``"GET /v2/... HTTP/1.1"`` line per response, written when the
response ends).  Where a download must stay in flight (single-flight, Range
from a running download, SIGKILL mid-blob) zmirror reaches the registry through
a :class:`~tests.e2e.faultproxy.FaultProxy` in paced mode.

Every zmirror here is a fresh instance (own data dir) with ``anonymous = "all"``.
Skipped when ``docker-registry`` or ``skopeo`` is missing.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import harness as H
from tests.e2e.clients import SkopeoError, skopeo_copy
from tests.e2e.environment import shared
from tests.e2e.httpclient import StreamedResult, http_request, http_stream, manifest_headers
from tests.e2e.images import Blob, Image, MiB, dir_problems, sha256_file
from tests.e2e.faultproxy import FaultProxy

SKIP = H.missing_tools()
UPSTREAM = "cacheup"
KEYS = ("dockerv2", "ociindex", "big")


class CacheE2ECase(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.env = shared()
        self.reg = self.env.extra_open(UPSTREAM, KEYS)
        # a test that stops the upstream leaves it running for the next one (cleanups run last-in first-out)
        self.addCleanup(self.env.resume_registry, self.reg)
        self.images = self.env.images

    # -- fixtures

    def zmirror(self, name: str, upstream_url: str | None = None, extra_toml: str = "") -> H.ZMirror:
        zm = self.env.start_zmirror(f"cache-{name}", [H.Upstream(UPSTREAM, upstream_url or self.reg.url)],
                                    anonymous="all", cache=True, extra_toml=extra_toml)
        self.addCleanup(self.env.stop_zmirror, zm)
        self.zm = zm
        return zm

    def throttle(self, rate: float | None) -> FaultProxy:
        t = FaultProxy(self.reg.port, name="throttle", rate=rate, chunk=64 * 1024)
        self.addCleanup(t.close)
        return t

    def workdir(self) -> Path:
        d = Path(self.mktemp()).resolve()
        d.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def tails(self) -> str:
        out = ""
        for proc in (getattr(getattr(self, "zm", None), "proc", None), self.reg.proc):
            if proc is not None:
                out += f"\n--- {proc.name} log tail ---\n{proc.tail(30)}"
        return out

    # -- checks

    def copy(self, zm: H.ZMirror, key: str) -> None:
        img = self.images[key]
        dest = self.workdir() / key
        try:
            skopeo_copy(zm.host, img.ref, dest, timeout=90)
        except SkopeoError as e:
            self.fail(f"skopeo copy of {zm.host}/{img.ref} failed: {e}{self.tails()}")
        problems = dir_problems(dest, img)
        self.assertEqual(problems, [], f"{zm.host}/{img.ref}: " + "; ".join(problems))
        shutil.rmtree(dest, ignore_errors=True)

    def blob_url(self, zm: H.ZMirror, img: Image, blob: Blob) -> str:
        return f"{zm.url}/v2/{img.repo}/blobs/{blob.digest}"

    def check_range(self, zm: H.ZMirror, img: Image, blob: Blob, start: int, end: int) -> None:
        r = http_request("GET", self.blob_url(zm, img, blob), [("Range", f"bytes={start}-{end}")], timeout=30)
        self.assertEqual(r.status, 206, r.describe() + self.tails())
        self.assertEqual(r.header("Content-Range"), f"bytes {start}-{end}/{blob.size}", r.describe())
        self.assertEqual(r.header("Content-Length"), str(end - start + 1), r.describe())
        self.assertEqual(r.header("Docker-Content-Digest"), blob.digest, r.describe())
        self.assertEqual(len(r.body), end - start + 1)
        self.assertTrue(r.body == blob.read(start, end - start + 1), f"bytes {start}-{end}: wrong content")

    def check_full(self, zm: H.ZMirror, img: Image, blob: Blob) -> StreamedResult:
        r = http_stream("GET", self.blob_url(zm, img, blob), timeout=60)
        self.assertEqual(r.status, 200, f"GET {blob.digest}: {r.status}{self.tails()}")
        self.assertEqual(r.header("Content-Length"), str(blob.size))
        self.assertEqual((r.length, r.digest), (blob.size, blob.digest), "blob body does not match its digest")
        return r

    def cache(self, zm: H.ZMirror) -> dict:
        r = zm.api("GET", "/cache")
        self.assertEqual(r.status, 200, r.describe())
        return r.json()

    def upstream_gets(self, img: Image, blob: Blob, since: int) -> list[str]:
        return self.reg.requests("GET", f"/v2/{img.repo}/blobs/{blob.digest}", since)

    def settled_upstream_gets(self, img: Image, blob: Blob, since: int, expect: int) -> list[str]:
        """The upstream GETs of ``blob`` since ``since``, once ``expect`` of them were logged (the
        registry logs a request when its response ends) and a short grace for any extra one."""
        wait_for(lambda: len(self.upstream_gets(img, blob, since)) >= expect, 30)
        time.sleep(0.3)
        return self.upstream_gets(img, blob, since)

    def blob_rows(self, zm: H.ZMirror, img: Image, blob: Blob, n: int) -> list[dict]:
        """zmirror's access-log rows of GETs of ``blob`` (newest first), once there are ``n``."""
        rows: list[dict] = []

        def enough():
            nonlocal rows
            rows = [r for r in zm.access_logs(kind="blob", repository=img.repo)
                    if r["reference"] == blob.digest and r["method"] == "GET"]
            return len(rows) >= n

        wait_for(enough, 10, lambda: f"{n} access-log rows for {blob.digest}, got {rows}")
        return rows

    def cache_path(self, zm: H.ZMirror, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return zm.data / "cache" / "blobs" / "sha256" / hexd[:2] / hexd


def wait_for(pred, timeout: float, what=None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            msg = what() if callable(what) else (what or "condition")
            raise AssertionError(f"timed out after {timeout}s waiting for {msg}")
        time.sleep(0.05)


def hit(row: dict) -> bool | None:
    v = row.get("cache_hit")
    return None if v is None else bool(v)


class CacheE2ETests(CacheE2ECase):
    def test_pull_then_pull_again_with_upstream_stopped(self):
        zm = self.zmirror("offline")
        for key in KEYS:
            self.copy(zm, key)
        before = self.cache(zm)
        self.assertEqual(before["blobs"]["downloads"], 0)
        expected = {}
        for key in KEYS:
            expected.update({d: b.size for d, b in self.images[key].all_blobs().items()})
        self.assertEqual(before["entries"], len(expected))
        self.assertEqual(before["size"], sum(expected.values()))

        self.env.stop_registry(self.reg)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", self.reg.port), timeout=2).close()
        for key in KEYS:  # manifests by tag within the TTL, children by digest, every blob: from the cache
            self.copy(zm, key)
        after = self.cache(zm)
        self.assertEqual(after["blobs"]["misses"], before["blobs"]["misses"], after)
        self.assertEqual(after["manifests"]["misses"], before["manifests"]["misses"], after)
        self.assertGreaterEqual(after["blobs"]["hits"] - before["blobs"]["hits"], len(expected))
        self.assertEqual(after["bytes_from_upstream"], before["bytes_from_upstream"])
        self.assertGreaterEqual(after["bytes_from_cache"] - before["bytes_from_cache"], sum(expected.values()))

    def test_stale_manifest_served_when_upstream_down(self):
        zm = self.zmirror("stale", extra_toml="manifest_ttl = 0\n")
        keys = ("dockerv2", "ociindex")
        since = self.reg.log_offset()
        for key in keys:
            img = self.images[key]
            url = f"{zm.url}/v2/{img.repo}/manifests/{img.tag}"
            for _ in range(2):  # a miss, then (TTL 0) a revalidation with HEAD
                r = http_request("GET", url, manifest_headers(), timeout=30)
                self.assertEqual(r.status, 200, r.describe() + self.tails())
                self.assertEqual(r.body, img.manifest)
                self.assertIsNone(r.header("Warning"), r.describe())
            path = f"/v2/{img.repo}/manifests/{img.tag}"
            wait_for(lambda: self.reg.requests("HEAD", path, since), 10, f"HEAD {path} upstream")
            self.assertEqual(len(self.reg.requests("GET", path, since)), 1, "revalidation must not GET")

        self.env.stop_registry(self.reg)
        for key in keys:
            img = self.images[key]
            url = f"{zm.url}/v2/{img.repo}/manifests/{img.tag}"
            r = http_request("GET", url, manifest_headers(), timeout=30)
            self.assertEqual(r.status, 200, r.describe() + self.tails())
            self.assertEqual(r.body, img.manifest)
            self.assertEqual(r.header("Docker-Content-Digest"), img.digest, r.describe())
            self.assertEqual(r.header("Content-Type"), img.media_type, r.describe())
            self.assertTrue((r.header("Warning") or "").startswith("110 "), r.describe())
            h = http_request("HEAD", url, manifest_headers(), timeout=30)
            self.assertEqual(h.status, 200, h.describe())
            self.assertEqual(h.body, b"")
            self.assertEqual(h.header("Content-Length"), str(len(img.manifest)), h.describe())
            self.assertEqual(h.header("Docker-Content-Digest"), img.digest, h.describe())
            self.assertTrue((h.header("Warning") or "").startswith("110 "), h.describe())
            # by digest: cached for good, never stale
            d = http_request("GET", f"{zm.url}/v2/{img.repo}/manifests/{img.digest}", manifest_headers(),
                             timeout=30)
            self.assertEqual((d.status, d.body), (200, img.manifest), d.describe())
            self.assertIsNone(d.header("Warning"), d.describe())
        self.assertGreaterEqual(self.cache(zm)["manifests"]["stale_served"], 4)
        # a tag never cached cannot be served stale: a clear registry error, not a hang or a 500
        r = http_request("GET", f"{zm.url}/v2/e2e/dockerv2/manifests/nope", manifest_headers(), timeout=30)
        self.assertIn(r.status, (502, 503), r.describe())
        self.assertIn("errors", r.json())

    def test_concurrent_cold_gets_make_one_upstream_fetch(self):
        t = self.throttle(40 * MiB)  # ~2.5 s for the big layer: all 8 join the download in flight
        zm = self.zmirror("flight", t.url)
        img = self.images["big"]
        blob = img.largest_blob()
        since = self.reg.log_offset()
        url = self.blob_url(zm, img, blob)
        with ThreadPoolExecutor(max_workers=8) as ex:
            results = list(ex.map(lambda _: http_stream("GET", url, timeout=90), range(8)))
        for r in results:
            self.assertEqual(r.status, 200, self.tails())
            self.assertEqual((r.length, r.digest), (blob.size, blob.digest))
        gets = self.settled_upstream_gets(img, blob, since, 1)
        self.assertEqual(len(gets), 1, "\n".join(gets))
        c = self.cache(zm)
        self.assertEqual((c["blobs"]["misses"], c["blobs"]["hits"], c["entries"]), (8, 0, 1), c)
        self.assertEqual(c["bytes_from_upstream"], blob.size, c)
        rows = self.blob_rows(zm, img, blob, 8)
        self.assertEqual([hit(r) for r in rows], [False] * 8)
        self.assertEqual({r["status"] for r in rows}, {200})
        self.assertEqual({r["bytes"] for r in rows}, {blob.size})

    def test_range_and_head(self):
        t = self.throttle(8 * MiB)  # ~12 s for the big layer unless sped up
        zm = self.zmirror("range", t.url)
        img = self.images["big"]
        blob = img.largest_blob()
        since = self.reg.log_offset()

        # uncached: the range is answered from the download as it arrives, long before it ends
        t0 = time.monotonic()
        self.check_range(zm, img, blob, 1000, 1000 + 65535)
        self.assertLess(time.monotonic() - t0, 5)
        c = self.cache(zm)
        self.assertEqual((c["blobs"]["downloads"], c["entries"]), (1, 0), c)
        self.assertEqual(c["blobs"]["misses"], 1)
        t.rate = None
        wait_for(lambda: self.cache(zm)["entries"] == 1, 30, "the big blob cached")
        self.assertTrue(self.cache_path(zm, blob.digest).exists())

        # cached: Range (middle, last bytes, suffix form) and HEAD
        mid = 50 * MiB + 7
        self.check_range(zm, img, blob, mid, mid + 65535)
        self.check_range(zm, img, blob, blob.size - 100, blob.size - 1)
        r = http_request("GET", self.blob_url(zm, img, blob), [("Range", "bytes=-10")], timeout=30)
        self.assertEqual(r.status, 206, r.describe())
        self.assertEqual(r.header("Content-Range"), f"bytes {blob.size - 10}-{blob.size - 1}/{blob.size}")
        self.assertEqual(r.body, blob.read(blob.size - 10))
        r = http_request("GET", self.blob_url(zm, img, blob), [("Range", f"bytes={blob.size}-")], timeout=30)
        self.assertEqual(r.status, 416, r.describe())
        self.assertEqual(r.header("Content-Range"), f"bytes */{blob.size}", r.describe())
        h = http_request("HEAD", self.blob_url(zm, img, blob), timeout=30)
        self.assertEqual(h.status, 200, h.describe())
        self.assertEqual(h.header("Content-Length"), str(blob.size), h.describe())
        self.assertEqual(h.header("Docker-Content-Digest"), blob.digest, h.describe())
        self.assertEqual(h.header("Accept-Ranges"), "bytes", h.describe())
        self.assertEqual(h.body, b"")

        # a small uncached blob: a range ending on the last byte waits for the verification
        small = self.images["dockerv2"]
        layer = small.blobs[1]
        self.check_range(zm, small, layer, layer.size - 1000, layer.size - 1)
        wait_for(lambda: self.cache(zm)["entries"] == 2, 10, "the small layer cached")

        self.assertEqual(len(self.settled_upstream_gets(img, blob, since, 1)), 1)
        self.assertEqual(len(self.settled_upstream_gets(small, layer, since, 1)), 1)
        self.assertEqual(self.reg.requests("HEAD", f"/v2/{img.repo}/blobs/{blob.digest}", since), [])
        rows = self.blob_rows(zm, img, blob, 5)  # newest first; the HEAD is not a GET row
        self.assertEqual([(r["status"], hit(r)) for r in rows],
                         [(416, True), (206, True), (206, True), (206, True), (206, False)])

    def test_sigkill_mid_download_then_restarts(self):
        t = self.throttle(10 * MiB)
        zm = self.zmirror("kill", t.url)
        img = self.images["big"]
        blob = img.largest_blob()
        since = self.reg.log_offset()
        tmp = zm.data / "cache" / "tmp"
        final = self.cache_path(zm, blob.digest)

        # a slow client reads 4 MiB, then zmirror dies with the download in flight
        conn = http.client.HTTPConnection("127.0.0.1", zm.port, timeout=30)
        self.addCleanup(conn.close)
        conn.request("GET", f"/v2/{img.repo}/blobs/{blob.digest}")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        got = b""
        while len(got) < 4 * MiB:
            chunk = resp.read(min(256 * 1024, 4 * MiB - len(got)))
            self.assertTrue(chunk, "body ended early")
            got += chunk
        self.assertTrue(got == blob.read(0, 4 * MiB), "first 4 MiB differ")
        partial = list(tmp.iterdir())
        self.assertEqual(len(partial), 1, partial)
        self.assertLess(partial[0].stat().st_size, blob.size)
        self.assertFalse(final.exists())
        self.env.restart_zmirror(zm, kill=True)
        conn.close()

        # nothing of it can be served: tmp/ emptied at start, no file, no index entry
        wait_for(lambda: not any(tmp.iterdir()), 10, f"{tmp} emptied at start")
        self.assertFalse(final.exists())
        c = self.cache(zm)
        self.assertEqual((c["entries"], c["size"]), (0, 0), c)

        t.rate = None
        self.check_full(zm, img, blob)
        wait_for(lambda: self.cache(zm)["entries"] == 1, 10, "the blob cached after the restart")
        self.assertTrue(final.exists())
        self.assertEqual(sha256_file(final), blob.digest)
        self.assertEqual(list(tmp.iterdir()), [])
        # exactly one complete upstream fetch: the new one (the killed fetch is logged by the
        # registry, as an incomplete response, only whenever its connection finally ends)
        def complete():
            return [ln for ln in self.upstream_gets(img, blob, since) if f'" 200 {blob.size} ' in ln]

        wait_for(lambda: len(complete()) >= 1, 30, "the new upstream fetch logged")
        time.sleep(0.3)
        self.assertEqual(len(complete()), 1)

        # a clean restart keeps the cache: served without asking the upstream
        self.env.restart_zmirror(zm)
        self.check_full(zm, img, blob)
        time.sleep(0.3)
        self.assertEqual(len(complete()), 1, "a pull after a clean restart went upstream")
        rows = self.blob_rows(zm, img, blob, 2)
        self.assertEqual(hit(rows[0]), True, rows[0])
        self.assertEqual((rows[0]["status"], rows[0]["bytes"]), (200, blob.size), rows[0])  # sent by sendfile(2)
        self.assertEqual(self.cache(zm)["entries"], 1)

    def test_admin_cache_api_and_access_log(self):
        zm = self.zmirror("admin")
        img = self.images["dockerv2"]
        layer = img.blobs[1]
        blobs = img.all_blobs()
        self.copy(zm, "dockerv2")  # cold
        self.copy(zm, "dockerv2")  # warm
        c = self.cache(zm)
        self.assertTrue(c["enabled"])
        self.assertEqual(c["entries"], len(blobs), c)
        self.assertEqual(c["size"], sum(b.size for b in blobs.values()), c)
        self.assertEqual((c["blobs"]["misses"], c["blobs"]["hits"]), (len(blobs), len(blobs)), c)
        self.assertIsNotNone(c["hit_ratio"])
        self.assertTrue(0 < c["hit_ratio"] < 1, c)
        self.assertGreaterEqual(c["bytes_from_cache"], c["size"], c)
        self.assertGreaterEqual(c["bytes_from_upstream"], c["size"], c)
        rows = self.blob_rows(zm, img, layer, 2)
        self.assertEqual([hit(r) for r in rows], [True, False])

        # bad input: a JSON 400, nothing deleted
        r = zm.api("DELETE", "/cache?digest=sha256:nothex")
        self.assertEqual(r.status, 400, r.describe())
        self.assertIn("digest", r.body.decode())
        self.assertEqual(self.cache(zm)["entries"], len(blobs))

        since = self.reg.log_offset()
        r = zm.api("DELETE", f"/cache?digest={layer.digest}")
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(r.json()["deleted"]["blobs"], 1, r.describe())
        c2 = self.cache(zm)
        self.assertEqual(c2["entries"], len(blobs) - 1, c2)
        self.assertEqual(c2["size"], c["size"] - layer.size, c2)
        wait_for(lambda: not self.cache_path(zm, layer.digest).exists(), 10, "the blob file removed")
        self.assertTrue(self.cache_path(zm, img.blobs[0].digest).exists())

        # the next GET goes upstream again, the one after is local
        self.check_full(zm, img, layer)
        self.check_full(zm, img, layer)
        self.assertEqual(len(self.settled_upstream_gets(img, layer, since, 1)), 1)
        rows = self.blob_rows(zm, img, layer, 4)
        self.assertEqual([hit(r) for r in rows], [True, False, True, False])
        self.assertEqual(self.cache(zm)["entries"], len(blobs))

    def test_delete_while_read_then_fetched_again(self):
        """DELETE /api/cache of a blob a slow client is reading, a new copy fetched meanwhile: the
        reader gets its whole blob, and the new copy stays cached once the old reader is done."""
        zm = self.zmirror("doomed")
        img = self.images["big"]
        blob = img.largest_blob()
        since = self.reg.log_offset()
        path = self.cache_path(zm, blob.digest)
        self.check_full(zm, img, blob)  # cached
        conn = http.client.HTTPConnection("127.0.0.1", zm.port, timeout=30)
        self.addCleanup(conn.close)
        conn.request("GET", f"/v2/{img.repo}/blobs/{blob.digest}")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        h = hashlib.sha256(resp.read(4 * MiB))  # then stalls with the file open

        r = zm.api("DELETE", f"/cache?digest={blob.digest}")
        self.assertEqual((r.status, r.json()["deleted"]["blobs"]), (200, 1), r.describe())
        self.assertEqual(self.cache(zm)["entries"], 0)
        self.check_full(zm, img, blob)  # fetched again and cached again
        self.assertEqual(len(self.settled_upstream_gets(img, blob, since, 2)), 2)
        wait_for(lambda: self.cache(zm)["entries"] == 1, 10, "the new copy indexed")

        while True:  # the old reader finishes its own copy
            chunk = resp.read(MiB)
            if not chunk:
                break
            h.update(chunk)
        self.assertEqual("sha256:" + h.hexdigest(), blob.digest)
        conn.close()
        time.sleep(0.5)  # the old copy's last reader is gone: its deferred unlink has run by now

        self.assertEqual(self.cache(zm)["entries"], 1)
        self.assertTrue(path.exists(), "the new copy was deleted when the old copy's reader finished")
        self.check_full(zm, img, blob)
        time.sleep(0.3)
        self.assertEqual(len(self.upstream_gets(img, blob, since)), 2, "the cached copy was not served")

    def test_first_client_leaving_does_not_fail_the_others(self):
        """The client that started a download goes away — before the upstream answered, and again
        mid-body on another blob — and the clients that joined it still get the whole blob, from
        one upstream fetch."""
        t = self.throttle(20 * MiB)
        zm = self.zmirror("leave", t.url)
        img = self.images["big"]
        blob = img.largest_blob()
        small = self.images["dockerv2"]
        layer = small.blobs[1]
        since = self.reg.log_offset()

        # 1. before the upstream answered: the upstream's bytes are held back
        t.hold()
        first = socket.create_connection(("127.0.0.1", zm.port), timeout=10)
        first.sendall(f"GET /v2/{small.repo}/blobs/{layer.digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)
        with ThreadPoolExecutor(max_workers=1) as ex:
            joined = ex.submit(http_stream, "GET", self.blob_url(zm, small, layer), timeout=30)
            time.sleep(0.3)
            first.close()  # the first client leaves while its request waits for the upstream
            time.sleep(0.3)
            t.release()
            r = joined.result(timeout=40)
        self.assertEqual(r.status, 200, self.tails())
        self.assertEqual((r.length, r.digest), (layer.size, layer.digest))

        # 2. mid-body: the first client reads 1 MiB and leaves, a second one joined meanwhile
        conn = http.client.HTTPConnection("127.0.0.1", zm.port, timeout=30)
        self.addCleanup(conn.close)
        conn.request("GET", f"/v2/{img.repo}/blobs/{blob.digest}")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        resp.read(MiB)
        with ThreadPoolExecutor(max_workers=1) as ex:
            joined = ex.submit(http_stream, "GET", self.blob_url(zm, img, blob), timeout=60)
            time.sleep(0.3)
            conn.close()
            r = joined.result(timeout=70)
        self.assertEqual(r.status, 200, self.tails())
        self.assertEqual((r.length, r.digest), (blob.size, blob.digest))
        self.assertEqual(len(self.settled_upstream_gets(img, blob, since, 1)), 1)
        self.assertEqual(len(self.settled_upstream_gets(small, layer, since, 1)), 1)
        self.assertEqual(self.cache(zm)["entries"], 2)

    def test_eviction_keeps_the_cache_within_max_size(self):
        zm = self.zmirror("evict", extra_toml='max_size = "50MB"\n')
        img = self.images["big"]
        blob = img.largest_blob()
        small = self.images["dockerv2"]
        self.copy(zm, "dockerv2")
        before = self.cache(zm)
        # bigger than the whole cache: served in full, but not kept (keeping it would
        # evict everything else and then itself)
        self.check_full(zm, img, blob)
        wait_for(lambda: not self.cache_path(zm, blob.digest).exists(), 10, "the oversized file removed")
        c = self.cache(zm)
        self.assertEqual(c["max_size"], 50 * 1000 ** 2)
        self.assertLessEqual(c["size"], c["max_size"], c)
        self.assertEqual(c["blobs"]["evictions"], 0, c)
        self.assertEqual(list((zm.data / "cache" / "tmp").iterdir()), [])
        # the index and the disk agree: every file left is an entry, and the sizes add up;
        # the small image pulled before is still there
        files = [f for f in (zm.data / "cache" / "blobs").rglob("*") if f.is_file()]
        self.assertEqual(len(files), c["entries"], files)
        self.assertEqual(sum(f.stat().st_size for f in files), c["size"])
        self.assertEqual((c["entries"], c["size"]), (before["entries"], before["size"]))
        self.assertEqual(c["entries"], len(small.all_blobs()), c)
        self.assertEqual(c["size"], sum(b.size for b in small.all_blobs().values()), c)


class CacheDiskFullE2ETests(CacheE2ECase):
    """The cache directory on a full disk (an 8 MiB tmpfs, mounted as root): pulls go on, uncached."""

    def setUp(self):
        super().setUp()
        import os
        import subprocess

        if os.geteuid() != 0:
            raise unittest.SkipTest("mounting a tmpfs needs root")
        self.mnt = self.env.root / "zmirror" / "cache-diskfull" / "data" / "cache"
        self.mnt.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(self.mnt)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise unittest.SkipTest(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        # cleanups run last-in first-out: zmirror (added by self.zmirror) stops before the unmount
        self.addCleanup(subprocess.run, ["umount", "-l", str(self.mnt)], capture_output=True)

    def test_disk_full_cache_relays_uncached(self):
        zm = self.zmirror("diskfull")
        img = self.images["big"]
        blob = img.largest_blob()
        self.assertGreater(blob.size, 16 * MiB)
        # the download that runs into ENOSPC cannot finish: its client is cut off, never
        # handed a short body as complete
        with self.assertRaises((http.client.IncompleteRead, ConnectionError)):
            http_stream("GET", self.blob_url(zm, img, blob), timeout=60)
        c = self.cache(zm)
        self.assertFalse(c["storing"], c)
        self.assertIn("No space left", c["store_error"] or "", c)
        self.assertGreaterEqual(c["blobs"]["write_failures"], 1, c)
        self.assertEqual(list((self.mnt / "tmp").iterdir()), [])
        # meanwhile pulls are relayed from upstream without storing
        self.check_full(zm, img, blob)
        self.assertFalse(self.cache_path(zm, blob.digest).exists())
        self.copy(zm, "dockerv2")
        rows = self.blob_rows(zm, img, blob, 2)
        self.assertEqual(rows[0]["status"], 200, rows[0])
