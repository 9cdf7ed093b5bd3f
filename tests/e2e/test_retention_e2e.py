"""Retention end to end: ``twistd zmirror`` with ``[cache] enabled`` in front of a real registry
(the cache tests' ``cacheup``), real pulls with ``skopeo copy --all``.

A namespace quota the cache is over evicts every blob of the multi-arch image; the next
``skopeo copy --all`` through zmirror fetches them again (counted in the upstream's access log)
and is byte-exact.  A pin on the image keeps everything: the dry run frees nothing, a run evicts
nothing, and the copy after it asks the upstream for no blob.
Skipped when ``docker-registry`` or ``skopeo`` is missing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import harness as H
from tests.e2e.clients import SkopeoError, skopeo_copy
from tests.e2e.environment import shared
from tests.e2e.images import dir_problems

SKIP = H.missing_tools()
UPSTREAM = "cacheup"  # tests/e2e/test_cache_e2e.py's upstream (same images)
KEYS = ("dockerv2", "ociindex", "big")


class RetentionE2ETests(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.env = shared()
        self.reg = self.env.extra_open(UPSTREAM, KEYS)
        self.addCleanup(self.env.resume_registry, self.reg)
        self.img = self.env.images["ociindex"]
        self.zm = self.env.start_zmirror("retention", [H.Upstream(UPSTREAM, self.reg.url)],
                                         anonymous="all", cache=True)
        self.addCleanup(self.env.stop_zmirror, self.zm)

    def copy(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir(parents=True)
        dest = base / "img"
        try:
            skopeo_copy(self.zm.host, self.img.ref, dest, timeout=90)
        except SkopeoError as e:
            self.fail(f"skopeo copy of {self.img.ref} failed: {e}")
        self.assertEqual(dir_problems(dest, self.img), [])
        shutil.rmtree(dest, ignore_errors=True)

    def api(self, method: str, path: str, obj=None) -> dict:
        r = self.zm.api(method, path, obj)
        self.assertIn(r.status, (200, 201), r.describe())
        return r.json()

    def blob_gets(self, since: int) -> int:
        return sum(len(self.reg.requests("GET", f"/v2/{self.img.repo}/blobs/{d}", since))
                   for d in self.img.all_blobs())

    def settle(self, since: int, expect: int) -> int:
        deadline = time.monotonic() + 10
        while self.blob_gets(since) < expect and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.blob_gets(since)

    def test_quota_eviction_then_pull_and_pins(self):
        blobs = self.img.all_blobs()
        self.copy()  # fills the cache
        cached = self.api("GET", "/cache")["entries"]
        self.assertGreaterEqual(cached, len(blobs))
        # a pin keeps the image whole: nothing to free, nothing evicted
        pin = self.api("POST", "/cache/pins", {"pattern": self.img.ref})
        rule = self.api("POST", "/cache/rules", {"namespace": "docker.io", "max_size": 1})
        dry = self.api("POST", "/cache/retention/dry-run", {})
        self.assertEqual((dry["blobs"], dry["bytes"]), (0, 0), dry)
        self.assertEqual(self.api("POST", "/cache/retention/run", {})["blobs"], 0)
        since = self.reg.log_offset()
        self.copy()
        time.sleep(0.5)
        self.assertEqual(self.blob_gets(since), 0, "a pinned image is served from the cache")
        # unpinned: the quota evicts its blobs; the next pull fetches them again, byte-exact
        self.assertEqual(self.zm.api("DELETE", f"/cache/pins/{pin['id']}").status, 204)
        dry = self.api("POST", "/cache/retention/dry-run", {"rule": rule})
        self.assertEqual(dry["blobs"], len(blobs), dry)
        self.assertEqual(dry["bytes"], sum(b.size for b in blobs.values()))
        self.assertEqual(self.api("GET", "/cache")["entries"], cached, "a dry run removes nothing")
        out = self.api("POST", "/cache/retention/run", {})
        self.assertEqual((out["blobs"], out["bytes"]), (dry["blobs"], dry["bytes"]), out)
        self.assertEqual(self.api("GET", "/cache")["entries"], cached - len(blobs))
        since = self.reg.log_offset()
        self.copy()
        self.assertEqual(self.settle(since, len(blobs)), len(blobs), "each evicted blob fetched once")
