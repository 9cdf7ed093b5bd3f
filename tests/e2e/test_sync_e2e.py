"""Pre-warm and sync jobs end to end: ``twistd zmirror`` with the cache in front of a real
registry of its own (``syncup``: the multi-arch OCI index and the docker v2 image of the
shared harness), jobs created and run through ``/api/sync``.

- A job with every platform fills the cache: with the upstream stopped, ``skopeo copy --all``
  through zmirror is byte-exact; a client pulling while the job runs causes no second upstream
  GET of any blob (the registry's access log).
- A rate-limited upstream (the fault proxy's 429 with ``ratelimit-*`` headers) pauses the run,
  the reason and the resume time are shown, and it resumes and succeeds after the window.
- A cluster (PostgreSQL, three nodes, nginx): a schedule tick runs once across the nodes, and
  every blob the run fetched (through nginx) is cached on its home node.

Skipped when ``docker-registry`` or ``skopeo`` is missing.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import cluster as C
from tests.e2e import harness as H
from tests.e2e.clients import SkopeoError, skopeo_copy
from tests.e2e.environment import shared
from tests.e2e.faultproxy import Fault, FaultProxy, manifest_request
from tests.e2e.images import Image, dir_problems
from tests.fixtures.helpers import free_port

SKIP = H.missing_tools()
UPSTREAM = "syncup"
KEYS = ("ociindex", "dockerv2")


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class SyncE2ETests(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.env = shared()
        self.reg = self.env.extra_open(UPSTREAM, KEYS)
        self.addCleanup(self.env.resume_registry, self.reg)
        self.images = self.env.images

    def zmirror(self, name: str, upstream_url: str) -> H.ZMirror:
        zm = self.env.start_zmirror(f"sync-{name}", [H.Upstream(UPSTREAM, upstream_url)], anonymous="all",
                                    cache=True)
        self.addCleanup(self.env.stop_zmirror, zm)
        self.zm = zm
        return zm

    def proxy(self, **kw) -> FaultProxy:
        p = FaultProxy(self.reg.port, name="syncfault", **kw)
        self.addCleanup(p.close)
        return p

    def workdir(self) -> Path:
        d = Path(self.mktemp()).resolve()
        d.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def create_job(self, body: dict) -> dict:
        r = self.zm.api("POST", "/sync/jobs", body)
        self.assertEqual(r.status, 201, r.describe())
        return r.json()

    def start(self, job: dict) -> dict:
        r = self.zm.api("POST", f"/sync/jobs/{job['id']}/run")
        self.assertEqual(r.status, 202, r.describe())
        return r.json()["run"]

    def run_state(self, rid: int) -> dict:
        r = self.zm.api("GET", f"/sync/runs/{rid}")
        self.assertEqual(r.status, 200, r.describe())
        return r.json()

    def finished(self, rid: int, timeout: float = 60) -> dict:
        run = wait_for(lambda: (lambda r: r if r["finished_at"] is not None else None)(self.run_state(rid)),
                       timeout, f"run {rid} to finish")
        return run

    def copy(self, img: Image) -> None:
        dest = self.workdir() / img.key
        try:
            skopeo_copy(self.zm.host, img.ref, dest, timeout=90)
        except SkopeoError as e:
            self.fail(f"skopeo copy of {img.ref} failed: {e}\n{self.zm.tail(30)}")
        self.assertEqual(dir_problems(dest, img), [], img.ref)

    def test_job_fills_the_cache_and_a_client_during_it_adds_no_upstream_get(self):
        idx = self.images["ociindex"]
        # paced: the job's downloads stay in flight long enough for a client to join them
        slow = self.proxy(rate=400 * 1024, chunk=16 * 1024)
        zm = self.zmirror("fill", slow.url)
        since = self.reg.log_offset()
        job = self.create_job({"name": "multiarch", "images": [idx.ref], "platforms": [], "concurrency": 2})
        run = self.start(job)
        self.assertIn(run["state"], ("running", "succeeded"), run)
        # a client pulls the same image while the job runs
        with ThreadPoolExecutor(1) as pool:
            client = pool.submit(self.copy, idx)
            live = self.run_state(run["id"])
            client.result(timeout=120)
        run = self.finished(run["id"])
        self.assertEqual(run["state"], "succeeded", run)
        blobs = idx.all_blobs()
        self.assertEqual(run["manifests"], {"done": 1 + len(idx.children), "total": 1 + len(idx.children)})
        self.assertEqual(run["blobs"]["total"], len(blobs), run)
        self.assertEqual(run["blobs"]["done"], len(blobs), run)
        self.assertEqual(run["bytes"]["done"], sum(b.size for b in blobs.values()), run)
        self.assertEqual(run["errors"], [])
        self.assertIn(live["state"], ("running", "succeeded"), live)
        time.sleep(0.5)  # the registry logs a request when its response ends
        for digest in blobs:
            gets = self.reg.requests("GET", f"/v2/{idx.repo}/blobs/{digest}", since)
            self.assertEqual(len(gets), 1, f"blob {digest}: {len(gets)} upstream GETs\n{zm.tail(40)}")
        history = zm.api("GET", f"/sync/runs?job={job['id']}").json()["runs"]
        self.assertEqual([r["id"] for r in history], [run["id"]])

        # a second run: everything is cached and the tag fresh: skipped, no upstream blob GET
        since = self.reg.log_offset()
        again = self.finished(self.start(job)["id"])
        self.assertEqual((again["state"], again["blobs"]["skipped"]), ("succeeded", len(blobs)), again)
        self.assertEqual(again["upstream_requests"], 0, again)

        # the upstream stopped: a client gets every platform from the cache, byte-exact
        self.env.stop_registry(self.reg)
        self.copy(idx)

    def test_rate_limited_upstream_pauses_the_job_and_it_resumes(self):
        img = self.images["dockerv2"]
        limited = self.proxy()
        limited.plan(manifest_request("GET", repository=img.repo),
                     [Fault.answer(429, retry_after=3, headers={"ratelimit-limit": "100;w=21600",
                                                                "ratelimit-remaining": "0;w=21600"})])
        zm = self.zmirror("ratelimit", limited.url)
        job = self.create_job({"name": "limited", "images": [img.ref]})
        t0 = time.time()
        run = self.start(job)
        paused = wait_for(lambda: (lambda r: r if r["state"] == "paused" else None)(self.run_state(run["id"])),
                          10, "the run to pause")
        self.assertEqual(paused["pause_reason"], "rate limited by docker.io", paused)
        self.assertGreater(paused["resume_at"], t0)
        self.assertLess(paused["resume_at"], t0 + 30)
        run = self.finished(run["id"], timeout=40)
        self.assertEqual(run["state"], "succeeded", f"{run}\n{zm.tail(30)}")
        self.assertGreaterEqual(time.time(), paused["resume_at"] - 0.5)
        self.assertEqual((run["pause_reason"], run["resume_at"]), (None, None))
        self.assertEqual(run["blobs"]["done"], len(img.all_blobs()), run)
        self.assertGreaterEqual(limited.counts["status:429"], 1, limited.counts)


# --------------------------------------------------------------------------- a cluster


class _SyncCluster(C.Cluster):
    """PostgreSQL, three nodes and nginx, the nodes' ``[server] external_url`` being nginx's
    address (chosen before the nodes start), so sync jobs fetch blobs through it."""

    def _start(self) -> None:
        self.nginx_port = free_port()
        super()._start()

    def node_config(self, i: int, port: int, data: Path) -> str:
        text = super().node_config(i, port, data)
        line = f'node = "{self.node_name(i)}"\n'
        return text.replace(line, line + f'external_url = "http://127.0.0.1:{self.nginx_port}"\n', 1)

    def _start_nginx(self) -> None:
        conf = C.render_nginx(self.nginx_dir, listen_port=self.nginx_port, nodes=[zm.host for zm in self.nodes])
        self.nginx = C.spawn("nginx", C.nginx_argv(conf), self.root / "logs" / "nginx.log")
        self.h.procs.append(self.nginx)
        C.wait_http(f"{self.nginx_url}/healthz", self.nginx, timeout=30)


class SyncClusterE2ETests(unittest.TestCase):
    skip = SKIP or C.missing()

    def test_one_run_per_tick_across_nodes_and_each_blob_on_its_home_node(self):
        c = _SyncCluster(3, images=["ociindex"]).start()
        self.addCleanup(c.stop)
        idx = c.images["ociindex"]
        node1 = c.nodes[0]
        r = node1.api("POST", "/sync/jobs", {"name": "cluster", "images": [idx.ref], "schedule": {"interval": 3600}})
        self.assertEqual(r.status, 201, r.describe())
        job = r.json()
        # the tick comes due (as if an hour had passed): every node polls, one takes it
        import psycopg

        with psycopg.connect(c.database_url, autocommit=True) as conn:
            conn.execute("UPDATE sync_jobs SET next_run_at = %s WHERE id = %s", (time.time() - 1, job["id"]))
        since = c.nginx_log_offset()
        runs = wait_for(lambda: [x for x in node1.api("GET", f"/sync/runs?job={job['id']}").json()["runs"]
                                 if x["finished_at"] is not None], 30, "the tick's run to finish")
        time.sleep(2.5)  # every node has polled again since: still one run for the tick
        runs = node1.api("GET", f"/sync/runs?job={job['id']}").json()["runs"]
        self.assertEqual(len(runs), 1, runs)
        run = runs[0]
        self.assertEqual((run["state"], run["trigger"]), ("succeeded", "schedule"), f"{run}{c.tails()}")
        self.assertEqual(run["blobs"]["done"], len(idx.all_blobs()), run)
        self.assertGreater(node1.api("GET", f"/sync/jobs/{job['id']}").json()["next_run_at"], time.time() + 3000)
        # each blob was fetched through nginx and is cached on its home node (and on no other)
        for digest in idx.all_blobs():
            home = c.served_by("GET", f"/v2/{idx.repo}/blobs/{digest}", since)
            hexd = digest.split(":", 1)[1]
            where = [i for i, zm in enumerate(c.nodes)
                     if (zm.data / "cache" / "blobs" / "sha256" / hexd[:2] / hexd).exists()]
            self.assertEqual(where, [home], f"blob {digest}: home node {home}, cached on {where}")
