"""``zmirror retention``: rules and pins beside /api/cache/rules|pins on one database, the
same refusals, and the dry run and the run on the node's blob index and files."""

from __future__ import annotations

import hashlib
import json
import os
import time

from tests.fixtures.cli import CLIWithAPICase
from tests.fixtures.helpers import coro
from zmirror.cache.blobindex import blob_relpath
from zmirror.cache.dirlock import CacheDirLock
from zmirror.config import load_config
from zmirror.db.retention import RetentionStore

DAY = 86400


class RetentionCommandTests(CLIWithAPICase):
    def setUp(self):
        super().setUp()
        self.client = self.stub(self.make_api(retention_store=RetentionStore(self.db, self.clock)))

    def test_rules(self):
        self.assertIn("no retention rules", self.ok("retention", "rules"))
        code, out, err = self.cli("retention", "add", "docker.io", "--max-age-days", "30", "--max-size", "10GB")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "retention rule 1 added: docker.io (not pulled within 30 days, quota 10.0 GB)\n")
        self.assertIn("next retention pass", err)
        rule = json.loads(self.ok("retention", "add", "ghcr.io", "--max-size", "512MiB", "--disabled", "--json"))
        self.assertEqual((rule["namespace"], rule["max_age_days"], rule["max_size"], rule["enabled"]),
                         ("ghcr.io", None, 512 << 20, False))
        lines = self.ok("retention", "rules").splitlines()
        self.assertEqual(lines[0].split(), ["ID", "NAMESPACE", "MAX", "AGE", "(DAYS)", "QUOTA", "ENABLED", "NOTE"])
        self.assertIn("docker.io", lines[1])
        out = self.ok("retention", "edit", "ghcr.io", "--enable", "--max-age-days", "7", "--max-size", "none")
        self.assertEqual(out, "retention rule 2 updated: ghcr.io (not pulled within 7 days, quota -)\n")
        listed = json.loads(self.ok("retention", "rules", "--json"))
        self.assertEqual([r["namespace"] for r in listed["rules"]], ["docker.io", "ghcr.io"])
        self.assertIsInstance(listed["max_size"], int)
        self.assertEqual(self.ok("retention", "remove", "1"), "retention rule 1 removed: docker.io\n")

    @coro
    async def test_refusals_are_the_apis(self):
        self.ok("retention", "add", "docker.io", "--max-age-days", "3")
        for argv, api_body in [
            (("add", "nohost", "--max-age-days", "1"), {"namespace": "nohost", "max_age_days": 1}),
            (("add", "quay.io"), {"namespace": "quay.io"}),
            (("add", "quay.io", "--max-age-days", "0"), {"namespace": "quay.io", "max_age_days": 0}),
            (("add", "quay.io", "--max-size", "lots"), {"namespace": "quay.io", "max_size": "lots"}),
        ]:
            msg = self.refused("retention", *argv)
            self.assertEqual(msg, await self.api_error("POST", "/api/cache/rules", api_body))
        self.assertEqual(self.refused("retention", "add", "docker.io", "--max-size", "1GB"),
                         "namespace already exists")
        self.assertIn("give max_age_days or max_size",
                      self.refused("retention", "edit", "docker.io", "--max-age-days", "none"))
        self.assertIn("no retention rule", self.refused("retention", "remove", "quay.io"))
        self.assertIn("nothing to change", self.refused("retention", "edit", "docker.io"))

    @coro
    async def test_pins(self):
        self.assertIn("no pins", self.ok("retention", "pins"))
        self.assertEqual(self.ok("retention", "pin", "nginx:1.27", "--note", "base"),
                         "pin 1 added: library/nginx:1.27\n")
        self.ok("retention", "pin", "ghcr.io/o/**")
        code, _h, obj = await self.call("GET", "/api/cache/pins")
        self.assertEqual([p["pattern"] for p in obj["pins"]], ["library/nginx:1.27", "ghcr.io/o/**"])
        self.assertEqual(self.refused("retention", "pin", "docker.io/library/nginx:1.27"), "pattern already exists")
        msg = self.refused("retention", "pin", "A/B")
        self.assertEqual(msg, await self.api_error("POST", "/api/cache/pins", {"pattern": "A/B"}))
        self.assertEqual(self.ok("retention", "unpin", "docker.io/library/nginx:1.27"),
                         "pin 1 removed: library/nginx:1.27\n")
        self.assertEqual([p["pattern"] for p in json.loads(self.ok("retention", "pins", "--json"))["pins"]],
                         ["ghcr.io/o/**"])


class RetentionRunCommandTests(CLIWithAPICase):
    """The dry run and the run outside the server, on blob rows and files."""

    def setUp(self):
        super().setUp()
        self.cfg = load_config(self.data, None, create=False)
        now = time.time()
        self.files = {}
        rows = []
        for name, repo, age in (("old", "library/a", 40), ("new", "library/a", 1), ("gh", "ghcr.io/o/x", 40)):
            data = (name * 1000).encode()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            path = self.cfg.cache_dir / blob_relpath(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.files[name] = (digest, path)
            rows.append((digest, len(data), now - age * DAY, repo))

        def insert(txn):
            for digest, size, t, repo in rows:
                txn.execute("INSERT INTO cache_blobs (digest, size, created_at, last_access) VALUES (?, ?, ?, ?)",
                            (digest, size, t, t))
                txn.execute("INSERT INTO cache_blob_repos (digest, repository) VALUES (?, ?)", (digest, repo))

        self.db.write(insert)

    def test_dry_run_then_run(self):
        self.ok("retention", "add", "docker.io", "--max-age-days", "30")
        out = json.loads(self.ok("retention", "dry-run", "--json"))
        self.assertEqual((out["blobs"], out["bytes"]), (1, 3000))
        self.assertEqual(out["items"][0]["digest"], self.files["old"][0])
        self.assertTrue(self.files["old"][1].exists())
        # an unsaved rule
        out = json.loads(self.ok("retention", "dry-run", "--namespace", "ghcr.io", "--max-age-days", "7", "--json"))
        self.assertEqual(out["items"][0]["digest"], self.files["gh"][0])
        text = self.ok("retention", "dry-run")
        self.assertIn("would remove 1 blobs (3.0 KB)", text)
        # the server holds the cache directory: refused
        lock = CacheDirLock.take(self.cfg.cache_dir)
        try:
            self.assertIn("in use by a running server", self.cli("retention", "run")[2])
        finally:
            lock.release()
        self.assertTrue(self.files["old"][1].exists())
        out = json.loads(self.ok("retention", "run", "--json"))
        self.assertEqual((out["blobs"], out["bytes"]), (1, 3000))
        self.assertFalse(self.files["old"][1].exists())
        self.assertTrue(self.files["new"][1].exists())
        self.assertTrue(self.files["gh"][1].exists())
        rows = [r["digest"] for r in self.db.query("SELECT digest FROM cache_blobs").result]
        self.assertEqual(sorted(rows), sorted([self.files["new"][0], self.files["gh"][0]]))
        self.assertFalse(os.path.exists(self.files["old"][1]))
