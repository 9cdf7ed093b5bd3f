"""The retention planner (zmirror/cache/retention.py) and pin patterns
(zmirror/cache/pins.py): pure functions, an injected time."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from zmirror.cache.pins import InvalidPin, manifest_refs, parse_pin, repo_namespace
from zmirror.cache.retention import (DAY, BlobView, ManifestView, Rule, Snapshot, TagView, plan)

NOW = 1_800_000_000.0
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def d(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def blob(n, size, days_ago, *repos, busy=False):
    return BlobView(d(n), size, NOW - days_ago * DAY, frozenset(repos), busy)


def image_body(config, *layers):
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"digest": config, "size": 1},
                       "layers": [{"digest": x, "size": 1} for x in layers]}).encode()


def index_body(*children):
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": [{"digest": c, "size": 1} for c in children]}).encode()


class PinPatternTests(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(parse_pin("nginx:1.27").pattern, "library/nginx:1.27")
        self.assertEqual(parse_pin("docker.io/library/nginx").pattern, "library/nginx")
        p = parse_pin("ghcr.io/o/img@" + d(1))
        self.assertEqual((p.repo, p.digest, p.tag), ("ghcr.io/o/img", d(1), None))
        self.assertEqual(parse_pin("localhost:5000/a/b:v1").tag, "v1")

    def test_wildcards(self):
        cases = {
            "**": (["library/nginx", "ghcr.io/o/x"], []),
            "ghcr.io/o/**": (["ghcr.io/o/img", "ghcr.io/o/a/b"], ["ghcr.io/p/x", "library/o"]),
            "library/*": (["library/nginx"], ["library/a/b", "ghcr.io/library/x"]),
            "*/library/*": (["library/nginx", "ghcr.io/library/x"], ["ghcr.io/a/library/x"]),
            "**/nginx": (["library/nginx", "ghcr.io/a/nginx"], ["library/nginx2"]),
            "py*": (["library/python"], ["library/ruby", "x/python"]),
        }
        for pattern, (yes, no) in cases.items():
            p = parse_pin(pattern)
            for name in yes:
                self.assertTrue(p.matches_repo(name), (pattern, name))
            for name in no:
                self.assertFalse(p.matches_repo(name), (pattern, name))
        self.assertTrue(parse_pin("library/python:3.13-*").matches_tag("3.13-slim"))
        self.assertFalse(parse_pin("library/python:3.13-*").matches_tag("3.12-slim"))

    def test_invalid(self):
        for bad in ["", " ", "A/B", "x:y:z", "x@sha256:zz", "ghcr.io/**@" + d(1), "a b",
                    "x:tag@" + d(1), 5, None, "x" * 400, "a//b", "lib/**x", "ghcr.io/o/\x00"]:
            with self.assertRaises(InvalidPin, msg=repr(bad)):
                parse_pin(bad)

    def test_namespace_of_stored_names(self):
        self.assertEqual(repo_namespace("library/nginx"), "docker.io")
        self.assertEqual(repo_namespace("ghcr.io/o/x"), "ghcr.io")
        self.assertEqual(repo_namespace("localhost:5000/x"), "localhost:5000")

    def test_manifest_refs(self):
        self.assertEqual(manifest_refs(OCI_MANIFEST, image_body(d(1), d(2), d(3))), ([], [d(1), d(2), d(3)]))
        self.assertEqual(manifest_refs(OCI_INDEX, index_body(d(4), d(5))), ([d(4), d(5)], []))
        self.assertEqual(manifest_refs(OCI_MANIFEST, b"\xff not json"), ([], []))
        self.assertEqual(manifest_refs(OCI_MANIFEST, b"[1]"), ([], []))


class AgeTests(unittest.TestCase):
    def test_age_evicts_old_blobs_of_the_namespace(self):
        snap = Snapshot(blobs=[blob(1, 100, 40, "library/a"), blob(2, 200, 5, "library/a"),
                               blob(3, 300, 40, "ghcr.io/o/x")])
        p = plan(snap, [Rule("docker.io", max_age_days=30)], NOW)
        self.assertEqual([(a.digest, a.delete, a.why) for a in p.blobs], [(d(1), True, "age")])
        s = p.summary()
        self.assertEqual((s["blobs"], s["bytes"]), (1, 100))
        self.assertEqual(s["items"][0]["reason"], "not pulled within 30 days")

    def test_the_clock_decides(self):
        snap = Snapshot(blobs=[blob(1, 100, 10, "library/a")])
        rule = Rule("docker.io", max_age_days=30)
        self.assertEqual(plan(snap, [rule], NOW).blobs, [])
        self.assertEqual(len(plan(snap, [rule], NOW + 21 * DAY).blobs), 1)

    def test_disabled_rule_does_nothing(self):
        snap = Snapshot(blobs=[blob(1, 100, 40, "library/a")])
        self.assertEqual(plan(snap, [Rule("docker.io", max_age_days=1, enabled=False)], NOW).blobs, [])

    def test_shared_blob_survives_eviction_of_one_repository(self):
        # one blob, two namespaces: docker.io lets it go after 7 days, ghcr.io keeps it 30
        shared = blob(1, 500, 10, "library/a", "ghcr.io/o/x")
        snap = Snapshot(blobs=[shared])
        p = plan(snap, [Rule("docker.io", max_age_days=7), Rule("ghcr.io", max_age_days=30)], NOW)
        [a] = p.blobs
        self.assertEqual((a.delete, a.drop), (False, frozenset({"library/a"})))
        self.assertEqual(p.summary()["bytes"], 0)
        self.assertEqual(p.summary()["memberships"], 1)
        # without ghcr.io's membership it goes
        p = plan(Snapshot(blobs=[blob(1, 500, 10, "library/a", "library/b")]),
                 [Rule("docker.io", max_age_days=7)], NOW)
        self.assertTrue(p.blobs[0].delete)
        # a namespace without a rule keeps its blobs
        p = plan(snap, [Rule("docker.io", max_age_days=7)], NOW)
        self.assertFalse(p.blobs[0].delete)

    def test_tags_and_manifests(self):
        img_old, img_new, idx = d(10), d(11), d(12)
        snap = Snapshot(
            blobs=[],
            tags=[TagView("library/a", "old", OCI_MANIFEST, img_old, NOW - 40 * DAY, 300),
                  TagView("library/a", "new", OCI_INDEX, idx, NOW - 1 * DAY, 200)],
            manifests={img_old: ManifestView(img_old, OCI_MANIFEST, 300, NOW - 40 * DAY, frozenset({"library/a"})),
                       img_new: ManifestView(img_new, OCI_MANIFEST, 300, NOW - 40 * DAY, frozenset({"library/a"})),
                       idx: ManifestView(idx, OCI_INDEX, 200, NOW - 1 * DAY, frozenset({"library/a"}))},
            refs={idx: ([img_new], [])})
        p = plan(snap, [Rule("docker.io", max_age_days=30)], NOW)
        self.assertEqual([(t.tag.tag) for t in p.tags], ["old"])
        # the old image's body goes; the platform manifest of the kept index stays (though old)
        self.assertEqual([(m.digest, m.delete) for m in p.manifests], [(img_old, True)])
        self.assertEqual(p.summary()["tags"], 1)
        self.assertEqual(p.summary()["manifests"], 1)


class QuotaTests(unittest.TestCase):
    def test_lru_within_the_namespace_until_under(self):
        snap = Snapshot(blobs=[blob(1, 400, 3, "library/a"), blob(2, 400, 2, "library/b"),
                               blob(3, 400, 1, "library/a"), blob(4, 5000, 9, "ghcr.io/o/x")])
        p = plan(snap, [Rule("docker.io", max_size=700)], NOW)
        self.assertEqual([a.digest for a in p.blobs], [d(1), d(2)])  # 1200 → 400
        self.assertTrue(all(a.why == "quota" for a in p.blobs))
        self.assertIn("docker.io over its quota", p.blobs[0].reason)

    def test_quota_and_age_together(self):
        snap = Snapshot(blobs=[blob(1, 400, 50, "library/a"), blob(2, 400, 2, "library/b"),
                               blob(3, 400, 1, "library/a")])
        p = plan(snap, [Rule("docker.io", max_age_days=30, max_size=500)], NOW)
        self.assertEqual({a.digest: a.why for a in p.blobs}, {d(1): "age", d(2): "quota"})


class PinTests(unittest.TestCase):
    def snapshot(self, pins):
        cfg, layer, img, idx = d(1), d(2), d(20), d(21)
        return Snapshot(
            blobs=[blob(1, 10, 90, "library/a"), blob(2, 1000, 90, "library/a"),
                   blob(3, 1000, 90, "library/b")],
            tags=[TagView("library/a", "1.0", OCI_INDEX, idx, NOW - 90 * DAY)],
            manifests={idx: ManifestView(idx, OCI_INDEX, 1, NOW - 90 * DAY, frozenset({"library/a"})),
                       img: ManifestView(img, OCI_MANIFEST, 1, NOW - 90 * DAY, frozenset({"library/a"}))},
            refs={idx: ([img], []), img: ([], [cfg, layer])},
            pins=[parse_pin(x) for x in pins], max_size=100)

    def test_pinned_tag_keeps_index_platform_manifest_and_blobs(self):
        snap = self.snapshot(["library/a:1.0"])
        for p in (plan(snap, [Rule("docker.io", max_age_days=1, max_size=1)], NOW), plan(snap, [], NOW)):
            self.assertEqual([a.digest for a in p.blobs], [d(3)])  # age, quota and the global LRU
            self.assertEqual(p.tags, [])
            self.assertEqual(p.manifests, [])

    def test_repository_and_pattern_pins(self):
        for pattern in ("library/a", "library/*", "**", "docker.io/library/**"):
            p = plan(self.snapshot([pattern]), [Rule("docker.io", max_age_days=1)], NOW)
            self.assertNotIn(d(2), [a.digest for a in p.blobs], pattern)
            self.assertEqual(p.tags, [], pattern)

    def test_digest_pin(self):
        p = plan(self.snapshot(["library/a@" + d(20)]), [Rule("docker.io", max_age_days=1)], NOW)
        self.assertEqual(sorted(a.digest for a in p.blobs), [d(3)])
        self.assertEqual([t.tag.tag for t in p.tags], ["1.0"])  # the tag is not pinned

    def test_unpinned(self):
        p = plan(self.snapshot([]), [Rule("docker.io", max_age_days=1)], NOW)
        self.assertEqual(sorted(a.digest for a in p.blobs), [d(1), d(2), d(3)])


class GlobalSizeTests(unittest.TestCase):
    def test_global_lru_skips_pins_and_busy(self):
        snap = Snapshot(blobs=[blob(1, 100, 9, "library/a"), blob(2, 100, 8, "library/b", busy=True),
                               blob(3, 100, 7, "library/c"), blob(4, 100, 1, "library/d")],
                        pins=[parse_pin("library/a")], max_size=150)
        p = plan(snap, [], NOW)
        self.assertEqual([(a.digest, a.why) for a in p.blobs], [(d(3), "size"), (d(4), "size")])
        self.assertEqual(plan(snap, [], NOW, global_size=False).blobs, [])

    def test_busy_blob_is_not_selected_by_rules(self):
        snap = Snapshot(blobs=[blob(1, 100, 90, "library/a", busy=True)])
        self.assertEqual(plan(snap, [Rule("docker.io", max_age_days=1, max_size=1)], NOW).blobs, [])


repos = st.sampled_from(["library/a", "library/b", "ghcr.io/o/x", "ghcr.io/p/y", "quay.io/q/z"])
blobs = st.lists(st.builds(lambda n, size, age, rs, busy: blob(n, size, age, *rs, busy=busy),
                           st.integers(1, 40), st.integers(1, 1000), st.floats(0, 100),
                           st.frozensets(repos, max_size=3), st.booleans()),
                 max_size=30, unique_by=lambda b: b.digest)
rules = st.lists(st.builds(Rule, st.sampled_from(["docker.io", "ghcr.io", "quay.io"]),
                           st.one_of(st.none(), st.integers(1, 60)),
                           st.one_of(st.none(), st.integers(1, 5000))),
                 max_size=3, unique_by=lambda r: r.namespace)
pins = st.lists(st.sampled_from(["library/a", "ghcr.io/**", "*/o/*", "quay.io/q/z", "library/*"]),
                max_size=2)


class PlanProperties(unittest.TestCase):
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(blobs, rules, pins, st.one_of(st.none(), st.integers(0, 20000)))
    def test_never_pinned_nor_busy_and_files_only_without_members(self, bs, rs, ps, max_size):
        snap = Snapshot(blobs=bs, pins=[parse_pin(x) for x in ps], max_size=max_size)
        p = plan(snap, rs, NOW)
        pinned = [parse_pin(x) for x in ps]
        by = {b.digest: b for b in bs}
        for a in p.blobs:
            b = by[a.digest]
            self.assertFalse(b.busy)
            self.assertFalse(any(pin.matches_repo(r) for pin in pinned for r in b.repos))
            self.assertTrue(a.drop <= b.repos)
            if a.delete and a.why != "size":
                self.assertEqual(a.drop, b.repos)  # no membership left
            if not a.delete:
                self.assertTrue(a.drop and a.drop != b.repos)
        # under the global size when enough can go
        if max_size is not None:
            kept = sum(b.size for b in bs if b.digest not in {a.digest for a in p.blobs if a.delete})
            stuck = sum(b.size for b in bs if b.busy or any(pin.matches_repo(r) for pin in pinned
                                                            for r in b.repos))
            self.assertTrue(kept <= max(max_size, stuck) or kept - stuck <= max_size)
