"""The image policy end to end: ``twistd zmirror`` (anonymous pulls allowed) in front of a real
docker-registry, rules set through the admin API.  A repository deny rule refuses skopeo's pull
by tag and by digest, a digest-pinned deny refuses that manifest by digest and under its tag, an
image no rule names still pulls; the upstream's access log shows no request for the denied
repository (nor for the pinned manifest by digest or its blobs), the access log records the
refusals and ``/metrics`` counts them.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import harness as H
from tests.e2e.clients import SkopeoError, skopeo_copy
from tests.e2e.environment import shared
from tests.e2e.httpclient import http_request
from tests.e2e.images import dir_problems

POLICY_MESSAGE = "not allowed by the mirror's policy"


class ImagePolicyE2ETests(unittest.TestCase):
    skip = H.missing_tools()

    def setUp(self):
        self.env = shared()
        self.upstream = self.env.registries["open"]
        self.zm = self.env.start_zmirror("policy", [H.Upstream("open", self.upstream.url)],
                                         anonymous="all")
        self.addCleanup(self.env.stop_zmirror, self.zm)
        self.denied = self.env.images["ociindex"]  # the whole repository
        self.pinned = self.env.images["dockerv2"]  # one manifest, by digest
        self.free = self.env.images["oci"]
        for action, pattern in (("deny", self.denied.repo),
                                ("deny", f"{self.pinned.repo}@{self.pinned.digest}")):
            r = self.zm.api("POST", "/policy/rules", {"action": action, "pattern": pattern})
            self.assertEqual(r.status, 201, r.describe())
        self.offset = self.upstream.log_offset()

    def workdir(self):
        d = Path(self.mktemp()).resolve()
        d.mkdir(parents=True)
        return d

    def assertRefused(self, ref: str) -> None:
        try:
            skopeo_copy(self.zm.host, ref, self.workdir() / "refused", timeout=120)
        except SkopeoError as e:
            low = e.stderr.lower()
            self.assertTrue(POLICY_MESSAGE in low or "denied" in low, e.stderr)
        else:
            self.fail(f"skopeo copy {ref} was allowed")

    def upstream_lines(self, needle: str) -> list[str]:
        with open(self.upstream.proc.log, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if needle in line]

    def test_deny_rules_refuse_by_tag_and_digest_without_asking_upstream(self):
        dest = self.workdir() / "free"
        skopeo_copy(self.zm.host, self.free.ref, dest, timeout=180)
        self.assertEqual(dir_problems(dest, self.free), [])
        self.assertRefused(self.denied.ref)
        self.assertRefused(f"{self.denied.repo}@{self.denied.digest}")
        self.assertRefused(f"{self.pinned.repo}@{self.pinned.digest}")
        self.assertRefused(self.pinned.ref)  # its tag resolves to the pinned digest
        # what the upstream saw (its log lines are written when a response ends)
        deadline = time.monotonic() + 5
        while not self.upstream_lines(f"/v2/{self.free.repo}/") and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertTrue(self.upstream_lines(f"/v2/{self.free.repo}/"), "the allowed pull never went upstream")
        self.assertEqual(self.upstream_lines(f"/v2/{self.denied.repo}/"), [])
        self.assertEqual(self.upstream_lines(f"/manifests/{self.pinned.digest}"), [])
        self.assertEqual(self.upstream_lines(f"/v2/{self.pinned.repo}/blobs/"), [])
        # the access log has the refusals, /metrics counts them
        deadline = time.monotonic() + 10
        rows: list = []
        while time.monotonic() < deadline:
            rows = [x for x in self.zm.access_logs(kind="denied") if x.get("status") == 403]
            if len(rows) >= 4:
                break
            time.sleep(0.25)
        self.assertGreaterEqual(len(rows), 4, rows)
        user, password = self.zm.admin_credentials()
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        m = http_request("GET", f"{self.zm.url}/metrics", [("Authorization", f"Basic {basic}")])
        self.assertIn(b'zmirror_policy_refusals_total{reason="deny_rule"}', m.body)
        # the admin's test box agrees
        r = self.zm.api("POST", "/policy/test", {"reference": self.pinned.ref})
        self.assertEqual(r.status, 200, r.describe())
        self.assertTrue(r.json()["allowed"])  # by tag alone: the digest is known only at pull time
        r = self.zm.api("POST", "/policy/test", {"reference": f"{self.pinned.repo}@{self.pinned.digest}"})
        self.assertEqual((r.json()["allowed"], r.json()["rule"]["action"]), (False, "deny"))
