"""Real pulls through ``twistd zmirror`` show up in ``/api/logs`` exactly as sent.

Uses the shared e2e environment (tests/e2e/harness.py); skipped like the rest of
the suite when docker-registry or skopeo is missing.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse

import toml
from twisted.trial import unittest

from tests.e2e import harness as H
from tests.e2e.environment import shared
from tests.e2e.httpclient import HTTPResult, http_request

MiB = 1024 * 1024


class AdminLogE2ETests(unittest.TestCase):
    skip = H.missing_tools()

    def setUp(self):
        self.env = shared()
        self.zm = self.env.proxy("main")
        conf = toml.loads((self.zm.data / "config.toml").read_text())
        token = base64.b64encode(f"admin:{conf['admin']['password']}".encode()).decode()
        self.auth = [("Authorization", f"Basic {token}")]

    def api(self, path: str, **query) -> HTTPResult:
        q = ("?" + urllib.parse.urlencode(query)) if query else ""
        return http_request("GET", f"{self.zm.url}/api{path}{q}", self.auth)

    def wait_row(self, digest: str, method: str, timeout: float = 15.0) -> dict:
        """The access-log row of ``method`` on ``digest`` (the writer flushes every 0.5 s)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            r = self.api("/logs", kind="blob", page_size=500)
            self.assertEqual(r.status, 200, r.describe())
            last = r.json()
            rows = [x for x in last["items"] if x["reference"] == digest and x["method"] == method]
            if rows:
                return rows[0]
            time.sleep(0.2)
        self.fail(f"no {method} {digest} row in /api/logs after {timeout}s: {json.dumps(last)[:2000]}"
                  f"\n--- zmirror log tail ---\n{self.zm.tail(40)}")

    def test_blob_pull_logged_with_status_and_bytes(self):
        img = self.env.images["oci"]
        blob = img.blobs[1]
        r = http_request("GET", f"{self.zm.url}/v2/{img.repo}/blobs/{blob.digest}",
                         [("User-Agent", "zmirror-e2e/1")])
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(len(r.body), blob.size)
        row = self.wait_row(blob.digest, "GET")
        self.assertEqual(row["status"], 200)
        self.assertEqual(row["bytes"], blob.size)
        self.assertEqual(row["repository"], img.repo)
        self.assertEqual(row["kind"], "blob")
        self.assertEqual(row["client_ip"], "127.0.0.1")
        self.assertEqual(row["user_agent"], "zmirror-e2e/1")
        self.assertGreater(row["duration_ms"], 0)
        self.assertEqual(row["upstream"], "open")  # "dead" (first by priority) refuses connections

    def test_head_logged_with_zero_bytes(self):
        img = self.env.images["dockerv2"]
        blob = img.blobs[1]
        r = http_request("HEAD", f"{self.zm.url}/v2/{img.repo}/blobs/{blob.digest}")
        self.assertEqual(r.status, 200, r.describe())
        row = self.wait_row(blob.digest, "HEAD")
        self.assertEqual((row["status"], row["bytes"]), (200, 0))

    def test_aborted_download_logged_with_what_went_out(self):
        img = self.env.images["big"]
        blob = img.largest_blob()
        self.assertGreater(blob.size, 32 * MiB)
        r = http_request("GET", f"{self.zm.url}/v2/{img.repo}/blobs/{blob.digest}",
                         read_limit=MiB)
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(len(r.body), MiB)
        row = self.wait_row(blob.digest, "GET", timeout=60)
        self.assertEqual(row["status"], 200)
        self.assertGreaterEqual(row["bytes"], MiB)
        self.assertLess(row["bytes"], blob.size)

    def test_stats_count_the_pulls(self):
        img = self.env.images["oci"]
        blob = img.blobs[1]
        http_request("GET", f"{self.zm.url}/v2/{img.repo}/blobs/{blob.digest}")
        self.wait_row(blob.digest, "GET")
        r = self.api("/stats")
        self.assertEqual(r.status, 200, r.describe())
        stats = r.json()
        self.assertGreaterEqual(stats["totals"]["requests"], 1)
        self.assertIn(img.repo, [x["repository"] for x in stats["top_repositories"]])
        self.assertIn("open", [x["upstream"] for x in stats["upstreams"]])
