"""A ZMirror cluster on loopback: PostgreSQL, N ``twistd -n zmirror`` nodes and Debian's nginx.

Sync and subprocess-based like :mod:`tests.e2e.harness` (whose pieces it uses: one
:class:`~tests.e2e.harness.Harness` holds the temp dir and every process), importable without
trial, for the e2e tests and for benchmark scripts::

    from tests.e2e.cluster import Cluster
    with Cluster(nodes=3).start() as c:
        c.nginx_url, c.nodes[0].url, c.images["oci"].ref
        c.kill(0); c.restart(0)

- PostgreSQL: the test process's server (:func:`tests.fixtures.pgserver.server`, a real PostgreSQL 15 in a
  temp dir) with a database of the cluster's own, dropped by :meth:`Cluster.stop`.
- The upstream: one open distribution registry (``docker-registry``) seeded with the harness's
  test images (:func:`~tests.e2e.images.build_images`), optionally behind a
  :class:`~tests.e2e.faultproxy.FaultProxy` in paced mode (``throttle=True``; ``cluster.throttle.rate`` paces it)
  to keep a cold download in flight.
- Node ``i`` (``nodes[i]``, a :class:`~tests.e2e.harness.ZMirror`, named ``node{i+1}``): its own
  data dir, cache dir and port on 127.0.0.1; ``[database] url`` = the cluster's database,
  ``[server] trusted_proxies = ["127.0.0.1"]`` (nginx), ``[server] node = "node{i+1}"``; all nodes
  share one admin password (each in its own config.toml). Registry rows are written to the
  database once, before the nodes start.
- nginx: the shipped ``docs/cluster/nginx.conf`` rendered by :func:`render_nginx` (only the
  listen address, the node list and the paths of pid, logs and temp files change) and started
  in the foreground with its prefix, pid and logs in the cluster's temp dir.

``python tests/e2e/cluster.py up [N]`` starts a cluster and prints its addresses; Ctrl-C stops it.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from tests.fixtures import pgserver  # noqa: E402
from tests.e2e import harness as H  # noqa: E402
from tests.e2e.httpclient import http_request  # noqa: E402
from tests.e2e.images import Image, build_images  # noqa: E402
from tests.e2e.processes import HarnessError, Proc, log_tail, spawn, wait_http  # noqa: E402
from tests.fixtures.helpers import free_port  # noqa: E402
from tests.e2e.faultproxy import FaultProxy  # noqa: E402

DOCS = H.REPO / "docs" / "cluster"
NGINX_CONF = DOCS / "nginx.conf"
NODES_CONF = DOCS / "zmirror-nodes.conf"
NODES_INCLUDE = "zmirror-nodes.conf"
DEFAULT_BIG_MIB = int(os.environ.get("ZMIRROR_CLUSTER_BIG_MIB", "48"))


def nginx_bin() -> str | None:
    """Debian's nginx (``/usr/sbin`` is not on every PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def postgresql_missing() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if shutil.which("initdb") or shutil.which("pg_ctl") or glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return None
    return "PostgreSQL (initdb/pg_ctl) is not installed (Debian: apt-get install postgresql)"


def missing() -> str | None:
    """Why a cluster cannot run here (tests skip with it), or None."""
    reason = H.missing_tools()
    if reason:
        return reason
    if nginx_bin() is None:
        return ("nginx not installed (Debian: apt-get install nginx, or run scripts/system-deps.sh as root): "
                "cluster end-to-end tests skipped")
    reason = postgresql_missing()
    if reason:
        return f"{reason}: cluster end-to-end tests skipped"
    return None


# --------------------------------------------------------------------------- nginx


def _node_server_options() -> str:
    """The parameters of the shipped node lines (``max_fails=1 fail_timeout=10s``)."""
    for line in NODES_CONF.read_text().splitlines():
        m = re.match(r"^\s*server\s+\S+\s*(.*?);", line)
        if m:
            return m.group(1)
    raise HarnessError(f"{NODES_CONF}: no server line")


def render_nginx(dest: Path, *, listen_port: int, nodes: list[str], listen_host: str = "127.0.0.1") -> Path:
    """Writes the shipped nginx.conf into ``dest`` with only what a run here must change: the
    listen address, the node list (``host:port`` each, with the shipped lines' parameters), the pid,
    log and temp paths (inside ``dest``) and the worker user (the current one when root, none
    otherwise). Every rewritten directive must occur exactly once in the shipped file, so a change
    there fails loudly. Returns the path of the rendered nginx.conf."""
    dest.mkdir(parents=True, exist_ok=True)
    text = NGINX_CONF.read_text()
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {dest / 'temp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    rules = [
        (r"^user\s+[^;\n]+;", user),
        (r"^pid\s+[^;\n]+;", f"pid {dest / 'nginx.pid'};"),
        (r"^error_log\s+[^;\n]+;", f"error_log {dest / 'error.log'} info;"),
        (r"^(\s*)access_log\s+\S+\s+zmirror_cluster;", rf"\g<1>access_log {dest / 'access.log'} zmirror_cluster;"),
        (r"^(\s*)listen\s+80;", rf"\g<1>listen {listen_host}:{listen_port};"),
        (r"^\s*listen\s+\[::\]:80;\n", ""),
        (r"^http \{\n", "http {\n" + temp + "\n"),
    ]
    for pattern, repl in rules:
        text, n = re.subn(pattern, lambda m, r=repl: m.expand(r), text, flags=re.M)
        if n != 1:
            raise HarnessError(f"{NGINX_CONF}: expected one match of {pattern!r}, found {n}")
    if len(re.findall(rf"^\s*include\s+{re.escape(NODES_INCLUDE)};", text, flags=re.M)) != 2:
        raise HarnessError(f"{NGINX_CONF}: both upstreams must include {NODES_INCLUDE}")
    opts = _node_server_options()
    (dest / NODES_INCLUDE).write_text("".join(f"server {n} {opts};\n" for n in nodes))
    (dest / "temp").mkdir(exist_ok=True)
    conf = dest / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_argv(conf: Path, *, test: bool = False) -> list[str]:
    """nginx with ``conf``'s directory as prefix, errors before the config is read to a file there,
    in the foreground (or ``-t``: only check the configuration)."""
    nginx = nginx_bin()
    if nginx is None:
        raise HarnessError("nginx is not installed")
    d = conf.parent
    argv = [nginx, "-p", f"{d}/", "-c", str(conf), "-e", str(d / "error.log")]
    return argv + (["-t", "-q"] if test else ["-g", "daemon off;"])


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """PostgreSQL + ``nodes`` zmirror nodes + nginx on 127.0.0.1 (see the module docstring).

    ``images``: keys of :func:`~tests.e2e.images.build_images` to push upstream (default all,
    ``big`` of ``big_mib`` MiB included); ``anonymous``: ``[access] anonymous`` of the nodes;
    ``node_toml``: more TOML appended to every node's config.toml (its own sections);
    ``cache``: the nodes' blob caches. ``[lockout] max_ip_failures`` is raised so that tests of the
    account lockout never lock 127.0.0.1, the address of every client here."""

    def __init__(self, nodes: int = 3, *, root: Path | None = None, keep: bool | None = None,
                 images: list[str] | None = None, big_mib: int = DEFAULT_BIG_MIB, throttle: bool = False,
                 anonymous: str = "all", cache: bool = True, node_toml: str = "", nginx: bool = True):
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if root is None:
            base = tempfile.gettempdir()
            # short: unix sockets (PostgreSQL's, dockerd's) under it are limited to 108 bytes
            root = Path(tempfile.mkdtemp(prefix="zm-cluster-", dir=base if len(base) <= 40 else "/tmp"))
        self.h = H.Harness(root, keep)
        self.root = self.h.root
        self.n = nodes
        self.image_keys = images
        self.big_mib = big_mib
        self.use_throttle = throttle
        self.anonymous = anonymous
        self.cache = cache
        self.node_toml = node_toml
        self.with_nginx = nginx
        self.admin_password = secrets.token_hex(12)
        self.images: dict[str, Image] = {}
        self.registry: H.Registry | None = None
        self.throttle: FaultProxy | None = None
        self.nodes: list[H.ZMirror] = []
        self.database_url = ""
        self.nginx: Proc | None = None
        self.nginx_port = 0
        self.nginx_dir = self.root / "nginx"
        self.timings: dict[str, float] = {}
        self._db_name = ""
        self._pg: pgserver.Server | None = None
        self._stopped = False

    # -- addresses

    @property
    def nginx_host(self) -> str:
        return f"127.0.0.1:{self.nginx_port}"

    @property
    def nginx_url(self) -> str:
        return f"http://{self.nginx_host}"

    @property
    def upstream_url(self) -> str:
        """What the nodes' registries row points at (the throttle, when there is one)."""
        return self.throttle.url if self.throttle else self.registry.url

    # -- start / stop

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Cluster:
        reason = missing() if self.with_nginx else (H.missing_tools() or postgresql_missing())
        if reason:
            raise HarnessError(reason)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        t0 = time.monotonic()
        errors: list[BaseException] = []

        def images() -> None:
            try:
                built = build_images(self.root / "images", self.big_mib,
                                     with_big=self.image_keys is None or "big" in self.image_keys)
                self.images = {k: v for k, v in built.items() if self.image_keys is None or k in self.image_keys}
            except BaseException as e:  # noqa: BLE001 -- re-raised below
                errors.append(e)

        builder = threading.Thread(target=images, name="cluster-images")
        builder.start()
        try:
            self.database_url = self._create_database()
            self.registry = self.h.start_open("upstream")
        finally:
            builder.join()
        if errors:
            raise errors[0]
        self.timings["pg+registry+images"] = time.monotonic() - t0
        t1 = time.monotonic()
        self.h.push_many([(img, self.registry) for img in self.images.values()])
        self.timings["push"] = time.monotonic() - t1
        if self.use_throttle:
            self.throttle = FaultProxy(self.registry.port, name="throttle", chunk=64 * 1024)
        H.write_registries(self.database_url, [H.Upstream("upstream", self.upstream_url)])
        t2 = time.monotonic()
        ports = [free_port() for _ in range(self.n)]
        procs = [self._spawn_node(i, port) for i, port in enumerate(ports)]
        for i, (port, (proc, data)) in enumerate(zip(ports, procs)):
            wait_http(f"http://127.0.0.1:{port}/v2/", proc, timeout=90)
            zm = H.ZMirror(self.node_name(i), port, proc, data, [H.Upstream("upstream", self.upstream_url)])
            self.nodes.append(zm)
            self.h.zmirrors[zm.name] = zm
        self.timings["nodes"] = time.monotonic() - t2
        if self.with_nginx:
            self._start_nginx()
        self.timings["total"] = time.monotonic() - t0

    def _create_database(self) -> str:
        srv = pgserver.server()
        if srv is None:
            raise HarnessError(f"PostgreSQL: {pgserver.reason()}")
        import psycopg

        self._db_name = f"zmcluster_{os.getpid()}_{secrets.token_hex(4)}"
        with psycopg.connect(srv.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self._db_name}"')
        self._pg = srv
        return srv.url(self._db_name)

    def _drop_database(self) -> None:
        if not self._db_name:
            return
        try:
            import psycopg

            with psycopg.connect(self._pg.url(), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._db_name}" WITH (FORCE)')
        except Exception as e:  # noqa: BLE001 -- a stop never raises; the server goes at exit anyway
            print(f"zmirror cluster: dropping {self._db_name} failed: {e}", file=sys.stderr)
        self._db_name = ""

    @staticmethod
    def node_name(i: int) -> str:
        return f"node{i + 1}"

    def node_config(self, i: int, port: int, data: Path) -> str:
        return f"""# written by tests/e2e/cluster.py
[server]
host = "127.0.0.1"
port = {port}
node = "{self.node_name(i)}"
trusted_proxies = ["127.0.0.1"]

[admin]
username = "admin"
password = "{self.admin_password}"

[database]
url = {json.dumps(self.database_url)}

[access]
anonymous = "{self.anonymous}"

[lockout]
max_ip_failures = 100000

[upstream]
connect_timeout = 5
idle_timeout = 30
cooldown = 5

[cache]
enabled = {"true" if self.cache else "false"}
dir = {json.dumps(str(data / "cache"))}

{self.node_toml}
"""

    def _spawn_node(self, i: int, port: int) -> tuple[Proc, Path]:
        name = self.node_name(i)
        data = self.root / "zmirror" / name / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = data / "config.toml"
        config.write_text(self.node_config(i, port, data))
        os.chmod(config, 0o600)
        return self.h.spawn_zmirror(name, data, port), data

    def _start_nginx(self) -> None:
        self.nginx_port = free_port()
        conf = render_nginx(self.nginx_dir, listen_port=self.nginx_port, nodes=[zm.host for zm in self.nodes])
        self.nginx = spawn("nginx", nginx_argv(conf), self.root / "logs" / "nginx.log")
        self.h.procs.append(self.nginx)
        wait_http(f"{self.nginx_url}/healthz", self.nginx, timeout=30)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.throttle is not None:
            self.throttle.close()
        self.h.stop()  # every process (nginx first), then the temp dir
        self._drop_database()

    # -- nodes

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (no clean shutdown: in-flight transfers are cut)."""
        proc = self.nodes[i].proc
        if proc.alive():
            proc.popen.kill()
        proc.popen.wait(10)

    def restart(self, i: int, *, kill: bool = False) -> H.ZMirror:
        """Starts node ``i`` again (stopped cleanly first, or SIGKILLed with ``kill``; a killed node
        is just started) on the same data dir, cache, config and port."""
        return self.h.restart_zmirror(self.nodes[i], kill=kill, timeout=90)

    def wait_ready(self, i: int, timeout: float = 30.0) -> None:
        """Until node ``i``'s ``/readyz`` answers 200."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = http_request("GET", f"{self.nodes[i].url}/readyz", timeout=5)
                if last.status == 200:
                    return
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise HarnessError(f"{self.node_name(i)} not ready after {timeout}s: {last}")

    def node_index(self, addr: str) -> int:
        """The index of the node at ``host:port``."""
        for i, zm in enumerate(self.nodes):
            if zm.host == addr:
                return i
        raise KeyError(addr)

    # -- nginx's access log

    def nginx_log_offset(self) -> int:
        try:
            return (self.nginx_dir / "access.log").stat().st_size
        except OSError:
            return 0

    _LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) .*? '
                       r'node=(?P<nodes>.*?) node_status=')

    def nginx_requests(self, method: str, path: str, since: int = 0) -> list[tuple[int, list[str]]]:
        """``(status, [node host:port tried, in order])`` of each request ``method path`` (query
        ignored) in nginx's access log from byte ``since`` on (a line is written when a response ends)."""
        try:
            with open(self.nginx_dir / "access.log", "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            m = self._LINE.search(line)
            if m and m["method"] == method and m["target"].split("?", 1)[0] == path:
                tried = [a.strip() for a in re.split(r"[,:]\s+", m["nodes"]) if a.strip() and a.strip() != "-"]
                out.append((int(m["status"]), tried))
        return out

    def served_by(self, method: str, path: str, since: int = 0, timeout: float = 10.0) -> int:
        """The index of the node that answered the first ``method path`` after ``since`` in nginx's
        access log (the last one nginx tried), waiting up to ``timeout`` s for the line."""
        deadline = time.monotonic() + timeout
        while True:
            for _status, tried in self.nginx_requests(method, path, since):
                if tried:
                    return self.node_index(tried[-1])
            if time.monotonic() >= deadline:
                raise HarnessError(f"no nginx access-log line for {method} {path} after {timeout}s")
            time.sleep(0.05)

    def tails(self, n: int = 30) -> str:
        """The last lines of every node's and nginx's logs (for failure messages)."""
        out = ""
        for zm in self.nodes:
            out += f"\n--- {zm.name} log tail ---\n{zm.tail(n)}"
        if self.nginx is not None:
            out += f"\n--- nginx error.log tail ---\n{log_tail(self.nginx_dir / 'error.log', n)}"
        return out


def _up(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 3
    with Cluster(nodes=n, keep=os.environ.get("ZMIRROR_E2E_KEEP") == "1").start() as c:
        print(f"root      {c.root}")
        print(f"database  {c.database_url}")
        print(f"upstream  {c.registry.url}")
        for zm in c.nodes:
            print(f"{zm.name:9} {zm.url}")
        print(f"nginx     {c.nginx_url}")
        print(f"admin     admin:{c.admin_password}")
        H.serve_until_interrupted(c.images, c.timings)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "up":
        _up(sys.argv[2:])
    else:
        print(__doc__)
        sys.exit(2)
