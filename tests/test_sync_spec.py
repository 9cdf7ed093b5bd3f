"""Sync jobs: the image reference grammar, field validation, tag and platform
selection (zmirror.sync.spec) and schedules (zmirror.sync.schedule)."""

import calendar

from twisted.trial import unittest

from zmirror.sync import spec as S
from zmirror.sync.schedule import next_fire

DIGEST = "sha256:" + "ab" * 32


class ImageGrammarTests(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(S.parse_image("nginx"), S.ImageRef("library/nginx", tag="latest"))
        self.assertEqual(S.parse_image("library/nginx:1.27"), S.ImageRef("library/nginx", tag="1.27"))
        self.assertEqual(S.parse_image("docker.io/nginx:1"), S.ImageRef("library/nginx", tag="1"))
        self.assertEqual(S.parse_image(f"ghcr.io/o/img@{DIGEST}"), S.ImageRef("ghcr.io/o/img", digest=DIGEST))
        self.assertEqual(S.parse_image("library/python:3.13-*"),
                         S.ImageRef("library/python", pattern="3.13-*"))
        self.assertEqual(S.parse_image("localhost:5000/a/b:v?"),
                         S.ImageRef("localhost:5000/a/b", pattern="v?"))
        self.assertEqual(S.parse_image("localhost:5000/a/b"), S.ImageRef("localhost:5000/a/b", tag="latest"))
        self.assertEqual(str(S.parse_image("nginx")), "library/nginx:latest")

    def test_hostile(self):
        for bad in ["", " ", "UPPER/case", "a/../b", "nginx:", "nginx:-x", "nginx@sha256:zz",
                    "nginx@md5:" + "a" * 32, "nginx:[a-z]", "nginx:a/b", "x" * 500, "a\x00b",
                    "nginx:" + "a" * 200, 17, None, ["nginx"], {"a": 1}, "nginx:1.0\nx", "ng inx"]:
            with self.assertRaises(ValueError, msg=repr(bad)):
                S.parse_image(bad)

    def test_images_field(self):
        self.assertEqual(S.images(["nginx", "library/nginx:latest", "redis:7"]),
                         ["library/nginx:latest", "library/redis:7"])
        for bad in [[], "nginx", None, ["nginx", 5], ["ok"] * 101]:
            with self.assertRaises(ValueError):
                S.images(bad)
        with self.assertRaises(ValueError) as e:
            S.images(["nginx", "BAD"])
        self.assertIn("entry 2", str(e.exception))


class FieldTests(unittest.TestCase):
    def test_schedule(self):
        self.assertIsNone(S.schedule(None))
        self.assertEqual(S.schedule({"interval": 3600}), {"interval": 3600})
        self.assertEqual(S.schedule({"cron": " 0  3 * * * "}), {"cron": "0 3 * * *"})
        for bad in [{"interval": 59}, {"interval": 1.5}, {"interval": True}, {"interval": "60"},
                    {"cron": "0 3 * *"}, {"cron": "0 3 * * * *"}, {"cron": "61 * * * *"},
                    {"cron": "a b c d e"}, {"cron": 5}, {"cron": "0 3 * * *", "interval": 60},
                    {}, [], "daily", {"every": 60}, {"cron": "* * * * \u0661"}, {"interval": 10**12}]:
            with self.assertRaises(ValueError, msg=repr(bad)):
                S.schedule(bad)

    def test_platforms(self):
        self.assertEqual(S.platforms(["linux/AMD64", "linux/arm/v7", "linux/amd64"]),
                         ["linux/amd64", "linux/arm/v7"])
        self.assertEqual(S.platforms("linux/amd64,linux/arm64"), ["linux/amd64", "linux/arm64"])
        self.assertEqual(S.platforms([]), [])
        for bad in [["linux"], ["linux/a/b/c"], ["../x"], [5], {"os": "linux"}, ["linux/"], ["x"] * 40]:
            with self.assertRaises(ValueError, msg=repr(bad)):
                S.platforms(bad)

    def test_numbers_and_names(self):
        self.assertEqual(S.concurrency(8), 8)
        self.assertIsNone(S.newest(None))
        for bad in [0, 9, True, 2.0, "2"]:
            with self.assertRaises(ValueError):
                S.concurrency(bad)
        for bad in [0, 1001, True, "3"]:
            with self.assertRaises(ValueError):
                S.newest(bad)
        self.assertEqual(S.job_name(" base images "), "base images")
        for bad in ["", "x" * 101, "<script>", "a\nb", 5]:
            with self.assertRaises(ValueError):
                S.job_name(bad)


class SelectionTests(unittest.TestCase):
    def test_version_order(self):
        tags = ["3.13-slim", "3.13.1", "3.13.10", "3.13.9", "3.12.7", "3.13.2-alpine", "latest"]
        self.assertEqual(S.select_tags(tags, "3.13*", None),
                         ["3.13.10", "3.13.9", "3.13.2-alpine", "3.13.1", "3.13-slim"])
        self.assertEqual(S.select_tags(tags, "3.13.*", 2), ["3.13.10", "3.13.9"])
        self.assertEqual(S.select_tags(tags, "3.1?.7", None), ["3.12.7"])
        self.assertEqual(S.select_tags(tags, "nope*", 3), [])

    def test_platform_match(self):
        amd = {"os": "linux", "architecture": "amd64"}
        arm64 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
        armv7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
        self.assertTrue(S.platform_matches(amd, []))
        self.assertTrue(S.platform_matches(None, []))
        self.assertTrue(S.platform_matches(arm64, ["linux/arm64"]))
        self.assertFalse(S.platform_matches(arm64, ["linux/arm64/v9"]))
        self.assertTrue(S.platform_matches(armv7, ["linux/arm/v7"]))
        self.assertFalse(S.platform_matches(armv7, ["linux/arm/v6"]))
        self.assertFalse(S.platform_matches(amd, ["linux/arm64"]))
        self.assertFalse(S.platform_matches(None, ["linux/amd64"]))


class ScheduleTests(unittest.TestCase):
    def test_manual(self):
        self.assertIsNone(next_fire(None, 1000.0))

    def test_interval_keeps_its_rhythm_and_skips_missed_ticks(self):
        self.assertEqual(next_fire({"interval": 60}, 1000.0), 1060.0)
        self.assertEqual(next_fire({"interval": 60}, 1061.0, previous=1060.0), 1120.0)
        self.assertEqual(next_fire({"interval": 60}, 5000.0, previous=1060.0), 5060.0)

    def test_cron_in_utc(self):
        now = calendar.timegm((2026, 12, 7, 23, 40, 0))
        self.assertEqual(next_fire({"cron": "0 3 * * *"}, now), calendar.timegm((2026, 12, 8, 3, 0, 0)))
        self.assertEqual(next_fire({"cron": "*/15 * * * *"}, now), calendar.timegm((2026, 12, 7, 23, 45, 0)))
        at = calendar.timegm((2026, 12, 8, 3, 0, 0))
        self.assertEqual(next_fire({"cron": "0 3 * * *"}, at), calendar.timegm((2026, 12, 9, 3, 0, 0)))
