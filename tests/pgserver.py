"""A throw-away PostgreSQL server for the tests (one per test process, started lazily).

``server()`` runs Debian's ``initdb`` / ``pg_ctl`` (as the ``postgres`` user when the
tests run as root: PostgreSQL refuses to run as root) in a temp dir, listening on
127.0.0.1 on a free port with password (scram) authentication, and stops it by
PID at exit.  ``fresh_database(testcase)`` creates an empty database for one test
and returns its URL; :data:`REASON` says why there is no server (tests skip).
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Optional

PASSWORD = "pg-test-secret"
USER = "zmirror"

_lock = threading.Lock()
_server: Optional["Server"] = None
_failed: Optional[str] = None
_counter = 0


def _bindir() -> Optional[str]:
    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(os.path.realpath(found))
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return dirs[-1] if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self):
        bindir = _bindir()
        if bindir is None or not os.path.exists(os.path.join(bindir, "initdb")):
            raise RuntimeError("PostgreSQL (initdb/pg_ctl) is not installed: apt-get install postgresql")
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="zmirror-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self.pid: Optional[int] = None
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no postgres user to run PostgreSQL as")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if self._prefix:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "--no-locale", "-E", "UTF8", "--no-sync")
        os.unlink(pwfile)
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"),
                  "-w", "-t", "60", "start")
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.pid = int(f.readline())

    def _run(self, tool: str, *args: str) -> None:
        cmd = self._prefix + [os.path.join(self.bindir, tool), *args]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.dir,
                           timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"{tool} failed: {p.stdout.decode(errors='replace')[-500:]}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # "fast" shutdown
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        os.kill(self.pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.05)
                else:
                    os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)


def server() -> Optional[Server]:
    """The shared server, started on first use; None if it cannot run (see :func:`reason`)."""
    global _server, _failed
    with _lock:
        if _server is None and _failed is None:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                _failed = "psycopg is not installed (pip install 'psycopg[binary]')"
                return None
            try:
                _server = Server()
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                _failed = f"cannot start PostgreSQL: {e}"
                return None
            atexit.register(_server.stop)
        return _server


def reason() -> Optional[str]:
    """Why there is no server (after :func:`server` returned None)."""
    return _failed


def fresh_database(testcase) -> str:
    """A new empty database for ``testcase`` (dropped at cleanup); returns its URL.
    Skips the test when PostgreSQL cannot run here."""
    global _counter
    from twisted.trial.unittest import SkipTest

    srv = server()
    if srv is None:
        raise SkipTest(reason())
    import psycopg

    with _lock:
        _counter += 1
        name = f"t{os.getpid()}_{_counter}"
    with psycopg.connect(srv.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop():
        with psycopg.connect(srv.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    testcase.addCleanup(drop)
    return srv.url(name)


def temp_database(testcase, reactor=None):
    """A migrated, started database pool for ``testcase`` (closed at cleanup):
    SQLite in the test's temp dir, or a fresh PostgreSQL database when the test
    class has ``backend = "postgresql"``."""
    from pathlib import Path

    if reactor is None:
        from twisted.internet import reactor
    from zmirror.db import Database, migrate

    if getattr(testcase, "backend", "sqlite") == "postgresql":
        return postgres_database(testcase, reactor)[1]
    path = Path(testcase.mktemp()) / "registry.db"
    migrate(path)
    db = Database(path, reactor)
    db.start()
    testcase.addCleanup(db.close)
    return db


def postgres_database(testcase, reactor=None):
    """``(url, db)``: a fresh, migrated PostgreSQL database for ``testcase`` and a started
    pool on it (closed at cleanup, before the database is dropped).  Skips the test when
    PostgreSQL cannot run here."""
    if reactor is None:
        from twisted.internet import reactor
    from zmirror.db import postgresql

    url = fresh_database(testcase)
    postgresql.migrate(url)
    db = postgresql.PostgresDatabase(url, reactor)
    db.start()
    testcase.addCleanup(db.close)
    return url, db


def on_postgresql(cls):
    """The test class ``cls`` again, against PostgreSQL (``backend = "postgresql"``;
    its tests skip where PostgreSQL cannot run).  Use it at module level:
    ``UserStorePostgresTests = on_postgresql(UserStoreTests)``."""
    name = cls.__name__.replace("Tests", "") + "PostgresTests"
    return type(name, (cls,), {"backend": "postgresql", "__module__": cls.__module__,
                               "__qualname__": name})
