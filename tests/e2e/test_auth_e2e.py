"""Access control end to end: real skopeo, podman, docker (our own dockerd) and ctr (our own
containerd) pull through ``twistd zmirror`` in ``[access] anonymous = "whitelist"`` mode.

One zmirror instance ("auth", upstream: the shared open registry) serves the whole module; its
whitelist and registry users are created through the admin API, as an operator would:

- whitelisted: ``e2e/oci`` (which also proves the path-component boundary: ``e2e/ociindex`` stays
  private) and ``e2elist`` (allows ``library/e2elist``, pulled here by its short name);
- private: ``e2e/dockerv2`` and ``e2e/ociindex``;
- one registry user per client (alice: skopeo and podman, dora: docker, carl: containerd), so
  lockout counters, access-log rows and the docker test's "disable the user" step never mix.

dockerd and containerd are started once per test process on first use, with all their state and
their sockets in one short temporary directory (vfs / native snapshots, no iptables, no bridge),
and stopped at exit; like every child of the harness they get ``PR_SET_PDEATHSIG``.  podman runs
as root with its own storage, configuration and auth files there.  Each client's tests skip with a
clear message when its binaries are missing or when not running as root
(``scripts/system-deps.sh`` installs the Debian packages).  ``ZMIRROR_E2E_KEEP=1`` keeps the
directory (daemon logs included).
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

from twisted.trial import unittest

from tests.e2e import harness as H

SKIP = H.missing_tools()
IS_ROOT = os.geteuid() == 0

WHITELIST = ("e2e/oci", "e2elist")
USERS = {
    "alice": "alice-pw-4Kd9",  # skopeo, podman
    "dora": "dora-pw-8Zq1",  # docker
    "carl": "carl-pw-2Hs7",  # containerd
}
WRONG_PASSWORD = "not-the-password-1"
NAMESPACE = "zmirror-e2e"  # containerd namespace
# what the clients print for a refused pull or login (zmirror's error texts, HTTP 401)
AUTH_ERRORS = ("unauthorized", "authentication required", "incorrect username or password",
               "invalid username/password", "insufficient_scope", "401")


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        cand = os.path.join(d, name)
        if os.access(cand, os.X_OK):
            return cand
    return None


PODMAN = _find("podman")
DOCKERD = _find("dockerd")
# Debian's CLI matches Debian's dockerd (another docker on PATH, e.g. in /usr/local/bin, may be far newer)
DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else _find("docker")
CONTAINERD = _find("containerd")
CTR = _find("ctr")
RUNC = _find("runc")


def _skip_reason(client: str, binaries: dict[str, str | None], packages: str) -> str | None:
    if SKIP:
        return SKIP
    missing = [name for name, path in binaries.items() if not path]
    if missing:
        return (f"{', '.join(missing)} not installed (Debian: apt-get install --no-install-recommends {packages}, "
                f"or run scripts/system-deps.sh as root): {client} access-control e2e tests skipped")
    if not IS_ROOT:
        return f"{client} needs root here (own daemon and storage): {client} access-control e2e tests skipped"
    return None


PODMAN_SKIP = _skip_reason("podman", {"podman": PODMAN}, "podman netavark")
DOCKER_SKIP = _skip_reason("docker", {"dockerd": DOCKERD, "docker": DOCKER, "containerd": CONTAINERD, "runc": RUNC},
                           "docker.io containerd runc")
CTR_SKIP = _skip_reason("containerd", {"containerd": CONTAINERD, "ctr": CTR}, "containerd runc")


def _client_env(**extra: str) -> dict:
    """The environment without anything that would point a client elsewhere (DOCKER_HOST, proxies, …)."""
    drop = ("DOCKER_", "CONTAINERD_", "CONTAINERS_", "REGISTRY_AUTH_FILE")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(drop) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env.update(extra)
    return env


def run(argv: list[str], *, timeout: float, env: dict | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Runs a client; the output is text, stdout and stderr apart; a timeout is an error of its own."""
    try:
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as e:
        raise H.HarnessError(f"timed out after {timeout}s: {' '.join(map(str, argv))}\n"
                             f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}") from None


def output(p: subprocess.CompletedProcess) -> str:
    return f"exit {p.returncode}\nstdout: {p.stdout.strip()[-2000:]}\nstderr: {p.stderr.strip()[-2000:]}"


def _wait_for(what: str, proc: H.Proc, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise H.HarnessError(f"{what} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if check():
            return
        time.sleep(0.2)
    raise H.HarnessError(f"{what} not ready after {timeout}s:\n{proc.tail()}")


# --------------------------------------------------------------------------- daemons and podman


class Dockerd:
    """Debian's dockerd with all state under ``dir`` (vfs, no iptables/bridge, own socket)."""

    def __init__(self, root: Path, insecure: str):
        self.dir = root / "docker"
        self.sock = self.dir / "docker.sock"
        self.insecure = insecure
        self.proc: H.Proc | None = None

    def start(self) -> Dockerd:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "daemon.json"
        # key.json would otherwise go to /etc/docker; nothing else may come from /etc/docker/daemon.json
        conf.write_text(json.dumps({"deprecated-key-path": str(d / "key.json"), "max-concurrent-downloads": 3}))
        argv = [DOCKERD, "--config-file", conf, "--storage-driver", "vfs",
                "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--bridge=none",
                "--data-root", d / "data", "--exec-root", d / "exec", "--pidfile", d / "dockerd.pid",
                "-H", f"unix://{self.sock}", "--insecure-registry", self.insecure]
        self.proc = H.spawn("dockerd", [str(a) for a in argv], d / "dockerd.log", env=_client_env())
        probe = d / "probe-config"
        probe.mkdir(exist_ok=True)
        _wait_for("dockerd", self.proc,
                  lambda: self.sock.exists() and self.cli(probe, "version", timeout=10).returncode == 0, 60)
        return self

    def cli(self, config: Path, *args, timeout: float = 180, input: str | None = None) -> subprocess.CompletedProcess:
        return run([DOCKER, "-H", f"unix://{self.sock}", "--config", config, *args], timeout=timeout,
                   env=_client_env(), input=input)

    def tail(self) -> str:
        return self.proc.tail(30) if self.proc else ""

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(timeout=20)


class Containerd:
    """A standalone containerd (1.6) with root, state and socket under ``dir``."""

    def __init__(self, root: Path):
        self.dir = root / "containerd"
        self.sock = self.dir / "containerd.sock"
        self.proc: H.Proc | None = None

    def start(self) -> Containerd:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "config.toml"
        conf.write_text(f"""version = 2
root = {json.dumps(str(d / "root"))}
state = {json.dumps(str(d / "state"))}
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = {json.dumps(str(self.sock))}
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = {json.dumps(str(d / "opt"))}
""")
        self.proc = H.spawn("containerd", [CONTAINERD, "--config", str(conf)], d / "containerd.log",
                            env=_client_env())
        _wait_for("containerd", self.proc,
                  lambda: self.sock.exists() and self.ctr("version", timeout=10).returncode == 0, 30)
        return self

    def ctr(self, *args, timeout: float = 180) -> subprocess.CompletedProcess:
        return run([CTR, "--address", self.sock, "--namespace", NAMESPACE, *args], timeout=timeout,
                   env=_client_env())

    def tail(self) -> str:
        return self.proc.tail(30) if self.proc else ""

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(timeout=15)


class Podman:
    """Root podman with vfs storage, configuration, temp and auth files under ``dir`` (no daemon)."""

    def __init__(self, root: Path):
        d = self.dir = root / "podman"
        for sub in ("storage", "run", "tmp", "networks"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "containers.conf").write_text(f"""[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {json.dumps(str(d / "events.log"))}
image_copy_tmp_dir = {json.dumps(str(d / "tmp"))}
tmp_dir = {json.dumps(str(d / "tmp"))}
static_dir = {json.dumps(str(d / "storage" / "libpod"))}
volume_path = {json.dumps(str(d / "storage" / "volumes"))}
[network]
network_config_dir = {json.dumps(str(d / "networks"))}
""")
        (d / "storage.conf").write_text(f"""[storage]
driver = "vfs"
graphroot = {json.dumps(str(d / "storage"))}
runroot = {json.dumps(str(d / "run"))}
""")
        (d / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.empty_auth = d / "no-auth.json"
        self.empty_auth.write_text('{"auths": {}}\n')  # podman 4.3 refuses a REGISTRY_AUTH_FILE that is missing
        self.env = _client_env(CONTAINERS_CONF=str(d / "containers.conf"),
                               CONTAINERS_STORAGE_CONF=str(d / "storage.conf"),
                               CONTAINERS_REGISTRIES_CONF=str(d / "registries.conf"),
                               REGISTRY_AUTH_FILE=str(self.empty_auth), TMPDIR=str(d / "tmp"))

    def __call__(self, *args, timeout: float = 180, input: str | None = None) -> subprocess.CompletedProcess:
        d = self.dir
        return run([PODMAN, "--root", d / "storage", "--runroot", d / "run", "--storage-driver", "vfs", *args],
                   timeout=timeout, env=self.env, input=input)


# --------------------------------------------------------------------------- module state


class _State:
    lock = threading.Lock()
    zm: H.ZMirror | None = None
    root: Path | None = None
    dockerd: Dockerd | None = None
    containerd: Containerd | None = None
    podman: Podman | None = None
    failed: ClassVar[dict[str, str]] = {}


def _root() -> Path:
    """A short directory (unix socket paths are limited to 108 bytes), removed at exit."""
    if _State.root is None:
        base = tempfile.gettempdir()
        if len(base) > 40:
            base = "/tmp"
        _State.root = Path(tempfile.mkdtemp(prefix="zm-auth-", dir=base))
        atexit.register(_cleanup)
    return _State.root


def _cleanup() -> None:
    for daemon in (_State.dockerd, _State.containerd):
        if daemon is not None:
            try:
                daemon.stop()
            except Exception as e:  # noqa: BLE001 -- never let one daemon keep the other running
                print(f"zmirror auth e2e: stopping {daemon.dir.name} failed: {e}", file=sys.stderr)
    if _State.root is None:
        return
    if os.environ.get("ZMIRROR_E2E_KEEP") == "1":
        print(f"zmirror auth e2e: kept {_State.root}", file=sys.stderr)
    else:
        shutil.rmtree(_State.root, ignore_errors=True)


def auth_proxy() -> H.ZMirror:
    """The module's zmirror: whitelist mode, upstream the shared open registry, users and whitelist set."""
    env = H.shared()
    with _State.lock:
        zm = _State.zm
        if zm is None or not zm.proc.alive():
            zm = env.start_zmirror_access("auth", [H.Upstream("open", env.registries["open"].url)],
                                          whitelist=WHITELIST, users=USERS.items())
            _State.zm = zm
        return zm


def _once(name: str, start):
    """Starts a daemon once per process; a failed start is remembered (later tests fail fast)."""
    with _State.lock:
        if name in _State.failed:
            raise H.HarnessError(f"{name} failed to start earlier: {_State.failed[name]}")
        current = getattr(_State, name)
        if current is not None:
            return current
        try:
            obj = start()
        except BaseException as e:
            _State.failed[name] = str(e)
            raise
        setattr(_State, name, obj)
        return obj


def dockerd(zm: H.ZMirror) -> Dockerd:
    def start():
        d = Dockerd(_root(), zm.host)
        _State.dockerd = d  # stopped at exit even if it never got ready
        try:
            return d.start()
        except BaseException:
            d.stop()
            raise
    return _once("dockerd", start)


def containerd() -> Containerd:
    def start():
        c = Containerd(_root())
        _State.containerd = c
        try:
            return c.start()
        except BaseException:
            c.stop()
            raise
    return _once("containerd", start)


def podman() -> Podman:
    return _once("podman", lambda: Podman(_root()))


# --------------------------------------------------------------------------- tests


class AuthE2ECase(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.env = H.shared()
        self.zm = self.start_proxy()
        self.images = self.env.images

    def start_proxy(self) -> H.ZMirror:
        """The zmirror instance the tests of this case pull through."""
        return auth_proxy()

    def workdir(self) -> Path:
        d = Path(self.mktemp()).resolve()
        d.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def creds(self, user: str, password: str | None = None) -> str:
        return f"{user}:{USERS[user] if password is None else password}"

    def admin_creds(self) -> str:
        user, password = self.zm.admin_credentials()
        return f"{user}:{password}"

    def diag(self, *daemons) -> str:
        out = f"\n--- zmirror log tail ---\n{self.zm.tail(30)}"
        for d in daemons:
            if d is not None:
                out += f"\n--- {d.dir.name} log tail ---\n{d.tail()}"
        return out

    def assertAuthError(self, text: str, what: str) -> None:
        low = text.lower()
        self.assertTrue(any(m in low for m in AUTH_ERRORS), f"{what}: expected an authentication error, got:\n{text}")

    def wait_log(self, what: str, pred, timeout: float = 15.0, **query) -> dict:
        """The first ``/api/logs`` row (``query`` filters) for which ``pred(row)`` holds."""
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = self.zm.access_logs(**query)
            hits = [r for r in rows if pred(r)]
            if hits:
                return hits[0]
            time.sleep(0.25)
        self.fail(f"no access-log row for {what} after {timeout}s; rows ({query}): "
                  f"{json.dumps(rows[:20], indent=1)}{self.diag()}")

    def user_id(self, username: str) -> int:
        r = self.zm.api("GET", "/users")
        self.assertEqual(r.status, 200, r.describe())
        return next(u["id"] for u in r.json()["items"] if u["username"] == username)


class SkopeoAuthTests(AuthE2ECase):
    """skopeo: anonymous on whitelisted/private repositories, --src-creds, skopeo login."""

    def copy_ok(self, image: H.Image, ref: str | None = None, creds: str | None = None) -> None:
        dest = self.workdir() / "image"
        try:
            H.skopeo_copy(self.zm.host, ref or image.ref, dest, creds=creds, timeout=180)
        except H.SkopeoError as e:
            self.fail(f"skopeo copy {ref or image.ref} (creds: {bool(creds)}) failed: {e}{self.diag()}")
        self.assertEqual(H.dir_problems(dest, image), [], f"{ref or image.ref}: wrong digests")

    def copy_refused(self, ref: str, creds: str | None = None) -> str:
        dest = self.workdir() / "image"
        try:
            H.skopeo_copy(self.zm.host, ref, dest, creds=creds, timeout=180)
        except H.SkopeoError as e:
            return e.stderr
        self.fail(f"skopeo copy {ref} (creds: {creds and creds.split(':')[0]}) was allowed")

    def test_anonymous_pull_of_whitelisted_images(self):
        self.copy_ok(self.images["oci"])  # entry e2e/oci
        # entry "e2elist" allows library/e2elist; pulled by the short name, zmirror normalizes it
        self.copy_ok(self.images["dockerlist"], ref="e2elist:1")
        self.copy_ok(self.images["dockerlist"])

    def test_anonymous_pull_of_private_images_fails_with_auth_error(self):
        for key in ("dockerv2", "ociindex"):  # e2e/ociindex: entry e2e/oci ends at a component boundary
            err = self.copy_refused(self.images[key].ref)
            self.assertAuthError(err, f"anonymous skopeo copy of {self.images[key].ref}")

    def test_user_credentials_pull_private_images(self):
        self.copy_ok(self.images["ociindex"], creds=self.creds("alice"))  # index and both children
        self.copy_ok(self.images["dockerv2"], creds=self.creds("alice"))

    def test_wrong_password_is_refused(self):
        err = self.copy_refused(self.images["dockerv2"].ref, creds=self.creds("alice", WRONG_PASSWORD))
        self.assertAuthError(err, "skopeo copy with a wrong password")
        # bad credentials are never downgraded to anonymous, not even for a whitelisted repository
        err = self.copy_refused(self.images["oci"].ref, creds=self.creds("alice", WRONG_PASSWORD))
        self.assertAuthError(err, "skopeo copy of a whitelisted image with a wrong password")

    def test_config_admin_is_not_a_registry_user(self):
        err = self.copy_refused(self.images["dockerv2"].ref, creds=self.admin_creds())
        self.assertAuthError(err, "skopeo copy with the config.toml admin's credentials")

    def login(self, user: str, password: str) -> tuple[subprocess.CompletedProcess, Path]:
        authfile = self.workdir() / "auth.json"
        p = run(["skopeo", "login", "--tls-verify=false", "--authfile", authfile, "-u", user, "--password-stdin",
                 self.zm.host], input=password + "\n", timeout=60, env=_client_env())
        return p, authfile

    def test_login_with_user_succeeds(self):
        p, authfile = self.login("alice", USERS["alice"])
        self.assertEqual(p.returncode, 0, output(p) + self.diag())
        self.assertIn("Login Succeeded", p.stdout)
        self.assertIn(self.zm.host, json.loads(authfile.read_text())["auths"])
        # the stored credentials work for a private image
        img = self.images["dockerv2"]
        r = run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--authfile", authfile,
                 f"docker://{self.zm.host}/{img.ref}"], timeout=60, env=_client_env())
        self.assertEqual(r.returncode, 0, output(r) + self.diag())
        self.assertEqual("sha256:" + H.sha256_hex(r.stdout.encode()), img.digest)

    def test_login_with_admin_fails(self):
        user, password = self.zm.admin_credentials()
        p, authfile = self.login(user, password)
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stderr, "skopeo login as the config.toml admin")
        self.assertFalse(authfile.exists() and self.zm.host in authfile.read_text(), "admin credentials stored")

    def test_login_with_wrong_password_fails(self):
        p, _ = self.login("alice", WRONG_PASSWORD)
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stderr, "skopeo login with a wrong password")


class HTTPAuthTests(AuthE2ECase):
    """What the clients above rely on, checked on the wire."""

    def test_challenges_and_cache_control(self):
        zm, private, public = self.zm, self.images["dockerv2"], self.images["oci"]
        r = H.http_request("GET", f"{zm.url}/v2/")
        self.assertEqual(r.status, 401, r.describe())
        self.assertEqual(r.header("WWW-Authenticate"),
                         f'Bearer realm="{zm.url}/token",service="zmirror"', r.describe())
        # containerd: the challenge on HEAD, with the scope
        r = H.http_request("HEAD", f"{zm.url}/v2/{private.repo}/manifests/{private.tag}", H.manifest_headers())
        self.assertEqual(r.status, 401, r.describe())
        self.assertIn(f'scope="repository:{private.repo}:pull"', r.header("WWW-Authenticate") or "")
        basic = "Basic " + base64.b64encode(self.creds("alice").encode()).decode()
        r = H.http_request("GET", f"{zm.url}/v2/{private.repo}/manifests/{private.tag}",
                           H.manifest_headers() + [("Authorization", basic)])
        self.assertEqual(r.status, 200, r.describe())
        self.assertEqual(r.body, private.manifest)
        self.assertIn("private", (r.header("Cache-Control") or "").lower(), r.describe())
        r = H.http_request("GET", f"{zm.url}/v2/{public.repo}/manifests/{public.tag}", H.manifest_headers())
        self.assertEqual(r.status, 200, r.describe())
        self.assertNotIn("private", (r.header("Cache-Control") or "").lower(), r.describe())


class PodmanAuthTests(AuthE2ECase):
    """podman login (user: yes, admin: no) and a pull of a private image after login."""

    skip = SKIP or PODMAN_SKIP

    def setUp(self):
        super().setUp()
        self.podman = podman()
        self.authfile = self.workdir() / "auth.json"
        self.authfile.write_text('{"auths": {}}\n')

    def login(self, user: str, password: str) -> subprocess.CompletedProcess:
        return self.podman("login", "--tls-verify=false", "--authfile", self.authfile, "-u", user,
                           "--password-stdin", self.zm.host, input=password + "\n", timeout=60)

    def test_login_then_pull_private_image(self):
        p = self.login("alice", USERS["alice"])
        self.assertEqual(p.returncode, 0, output(p) + self.diag())
        self.assertIn("Login Succeeded", p.stdout)
        img = self.images["dockerv2"]
        ref = f"{self.zm.host}/{img.ref}"
        p = self.podman("pull", "--tls-verify=false", "--authfile", self.authfile, ref)
        self.addCleanup(lambda: self.podman("rmi", "-f", ref, timeout=60))
        self.assertEqual(p.returncode, 0, output(p) + self.diag())
        p = self.podman("image", "inspect", "--format", "{{json .RepoDigests}}", ref, timeout=60)
        self.assertEqual(p.returncode, 0, output(p))
        self.assertIn(f"{self.zm.host}/{img.repo}@{img.digest}", json.loads(p.stdout))

    def test_login_with_admin_fails(self):
        user, password = self.zm.admin_credentials()
        p = self.login(user, password)
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stderr, "podman login as the config.toml admin")
        self.assertNotIn(self.zm.host, self.authfile.read_text())

    def test_pull_of_private_image_without_login_fails(self):
        img = self.images["ociindex"]
        p = self.podman("pull", "--tls-verify=false", "--authfile", self.authfile, f"{self.zm.host}/{img.ref}")
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stderr, "anonymous podman pull of a private image")


class DockerAuthTests(AuthE2ECase):
    """docker login (refresh-token flow) and docker pull through a dockerd of our own."""

    skip = SKIP or DOCKER_SKIP

    def setUp(self):
        super().setUp()
        self.docker = dockerd(self.zm)

    def config(self) -> Path:
        d = self.workdir() / "docker-config"
        d.mkdir()
        (d / "config.json").write_text('{"auths": {}}\n')
        return d

    def pull(self, config: Path, image: H.Image) -> subprocess.CompletedProcess:
        ref = f"{self.zm.host}/{image.ref}"
        p = self.docker.cli(config, "pull", ref)
        if p.returncode == 0:
            self.addCleanup(lambda: self.docker.cli(config, "rmi", "-f", ref, timeout=60))
        return p

    def assertPulled(self, p: subprocess.CompletedProcess, image: H.Image) -> None:
        self.assertEqual(p.returncode, 0, output(p) + self.diag(self.docker))
        self.assertIn(f"Digest: {image.digest}", p.stdout, output(p))

    def test_login_pull_with_refresh_token_until_user_disabled(self):
        cfg = self.config()
        t0 = time.time() - 1
        p = self.docker.cli(cfg, "login", "-u", "dora", "--password-stdin", self.zm.host,
                            input=USERS["dora"] + "\n", timeout=60)
        self.assertEqual(p.returncode, 0, output(p) + self.diag(self.docker))
        self.assertIn("Login Succeeded", p.stdout)
        # docker keeps the refresh token (identitytoken), not the password
        stored = (cfg / "config.json").read_text()
        entry = json.loads(stored)["auths"].get(self.zm.host) or {}
        self.assertTrue(entry.get("identitytoken"), f"no identitytoken stored: {stored}")
        self.assertNotIn(USERS["dora"], stored)
        self.assertNotIn(base64.b64encode(self.creds("dora").encode()).decode(), stored)
        self.wait_log("docker login (GET /token with Basic, offline_token)",
                      lambda r: r["username"] == "dora" and r["method"] == "GET" and r["status"] == 200
                      and r["created_at"] >= t0, kind="token")

        img = self.images["dockerv2"]
        t1 = time.time() - 1
        self.assertPulled(self.pull(cfg, img), img)
        self.wait_log("the pull's POST /token grant_type=refresh_token",
                      lambda r: r["username"] == "dora" and r["method"] == "POST" and r["status"] == 200
                      and r["created_at"] >= t1, kind="token")
        self.wait_log("the private manifest pulled as dora",
                      lambda r: r["username"] == "dora" and r["repository"] == img.repo and r["status"] == 200
                      and r["created_at"] >= t1, kind="manifest")

        uid = self.user_id("dora")
        self.zm.set_user_enabled(uid, False)
        self.addCleanup(self.zm.set_user_enabled, uid, True)
        t2 = time.time() - 1
        other = self.images["ociindex"]
        p = self.pull(cfg, other)
        self.assertNotEqual(p.returncode, 0, f"pull with a disabled user's refresh token worked: {output(p)}")
        self.assertAuthError(p.stdout + p.stderr, "docker pull after the user was disabled")
        self.wait_log("the refused refresh (POST /token → 401)",
                      lambda r: r["method"] == "POST" and r["status"] == 401 and r["created_at"] >= t2,
                      kind="token")

    def test_login_with_admin_fails(self):
        cfg = self.config()
        user, password = self.zm.admin_credentials()
        p = self.docker.cli(cfg, "login", "-u", user, "--password-stdin", self.zm.host, input=password + "\n",
                            timeout=60)
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stderr, "docker login as the config.toml admin")
        self.assertNotIn(self.zm.host, (cfg / "config.json").read_text())

    def test_anonymous_pull_whitelisted_yes_private_no(self):
        cfg = self.config()
        img = self.images["oci"]
        self.assertPulled(self.pull(cfg, img), img)
        p = self.pull(cfg, self.images["ociindex"])
        self.assertNotEqual(p.returncode, 0, output(p))
        # dockerd words a 401 on a repository as "pull access denied ... may require 'docker login'"
        low = (p.stdout + p.stderr).lower()
        self.assertTrue("docker login" in low or any(m in low for m in AUTH_ERRORS), output(p))


class ContainerdAuthTests(AuthE2ECase):
    """ctr images pull through a containerd of our own: --user (POST /token password grant), anonymous."""

    skip = SKIP or CTR_SKIP

    def setUp(self):
        super().setUp()
        self.containerd = containerd()

    def pull(self, image: H.Image, user: str | None = None) -> tuple[subprocess.CompletedProcess, str]:
        ref = f"{self.zm.host}/{image.ref}"
        args = ["images", "pull", "--plain-http", "--snapshotter", "native"]
        if user:
            args += ["--user", user]
        p = self.containerd.ctr(*args, ref)
        if p.returncode == 0:
            self.addCleanup(lambda: self.containerd.ctr("images", "rm", "--sync", ref, timeout=60))
        return p, ref

    def digest(self, ref: str) -> str | None:
        p = self.containerd.ctr("images", "ls", timeout=30)
        self.assertEqual(p.returncode, 0, output(p))
        for line in p.stdout.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2]
        return None

    def test_user_pull_of_private_image(self):
        img = self.images["ociindex"]
        t0 = time.time() - 1
        p, ref = self.pull(img, user=self.creds("carl"))
        self.assertEqual(p.returncode, 0, output(p) + self.diag(self.containerd))
        self.assertEqual(self.digest(ref), img.digest)
        # no ping: the challenge came on the HEAD, then a password grant
        self.wait_log("containerd's HEAD answered 401 with the challenge",
                      lambda r: r["method"] == "HEAD" and r["status"] == 401 and r["repository"] == img.repo
                      and r["created_at"] >= t0)
        self.wait_log("ctr --user: POST /token grant_type=password",
                      lambda r: r["username"] == "carl" and r["method"] == "POST" and r["status"] == 200
                      and r["created_at"] >= t0, kind="token")

    def test_anonymous_pull_of_private_image_fails(self):
        p, _ = self.pull(self.images["dockerv2"])
        self.assertNotEqual(p.returncode, 0, output(p))
        self.assertAuthError(p.stdout + p.stderr, "anonymous ctr pull of a private image")

    def test_anonymous_pull_of_whitelisted_image(self):
        img = self.images["oci"]
        p, ref = self.pull(img)
        self.assertEqual(p.returncode, 0, output(p) + self.diag(self.containerd))
        self.assertEqual(self.digest(ref), img.digest)
