"""Several registries end to end: one ``twistd zmirror`` mirrors three namespaces, and real skopeo,
podman, docker (our own dockerd) and ctr (our own containerd) pull from each of them through it.

The module's zmirror ("ns", ``[access] anonymous = "whitelist"``, no cache, so every pull reaches its
upstream) has one upstream per namespace, each a harness registry:

- ``docker.io``: the shared open registry;
- ``ghcr.io``: the token-auth registry (zmirror anonymous to it, it grants anonymous pulls);
- ``quay.io``: the basic-auth registry, with the upstream credentials in the registries row (it also
  gets ``e2e/dockerv2`` pushed here, so that name is private in two namespaces).

How each client selects a namespace is what docs/clients.md tells users to configure:

- skopeo and docker: a path prefix, ``127.0.0.1:PORT/ghcr.io/e2e/dockerv2:1``;
- podman: ``[[registry.mirror]] location = "127.0.0.1:PORT/ghcr.io"`` (a mirror location with a path);
- ctr: ``certs.d/ghcr.io/hosts.toml`` with zmirror as a ``[host]`` (containerd adds ``?ns=ghcr.io``).

Every client's fallback (podman's ``[[registry]] location``, containerd's ``server``) is a closed
loopback port, never the real ghcr.io / quay.io: nothing here looks a name up or leaves the machine.
That a pull reached the right upstream is read from the upstream registries' own access logs.

Whitelist: ``e2e/oci`` and ``e2elist`` (docker.io), ``ghcr.io/e2e`` and ``quay.io/library/e2elist``;
so ``ghcr.io/e2e/dockerv2`` is public while ``e2e/dockerv2`` on docker.io is private, and ``e2e/oci``
is public on docker.io while ``quay.io/e2e/oci`` is private.

A second zmirror ("rl", cache on, ``manifest_ttl = 1``) has two docker.io upstreams, each behind a
:class:`~tests.e2e.faultproxy.FaultProxy` in front of the open registry, for Docker Hub's rate limits:
a 429 with ``Retry-After`` from the first sends pulls to the second; with both limited a cached tag is
served stale (``Warning``) and an uncached one is answered 429 with ``Retry-After``.

The daemons and podman are the ones of tests/e2e/authcase.py (one per test process).
"""

from __future__ import annotations

import atexit
import base64
import json
import threading
import time
import urllib.parse
from pathlib import Path


from tests.e2e import authcase
from tests.e2e import harness as H
from tests.e2e.authcase import AUTH_ERRORS, AuthE2ECase
from tests.e2e.clients import CTR_SKIP, DOCKER_SKIP, PODMAN, PODMAN_SKIP, SkopeoError, output, run, skopeo_copy
from tests.e2e.environment import shared
from tests.e2e.httpclient import HTTPResult, http_request, manifest_headers
from tests.e2e.images import Image, dir_problems
from tests.e2e.faultproxy import Fault, FaultProxy, any_request, manifest_request

SKIP = H.missing_tools()

WHITELIST = ("e2e/oci", "e2elist", "ghcr.io/e2e", "quay.io/library/e2elist")
USERS = {"nina": "nina-pw-5Tr3"}
CLOSED = "127.0.0.1:9"  # every client's fallback: a loopback port where nothing listens
STALE_WARNING = '110 - "Response is Stale"'

# (namespace, name there, image key, upstream registry): pulled anonymously by every client
PULLS = (
    ("docker.io", "e2e/oci", "oci", "open"),
    ("ghcr.io", "e2e/dockerv2", "dockerv2", "token"),
    ("quay.io", "library/e2elist", "dockerlist", "basic"),
)


def prefixed(ns: str, name: str) -> str:
    """The path-prefixed name of ``name`` in ``ns`` (docker.io names stay bare)."""
    return name if ns == "docker.io" else f"{ns}/{name}"


class _State:
    lock = threading.Lock()
    ns: H.ZMirror | None = None
    rl: H.ZMirror | None = None
    hubs: tuple[FaultProxy, FaultProxy] | None = None
    pushed = False


def ns_proxy() -> H.ZMirror:
    env = shared()
    with _State.lock:
        if not _State.pushed:
            env.push(env.images["dockerv2"], env.registries["basic"])  # private in two namespaces
            _State.pushed = True
        zm = _State.ns
        if zm is None or not zm.proc.alive():
            r = env.registries
            zm = env.start_zmirror_access("ns", [
                H.Upstream("hub", r["open"].url),
                H.Upstream("ghcr", r["token"].url, namespace="ghcr.io"),
                H.Upstream("quay", r["basic"].url, username=H.USER, password=H.PASSWORD, namespace="quay.io"),
            ], whitelist=WHITELIST, users=USERS.items())
            _State.ns = zm
        return zm


def rl_proxy() -> tuple[H.ZMirror, FaultProxy, FaultProxy]:
    env = shared()
    with _State.lock:
        if _State.rl is None or not _State.rl.proc.alive():
            port = env.registries["open"].port
            hub1, hub2 = FaultProxy(port, name="hub1"), FaultProxy(port, name="hub2")
            atexit.register(hub1.close)
            atexit.register(hub2.close)
            _State.hubs = (hub1, hub2)
            _State.rl = env.start_zmirror("rl", [H.Upstream("hub1", hub1.url), H.Upstream("hub2", hub2.url)],
                                          cache=True, extra_toml="manifest_ttl = 1")
        return (_State.rl, *_State.hubs)


class NamespaceCase(AuthE2ECase):
    """The auth tests' case (workdir, diag, creds, daemons) on the three-namespace zmirror."""

    skip = SKIP

    def start_proxy(self) -> H.ZMirror:
        return ns_proxy()

    def offsets(self) -> dict[str, int]:
        return {k: self.env.registries[k].log_offset() for k in ("open", "token", "basic")}

    def assertReached(self, upstream: str, name: str, tag: str, since: dict[str, int], what: str) -> None:
        """The manifest GET of ``name:tag`` reached ``upstream`` and no other of the three registries."""
        path = f"/v2/{name}/manifests/{tag}"
        deadline = time.monotonic() + 10
        while True:
            hits = {k: self.env.registries[k].requests("GET", path, since[k])
                    + self.env.registries[k].requests("HEAD", path, since[k]) for k in since}
            if hits[upstream] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertTrue(hits[upstream], f"{what}: no request for {path} reached the {upstream} registry")
        others = {k: v for k, v in hits.items() if k != upstream and v}
        self.assertEqual(others, {}, f"{what}: {path} was also asked of another namespace's upstream")

    def assertAuthError(self, text: str, what: str) -> None:
        low = text.lower()
        self.assertTrue(any(m in low for m in AUTH_ERRORS), f"{what}: expected an authentication error, got:\n{text}")


class SkopeoNamespaceTests(NamespaceCase):
    """skopeo by path prefix, every namespace (lists with all their children)."""

    def copy(self, ref: str, image: Image, creds: str | None = None) -> None:
        dest = self.workdir() / "image"
        try:
            skopeo_copy(self.zm.host, ref, dest, creds=creds, timeout=180)
        except SkopeoError as e:
            self.fail(f"skopeo copy {ref} failed: {e}{self.diag()}")
        self.assertEqual(dir_problems(dest, image), [], f"{ref}: wrong digests")

    def copy_refused(self, ref: str) -> str:
        dest = self.workdir() / "image"
        try:
            skopeo_copy(self.zm.host, ref, dest, timeout=180)
        except SkopeoError as e:
            return e.stderr
        self.fail(f"anonymous skopeo copy {ref} was allowed")

    def test_pull_from_each_namespace(self):
        for ns, name, key, upstream in PULLS + (("ghcr.io", "e2e/ociindex", "ociindex", "token"),):
            since = self.offsets()
            self.copy(f"{prefixed(ns, name)}:1", self.images[key])
            self.assertReached(upstream, name, "1", since, f"skopeo {ns} {name}")

    def test_docker_io_prefix_and_aliases_mean_docker_hub(self):
        img = self.images["oci"]
        for prefix in ("docker.io", "index.docker.io", "registry-1.docker.io"):
            since = self.offsets()
            self.copy(f"{prefix}/{img.ref}", img)
            self.assertReached("open", img.repo, img.tag, since, f"skopeo {prefix}/{img.ref}")

    def test_whitelist_entry_opens_one_namespace_only(self):
        # entry ghcr.io/e2e: ghcr.io/e2e/dockerv2 anonymously yes, docker.io e2e/dockerv2 no
        self.copy("ghcr.io/e2e/dockerv2:1", self.images["dockerv2"])
        self.assertAuthError(self.copy_refused("e2e/dockerv2:1"), "anonymous e2e/dockerv2 on docker.io")
        self.assertAuthError(self.copy_refused("docker.io/e2e/dockerv2:1"), "anonymous docker.io/e2e/dockerv2")
        # and vice versa: entry e2e/oci (docker.io) does not open quay.io/e2e/oci
        self.copy("e2e/oci:1", self.images["oci"])
        self.assertAuthError(self.copy_refused("quay.io/e2e/oci:1"), "anonymous quay.io/e2e/oci")
        # the refused ones exist: a registry user pulls them
        creds = f"nina:{USERS['nina']}"
        self.copy("e2e/dockerv2:1", self.images["dockerv2"], creds=creds)
        self.copy("quay.io/e2e/oci:1", self.images["oci"], creds=creds)


class HTTPNamespaceTests(NamespaceCase):
    """What the clients rely on, on the wire: ?ns=, canonical challenge scopes, tokens per namespace."""

    def manifest(self, path: str, headers=()) -> HTTPResult:
        return http_request("GET", f"{self.zm.url}{path}", manifest_headers() + list(headers))

    def test_ns_query_selects_the_namespace(self):
        img = self.images["dockerv2"]
        since = self.offsets()
        r = self.manifest(f"/v2/{img.repo}/manifests/{img.tag}?ns=ghcr.io")
        self.assertEqual(r.status, 200, r.describe() + self.diag())
        self.assertEqual(r.body, img.manifest)
        self.assertEqual(r.header("Docker-Content-Digest"), img.digest)
        self.assertReached("token", img.repo, img.tag, since, "?ns=ghcr.io")
        # without ?ns= the same path is docker.io's e2e/dockerv2: private
        r = self.manifest(f"/v2/{img.repo}/manifests/{img.tag}")
        self.assertEqual(r.status, 401, r.describe())

    def test_challenges_carry_the_canonical_scope(self):
        for path, scope in (
            ("/v2/quay.io/e2e/oci/manifests/1", "quay.io/e2e/oci"),
            ("/v2/e2e/oci/manifests/1?ns=quay.io", "quay.io/e2e/oci"),
            ("/v2/e2e/dockerv2/manifests/1", "e2e/dockerv2"),
            ("/v2/docker.io/e2e/dockerv2/manifests/1", "e2e/dockerv2"),
        ):
            r = http_request("HEAD", f"{self.zm.url}{path}", manifest_headers())
            self.assertEqual(r.status, 401, f"{path}: {r.describe()}")
            self.assertIn(f'scope="repository:{scope}:pull"', r.header("WWW-Authenticate") or "", path)

    def token(self, scope: str) -> str:
        basic = "Basic " + base64.b64encode(f"nina:{USERS['nina']}".encode()).decode()
        q = urllib.parse.urlencode({"service": "zmirror", "scope": f"repository:{scope}:pull"})
        r = http_request("GET", f"{self.zm.url}/token?{q}", [("Authorization", basic)])
        self.assertEqual(r.status, 200, r.describe())
        return r.json()["token"]

    def test_token_for_one_namespace_is_refused_for_the_other(self):
        img = self.images["dockerv2"]  # e2e/dockerv2: private on docker.io and on quay.io
        quay = ("/v2/quay.io/e2e/dockerv2/manifests/1", "/v2/e2e/dockerv2/manifests/1?ns=quay.io")
        hub = ("/v2/e2e/dockerv2/manifests/1", "/v2/docker.io/e2e/dockerv2/manifests/1",
               "/v2/e2e/dockerv2/manifests/1?ns=docker.io")
        for scope, good, bad in (("quay.io/e2e/dockerv2", quay, hub), ("e2e/dockerv2", hub, quay)):
            bearer = [("Authorization", f"Bearer {self.token(scope)}")]
            for path in good:
                r = self.manifest(path, bearer)
                self.assertEqual(r.status, 200, f"token for {scope} on {path}: {r.describe()}{self.diag()}")
                self.assertEqual(r.body, img.manifest, path)
            for path in bad:
                r = self.manifest(path, bearer)
                self.assertEqual(r.status, 401, f"token for {scope} on {path}: {r.describe()}")
                self.assertIn("insufficient_scope", r.header("WWW-Authenticate") or "", path)

    def test_access_log_shows_namespace_and_upstream(self):
        img = self.images["dockerv2"]
        t0 = time.time() - 1
        r = self.manifest(f"/v2/ghcr.io/{img.repo}/manifests/{img.tag}")
        self.assertEqual(r.status, 200, r.describe())
        deadline = time.monotonic() + 15
        rows = []
        while time.monotonic() < deadline:
            rows = [x for x in self.zm.access_logs(kind="manifest")
                    if x["created_at"] >= t0 and x["repository"] == f"ghcr.io/{img.repo}" and x["status"] == 200]
            if rows:
                break
            time.sleep(0.3)
        self.assertTrue(rows, "no access-log row for the ghcr.io pull")
        self.assertEqual(rows[0]["namespace"], "ghcr.io", rows[0])
        self.assertEqual(rows[0]["upstream"], "ghcr", rows[0])


class PodmanNamespaceTests(NamespaceCase):
    """podman with a ``[[registry.mirror]]`` per namespace, the ghcr.io and quay.io ones with a path."""

    skip = SKIP or PODMAN_SKIP

    def registries_conf(self) -> str:
        host = self.zm.host
        return f"""unqualified-search-registries = []

[[registry]]
prefix = "docker.io"
location = "{CLOSED}"
insecure = true
[[registry.mirror]]
location = "{host}"
insecure = true

[[registry]]
prefix = "ghcr.io"
location = "{CLOSED}"
insecure = true
[[registry.mirror]]
location = "{host}/ghcr.io"
insecure = true

[[registry]]
prefix = "quay.io"
location = "{CLOSED}"
insecure = true
[[registry.mirror]]
location = "{host}/quay.io"
insecure = true
"""

    def test_pull_from_each_namespace_through_mirrors(self):
        pm = authcase.podman()
        conf = self.workdir() / "registries.conf"
        conf.write_text(self.registries_conf())
        env = dict(pm.env, CONTAINERS_REGISTRIES_CONF=str(conf))
        d = pm.dir

        def podman(*args, timeout=180):
            return run([PODMAN, "--root", d / "storage", "--runroot", d / "run", "--storage-driver", "vfs",
                          *args], timeout=timeout, env=env)

        for ns, name, key, upstream in PULLS:
            img = self.images[key]
            ref = f"{ns}/{name}:{img.tag}"
            since = self.offsets()
            p = podman("pull", ref)
            self.addCleanup(podman, "rmi", "-f", ref, timeout=60)
            self.assertEqual(p.returncode, 0, output(p) + self.diag())
            self.assertReached(upstream, name, img.tag, since, f"podman {ref}")
            p = podman("image", "inspect", "--format", "{{json .RepoDigests}}", ref, timeout=60)
            self.assertEqual(p.returncode, 0, output(p))
            self.assertIn(f"{ns}/{name}@{img.digest}", json.loads(p.stdout), f"podman {ref}")


class DockerNamespaceTests(NamespaceCase):
    """docker pull of path-prefixed references (dockerd's registry-mirrors only ever mean docker.io)."""

    skip = SKIP or DOCKER_SKIP

    def test_pull_prefixed_references(self):
        docker = authcase.dockerd(self.zm)  # 127.0.0.0/8 is an insecure registry to dockerd anyway
        cfg = self.workdir() / "docker-config"
        cfg.mkdir()
        (cfg / "config.json").write_text('{"auths": {}}\n')
        for ns, name, key, upstream in PULLS:
            img = self.images[key]
            ref = f"{self.zm.host}/{prefixed(ns, name)}:{img.tag}"
            since = self.offsets()
            p = docker.cli(cfg, "pull", ref)
            self.addCleanup(docker.cli, cfg, "rmi", "-f", ref, timeout=60)
            self.assertEqual(p.returncode, 0, output(p) + self.diag(docker))
            self.assertIn(f"Digest: {img.digest}", p.stdout, output(p))
            self.assertReached(upstream, name, img.tag, since, f"docker pull {ref}")


class ContainerdNamespaceTests(NamespaceCase):
    """ctr with ``certs.d/<namespace>/hosts.toml``: zmirror a ``[host]``, so containerd adds ``?ns=``."""

    skip = SKIP or CTR_SKIP

    def hosts_dir(self) -> Path:
        root = self.workdir() / "certs.d"
        for ns in ("docker.io", "ghcr.io", "quay.io"):
            (root / ns).mkdir(parents=True)
            (root / ns / "hosts.toml").write_text(f"""server = "http://{CLOSED}"

[host."http://{self.zm.host}"]
  capabilities = ["pull", "resolve"]
""")
        return root

    def test_pull_from_each_namespace_with_hosts_toml(self):
        ctrd = authcase.containerd()
        hosts = self.hosts_dir()
        for ns, name, key, upstream in PULLS:
            img = self.images[key]
            ref = f"{ns}/{name}:{img.tag}"
            since = self.offsets()
            t0 = time.time() - 1
            p = ctrd.ctr("images", "pull", "--hosts-dir", hosts, "--snapshotter", "native", ref)
            self.addCleanup(ctrd.ctr, "images", "rm", "--sync", ref, timeout=60)
            self.assertEqual(p.returncode, 0, output(p) + self.diag(ctrd))
            self.assertEqual(self.digest(ctrd, ref), img.digest, ref)
            self.assertReached(upstream, name, img.tag, since, f"ctr pull {ref}")
            # the unprefixed path reached the right namespace because containerd sent ?ns=
            self.assertLogged(ns, prefixed(ns, name) if ns != "docker.io" else name, t0)

    def digest(self, ctrd, ref: str) -> str | None:
        p = ctrd.ctr("images", "ls", timeout=30)
        self.assertEqual(p.returncode, 0, output(p))
        for line in p.stdout.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2]
        return None

    def assertLogged(self, ns: str, canonical: str, t0: float) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = [x for x in self.zm.access_logs(kind="manifest")
                    if x["created_at"] >= t0 and x["repository"] == canonical and x["status"] == 200]
            if rows:
                self.assertEqual(rows[0]["namespace"], ns, rows[0])
                return
            time.sleep(0.3)
        self.fail(f"no access-log row for {canonical} after the ctr pull")


class RateLimitTests(AuthE2ECase):
    """Two docker.io upstreams behind fault proxies: Docker Hub's 429 with Retry-After, then both limited."""

    skip = SKIP

    def start_proxy(self) -> H.ZMirror:
        zm, self.hub1, self.hub2 = rl_proxy()
        self.addCleanup(self.hub1.clear)
        self.addCleanup(self.hub2.clear)
        return zm

    def copy(self, image: Image) -> None:
        dest = self.workdir() / "image"
        try:
            skopeo_copy(self.zm.host, image.ref, dest, timeout=180)
        except SkopeoError as e:
            self.fail(f"skopeo copy {image.ref} failed: {e}\n{self.zm.tail(30)}")
        self.assertEqual(dir_problems(dest, image), [], f"{image.ref}: wrong digests")

    def registry(self, name: str) -> dict:
        r = self.zm.api("GET", "/registries")
        self.assertEqual(r.status, 200, r.describe())
        return next(x for x in r.json()["items"] if x["name"] == name)

    def test_429_goes_to_the_second_then_stale_when_every_upstream_is_limited(self):
        oci, v2, idx = self.images["oci"], self.images["dockerv2"], self.images["ociindex"]
        limited = Fault.answer(429, retry_after=600)
        self.hub1.plan(any_request, then=limited)

        # 1. the first upstream says 429 with Retry-After: the pull goes to the second
        self.copy(oci)
        self.assertGreaterEqual(self.hub1.counts["status:429"], 1, self.hub1.counts)
        got = [e for e in self.hub2.events if e.status == 200 and e.method == "GET"]
        self.assertTrue(any(f"/v2/{oci.repo}/manifests/" in e.path for e in got), list(self.hub2.events))
        for blob in oci.all_blobs():
            self.assertTrue(any(e.path.endswith(f"/blobs/{blob}") for e in got), f"blob {blob} not from hub2")
        # ... and the first stays skipped while it cools down: the next pull does not even ask it
        asked = self.hub1.counts["requests"]
        self.copy(v2)
        self.assertEqual(self.hub1.counts["requests"], asked, list(self.hub1.events)[-5:])
        self.assertTrue(self.hub2.matching(manifest_request("GET", repository=v2.repo)))
        rl = self.registry("hub1")["rate_limit"]
        self.assertIsNotNone(rl, self.registry("hub1"))
        self.assertGreater(rl["reset_at"] or 0, time.time() + 500, rl)

        # 2. every upstream limited: the cached tag (older than manifest_ttl = 1 s) is served stale
        self.hub2.plan(any_request, then=limited)
        time.sleep(1.5)
        r = http_request("GET", f"{self.zm.url}/v2/{oci.repo}/manifests/{oci.tag}", manifest_headers())
        self.assertEqual(r.status, 200, r.describe() + "\n" + self.zm.tail(20))
        self.assertEqual(r.body, oci.manifest)
        self.assertEqual(r.header("Docker-Content-Digest"), oci.digest)
        self.assertEqual(r.header("Warning"), STALE_WARNING, r.describe())
        self.assertGreaterEqual(self.hub2.counts["status:429"], 1, self.hub2.counts)
        # a real client pulls the whole image (manifest stale, blobs from the cache)
        self.copy(oci)
        # an uncached tag has no stale copy: 429 with the wait, not a 5xx
        r = http_request("GET", f"{self.zm.url}/v2/{idx.repo}/manifests/{idx.tag}", manifest_headers())
        self.assertEqual(r.status, 429, r.describe())
        self.assertEqual(r.json()["errors"][0]["code"], "TOOMANYREQUESTS", r.describe())
        self.assertTrue((r.header("Retry-After") or "").isdigit(), r.describe())
        self.assertLessEqual(int(r.header("Retry-After")), 600, r.describe())
