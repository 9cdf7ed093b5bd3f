"""End-to-end harness: real registries and ``twistd zmirror`` instances in one temp dir.

Everything listens on 127.0.0.1 on free ports and lives in one temporary directory, removed by
:meth:`Harness.stop` (``ZMIRROR_E2E_KEEP=1`` keeps it).  The pieces it uses have modules of
their own: the test images (:mod:`tests.e2e.images`), the token issuer
(:mod:`tests.e2e.tokenissuer`), child processes (:mod:`tests.e2e.processes`), the clients
(:mod:`tests.e2e.clients`, :mod:`tests.e2e.httpclient`); the standard set the suite shares is
:mod:`tests.e2e.environment`.

- :class:`Harness` starts Debian's ``docker-registry`` (distribution 2.8) in three flavours: open
  (storage redirects disabled), Docker-Hub-style token auth with our own issuer, and htpasswd
  basic auth (bcrypt); pushes images with ``skopeo copy --preserve-digests``; starts
  ``twistd -n zmirror`` with a data dir whose SQLite ``registries`` table lists the upstreams
  under test (:func:`write_registries`).
- For cache tests: :meth:`Harness.stop_registry` / :meth:`Harness.resume_registry` (same port
  and storage), :meth:`Harness.restart_zmirror` (clean or SIGKILL, same data dir and port) and
  :meth:`Registry.requests` (count upstream requests in its access log); a
  :class:`~tests.e2e.faultproxy.FaultProxy` in paced mode keeps a download in flight.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.clients import skopeo
from tests.e2e.httpclient import HTTPResult, http_json
from tests.e2e.images import Image
from tests.e2e.processes import HarnessError, Proc, spawn, wait_http
from tests.e2e.tokenissuer import TOKEN_ISSUER, TOKEN_SERVICE, make_token_keys
from tests.fixtures.helpers import free_port, twistd_bin

REPO = Path(__file__).resolve().parent.parent.parent
USER, PASSWORD = "e2e-user", "e2e-pass-7Qx"


def missing_tools() -> str | None:
    """Why the e2e tests cannot run here, or None."""
    missing = [t for t in ("docker-registry", "skopeo") if not shutil.which(t)]
    if missing:
        return (f"{' and '.join(missing)} not installed (Debian: apt-get install docker-registry skopeo, "
                f"or run scripts/system-deps.sh as root): end-to-end tests skipped")
    try:
        import bcrypt  # noqa: F401
        import cryptography  # noqa: F401
        import jwt  # noqa: F401
    except ImportError as e:
        return f"python package missing for the e2e upstreams ({e}): pip install -e '.[test]'"
    return None


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"


def _env_without_registry_vars() -> dict:
    # distribution reads REGISTRY_* environment variables as configuration overrides
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}


@dataclass
class Registry:
    name: str
    kind: str  # open | token | basic
    port: int
    proc: Proc
    creds: tuple[str, str] | None = None  # needed to push (token, basic)
    issuer: Proc | None = None
    issuer_port: int | None = None
    storage: Path | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def creds_arg(self) -> str | None:
        return f"{self.creds[0]}:{self.creds[1]}" if self.creds else None

    def log_offset(self) -> int:
        """The current size of the registry's log: pass it as ``since`` to :meth:`requests`."""
        try:
            return self.proc.log.stat().st_size
        except OSError:
            return 0

    def requests(self, method: str, path: str, since: int = 0) -> list[str]:
        """Access-log lines (``"GET /v2/... HTTP/1.1" 200 ...``, written when a response ends) of
        ``method`` on exactly ``path`` (query ignored), from byte ``since`` of the log on."""
        try:
            with open(self.proc.log, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            i = line.find(f'"{method} ')
            if i < 0 or ' - - [' not in line[:i]:
                continue  # not an access-log line (the structured "response completed" lines differ)
            target = line[i + len(method) + 2:].split(" ", 1)[0]
            if target.split("?", 1)[0] == path:
                out.append(line)
        return out


@dataclass
class Upstream:
    """One row of zmirror's ``registries`` table."""

    name: str
    url: str
    username: str = ""
    password: str = ""
    enabled: bool = True
    priority: int | None = None  # default: position in the list (1-based)
    namespace: str = "docker.io"  # the registry host it mirrors (registries.namespace, migration 0004)
    # the connection settings (the registries columns of the same names): the egress proxy
    # (None: the default), the CA bundle trusted for it, certificate verification
    proxy: str | None = None
    ca: str = ""
    tls_verify: bool = True


@dataclass
class ZMirror:
    name: str
    port: int
    proc: Proc
    data: Path
    upstreams: list[Upstream]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def tail(self, n: int = 60) -> str:
        return self.proc.tail(n)

    # -- the admin API (Basic auth with the config.toml admin)

    def admin_credentials(self) -> tuple[str, str]:
        import toml

        conf = toml.loads((self.data / "config.toml").read_text())
        return conf["admin"]["username"], conf["admin"]["password"]

    def api(self, method: str, path: str, obj=None, timeout: float = 30) -> HTTPResult:
        """``METHOD /api{path}`` as the admin, with ``obj`` as the JSON body."""
        user, password = self.admin_credentials()
        return http_json(method, f"{self.url}/api{path}", obj, auth=(user, password), timeout=timeout)

    def _api_ok(self, method: str, path: str, obj=None) -> dict | None:
        r = self.api(method, path, obj)
        if r.status not in (200, 201, 204):
            raise HarnessError(f"{method} /api{path} {obj!r}: {r.describe()}")
        return r.json() if r.body else None

    def add_user(self, username: str, password: str, enabled: bool = True) -> dict:
        """Creates a registry user through ``POST /api/users``; returns the user row (with ``id``)."""
        return self._api_ok("POST", "/users", {"username": username, "password": password, "enabled": enabled})

    def set_user_enabled(self, uid: int, enabled: bool) -> dict:
        return self._api_ok("PUT", f"/users/{uid}", {"enabled": enabled})

    def add_whitelist(self, prefix: str, note: str = "") -> dict:
        return self._api_ok("POST", "/whitelists", {"prefix": prefix, "note": note})

    def access_logs(self, **query) -> list[dict]:
        """Rows of ``GET /api/logs`` (newest first); the access log is written in batches (~0.5 s)."""
        query.setdefault("page_size", 500)
        out = self._api_ok("GET", "/logs?" + urllib.parse.urlencode(query))
        return out["items"] if out else []


class Harness:
    """Starts and stops real registries and zmirror instances in one temp dir."""

    def __init__(self, root: Path | None = None, keep: bool | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="zmirror-e2e-")).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = os.environ.get("ZMIRROR_E2E_KEEP") == "1" if keep is None else keep
        self.procs: list[Proc] = []
        self.registries: dict[str, Registry] = {}
        self.zmirrors: dict[str, ZMirror] = {}
        self._stopped = False
        self._lock = threading.Lock()

    # -- registries

    def _registry_yaml(self, name: str, port: int, storage: Path, auth: str = "", redirect: bool = False) -> Path:
        text = f"""version: 0.1
log:
  level: info
  formatter: text
  fields:
    service: {name}
storage:
  filesystem:
    rootdirectory: {json.dumps(str(storage))}
  delete:
    enabled: true
  redirect:
    disable: {"false" if redirect else "true"}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {secrets.token_hex(16)}
{auth}"""
        path = self.root / "conf" / f"{name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _start_registry(self, name: str, kind: str, auth: str = "", **kw) -> Registry:
        port = free_port()
        storage = self.root / "data" / name
        conf = self._registry_yaml(name, port, storage, auth)
        proc = spawn(name, ["docker-registry", "serve", str(conf)], self.root / "logs" / f"{name}.log",
                     env=_env_without_registry_vars())
        self.procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/v2/", proc)
        reg = Registry(name, kind, port, proc, storage=storage, **kw)
        self.registries[name] = reg
        return reg

    def start_open(self, name: str = "open") -> Registry:
        return self._start_registry(name, "open")

    def start_token(self, name: str = "token") -> Registry:
        keydir = self.root / "auth" / name
        bundle = make_token_keys(keydir)
        iport = free_port()
        issuer = spawn(f"{name}-issuer", [sys.executable, str(Path(__file__).resolve().parent / "tokenissuer.py"),
                                          "--port", str(iport), "--keydir", str(keydir), "--user", f"{USER}:{PASSWORD}"],
                       self.root / "logs" / f"{name}-issuer.log")
        self.procs.append(issuer)
        wait_http(f"http://127.0.0.1:{iport}/token?service=ping", issuer)
        auth = f"""auth:
  token:
    realm: http://127.0.0.1:{iport}/token
    service: {TOKEN_SERVICE}
    issuer: {TOKEN_ISSUER}
    rootcertbundle: {json.dumps(str(bundle))}
"""
        return self._start_registry(name, "token", auth, creds=(USER, PASSWORD), issuer=issuer, issuer_port=iport)

    def start_basic(self, name: str = "basic") -> Registry:
        htpasswd = self.root / "auth" / name / "htpasswd"
        htpasswd.parent.mkdir(parents=True, exist_ok=True)
        htpasswd.write_text(htpasswd_line(USER, PASSWORD))
        auth = f"""auth:
  htpasswd:
    realm: zmirror-e2e-basic
    path: {json.dumps(str(htpasswd))}
"""
        return self._start_registry(name, "basic", auth, creds=(USER, PASSWORD))

    def dead_url(self) -> str:
        """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
        return f"http://127.0.0.1:{free_port()}"

    def push(self, image: Image, reg: Registry, ref: str | None = None) -> None:
        args = ["copy", "-q", "--dest-tls-verify=false", "--preserve-digests", "--retry-times", "2"]
        if image.children:
            args.append("--all")
        if reg.creds_arg:
            args += ["--dest-creds", reg.creds_arg]
        args += [f"dir:{image.dir}", f"docker://{reg.host}/{ref or image.ref}"]
        skopeo(args, timeout=600)

    def push_many(self, jobs: list[tuple[Image, Registry]]) -> None:
        """Pushes in parallel across registries, sequentially within one registry."""
        by_reg: dict[str, list[Image]] = {}
        for img, reg in jobs:
            by_reg.setdefault(reg.name, []).append(img)

        def run(name: str) -> None:
            for img in by_reg[name]:
                self.push(img, self.registries[name])

        with ThreadPoolExecutor(max_workers=max(1, min(4, len(by_reg)))) as ex:
            for f in [ex.submit(run, n) for n in by_reg]:
                f.result()

    # -- zmirror

    def start_zmirror(self, name: str, upstreams: list[Upstream], *, anonymous: str = "all",
                      cache: bool = False, extra_toml: str = "", idle_timeout: float = 30,
                      cooldown: float = 30, upstream_toml: str = "") -> ZMirror:
        """``twistd -n zmirror`` on a fresh data dir; ``extra_toml`` goes into ``[cache]``,
        ``upstream_toml`` (more ``key = value`` lines) into ``[upstream]``."""
        base = self.root / "zmirror" / name
        data = base / "data"
        data.mkdir(parents=True, exist_ok=True)
        port = free_port()
        db_path = data / "registry.db"
        config = data / "config.toml"
        config.write_text(f"""# written by tests/e2e/harness.py
[server]
host = "127.0.0.1"
port = {port}

[admin]
username = "admin"
password = "{secrets.token_hex(12)}"

[database]
path = {json.dumps(str(db_path))}

[access]
anonymous = "{anonymous}"

[upstream]
connect_timeout = 5
idle_timeout = {idle_timeout:g}
cooldown = {cooldown:g}
{upstream_toml}

[cache]
enabled = {"true" if cache else "false"}
dir = {json.dumps(str(data / "cache"))}
{extra_toml}
""")
        os.chmod(config, 0o600)
        write_registries(db_path, upstreams)
        proc = self.spawn_zmirror(name, data, port)
        wait_http(f"http://127.0.0.1:{port}/v2/", proc, timeout=60)
        zm = ZMirror(name, port, proc, data, upstreams)
        self.zmirrors[name] = zm
        return zm

    def spawn_zmirror(self, name: str, data: Path, port: int) -> Proc:
        """``twistd -n zmirror --data DATA`` on 127.0.0.1:``port`` (cwd: the data dir's parent, log
        ``logs/zmirror-NAME.log``), not waited for; the data dir must hold its ``config.toml``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        argv = [twistd_bin(), "-n", "--pidfile=", "zmirror", "--data", str(data),
                "--listen", f"tcp:{port}:interface=127.0.0.1"]
        proc = spawn(f"zmirror-{name}", argv, self.root / "logs" / f"zmirror-{name}.log", env=env,
                     cwd=data.parent)
        self.procs.append(proc)
        return proc

    def start_zmirror_access(self, name: str, upstreams: list[Upstream], *, anonymous: str = "whitelist",
                             whitelist: Iterable[str] = (), users: Iterable[tuple[str, str]] = (),
                             **kw) -> ZMirror:
        """:meth:`start_zmirror` in an access-control mode (default ``whitelist``), then the whitelist
        entries and registry users created through the admin API (as an operator would)."""
        zm = self.start_zmirror(name, upstreams, anonymous=anonymous, **kw)
        for prefix in whitelist:
            zm.add_whitelist(prefix, note="e2e")
        for username, password in users:
            zm.add_user(username, password)
        return zm

    def stop_zmirror(self, zm: ZMirror) -> None:
        zm.proc.stop()
        self.zmirrors.pop(zm.name, None)

    def restart_zmirror(self, zm: ZMirror, *, kill: bool = False, timeout: float = 60) -> ZMirror:
        """Stops ``zm`` (SIGTERM and a clean shutdown, or SIGKILL with ``kill``) and starts it again
        on the same data dir, config and port; ``zm`` is updated in place and returned."""
        if kill:
            if zm.proc.alive():
                zm.proc.popen.kill()
            zm.proc.popen.wait(10)
        else:
            zm.proc.stop()
        proc = self.spawn_zmirror(zm.name, zm.data, zm.port)
        zm.proc = proc
        wait_http(f"http://127.0.0.1:{zm.port}/v2/", proc, timeout=timeout)
        self.zmirrors[zm.name] = zm
        return zm

    def stop_registry(self, reg: Registry) -> None:
        """Stops a registry (its storage stays); :meth:`resume_registry` starts it again."""
        reg.proc.stop()

    def resume_registry(self, reg: Registry, timeout: float = 30) -> Registry:
        """Starts a stopped open registry again on the same port, config and storage."""
        if reg.proc.alive():
            return reg
        if reg.kind != "open":
            raise HarnessError(f"resume_registry: only open registries can be restarted, not {reg.kind}")
        conf = self.root / "conf" / f"{reg.name}.yml"
        proc = spawn(reg.name, ["docker-registry", "serve", str(conf)], reg.proc.log,
                     env=_env_without_registry_vars())
        self.procs.append(proc)
        reg.proc = proc
        wait_http(f"{reg.url}/v2/", proc, timeout=timeout)
        return reg

    # -- teardown

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for p in reversed(self.procs):
            p.stop()
        if self.keep:
            print(f"zmirror e2e: kept {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def write_registries(db_path: Path | str, upstreams: list[Upstream]) -> None:
    """Migrates zmirror's database (a SQLite file, or a ``postgresql://`` URL) and replaces the
    seeded registries rows with ``upstreams``."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if isinstance(db_path, str) and db_path.startswith(("postgresql://", "postgres://")):
        from zmirror.db import postgresql

        postgresql.migrate(db_path)
        conn = postgresql.connect(db_path)  # its cursors take the same "?" SQL
        columns = {"namespace", "proxy", "ca", "tls_verify"}  # migrated to this checkout's latest schema just now
    else:
        from zmirror.db.sqlite import migrate

        migrate(db_path)
        conn = sqlite3.connect(str(db_path))
        columns = {row[1] for row in conn.execute("PRAGMA table_info(registries)")}
    now = time.time()
    try:
        optional = {"namespace": ("docker.io", lambda u: u.namespace), "proxy": (None, lambda u: u.proxy),
                    "ca": ("", lambda u: u.ca), "tls_verify": (True, lambda u: u.tls_verify)}
        for col, (default, get) in optional.items():
            if col not in columns and any(get(u) != default for u in upstreams):
                raise HarnessError(f"this zmirror's registries table has no {col} column")
        extra = [c for c in optional if c in columns]
        names = ["name", "url", "priority", "enabled", "username", "password", "created_at", "updated_at", *extra]
        sql = f"INSERT INTO registries ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        with conn:
            conn.execute("DELETE FROM registries")
            for i, u in enumerate(upstreams, 1):
                row = (u.name, u.url, u.priority if u.priority is not None else i, int(u.enabled), u.username,
                       u.password, now, now)
                values = [optional[c][1](u) for c in extra]
                conn.execute(sql, row + tuple(int(v) if isinstance(v, bool) else v for v in values))
    finally:
        conn.close()


def serve_until_interrupted(images: dict, timings: dict) -> None:
    """``up``'s end: print the images and the start timings, then wait for Ctrl-C."""
    for img in images.values():
        print(f"image     {img.ref:24} {img.digest}")
    print(f"timings   {timings}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
