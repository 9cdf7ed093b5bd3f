"""One sync run (zmirror.sync.runner.SyncRun) over fake sources and an injected
clock: tag resolution, platform selection, progress, skips, errors, rate-limit
pauses and cancel."""

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.syncfakes import (FakeBlobs, FakeManifests, FakeTags, blob, image_manifest, multiarch,
                                      rate_limited)
from zmirror.db.syncjobs import empty_progress
from zmirror.oci.errors import RegistryError
from zmirror.oci.mediatypes import OCI_MANIFEST
from zmirror.sync.runner import MAX_ERRORS, SyncRun


class RunnerTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.manifests = FakeManifests()
        self.tags = FakeTags([])
        self.blobs = FakeBlobs()
        self.changes = 0

    def runner(self, **spec):
        spec = {"images": ["library/app:1.0"], "newest": None, "platforms": [], "pin": False,
                "concurrency": 2, **spec}
        state = {"id": 1, "state": "running", "pause_reason": None, "resume_at": None, **empty_progress()}

        def changed():
            self.changes += 1

        return SyncRun(state, spec, manifests=self.manifests, tags=self.tags, blobs=self.blobs,
                       clock=self.clock, on_change=changed)

    def go(self, r):
        return Deferred.fromCoroutine(r.run())

    def test_all_platforms(self):
        index = multiarch(self.manifests)
        r = self.runner()
        outcome = self.successResultOf(self.go(r))
        st = r.state
        self.assertEqual(outcome, "succeeded")
        self.assertEqual(st["images"], {"done": 1, "total": 1})
        self.assertEqual(st["manifests"], {"done": 4, "total": 4})
        # 3 configs, 3 own layers, 1 shared layer fetched once
        self.assertEqual(st["blobs"], {"done": 7, "skipped": 0, "total": 7})
        self.assertEqual(st["bytes"]["done"], st["bytes"]["total"])
        self.assertEqual(len(self.blobs.calls), 7)
        self.assertEqual(st["upstream_requests"], 4 + 7)
        self.assertIn(f"library/app@{index}", r.pinned)
        self.assertEqual(len(r.pinned), 4)
        self.assertIsNone(st["current"])

    def test_selected_platforms(self):
        multiarch(self.manifests)
        r = self.runner(platforms=["linux/arm64", "linux/arm/v7"])
        self.successResultOf(self.go(r))
        self.assertEqual(r.state["manifests"], {"done": 3, "total": 3})
        self.assertEqual(r.state["blobs"]["total"], 5)  # 2 configs, 2 own layers, the shared one

    def test_cached_blobs_are_skipped(self):
        self.manifests.add("library/app", "1.0", OCI_MANIFEST, image_manifest("a", "b"))
        self.blobs.cached = {blob("a")["digest"], blob("cfg")["digest"]}
        r = self.runner()
        self.successResultOf(self.go(r))
        self.assertEqual(r.state["blobs"], {"done": 3, "skipped": 2, "total": 3})
        self.assertEqual(r.state["upstream_requests"], 1 + 1)

    def test_tag_pattern_newest_over_pages(self):
        self.tags = FakeTags(["3.13.1", "3.13.10", "3.13.9", "3.12.0", "latest"], page=2)
        for t in ("3.13.10", "3.13.9"):
            self.manifests.add("library/python", t, OCI_MANIFEST, image_manifest(f"l-{t}"))
        r = self.runner(images=["python:3.13.*"], newest=2)
        self.assertEqual(self.successResultOf(self.go(r)), "succeeded")
        self.assertEqual(len(self.tags.calls), 3)  # every page
        self.assertEqual(sorted(ref for _r, ref in self.manifests.calls), ["3.13.10", "3.13.9"])
        self.assertEqual(r.state["manifests"], {"done": 2, "total": 2})

    def test_pattern_without_match_is_an_error(self):
        self.tags = FakeTags(["1.0"])
        r = self.runner(images=["library/app:9.*"])
        self.assertEqual(self.successResultOf(self.go(r)), "failed")
        self.assertIn("no tag", r.state["errors"][0]["error"])

    def test_errors_are_kept_and_the_run_goes_on(self):
        self.manifests.add("library/app", "1.0", OCI_MANIFEST, image_manifest("a", "b"))
        self.blobs.fail[blob("a")["digest"]] = [RegistryError("BLOB_UNKNOWN")]
        r = self.runner(images=["library/app:1.0", "library/missing:1"])
        self.assertEqual(self.successResultOf(self.go(r)), "succeeded")
        items = [e["item"] for e in r.state["errors"]]
        self.assertEqual(items, [f"library/app@{blob('a')['digest']}", "library/missing:1"])
        self.assertEqual(r.state["errors"][1]["error"], "MANIFEST_UNKNOWN: manifest unknown")
        self.assertEqual(r.state["blobs"], {"done": 2, "skipped": 0, "total": 3})
        self.assertEqual(r.state["images"], {"done": 2, "total": 2})

    def test_errors_capped(self):
        r = self.runner(images=[f"library/m{i}:1" for i in range(60)])
        self.assertEqual(self.successResultOf(self.go(r)), "failed")  # nothing could be done
        self.assertEqual(len(r.state["errors"]), MAX_ERRORS)

    def test_concurrency_limit(self):
        self.manifests.add("library/app", "1.0", OCI_MANIFEST, image_manifest(*[f"l{i}" for i in range(6)]))
        self.blobs.hold = True
        r = self.runner(concurrency=2)
        d = self.go(r)
        self.assertNoResult(d)
        self.assertEqual(len(self.blobs.pending), 2)
        for _ in range(10):
            self.blobs.release_all()
        self.assertEqual(self.successResultOf(d), "succeeded")
        self.assertEqual(self.blobs.max_active, 2)
        self.assertEqual(r.state["blobs"]["done"], 7)

    def test_rate_limit_pauses_and_resumes_the_same_item(self):
        self.manifests.add("library/app", "1.0", OCI_MANIFEST, image_manifest("a"))
        self.manifests.fail[("library/app", "1.0")] = [rate_limited(30)]
        r = self.runner()
        d = self.go(r)
        self.assertNoResult(d)
        self.assertEqual(r.state["state"], "paused")
        self.assertEqual(r.state["pause_reason"], "rate limited by docker.io")
        self.assertEqual(r.state["resume_at"], 1030)
        self.clock.advance(29)
        self.assertNoResult(d)
        self.assertEqual(len(self.manifests.calls), 1)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d), "succeeded")
        self.assertEqual(self.manifests.calls, [("library/app", "1.0")] * 2)
        self.assertEqual((r.state["state"], r.state["pause_reason"], r.state["resume_at"]),
                         ("running", None, None))
        self.assertEqual(self.changes, 2)  # paused, resumed

    def test_rate_limited_blob_pauses_the_others(self):
        self.manifests.add("ghcr.io/o/app", "1.0", OCI_MANIFEST, image_manifest("a", "b", "c"))
        self.blobs.fail[blob("a")["digest"]] = [rate_limited(10)]
        r = self.runner(images=["ghcr.io/o/app:1.0"], concurrency=1)
        d = self.go(r)
        self.assertEqual(r.state["pause_reason"], "rate limited by ghcr.io")
        calls = len(self.blobs.calls)
        self.clock.advance(5)
        self.assertEqual(len(self.blobs.calls), calls)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(d), "succeeded")
        self.assertEqual(r.state["blobs"]["done"], 4)

    def test_cancel_while_fetching(self):
        self.manifests.add("library/app", "1.0", OCI_MANIFEST, image_manifest("a", "b"))
        self.blobs.hold = True
        r = self.runner()
        d = self.go(r)
        self.assertEqual(len(self.blobs.pending), 2)
        d.cancel()
        r.cancel_tasks()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.blobs.cancelled, 2)
        self.assertEqual(len(self.blobs.calls), 2)  # the third never asked

    def test_cancel_while_paused(self):
        self.manifests.fail[("library/app", "1.0")] = [rate_limited(3600)]
        r = self.runner()
        d = self.go(r)
        self.assertEqual(r.state["state"], "paused")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(3600)
        self.assertEqual(len(self.manifests.calls), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_snapshot_counts_bytes_of_running_downloads(self):
        self.manifests.add("library/app", "1.0", OCI_MANIFEST, image_manifest("aaaa", "bb"))
        self.blobs.hold = True
        r = self.runner(concurrency=3)
        d = self.go(r)
        self.assertEqual(r.snapshot()["bytes"]["done"], 0)
        self.blobs.progress[blob("aaaa")["digest"]].written = 25
        self.blobs.progress[blob("cfg")["digest"]].written = 10**9  # never more than the blob's size
        snap = r.snapshot()
        self.assertEqual(snap["bytes"]["done"], 25 + blob("cfg")["size"])
        self.assertEqual(r.state["bytes"]["done"], 0)  # the live state counts finished blobs only
        snap["blobs"]["done"] = 99
        self.assertEqual(r.state["blobs"]["done"], 0)  # a copy
        self.blobs.release_all()
        self.assertEqual(self.successResultOf(d), "succeeded")
        self.assertEqual(r.snapshot()["bytes"], r.state["bytes"])
