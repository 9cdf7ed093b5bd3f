"""The cache of a cluster end to end: PostgreSQL + three ``twistd zmirror`` nodes + nginx
(:mod:`tests.e2e.cluster`) with a real ``docker-registry`` upstream and skopeo.

- after pulls through nginx each blob is cached on its home node only: the per-node listing
  (``GET /api/cache/stats``, every node's heartbeat) adds up to the blobs pulled;
- a repository purge on one node empties the cache of all three (the cluster bus);
- a tag invalidated on one node is revalidated (HEAD) at its next pull through another node;
- a namespace purge from the CLI (no bus: a ``cache_purges`` row) reaches every running node.

Skipped (with the reason) where docker-registry, skopeo, nginx or PostgreSQL are missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import cluster as C
from tests.e2e.clients import SkopeoError, skopeo_copy
from tests.e2e.httpclient import http_request, manifest_headers
from tests.e2e.images import dir_problems
from tests.e2e.processes import ProcessWide

SKIP = C.missing()
PROPAGATION = 2.0  # seconds: a purge reaches every node within this (bus: at once; poll: 2 s)
HEARTBEAT = 10.0


def _start_cluster() -> C.Cluster:
    c = C.Cluster(nodes=3, images=["oci", "ociindex"])
    c.start()
    return c


cluster = ProcessWide("the cache cluster", _start_cluster).get


class ClusterCacheTests(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.c = cluster()
        self.images = self.c.images

    def copy(self, key: str) -> None:
        image = self.images[key]
        dest = Path(self.mktemp()).resolve() / "image"
        dest.parent.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, dest.parent, True)
        try:
            skopeo_copy(self.c.nginx_host, image.ref, dest, timeout=180)
        except SkopeoError as e:
            self.fail(f"skopeo copy {image.ref} failed: {e}{self.c.tails()}")
        self.assertEqual(dir_problems(dest, image), [], f"{image.ref}: wrong digests")

    def api(self, i: int, method: str, path: str, obj=None) -> dict:
        r = self.c.nodes[i].api(method, path, obj)
        self.assertEqual(r.status, 200, r.describe())
        return r.json()

    def entries(self) -> list[int]:
        return [self.api(i, "GET", "/cache")["entries"] for i in range(self.c.n)]

    def until(self, what: str, check, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value or time.monotonic() > deadline:
                self.assertTrue(value, f"{what} (within {timeout:.0f} s){self.c.tails()}")
                return value
            time.sleep(0.1)

    def blob_count(self, key: str) -> int:
        image = self.images[key]
        digests = {b.digest for b in image.blobs}
        for child in image.children:
            digests |= {b.digest for b in child.blobs}
        return len(digests)

    def test_listing_purge_invalidate(self):
        self.api(0, "DELETE", "/cache")
        self.until("every cache empty", lambda: self.entries() == [0, 0, 0], PROPAGATION)

        # pulls through nginx: each blob on its home node, the listing of every node adds up
        self.copy("oci")
        def indexed():
            e = self.entries()
            return e if sum(e) == self.blob_count("oci") else None

        per_node = self.until("the blobs indexed", indexed, 10)
        self.assertGreaterEqual(sum(1 for n in per_node if n), 1)

        def listing():
            stats = self.api(1, "GET", "/cache/stats")
            by = {n["node"]: n["entries"] for n in stats["nodes"]}
            want = {self.c.node_name(i): per_node[i] for i in range(self.c.n)}
            return stats if by == want and stats["cluster"]["entries"] == sum(per_node) else None

        stats = self.until("every node in GET /api/cache/stats", listing, HEARTBEAT + 5)
        self.assertEqual(stats["cluster"]["nodes"], 3)
        self.assertGreater(stats["cluster"]["bytes_from_upstream"], 0)
        image = self.images["oci"]
        tags = self.api(2, "GET", f"/cache/tags?repository={image.repo}")["tags"]
        self.assertEqual([t["tag"] for t in tags], [image.tag])

        # a repository purge on node 1 empties all three
        deleted = self.api(0, "DELETE", f"/cache?repository={image.repo}")["deleted"]
        self.assertEqual(deleted["tags"], 1)
        self.until("the purge on every node", lambda: self.entries() == [0, 0, 0], PROPAGATION)
        self.assertEqual(self.api(2, "GET", f"/cache/tags?repository={image.repo}")["tags"], [])

        # a tag invalidated on node 2: its next pull (through node 3) asks the upstream with a HEAD
        self.copy("ociindex")
        index = self.images["ociindex"]
        path = f"/v2/{index.repo}/manifests/{index.tag}"
        self.assertEqual(self.api(1, "POST", "/cache/invalidate", {"repository": index.repo,
                                                                    "tag": index.tag}), {"invalidated": 1})
        since = self.c.registry.log_offset()
        time.sleep(0.5)  # the event reached node 3 (memory copies dropped)
        r = http_request("GET", self.c.nodes[2].url + path, manifest_headers())
        self.assertEqual(r.status, 200, r.describe())
        self.until("the upstream saw the HEAD", lambda: self.c.registry.requests("HEAD", path, since), 5)
        self.assertEqual(self.c.registry.requests("GET", path, since), [])

        # the CLI purges a namespace: every running node applies the row within 2 s
        node = self.c.nodes[0]
        proc = subprocess.run([sys.executable, "-m", "zmirror.cli", "--data", str(node.data), "cache", "purge",
                               "--namespace", "docker.io", "--json"], capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertGreaterEqual(json.loads(proc.stdout)["deleted"]["tags"], 1)
        self.until("the CLI's purge on every node", lambda: self.entries() == [0, 0, 0], PROPAGATION + 1)
        purges = self.api(2, "GET", "/cache/purges")["purges"]
        self.assertEqual([(p["action"], p["origin"]) for p in purges[:3]],
                         [("purge", "cli"), ("invalidate", self.c.node_name(1)), ("purge", self.c.node_name(0))])
