"""The retention rules on the Cache page in a real browser (headless Chromium against
`twistd -n zmirror`), at 1366 px and 390 px: a rule created through its dialog (the
API's refusal under the field first), its dry run showing what it frees, a pin added.

The server's cache holds an old image (blob files and index rows, a tag and its manifest)
written between a first start (which creates the database) and the second.  Skipped
(with the reason) where Chromium/chromedriver/selenium are missing or the UI is not built.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time

from tests.fixtures.ui_browser import ADMIN_PASSWORD, ADMIN_USER, BrowserCase, sel
from zmirror.cache.blobindex import blob_relpath
from zmirror.config import load_config

DAY = 86400
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def fill_cache(data_dir) -> int:
    """An image of library/a:1 pulled 40 days ago; returns the bytes of its blobs."""
    cfg = load_config(data_dir, None, create=False)
    old = time.time() - 40 * DAY
    blobs = [os.urandom(3 << 20), b'{"architecture":"amd64"}']
    digests = []
    for data in blobs:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = cfg.cache_dir / blob_relpath(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digests.append(digest)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"digest": digests[1], "size": len(blobs[1])},
                       "layers": [{"digest": digests[0], "size": len(blobs[0])}]}).encode()
    mdigest = "sha256:" + hashlib.sha256(body).hexdigest()
    conn = sqlite3.connect(str(cfg.database_path))
    with conn:
        for digest, data in zip(digests, blobs):
            conn.execute("INSERT INTO cache_blobs (digest, size, created_at, last_access) VALUES (?, ?, ?, ?)",
                         (digest, len(data), old, old))
            conn.execute("INSERT INTO cache_blob_repos (digest, repository) VALUES (?, ?)", (digest, "library/a"))
        conn.execute("INSERT INTO cache_manifests (digest, media_type, body, created_at, last_access) "
                     "VALUES (?, ?, ?, ?, ?)", (mdigest, OCI_MANIFEST, body, old, old))
        conn.execute("INSERT INTO cache_manifest_repos (digest, repository) VALUES (?, ?)", (mdigest, "library/a"))
        conn.execute("INSERT INTO cache_tags (repository, tag, media_type, digest, fetched_at) "
                     "VALUES (?, ?, ?, ?, ?)", ("library/a", "1", OCI_MANIFEST, mdigest, old))
    conn.close()
    return sum(len(b) for b in blobs)


class CacheRulesCase(BrowserCase):
    def setUp(self):
        super().setUp()
        self.server.stop()  # the first start made the database
        self.bytes = fill_cache(self.server.data)
        self.server.start()

    def api(self, method, path, body=None):
        status, raw = self.server.request(method, path, auth=(ADMIN_USER, ADMIN_PASSWORD), body=body)
        return status, json.loads(raw or b"null")

    def test_create_a_rule_dry_run_and_pin(self):
        self.driver.get(self.server.base + "/cache")
        self.login(ADMIN_PASSWORD)
        self.find(sel("rules-table"))
        self.wait_text(sel("rules-global-max"), "max_size")
        # a rule whose quota the API refuses: the reason under the field
        self.click(sel("rule-add"))
        self.type(sel("rule-namespace"), "docker.io")
        self.type(sel("rule-max-age"), "30")
        self.type(sel("rule-max-size"), "lots")
        self.click(sel("rule-save"))
        self.wait_field_error("10GB")
        self.assertEqual(self.api("GET", "/api/cache/rules")[1]["rules"], [])
        # the unsaved rule's dry run, from the dialog
        self.type(sel("rule-max-size"), "")
        self.click(sel("rule-form-dry-run"))
        self.wait_text(sel("dry-run-frees"), "MiB")
        self.click(sel("dry-run-close"))
        self.gone(sel("dry-run-dialog"))
        self.type(sel("rule-max-size"), "10GB")
        self.click(sel("rule-save"))
        self.gone(sel("rule-dialog"))
        self.wait_text(sel("rules-table"), "docker.io")
        [rule] = self.api("GET", "/api/cache/rules")[1]["rules"]
        self.assertEqual((rule["namespace"], rule["max_age_days"], rule["max_size"]), ("docker.io", 30, 10**10))
        self.wait_text(sel("rules-table"), "30")
        self.shot("retention-rules")
        # its dry run: what it frees, the items, nothing removed
        self.click(sel("rule-dry-run-docker.io"))
        frees = self.wait_text(sel("dry-run-frees"), "3.00 MiB")
        self.assertIn("3.00 MiB", frees.text)
        self.wait_text(sel("dry-run-counts"), "2")
        self.wait_text(sel("dry-run-items"), "library/a:1")
        self.shot("retention-dry-run")
        self.click(sel("dry-run-close"))
        self.gone(sel("dry-run-dialog"))
        status, dry = self.api("POST", "/api/cache/retention/dry-run", {})
        self.assertEqual((status, dry["blobs"], dry["bytes"], dry["tags"]), (200, 2, self.bytes, 1))
        # a pin keeps the image: the dry run frees nothing
        self.type(sel("pin-pattern"), "library/a:1")
        self.click(sel("pin-add"))
        self.find(sel("pin-library/a:1"))
        self.shot("retention-pin")
        self.click(sel("rules-dry-run"))
        self.find(sel("dry-run-dialog"))
        self.wait_text(sel("dry-run-frees"), "0 B")
        self.shot("retention-pinned")
        self.click(sel("dry-run-close"))
        self.assertEqual([p["pattern"] for p in self.api("GET", "/api/cache/pins")[1]["pins"]], ["library/a:1"])


class PhoneCacheRulesTests(CacheRulesCase):
    width, height, mobile = 390, 844, True


class DesktopCacheRulesTests(CacheRulesCase):
    width, height, mobile = 1366, 900, False


del CacheRulesCase  # only its sizes run
