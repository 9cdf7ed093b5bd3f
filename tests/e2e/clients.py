"""The container clients of the e2e tests: skopeo (:func:`skopeo_copy`, :func:`skopeo_inspect_raw`),
and docker, containerd (ctr) and podman with all their state in a directory of their own.

dockerd and containerd (:class:`Dockerd`, :class:`Containerd`) run with their state and sockets in
one short directory (vfs / native snapshots, no iptables, no bridge); podman (:class:`Podman`) runs
as root with its own storage, configuration and auth files.  ``*_SKIP`` say why a client cannot
run here (binaries missing, not root), or are None.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.e2e.processes import HarnessError, Proc, spawn, wait_ready


class SkopeoError(HarnessError):
    def __init__(self, args: list[str], rc: int, stderr: str):
        super().__init__(f"skopeo {' '.join(args)} exited {rc}: {stderr.strip()[-3000:]}")
        self.rc, self.stderr = rc, stderr


_AUTHFILE = os.path.join(tempfile.gettempdir(), f"zmirror-e2e-{os.getpid()}-no-auth.json")


def skopeo(args: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    # An auth file that never exists: no credentials from the machine's docker/podman config leak in.
    env = dict(os.environ, REGISTRY_AUTH_FILE=_AUTHFILE)
    p = subprocess.run(["skopeo", *args], capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
                       check=False)
    if check and p.returncode != 0:
        raise SkopeoError(args, p.returncode, p.stderr.decode(errors="replace"))
    return p


def skopeo_copy(host: str, ref: str, dest: Path, *, creds: str | None = None, all_images: bool = True,
                timeout: float = 600) -> Path:
    """``skopeo copy --src-tls-verify=false [--all] docker://HOST/REF dir:DEST``."""
    if dest.exists():
        shutil.rmtree(dest)
    args = ["copy", "-q", "--src-tls-verify=false"]
    if all_images:
        args.append("--all")
    args += ["--src-creds", creds] if creds else ["--src-no-creds"]
    args += [f"docker://{host}/{ref}", f"dir:{dest}"]
    skopeo(args, timeout=timeout)
    return dest


def skopeo_inspect_raw(host: str, ref: str, *, creds: str | None = None, timeout: float = 120) -> bytes:
    args = ["inspect", "--raw", "--tls-verify=false"]
    args += ["--creds", creds] if creds else ["--no-creds"]
    args.append(f"docker://{host}/{ref}")
    return skopeo(args, timeout=timeout).stdout


# --------------------------------------------------------------------------- docker, containerd, podman


IS_ROOT = os.geteuid() == 0
NAMESPACE = "zmirror-e2e"  # containerd namespace


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


def client_env(**extra: str) -> dict:
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
        raise HarnessError(f"timed out after {timeout}s: {' '.join(map(str, argv))}\n"
                           f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}") from None


def output(p: subprocess.CompletedProcess) -> str:
    return f"exit {p.returncode}\nstdout: {p.stdout.strip()[-2000:]}\nstderr: {p.stderr.strip()[-2000:]}"


# --------------------------------------------------------------------------- daemons and podman


class Dockerd:
    """Debian's dockerd with all state under ``dir`` (vfs, no iptables/bridge, own socket)."""

    def __init__(self, root: Path, insecure: str):
        self.dir = root / "docker"
        self.sock = self.dir / "docker.sock"
        self.insecure = insecure
        self.proc: Proc | None = None

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
        self.proc = spawn("dockerd", [str(a) for a in argv], d / "dockerd.log", env=client_env())
        probe = d / "probe-config"
        probe.mkdir(exist_ok=True)
        wait_ready("dockerd", self.proc,
                  lambda: self.sock.exists() and self.cli(probe, "version", timeout=10).returncode == 0, 60)
        return self

    def cli(self, config: Path, *args, timeout: float = 180, input: str | None = None) -> subprocess.CompletedProcess:
        return run([DOCKER, "-H", f"unix://{self.sock}", "--config", config, *args], timeout=timeout,
                   env=client_env(), input=input)

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
        self.proc: Proc | None = None

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
        self.proc = spawn("containerd", [CONTAINERD, "--config", str(conf)], d / "containerd.log",
                            env=client_env())
        wait_ready("containerd", self.proc,
                  lambda: self.sock.exists() and self.ctr("version", timeout=10).returncode == 0, 30)
        return self

    def ctr(self, *args, timeout: float = 180) -> subprocess.CompletedProcess:
        return run([CTR, "--address", self.sock, "--namespace", NAMESPACE, *args], timeout=timeout,
                   env=client_env())

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
        self.env = client_env(CONTAINERS_CONF=str(d / "containers.conf"),
                               CONTAINERS_STORAGE_CONF=str(d / "storage.conf"),
                               CONTAINERS_REGISTRIES_CONF=str(d / "registries.conf"),
                               REGISTRY_AUTH_FILE=str(self.empty_auth), TMPDIR=str(d / "tmp"))

    def __call__(self, *args, timeout: float = 180, input: str | None = None) -> subprocess.CompletedProcess:
        d = self.dir
        return run([PODMAN, "--root", d / "storage", "--runroot", d / "run", "--storage-driver", "vfs", *args],
                   timeout=timeout, env=self.env, input=input)
