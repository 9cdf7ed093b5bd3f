"""Shared fixtures of the admin API tests (no tests here).

``SyncDatabase`` has the interface of :class:`zmirror.db.Database` but runs
each interaction synchronously on one sqlite3 connection with the same
transaction semantics as adbapi (commit on return, rollback on exception), so
StubTreq requests complete without threads.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from zmirror.admin.api import AdminAPI
from zmirror.app import ZMirrorApp
from zmirror.auth.passwords import Passwords, fast_context
from zmirror.config import AdminConfig, Config
from zmirror.db import _configure, migrate
from zmirror.db.accesslogs import AccessLogStore
from zmirror.db.registries import RegistryStore
from zmirror.registry.routes import RegistryRoutes

ADMIN = ("admin", "s3cret-admin")
T0 = 1_700_000_000.0


class SyncDatabase:
    def __init__(self, path: Path):
        migrate(path)
        self.path = path
        self.conn = sqlite3.connect(str(path), check_same_thread=False)
        _configure(self.conn)
        self.writes = 0

    def _run(self, f, *args, **kw):
        cur = self.conn.cursor()
        try:
            result = f(cur, *args, **kw)
        except BaseException:
            self.conn.rollback()
            return fail()
        finally:
            cur.close()
        self.conn.commit()
        return succeed(result)

    def read(self, f, *a, **kw):
        return self._run(f, *a, **kw)

    def write(self, f, *a, **kw):
        self.writes += 1
        return self._run(f, *a, **kw)

    def query(self, sql, params=()):
        def run(txn):
            txn.execute(sql, params)
            cols = [c[0] for c in txn.description]
            return [dict(zip(cols, r)) for r in txn.fetchall()]

        return self.read(run)

    def execute(self, sql, params=()):
        def run(txn):
            txn.execute(sql, params)
            return txn.lastrowid, txn.rowcount

        return self.write(run)

    def snapshot(self) -> dict:
        """Every table's rows (to prove a failed request changed nothing)."""
        out = {}
        for (name,) in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall():
            out[name] = self.conn.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall()
        return out

    def close(self):
        self.conn.close()


class PostgresSyncDatabase(SyncDatabase):
    """:class:`SyncDatabase` on a fresh PostgreSQL database (tests/pgserver.py):
    ``conn`` is a psycopg connection whose ``execute`` takes ``?`` SQL too."""

    dialect = "postgresql"

    def __init__(self, url: str):
        from zmirror.db import postgresql

        postgresql.migrate(url)
        self.path = None
        self.conn = postgresql.connect(url)
        self.writes = 0

    def execute(self, sql, params=()):
        def run(txn):
            txn.execute(sql, params)
            return None, txn.rowcount

        return self.write(run)

    def snapshot(self) -> dict:
        out = {}
        for (name,) in self.conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_name != 'schema_version'"
        ).fetchall():
            out[name] = self.conn.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall()
        self.conn.rollback()
        return out


def sync_database(testcase, path: Path) -> SyncDatabase:
    """SyncDatabase at ``path``, or on PostgreSQL when the class has ``backend = "postgresql"``."""
    if getattr(testcase, "backend", "sqlite") == "postgresql":
        from tests.pgserver import fresh_database

        return PostgresSyncDatabase(fresh_database(testcase))
    return SyncDatabase(path)


class FakeUpstreams:
    def __init__(self):
        self.healths = {}
        self.probes = []
        self.probe_result = {"ok": True, "status": 200, "latency_ms": 12.5, "auth": "bearer",
                             "error": None}

    def health(self):
        return self.healths

    async def probe(self, row):
        self.probes.append(row)
        if isinstance(self.probe_result, Exception):
            raise self.probe_result
        return self.probe_result


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def make_config(tmp: str, username=ADMIN[0], password=ADMIN[1], anonymous="whitelist") -> Config:
    from zmirror.config import AccessConfig

    base = Path(tmp)
    return Config(data_dir=base, config_path=base / "config.toml",
                  admin=AdminConfig(username=username, password=password),
                  access=AccessConfig(anonymous=anonymous))


class AdminTestMixin:
    """``self.api``, ``self.client`` (StubTreq), ``self.db``, ``self.clock``, stores."""

    extra_stores = True  # users / whitelists / lockout from the issue-4 modules

    def setUp(self):
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        self.clock = Clock()
        self.clock.advance(T0)
        self.db = sync_database(self, tmp / "registry.db")
        self.addCleanup(self.db.close)
        self.config = make_config(str(tmp))
        self.registries = RegistryStore(self.db, self.clock)
        self.accesslogs = AccessLogStore(self.db, self.clock)
        self.upstreams = FakeUpstreams()
        self.passwords = Passwords(context=fast_context(), clock=self.clock)
        self.users = self.whitelists = self.lockout = None
        if self.extra_stores:
            self.users, self.whitelists, self.lockout = _issue4_stores(self.db, self.clock,
                                                                       self.passwords)
        self.api = self.make_api()
        self.client = self.stub(self.api)
        self.auth = basic(*ADMIN)

    def stub(self, api) -> StubTreq:
        """StubTreq on the whole app with ``api`` mounted at /api, as in production."""
        app = ZMirrorApp(RegistryRoutes(None, clock=self.clock), admin=api.resource())
        return StubTreq(app.resource())

    def make_api(self, **overrides):
        kw = dict(clock=self.clock, registries=self.registries, accesslogs=self.accesslogs,
                  users=self.users, whitelists=self.whitelists, lockout=self.lockout,
                  upstreams=self.upstreams, passwords=self.passwords)
        kw.update(overrides)
        return AdminAPI(self.config, **kw)

    def call(self, method: str, path: str, body=None, *, auth=True, headers=None, raw=None,
             content_type="application/json"):
        """Deferred → (status, headers, decoded JSON or None)."""

        async def go():
            h = dict(self.auth if auth is True else (auth or {}))
            data = None
            if raw is not None:
                data = raw
            elif body is not None:
                data = json.dumps(body).encode()
            if data is not None and content_type:
                h["Content-Type"] = content_type
            h.update(headers or {})
            resp = await self.client.request(method, "http://zm.test" + path, data=data,
                                             headers=h)
            content = await resp.content()
            obj = json.loads(content) if content else None
            return resp.code, resp.headers, obj

        return Deferred.fromCoroutine(go())

    def assertError(self, result, status: int, *fields: str):
        code, _headers, obj = result
        self.assertEqual(code, status, obj)
        self.assertIsInstance(obj, dict)
        self.assertIsInstance(obj.get("error"), str)
        self.assertTrue(obj["error"])
        self.assertIsInstance(obj.get("fields"), dict)
        for f in fields:
            self.assertIn(f, obj["fields"])
        return obj


def _issue4_stores(db, clock, passwords):
    """The real UserStore / WhitelistStore / Lockout (``passwords`` is the auth
    layer's: the stores only keep rows)."""
    from zmirror.auth.lockout import Lockout
    from zmirror.db.users import UserStore
    from zmirror.db.whitelists import WhitelistStore

    return (UserStore(db, clock), WhitelistStore(db, clock),
            Lockout(clock, max_account=5, max_ip=50, window=600, cooldown=300))
