"""BatchedAccessLog: batching, timers, failures, shutdown flush, a 10,000-record burst,
and the rows the registry routes record."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from tests.fixtures.admin import T0, SyncDatabase
from tests.fixtures.fakes import FakeProxy
from tests.fixtures.helpers import coro
from zmirror.accesslog import AccessRecord, BatchedAccessLog
from zmirror.app import ZMirrorApp
from zmirror.db.sqlite import Database
from zmirror.net import TrustedProxies
from zmirror.identity import Identity
from zmirror.registry.routes import RegistryRoutes
from zmirror.service import CallbackService, DatabaseService


def rec(i: int, **kw) -> AccessRecord:
    base = dict(created_at=T0 + i, client_ip="10.0.0.1", username="u", method="GET",
                repository="library/nginx", reference=f"sha256:{i:064x}", kind="blob", status=200,
                bytes=i, duration_ms=0.5, upstream="Docker Hub", cache_hit=bool(i % 2),
                user_agent="docker/27")
    base.update(kw)
    return AccessRecord(**base)


class CountingDatabase(SyncDatabase):
    """SyncDatabase that can hold writes (to see the queue) or fail them."""

    def __init__(self, path):
        super().__init__(path)
        self.held: list = []
        self.hold = False
        self.fail_next = 0

    def write(self, f, *a, **kw):
        if self.fail_next:
            self.fail_next -= 1
            self.writes += 1
            return fail(sqlite3.OperationalError("disk I/O error"))
        if self.hold:
            d = Deferred()
            self.held.append((d, f, a, kw))
            return d
        return super().write(f, *a, **kw)

    def release(self):
        held, self.held = self.held, []
        for d, f, a, kw in held:
            super().write(f, *a, **kw).chainDeferred(d)

    def rows(self):
        return self.conn.execute("SELECT bytes FROM access_logs ORDER BY id").fetchall()


class BatchingTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.db = CountingDatabase(Path(self.mktemp()) / "registry.db")
        self.addCleanup(self.db.close)
        self.log = BatchedAccessLog(self.db, self.clock, flush_interval=0.5, max_batch=10)

    def test_record_only_queues(self):
        self.log.record(rec(1))
        self.log.record(rec(2))
        self.assertEqual(self.db.writes, 0)
        self.assertEqual(self.log.queue_depth, 2)
        self.assertEqual(self.db.rows(), [])

    def test_flush_after_interval_in_one_transaction(self):
        for i in range(7):
            self.log.record(rec(i))
        self.clock.advance(0.49)
        self.assertEqual(self.db.writes, 0)
        self.clock.advance(0.01)
        self.assertEqual(self.db.writes, 1)
        self.assertEqual(self.db.rows(), [(i,) for i in range(7)])
        self.assertEqual((self.log.queue_depth, self.log.written), (0, 7))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_all_fields_stored(self):
        self.log.record(rec(3, cache_hit=None, username="", status=404))
        self.clock.advance(1)
        row = self.db.conn.execute(
            "SELECT created_at, client_ip, username, method, repository, reference, kind, status,"
            " bytes, duration_ms, upstream, cache_hit, user_agent FROM access_logs").fetchone()
        self.assertEqual(row, (T0 + 3, "10.0.0.1", "", "GET", "library/nginx", f"sha256:{3:064x}",
                               "blob", 404, 3, 0.5, "Docker Hub", None, "docker/27"))

    def test_every_row_names_the_node(self):
        self.log.record(rec(1))
        self.clock.advance(1)
        log = BatchedAccessLog(self.db, self.clock, flush_interval=0.5, node="mirror-2")
        log.record(rec(2))
        log.record(rec(3, repository="library/redis"))
        self.clock.advance(1)
        rows = self.db.conn.execute("SELECT bytes, node FROM access_logs ORDER BY id").fetchall()
        self.assertEqual(rows, [(1, ""), (2, "mirror-2"), (3, "mirror-2")])

    def test_flush_when_batch_is_full(self):
        for i in range(25):
            self.log.record(rec(i))
        self.clock.advance(0)  # no waiting for the interval
        self.assertEqual(self.db.writes, 2)
        self.assertEqual(len(self.db.rows()), 20)
        self.assertEqual(self.log.queue_depth, 5)
        self.clock.advance(0.5)
        self.assertEqual(self.db.writes, 3)
        self.assertEqual(self.db.rows(), [(i,) for i in range(25)])

    def test_one_write_in_flight(self):
        self.db.hold = True
        for i in range(10):
            self.log.record(rec(i))
        self.clock.advance(0)
        self.assertEqual(len(self.db.held), 1)
        for i in range(10, 35):
            self.log.record(rec(i))
        self.clock.advance(5)
        self.assertEqual(len(self.db.held), 1)  # the next batch waits
        self.assertEqual(self.log.queue_depth, 25)
        self.db.hold = False
        self.db.release()
        self.clock.advance(0)
        self.clock.advance(0)
        self.clock.advance(0.5)
        self.assertEqual(self.db.rows(), [(i,) for i in range(35)])

    def test_failed_write_is_retried_in_order(self):
        self.db.fail_next = 2
        for i in range(3):
            self.log.record(rec(i))
        self.clock.advance(0.5)
        self.assertEqual(self.log.queue_depth, 3)
        self.log.record(rec(3))
        self.clock.advance(1.0)  # backoff: 0.5 * 2
        self.clock.advance(2.0)  # 0.5 * 4
        self.assertEqual(self.db.rows(), [(i,) for i in range(4)])
        self.assertEqual((self.log.written, self.log.dropped, self.log.failed_batches), (4, 0, 2))
        self.flushLoggedErrors()

    def test_persistent_failure_drops_after_retries(self):
        self.db.fail_next = 100
        self.log.record(rec(1))
        for _ in range(10):
            self.clock.advance(100)
        self.assertEqual(self.log.dropped, 1)
        self.assertEqual(self.log.queue_depth, 0)

    def test_queue_is_bounded(self):
        log = BatchedAccessLog(self.db, self.clock, max_batch=10, max_queue=50)
        self.db.hold = True
        for i in range(200):
            log.record(rec(i))
        self.assertEqual(log.queue_depth, 50)
        self.assertEqual(log.dropped, 150)  # the oldest go first
        self.clock.advance(0)
        self.assertEqual(len(self.db.held), 1)
        self.assertEqual(log.queue_depth, 40)
        self.db.hold = False
        self.db.release()
        self.clock.advance(10)
        self.assertEqual(self.db.rows(), [(i,) for i in range(150, 200)])

    def test_unusable_record_never_raises(self):
        class Weird:
            def as_row(self):
                raise RuntimeError("broken record")

        self.log.record(Weird())
        self.log.record(rec(1, status="not a number", bytes=None))
        self.clock.advance(1)
        self.assertEqual(self.db.conn.execute("SELECT status, bytes FROM access_logs").fetchall(),
                         [(0, 0)])
        self.assertEqual(self.log.dropped, 1)
        self.flushLoggedErrors(RuntimeError)

    @coro
    async def test_stop_writes_the_rest_in_one_transaction(self):
        for i in range(35):
            self.log.record(rec(i))
        writes = self.db.writes
        await self.log.stop()
        self.assertEqual(self.db.writes, writes + 1)
        self.assertEqual(self.db.rows(), [(i,) for i in range(35)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.log.record(rec(99))  # after shutdown: counted, not queued
        self.assertEqual((self.log.queue_depth, self.log.dropped), (0, 1))

    @coro
    async def test_stop_waits_for_the_write_in_flight(self):
        self.db.hold = True
        for i in range(12):
            self.log.record(rec(i))
        self.clock.advance(0)
        d = self.log.stop()
        self.assertEqual(len(self.db.held), 2)
        self.assertFalse(d.called)
        self.db.hold = False
        self.db.release()
        await d
        self.assertEqual(self.db.rows(), [(i,) for i in range(12)])

    @coro
    async def test_flush_now(self):
        for i in range(23):
            self.log.record(rec(i))
        await self.log.flush()
        self.assertEqual(len(self.db.rows()), 23)


class BurstTests(unittest.TestCase):
    """10,000 records against the real thread pools: every row arrives."""

    def setUp(self):
        from tests.fixtures.pgserver import temp_database

        self.db = temp_database(self)

    def fresh_pools(self):
        """Second, unstarted pools on the same database."""
        from zmirror.db import postgresql

        if self.db.dialect == "postgresql":
            return postgresql.PostgresDatabase(self.db.url, reactor)
        return Database(self.db.path, reactor)

    @coro
    async def test_burst_of_10000(self):
        log = BatchedAccessLog(self.db, reactor, flush_interval=0.05, max_batch=500)
        transactions = []
        real_write = self.db.write

        def counting_write(f, *a, **kw):
            transactions.append(len(a[0]) if a else 0)
            return real_write(f, *a, **kw)

        self.db.write = counting_write
        for i in range(10_000):
            log.record(rec(i))  # returns at once: the queue absorbs the burst
        self.assertGreater(log.queue_depth, 9_000)
        for _ in range(400):
            if log.written == 10_000:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(log.written, 10_000)
        self.assertEqual(log.queue_depth, 0)
        self.assertEqual(log.dropped, 0)
        self.assertEqual(sum(transactions), 10_000)
        self.assertLessEqual(max(transactions), 500)
        self.assertLessEqual(len(transactions), 25)
        rows = await self.db.query("SELECT count(*) AS n, count(DISTINCT reference) AS refs,"
                                   " sum(bytes) AS b FROM access_logs")
        self.assertEqual(rows, [{"n": 10_000, "refs": 10_000, "b": sum(range(10_000))}])
        await log.stop()

    @coro
    async def test_shutdown_flushes_before_the_database_closes(self):
        """The wiring's order: DatabaseService first, the writer's CallbackService after it,
        so on stop (reverse order) the queue is written before the pool closes."""
        from twisted.application.service import MultiService

        db = self.fresh_pools()
        log = BatchedAccessLog(db, reactor, flush_interval=60, max_batch=100_000)
        top = MultiService()
        DatabaseService(db).setServiceParent(top)
        CallbackService(stop=log.stop).setServiceParent(top)
        top.startService()
        for i in range(3_000):
            log.record(rec(i))
        await top.stopService()
        self.assertFalse(db.writer.running)
        rows = await self.db.query("SELECT count(*) AS n FROM access_logs")
        self.assertEqual(rows, [{"n": 3_000}])

    @coro
    async def test_two_nodes_on_one_database_show_in_one_query(self):
        """Two nodes (their own pools, writers and [server] node) on one database:
        /api/logs's query returns the rows of both, each with its node, and filters by it."""
        from zmirror.db.accesslogs import AccessLogStore, LogFilter

        other = self.fresh_pools()
        other.start()
        self.addCleanup(other.close)
        one = BatchedAccessLog(self.db, reactor, flush_interval=60, node="node-1")
        two = BatchedAccessLog(other, reactor, flush_interval=60, node="node-2")
        for i in range(30):
            (one if i % 3 else two).record(rec(i))
        await one.flush()
        await two.flush()
        store = AccessLogStore(self.db, reactor)
        page = await store.list(page_size=500)
        self.assertEqual(page["total"], 30)
        self.assertEqual({r["bytes"]: r["node"] for r in page["items"]},
                         {i: "node-1" if i % 3 else "node-2" for i in range(30)})
        two_only = await store.list(LogFilter(node="node-2"), page_size=500)
        self.assertEqual(sorted(r["bytes"] for r in two_only["items"]), list(range(0, 30, 3)))
        self.assertEqual((await store.list(LogFilter(node="node-3")))["total"], 0)
        await one.stop()
        await two.stop()

    @coro
    async def test_a_batch_is_one_multi_row_insert(self):
        """Each batch reaches the database as ONE INSERT statement with all its rows;
        a bigger final flush is several such statements in one transaction."""
        from zmirror import accesslog as mod

        statements = []

        def spying_insert(txn, rows):
            real_execute = txn.execute

            def execute(sql, params=()):
                statements.append((sql.count("(?"), len(params)))
                return real_execute(sql, params)

            txn.execute = execute
            try:
                return real_insert(txn, rows)
            finally:
                del txn.execute

        real_insert = mod._insert_rows
        self.patch(mod, "_insert_rows", spying_insert)
        log = BatchedAccessLog(self.db, reactor, flush_interval=60, max_batch=300)
        for i in range(300):
            log.record(rec(i))
        await log.flush()
        self.assertEqual(statements, [(300, 300 * len(mod.INSERT_COLUMNS))])
        statements.clear()
        for i in range(300, 300 + mod.ROWS_PER_INSERT + 7):
            log._queue.append(mod._clean_row(rec(i)))  # more than a batch: what stop() writes
        await log.stop()
        self.assertEqual([n for n, _ in statements], [mod.ROWS_PER_INSERT, 7])
        rows = await self.db.query("SELECT count(*) AS n, count(DISTINCT reference) AS refs"
                                   " FROM access_logs")
        self.assertEqual(rows[0]["n"], 300 + mod.ROWS_PER_INSERT + 7)
        self.assertEqual(rows[0]["refs"], rows[0]["n"])


class Deny:
    async def authorize_ping(self, request):
        return Identity()

    async def authorize(self, request, path):
        from zmirror.oci.errors import RegistryError

        raise RegistryError("UNAUTHORIZED", status=401)


class RouteRecordingTests(unittest.TestCase):
    """What RegistryRoutes records reaches the table through the batched writer."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.db = SyncDatabase(Path(self.mktemp()) / "registry.db")
        self.addCleanup(self.db.close)
        self.log = BatchedAccessLog(self.db, self.clock)

    def client(self, policy=None):
        routes = RegistryRoutes(FakeProxy(b"x" * 1234, upstream="Docker Hub"), policy=policy, accesslog=self.log, clock=self.clock,
                                trusted=TrustedProxies(["127.0.0.1/32"]))
        return StubTreq(ZMirrorApp(routes).resource())

    def rows(self):
        self.clock.advance(1)
        cur = self.db.conn.execute("SELECT * FROM access_logs ORDER BY id")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    @coro
    async def test_blob_pull_is_recorded_with_bytes_sent(self):
        digest = "sha256:" + "a" * 64
        resp = await self.client().get(f"http://zm.test/v2/library/nginx/blobs/{digest}",
                                       headers={"User-Agent": "docker/27.0",
                                                "X-Forwarded-For": "203.0.113.9"})
        body = await resp.content()
        self.assertEqual(len(body), 1234)
        [row] = self.rows()
        self.assertEqual(
            {k: row[k] for k in ("method", "repository", "reference", "kind", "status", "bytes",
                                 "upstream", "user_agent", "created_at")},
            {"method": "GET", "repository": "library/nginx", "reference": digest, "kind": "blob",
             "status": 200, "bytes": 1234, "upstream": "Docker Hub", "user_agent": "docker/27.0",
             "created_at": T0})
        # StubTreq's peer is 127.0.0.1, trusted here: the forwarded address is the client
        self.assertEqual(row["client_ip"], "203.0.113.9")

    @coro
    async def test_denial_is_recorded(self):
        resp = await self.client(Deny()).request("HEAD",
                                                 "http://zm.test/v2/library/nginx/manifests/latest")
        self.assertEqual(resp.code, 401)
        [row] = self.rows()
        self.assertEqual((row["kind"], row["status"], row["method"], row["reference"]),
                         ("denied", 401, "HEAD", "latest"))
        json.dumps(row)


# the same tests against a real PostgreSQL (tests/fixtures/pgserver.py)
from tests.fixtures.pgserver import on_postgresql  # noqa: E402

BurstPostgresTests = on_postgresql(BurstTests)
