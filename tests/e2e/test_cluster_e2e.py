"""A cluster end to end: PostgreSQL + three ``twistd zmirror`` nodes + Debian's nginx (the shipped
``docs/cluster/nginx.conf``) on loopback, started once per test process (:mod:`tests.e2e.cluster`).

- real clients (skopeo; docker through a dockerd of our own, as in test_auth_e2e) pull through
  nginx, every digest checked; blobs have one home node, the rest goes round-robin;
- the home node of a big blob is killed in the middle of its download: the cut reaches the client,
  whose retry goes through another node and gets the right bytes (and skopeo then pulls the image);
- shared state: a user created on node 1 logs in on node 3 within 2 s; disabled on node 2, its
  refresh token is refused on node 1 within 2 s; ten wrong passwords spread over the nodes lock
  the account on every node; a token from one node is good on the others; the access logs of
  all nodes are in one ``/api/logs``, each row naming its node.

Skipped (with the reason) where docker-registry, skopeo, nginx or PostgreSQL are missing.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import threading
import time
import urllib.parse
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import cluster as C
from tests.e2e import harness as H
from tests.e2e.clients import DOCKER_SKIP, Dockerd, SkopeoError, output, skopeo_copy
from tests.e2e.httpclient import HTTPResult, fetch, http_request, http_stream, manifest_headers
from tests.e2e.images import Image, MiB, dir_problems, sha256_hex
from tests.e2e.processes import ProcessWide

SKIP = C.missing()
PROPAGATION = 2.0  # seconds: changes reach every node within this


def _start_cluster() -> C.Cluster:
    c = C.Cluster(nodes=3, throttle=True)
    c.start()
    return c


cluster = ProcessWide("the cluster", _start_cluster).get  # the module's cluster, stopped at exit


def basic(user: str, password: str) -> tuple[str, str]:
    return "Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class ClusterCase(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.c = cluster()
        self.images = self.c.images

    def workdir(self) -> Path:
        d = Path(self.mktemp()).resolve()
        d.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def node(self, n: int) -> H.ZMirror:
        """Node ``n`` counted from 1 (``node{n}``)."""
        return self.c.nodes[n - 1]

    def copy(self, image: Image, host: str | None = None) -> None:
        """skopeo copy --all of ``image`` through nginx (or ``host``), every digest checked."""
        host = host or self.c.nginx_host
        dest = self.workdir() / "image"
        try:
            skopeo_copy(host, image.ref, dest, timeout=180)
        except SkopeoError as e:
            self.fail(f"skopeo copy {host}/{image.ref} failed: {e}{self.c.tails()}")
        self.assertEqual(dir_problems(dest, image), [], f"{host}/{image.ref}: wrong digests")

    def service(self, zm: H.ZMirror) -> str:
        """The token service named in the node's challenge."""
        r = http_request("GET", f"{zm.url}/v2/", [("Authorization", "Bearer not-a-token")])
        challenge = r.header("WWW-Authenticate") or ""
        for part in challenge.split(","):
            if part.strip().startswith("service="):
                return part.split("=", 1)[1].strip().strip('"')
        self.fail(f"no service in the challenge of {zm.name}: {r.describe()}")

    def token_get(self, zm: H.ZMirror, user: str, password: str, *, offline: bool = False) -> HTTPResult:
        """docker login's request: ``GET /token?account=…`` with Basic credentials."""
        q = {"service": self.service(zm), "scope": "repository:e2e/oci:pull", "account": user,
             "client_id": "zmirror-cluster-e2e"}
        if offline:
            q["offline_token"] = "true"
        return http_request("GET", f"{zm.url}/token?{urllib.parse.urlencode(q)}", [basic(user, password)],
                            timeout=30)

    def refresh(self, zm: H.ZMirror, refresh_token: str) -> HTTPResult:
        """docker's later pulls: ``POST /token grant_type=refresh_token``."""
        body = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": refresh_token,
                                       "service": self.service(zm), "scope": "repository:e2e/oci:pull",
                                       "client_id": "zmirror-cluster-e2e"})
        u = urllib.parse.urlsplit(zm.url)
        import http.client

        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            conn.request("POST", "/token", body=body.encode(),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            return HTTPResult(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def new_user(self, via: H.ZMirror) -> tuple[str, str, int]:
        name = "cl-" + secrets.token_hex(4)
        password = "pw-" + secrets.token_hex(8)
        row = via.add_user(name, password)
        return name, password, row["id"]


# --------------------------------------------------------------------------- pulls through nginx


class PullThroughNginxTests(ClusterCase):
    def test_skopeo_pulls_every_image_through_nginx(self):
        for key in ("dockerv2", "oci", "ociindex", "dockerlist"):
            with self.subTest(image=key):
                self.copy(self.images[key])

    def test_blobs_have_one_home_node_everything_else_round_robin(self):
        img = self.images["dockerv2"]
        blob = img.blobs[1]
        blob_path = f"/v2/{img.repo}/blobs/{blob.digest}"
        manifest_path = f"/v2/{img.repo}/manifests/{img.tag}"
        since = self.c.nginx_log_offset()
        for _ in range(6):
            for query in ("", "?ns=docker.io"):  # containerd's mirror requests carry ?ns=
                r = http_stream("GET", self.c.nginx_url + blob_path + query)
                self.assertEqual((r.status, r.digest), (200, blob.digest), f"blob through nginx{self.c.tails()}")
            h = http_request("HEAD", self.c.nginx_url + blob_path)
            self.assertEqual(h.status, 200, h.describe())
            m = http_request("GET", self.c.nginx_url + manifest_path, manifest_headers())
            self.assertEqual((m.status, sha256_hex(m.body)), (200, img.digest.split(":", 1)[1]), m.describe())
        deadline = time.monotonic() + 10
        while True:
            blob_nodes = [t[-1] for s, t in self.c.nginx_requests("GET", blob_path, since) + self.c.nginx_requests(
                "HEAD", blob_path, since) if s == 200 and t]
            manifest_nodes = [t[-1] for s, t in self.c.nginx_requests("GET", manifest_path, since) if s == 200 and t]
            if len(blob_nodes) == 18 and len(manifest_nodes) == 6 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(len(blob_nodes), 18, "nginx access log lines of the blob requests")
        self.assertEqual(len(set(blob_nodes)), 1,
                         f"one blob (GET with and without ?ns=, HEAD) must have one home node: {blob_nodes}")
        self.assertEqual(len(manifest_nodes), 6)
        # round-robin over the nodes nginx holds usable (one restarted by another test may still be
        # within its fail_timeout): spread evenly, never all on one
        counts = sorted(manifest_nodes.count(a) for a in set(manifest_nodes))
        self.assertGreaterEqual(len(counts), 2, f"manifests go round-robin: {manifest_nodes}")
        self.assertLessEqual(counts[-1] - counts[0], 1, f"manifests go round-robin: {manifest_nodes}")

    def test_token_realm_and_client_address_come_through_nginx(self):
        r = http_request("GET", f"{self.c.nginx_url}/v2/", [("Authorization", "Bearer not-a-token")])
        self.assertEqual(r.status, 401, r.describe())
        # Host / X-Forwarded-Host with the port, X-Forwarded-Proto: the realm is nginx's address
        self.assertIn(f'realm="{self.c.nginx_url}/token"', r.header("WWW-Authenticate") or "", r.describe())

    def test_docker_pulls_through_nginx(self):
        if DOCKER_SKIP:
            raise unittest.SkipTest(DOCKER_SKIP)
        docker = Dockerd(self.c.root, self.c.nginx_host)
        self.addCleanup(docker.stop)
        docker.start()
        cfg = self.workdir() / "docker-config"
        cfg.mkdir()
        (cfg / "config.json").write_text('{"auths": {}}\n')
        img = self.images["ociindex"]
        p = docker.cli(cfg, "pull", f"{self.c.nginx_host}/{img.ref}")
        self.assertEqual(p.returncode, 0, output(p) + f"\n--- dockerd ---\n{docker.tail()}{self.c.tails()}")
        self.assertIn(f"Digest: {img.digest}", p.stdout, output(p))


# --------------------------------------------------------------------------- a node dies


class NodeFailureTests(ClusterCase):
    def test_node_killed_mid_blob_the_client_retry_completes_through_another_node(self):
        big = self.images["big"]
        blob = big.largest_blob()
        path = f"/v2/{big.repo}/blobs/{blob.digest}"
        url = self.c.nginx_url + path
        # the blob's home: where nginx sends a HEAD of the same URL (same hash key)
        since = self.c.nginx_log_offset()
        h = http_request("HEAD", url)
        self.assertEqual(h.status, 200, h.describe())
        home = self.c.served_by("HEAD", path, since)

        # a cold download, paced upstream so that it is still running when the node dies
        self.c.throttle.rate = 8 * MiB
        self.addCleanup(setattr, self.c.throttle, "rate", None)
        progress, result = [0], {}
        t = threading.Thread(target=lambda: result.setdefault("f", fetch(url, timeout=60, progress=progress)))
        t.start()
        deadline = time.monotonic() + 30
        while progress[0] < 4 * MiB and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertGreaterEqual(progress[0], 4 * MiB, f"the download never got going: {result}{self.c.tails()}")
        self.c.kill(home)
        self.addCleanup(self.c.wait_ready, home)
        self.addCleanup(self.c.restart, home)
        t.join(60)
        self.assertFalse(t.is_alive(), "the cut download never ended")
        cut = result["f"]
        self.assertTrue(cut.error is not None or cut.length < blob.size,
                        f"the node died mid-body, yet the client got all of it: {cut}")
        self.assertLess(cut.length, blob.size, f"{cut}")

        # the client's retry: nginx finds the home node gone and sends it to the next one
        self.c.throttle.rate = None
        since = self.c.nginx_log_offset()
        again = fetch(url, timeout=120)
        self.assertEqual((again.status, again.error), (200, None), f"{again}{self.c.tails()}")
        self.assertEqual((again.length, again.digest), (blob.size, blob.digest), "the retried blob's bytes")
        served = self.c.served_by("GET", path, since)
        self.assertNotEqual(served, home, "the retry was answered by the dead node?")
        # and a real client pulls the whole image while the node is down
        self.copy(big)


# --------------------------------------------------------------------------- shared state


class SharedStateTests(ClusterCase):
    def poll(self, what: str, attempt, *, interval: float, timeout: float = PROPAGATION):
        """``attempt()`` until it returns a true value or ``timeout`` s passed (at least one try);
        returns (value, seconds taken) or fails with the last value."""
        t0 = time.monotonic()
        while True:
            value = attempt()
            if value:
                return value, time.monotonic() - t0
            if time.monotonic() - t0 + interval > timeout:
                self.fail(f"{what}: not within {timeout:g} s (last: {value!r}){self.c.tails(15)}")
            time.sleep(interval)

    def test_user_created_on_node1_logs_in_on_node3_within_2s(self):
        name, password, _uid = self.new_user(self.node(1))
        # every failed try counts towards the account's lockout (10): at most 7 tries in 2 s
        r, _ = self.poll("login on node 3 of a user created on node 1",
                         lambda: (lambda x: x if x.status == 200 else False)(self.token_get(self.node(3), name,
                                                                                               password)),
                         interval=0.3)
        self.assertTrue(r.json().get("token"), r.describe())

    def test_token_from_one_node_is_good_on_the_others(self):
        img = self.images["oci"]
        n1 = self.node(1)
        q = urllib.parse.urlencode({"service": self.service(n1), "scope": f"repository:{img.repo}:pull"})
        r = http_request("GET", f"{n1.url}/token?{q}")
        self.assertEqual(r.status, 200, r.describe())
        token = r.json()["token"]
        for n in (2, 3):
            m = http_request("GET", f"{self.node(n).url}/v2/{img.repo}/manifests/{img.tag}",
                             manifest_headers() + [("Authorization", f"Bearer {token}")])
            self.assertEqual(m.status, 200, f"node {n} refused node 1's token: {m.describe()}")
            self.assertEqual(m.body, img.manifest)

    def test_user_disabled_on_node2_refresh_token_refused_on_node1_within_2s(self):
        n1, n2 = self.node(1), self.node(2)
        name, password, uid = self.new_user(n1)
        r = self.token_get(n1, name, password, offline=True)
        self.assertEqual(r.status, 200, r.describe())
        refresh_token = r.json().get("refresh_token")
        self.assertTrue(refresh_token, f"no refresh_token for offline_token=true: {r.describe()}")
        ok = self.refresh(n1, refresh_token)
        self.assertEqual(ok.status, 200, ok.describe())
        r = n2.api("PUT", f"/users/{uid}", {"enabled": False})
        self.assertEqual(r.status, 200, f"disabling the user through node 2: {r.describe()}")
        refused, _ = self.poll("node 1 refusing the refresh token of a user disabled on node 2",
                               lambda: (lambda x: x if x.status == 401 else False)(self.refresh(n1, refresh_token)),
                               interval=0.1)
        self.assertEqual(refused.json().get("error"), "invalid_grant", refused.describe())

    def test_ten_wrong_passwords_spread_over_the_nodes_lock_the_account_everywhere(self):
        name, password, _uid = self.new_user(self.node(1))
        control, control_pw, _ = self.new_user(self.node(1))
        wrong = "wrong-" + secrets.token_hex(6)
        for i in range(10):  # 4 on node 1, 3 on nodes 2 and 3: no node alone saw 10
            zm = self.c.nodes[i % 3]
            r = self.token_get(zm, name, wrong)
            self.assertIn(r.status, (401, 429), f"wrong password #{i + 1} on {zm.name}: {r.describe()}")
        # Locked everywhere: a locked account answers 429 before any password check. The probes use
        # the wrong password (a right one would end the failure streak) and are few: at most 5 per
        # node, so a node counting only its own failures (at most 4) never reaches 10 by probing.
        pending = {1, 2, 3}

        def probe():
            for n in sorted(pending):
                if self.token_get(self.node(n), name, wrong).status == 429:
                    pending.discard(n)
            return not pending or False

        self.poll(f"the account locked on every node (not yet on nodes {pending})", probe, interval=0.45)
        for n in (1, 2, 3):
            r = self.token_get(self.node(n), name, password)
            self.assertEqual(r.status, 429, f"the right password on node {n} of a locked account: {r.describe()}")
            self.assertTrue(r.header("Retry-After"), r.describe())
        # the account is locked, not the address every client here shares
        r = self.token_get(self.node(1), control, control_pw)
        self.assertEqual(r.status, 200, f"another user from the same address: {r.describe()}")

    def _rows_by_node(self, t0: float, tag: str) -> list[dict]:
        img = self.images["oci"]
        for n in (1, 2, 3):
            r = http_request("GET", f"{self.node(n).url}/v2/{img.repo}/manifests/{img.tag}",
                             manifest_headers() + [("User-Agent", f"{tag} node{n}")])
            self.assertEqual(r.status, 200, r.describe())
        found: dict[int, dict] = {}

        def rows():
            for row in self.node(1).access_logs(repository=img.repo, kind="manifest", **{"from": int(t0)}):
                ua = row.get("user_agent") or ""
                if ua.startswith(tag + " node"):
                    found[int(ua.rsplit("node", 1)[1])] = row
            return len(found) == 3 or False

        self.poll(f"rows of all three nodes in node 1's /api/logs (found {sorted(found)})", rows,
                  interval=0.2, timeout=15)
        return [found[n] for n in (1, 2, 3)]

    def test_access_logs_of_all_nodes_in_one_api_logs(self):
        rows = self._rows_by_node(time.time() - 1, "zmirror-cluster-e2e/" + secrets.token_hex(4))
        for row in rows:
            self.assertEqual(row["status"], 200, row)

    def test_access_log_rows_name_their_node(self):
        rows = self._rows_by_node(time.time() - 1, "zmirror-cluster-e2e/" + secrets.token_hex(4))
        self.assertEqual([r.get("node") for r in rows], ["node1", "node2", "node3"],
                         "each row names the node that served it ([server] node)")
