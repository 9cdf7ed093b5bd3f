"""/api/logs and /api/stats, and AccessLogStore's retention pruning."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.helpers import coro
from tests.fixtures.admin import T0, AdminTestMixin, sync_database
from zmirror.accesslog import COLUMNS, AccessRecord
from zmirror.db.accesslogs import DAY, HOUR, AccessLogStore, RetentionService
from zmirror.db.jobs import ACCESS_LOG_RETENTION

ROW_KEYS = {"id", "created_at", "client_ip", "username", "method", "repository", "reference",
            "kind", "status", "bytes", "duration_ms", "upstream", "cache_hit", "user_agent",
            "namespace", "node"}


def insert(db, **kw):
    node = kw.pop("node", "")
    rec = AccessRecord(created_at=kw.pop("created_at", T0), **kw)
    row = rec.as_row()
    cols = COLUMNS + ("node",)
    db.conn.execute(
        f"INSERT INTO access_logs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        tuple(row[c] for c in COLUMNS) + (node,))
    db.conn.commit()


class LogRouteTests(AdminTestMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        # 10 rows, one per minute, newest last
        for i in range(10):
            insert(self.db, created_at=T0 - 600 + i * 60, client_ip=f"10.0.0.{i % 3}",
                   username=("alice" if i % 2 else ""), method="GET",
                   repository=("library/nginx" if i < 5 else "team_a/app%1"),
                   reference=f"sha256:{i:064x}", kind=("blob" if i % 4 else "manifest"),
                   status=(200 if i < 7 else (404 if i == 7 else 502)), bytes=1000 * i,
                   duration_ms=1.5 * i, upstream="Docker Hub", cache_hit=(i % 2 == 0),
                   user_agent="docker/27", node=("node-a" if i < 6 else "节点-b"))

    @coro
    async def test_list_newest_first_with_total(self):
        code, _h, obj = await self.call("GET", "/api/logs")
        self.assertEqual(code, 200)
        self.assertEqual((obj["total"], obj["page"], obj["page_size"]), (10, 1, 50))
        items = obj["items"]
        self.assertEqual(len(items), 10)
        self.assertEqual(set(items[0]), ROW_KEYS)
        self.assertEqual([r["bytes"] for r in items], [1000 * i for i in range(9, -1, -1)])
        self.assertIs(items[0]["cache_hit"], False)
        self.assertIs(items[1]["cache_hit"], True)
        self.assertEqual(items[0]["status"], 502)
        self.assertEqual(items[0]["created_at"], T0 - 60)

    @coro
    async def test_pagination(self):
        _c, _h, obj = await self.call("GET", "/api/logs?page=2&page_size=3")
        self.assertEqual((obj["total"], obj["page"], obj["page_size"]), (10, 2, 3))
        self.assertEqual([r["bytes"] for r in obj["items"]], [6000, 5000, 4000])
        _c, _h, obj = await self.call("GET", "/api/logs?page=5&page_size=3")
        self.assertEqual((obj["items"], obj["total"]), ([], 10))
        # capped, not refused
        _c, _h, obj = await self.call("GET", "/api/logs?page_size=100000")
        self.assertEqual(obj["page_size"], 500)

    @coro
    async def test_filters(self):
        async def total(q):
            code, _h, obj = await self.call("GET", "/api/logs?" + q)
            self.assertEqual(code, 200, (q, obj))
            return obj["total"]

        self.assertEqual(await total("username=alice"), 5)
        self.assertEqual(await total("username=ali"), 0)  # exact
        self.assertEqual(await total("client_ip=10.0.0.1"), 3)
        self.assertEqual(await total("repository=nginx"), 5)  # substring
        self.assertEqual(await total("repository=%251"), 5)  # literal '%'
        self.assertEqual(await total("repository=team_"), 5)  # literal '_'
        self.assertEqual(await total("repository=team%25"), 0)
        self.assertEqual(await total("status=200"), 7)
        self.assertEqual(await total("status=4xx"), 1)
        self.assertEqual(await total("status=5XX"), 2)
        self.assertEqual(await total("kind=manifest"), 3)
        self.assertEqual(await total("kind=denied"), 0)
        self.assertEqual(await total(f"from={T0 - 300}"), 5)
        self.assertEqual(await total(f"to={T0 - 300}"), 5)
        self.assertEqual(await total(f"from={T0 - 480}&to={T0 - 300}&username=alice"), 1)
        self.assertEqual(await total("username=&kind="), 10)  # empty = no filter

    @coro
    async def test_node_column_and_filter(self):
        code, _h, obj = await self.call("GET", "/api/logs")
        self.assertEqual(code, 200)
        self.assertEqual([r["node"] for r in obj["items"]], ["节点-b"] * 4 + ["node-a"] * 6)
        for q, n in (("node=node-a", 6), ("node=%E8%8A%82%E7%82%B9-b", 4), ("node=node", 0),
                     ("node=NODE-A", 0), ("node=", 10), ("node=node-a&status=200", 6),
                     # hostile but valid names are plain values, never SQL
                     ("node=node-a'--", 0), ("node=%25", 0), ("node=_ode-a", 0),
                     ("node=" + "x" * 64, 0)):
            code, _h, obj = await self.call("GET", "/api/logs?" + q)
            self.assertEqual((code, obj["total"]), (200, n), q)

    @coro
    async def test_node_filter_refuses_what_no_node_is_called(self):
        before = self.db.snapshot()
        for q in ("node=a%00b", "node=a%0Ab", "node=a%20b", "node=%1B%5B31m", "node=" + "x" * 65,
                  "node=a&node=b", "node=%FF"):
            code, _h, obj = await self.call("GET", "/api/logs?" + q)
            self.assertEqual(code, 400, q)
            self.assertIn("node", obj["fields"], q)
            self.assertNotIn("\x00", obj["error"])
        self.assertEqual(self.db.snapshot(), before)

    @coro
    async def test_bad_queries(self):
        for q, field in (("page=0", "page"), ("page=x", "page"), ("page_size=0", "page_size"),
                         ("page_size=-5", "page_size"), ("from=yesterday", "from"),
                         ("to=nan", "to"), ("to=inf", "to"), ("status=2000", "status"),
                         ("status=6xx", "status"), ("status=abc", "status"),
                         ("kind=upload", "kind"), ("user=alice", "user"),
                         ("page=1&page=2", "page"), ("repository=" + "x" * 300, "repository")):
            self.assertError(await self.call("GET", "/api/logs?" + q), 400, field)

    @coro
    async def test_query_messages_say_what_is_wrong(self):
        """Each parameter's message matches the value: an integer out of range names
        the bound (not "must be an integer"), a time before 0 is not "not a time"."""
        for q, field, reason in (
                ("page=-1", "page", "must be at least 1"),
                ("page=0", "page", "must be at least 1"),
                ("page=+0", "page", "must be at least 1"),
                ("page=x", "page", "must be an integer"),
                ("page=1.5", "page", "must be an integer"),
                ("page=" + "9" * 40, "page", "must be at most 1000000000"),
                ("page_size=-5", "page_size", "must be at least 1"),
                ("from=yesterday", "from", "must be a Unix time in seconds (a number)"),
                ("to=inf", "to", "must be a Unix time in seconds (a number)"),
                ("from=-1", "from", "must not be negative (a Unix time in seconds)"),
                ("to=1e12", "to", "must be at most 100000000000 (a Unix time in seconds)"),
                (f"from={T0}&to={T0 - 60}", "to", "must not be before from")):
            obj = self.assertError(await self.call("GET", "/api/logs?" + q), 400, field)
            self.assertEqual(obj["fields"], {field: reason}, q)
            self.assertEqual(obj["error"], f"invalid query: {field} {reason}", q)
        # an integer beyond the page size limit is the limit (as before)
        code, _h, obj = await self.call("GET", "/api/logs?page_size=" + "9" * 30)
        self.assertEqual((code, obj["page_size"]), (200, 500))
        _c, _h, obj = await self.call("GET", "/api/logs?page=-1&kind=upload")
        self.assertEqual(obj["error"], "invalid query: page must be at least 1, kind must be one"
                                       " of manifest, blob, tags, token, denied, other")

    @coro
    async def test_delete_before(self):
        code, _h, obj = await self.call("DELETE", f"/api/logs?before={T0 - 300}")
        self.assertEqual((code, obj), (200, {"deleted": 5}))
        _c, _h, obj = await self.call("GET", "/api/logs")
        self.assertEqual(obj["total"], 5)
        self.assertTrue(all(r["created_at"] >= T0 - 300 for r in obj["items"]))

    @coro
    async def test_delete_all(self):
        code, _h, obj = await self.call("DELETE", "/api/logs")
        self.assertEqual((code, obj), (200, {"deleted": 10}))
        _c, _h, obj = await self.call("GET", "/api/logs")
        self.assertEqual((obj["total"], obj["items"]), (0, []))

    @coro
    async def test_delete_bad_input_changes_nothing(self):
        before = self.db.snapshot()
        for q in ("?before=", "?before=soon", "?before=-1", "?all=1", "?before=1&before=2"):
            self.assertError(await self.call("DELETE", "/api/logs" + q), 400)
        self.assertEqual(self.db.snapshot(), before)
        _c, _h, obj = await self.call("DELETE", "/api/logs?before=-1")
        self.assertEqual(obj["fields"], {"before": "must not be negative (a Unix time in seconds)"})
        self.assertEqual(obj["error"],
                         "invalid query: before must not be negative (a Unix time in seconds)")


class StatsTests(AdminTestMixin, unittest.TestCase):
    @coro
    async def test_empty(self):
        code, _h, obj = await self.call("GET", "/api/stats")
        self.assertEqual(code, 200)
        self.assertEqual(obj["totals"], {"requests": 0, "bytes": 0, "errors": 0, "error_rate": 0.0,
                                         "users": 0, "registries": 1, "whitelists": 0})
        self.assertEqual(len(obj["hourly"]), 24)
        self.assertEqual(len(obj["daily"]), 7)
        self.assertTrue(all(b["requests"] == 0 and b["bytes"] == 0 for b in obj["hourly"]))
        self.assertEqual((obj["top_repositories"], obj["top_users"], obj["upstreams"]), ([], [], []))
        self.assertIsNone(obj["cache"])

    @coro
    async def test_numbers(self):
        now = self.clock.seconds()
        hour0 = now // HOUR * HOUR
        day0 = now // DAY * DAY
        insert(self.db, created_at=now - 10, repository="library/nginx", username="alice",
               status=200, bytes=100, upstream="Docker Hub")
        insert(self.db, created_at=now - 20, repository="library/nginx", username="", status=200,
               bytes=50, upstream="Docker Hub")
        insert(self.db, created_at=now - 2 * HOUR, repository="team/app", username="alice",
               status=404, bytes=10, upstream="Quay")
        insert(self.db, created_at=now - 30, repository="library/nginx", username="bob",
               status=401, kind="denied")
        insert(self.db, created_at=now - 40, username="bob", status=502, kind="token")
        insert(self.db, created_at=now - 3 * DAY, repository="old/repo", status=200, bytes=7)
        insert(self.db, created_at=now - 30 * DAY, repository="ancient/repo", status=500,
               bytes=999)  # outside every window
        await self.api.accounts.create("alice", "alice-password")
        await self.whitelists.create("library/nginx")
        _c, _h, obj = await self.call("GET", "/api/stats")
        t = obj["totals"]
        self.assertEqual((t["requests"], t["bytes"]), (6, 167))
        self.assertEqual(t["errors"], 2)  # 404 and 502; the 401 challenge is not an error
        self.assertEqual(t["error_rate"], round(2 / 6, 4))
        self.assertEqual((t["users"], t["registries"], t["whitelists"]), (1, 1, 1))
        self.assertEqual(obj["since"], day0 - 6 * DAY)
        self.assertEqual(obj["hourly"][-1]["t"], hour0)
        self.assertEqual(obj["hourly"][0]["t"], hour0 - 23 * HOUR)
        by_hour = {b["t"]: b for b in obj["hourly"]}
        self.assertEqual(sum(b["requests"] for b in obj["hourly"]), 5)
        self.assertEqual(by_hour[hour0 - 2 * HOUR]["bytes"], 10)
        self.assertEqual(obj["daily"][-1]["t"], day0)
        self.assertEqual(sum(b["requests"] for b in obj["daily"]), 6)
        self.assertEqual({b["t"]: b["bytes"] for b in obj["daily"]}[day0 - 3 * DAY], 7)
        self.assertEqual(obj["top_repositories"][0],
                         {"repository": "library/nginx", "requests": 3, "bytes": 150})
        self.assertEqual({r["repository"] for r in obj["top_repositories"]},
                         {"library/nginx", "team/app", "old/repo"})
        users = {u["username"]: (u["requests"], u["bytes"]) for u in obj["top_users"]}
        self.assertEqual(users, {"alice": (2, 110), "bob": (2, 0), "": (2, 57)})
        self.assertEqual(obj["upstreams"], [{"upstream": "Docker Hub", "requests": 2, "bytes": 150},
                                            {"upstream": "Quay", "requests": 1, "bytes": 10}])

    @coro
    async def test_timezone_offset_and_cache_and_queue(self):
        class Cache:
            def stats(self):
                return {"bytes": 5, "files": 1}

        class Queue:
            queue_depth = 7

        class BlobCacheLike:
            stats = {"hits": 3, "misses": 1}
            size = 100
            max_size = 1000
            entries = {"a": 1, "b": 2}

        self.client = self.stub(self.make_api(cache=Cache(), accesslog=Queue()))
        _c, _h, obj = await self.call("GET", "/api/stats?tz_offset=480")
        day0 = (self.clock.seconds() + 480 * 60) // DAY * DAY - 480 * 60
        self.assertEqual(obj["daily"][-1]["t"], day0)
        self.assertEqual(obj["cache"], {"bytes": 5, "files": 1})
        self.assertEqual(obj["log_queue"], 7)
        self.client = self.stub(self.make_api(cache=BlobCacheLike()))
        _c, _h, obj = await self.call("GET", "/api/stats")
        self.assertEqual(obj["cache"], {"hits": 3, "misses": 1, "bytes": 100, "max_bytes": 1000,
                                        "blobs": 2})
        self.client = self.stub(self.make_api(cache=Cache(), accesslog=Queue()))
        for q in ("?tz_offset=abc", "?tz_offset=100000", "?tz=1"):
            self.assertError(await self.call("GET", "/api/stats" + q), 400)
        for q, reason in (("abc", "must be an integer (minutes east of UTC)"),
                          ("100000", "must be at most 840 (minutes east of UTC)"),
                          ("-841", "must be at least -840 (minutes east of UTC)")):
            obj = self.assertError(await self.call("GET", "/api/stats?tz_offset=" + q), 400)
            self.assertEqual(obj, {"error": f"invalid query: tz_offset {reason}",
                                   "fields": {"tz_offset": reason}})
        _c, _h, obj = await self.call("GET", "/api/stats?tz_offset=-840")
        self.assertIn("hourly", obj)


class PruneTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.db = sync_database(self, Path(self.mktemp()) / "registry.db")
        self.addCleanup(self.db.close)
        self.store = AccessLogStore(self.db, self.clock)
        for i in range(20):  # one row per day, oldest first
            insert(self.db, created_at=T0 - (19 - i) * DAY - 1, repository=f"r/{i}")

    def remaining(self):
        return [r[0] for r in self.db.conn.execute(
            "SELECT repository FROM access_logs ORDER BY id").fetchall()]

    @coro
    async def test_by_days(self):
        n = await self.store.prune(retention_days=5)
        self.assertEqual(n, 15)
        self.assertEqual(self.remaining(), [f"r/{i}" for i in range(15, 20)])

    @coro
    async def test_by_rows(self):
        n = await self.store.prune(max_rows=3)
        self.assertEqual(n, 17)
        self.assertEqual(self.remaining(), ["r/17", "r/18", "r/19"])
        self.assertEqual(await self.store.prune(max_rows=3), 0)

    @coro
    async def test_both_and_neither(self):
        self.assertEqual(await self.store.prune(0, 0), 0)
        self.assertEqual(await self.store.prune(retention_days=10, max_rows=4), 16)
        self.assertEqual(len(self.remaining()), 4)

    @coro
    async def test_chunks(self):
        import zmirror.db.accesslogs as mod

        self.patch(mod, "PRUNE_CHUNK", 3)
        writes = self.db.writes
        self.assertEqual(await self.store.prune(retention_days=10), 10)
        # 3 + 3 + 3 + 1, and on PostgreSQL the job lock taken and released (zmirror.db.jobs)
        lock = 2 if getattr(self.db, "dialect", "sqlite") == "postgresql" else 0
        self.assertEqual(self.db.writes - writes, 4 + lock)
        self.assertEqual(len(self.remaining()), 10)

    def test_service_runs_periodically_off_the_request_path(self):
        svc = RetentionService(self.store, self.clock, retention_days=10, max_rows=0,
                               interval=3600, first_delay=60)
        svc.startService()
        self.assertEqual(len(self.remaining()), 20)
        self.clock.advance(60)
        self.assertEqual(len(self.remaining()), 10)
        insert(self.db, created_at=T0 - 11 * DAY, repository="late")
        self.clock.advance(3599)
        self.assertIn("late", self.remaining())
        self.clock.advance(1)
        self.assertNotIn("late", self.remaining())
        svc.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_service_disabled(self):
        svc = RetentionService(self.store, self.clock, retention_days=0, max_rows=0)
        svc.startService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        svc.stopService()

    def test_service_survives_errors(self):
        calls = []

        async def broken(*a, **kw):
            calls.append(1)
            raise RuntimeError("disk on fire")

        self.store.prune = broken
        svc = RetentionService(self.store, self.clock, retention_days=1, max_rows=0,
                               interval=10, first_delay=0)
        svc.startService()
        self.clock.advance(0)
        self.clock.advance(10)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        svc.stopService()


class PruneRealDatabaseTests(unittest.TestCase):
    @coro
    async def test_prune_on_threads(self):
        from tests.fixtures.pgserver import temp_database

        db = temp_database(self)
        clock = Clock()
        clock.advance(T0)

        def fill(txn):
            txn.executemany("INSERT INTO access_logs (created_at) VALUES (?)",
                            [(T0 - (11999 - i),) for i in range(12000)])

        await db.write(fill)
        store = AccessLogStore(db, clock)
        self.assertEqual(await store.prune(max_rows=1000), 11000)
        rows = await db.query("SELECT count(*) AS n, min(created_at) AS t FROM access_logs")
        self.assertEqual(rows, [{"n": 1000, "t": T0 - 999}])


class Gate:
    """A database whose ``gated``-th write waits until ``open()`` (``reached`` fires
    when it is asked for); everything else goes straight to ``db``."""

    def __init__(self, db, gated: int):
        from twisted.internet.defer import Deferred

        self.db, self.gated, self.writes = db, gated, 0
        self.dialect = db.dialect
        self.reached, self._open = Deferred(), Deferred()

    def read(self, f, *a, **kw):
        return self.db.read(f, *a, **kw)

    async def _write(self, f, *a, **kw):
        self.writes += 1
        if self.writes == self.gated:
            self.reached.callback(None)
            await self._open
        return await self.db.write(f, *a, **kw)

    def write(self, f, *a, **kw):
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self._write(f, *a, **kw))

    def open(self):
        self._open.callback(None)


class PruneOneNodeAtATimeTests(unittest.TestCase):
    """Two nodes on one PostgreSQL prune at the same time: one does it, the other
    skips that round (zmirror.db.jobs.JobLock), and the rows end as one pass leaves them."""

    def setUp(self):
        from twisted.internet import reactor

        from tests.fixtures.pgserver import fresh_database
        from zmirror.db import postgresql

        url = fresh_database(self)
        postgresql.migrate(url)
        self.nodes = []
        for _ in range(2):
            db = postgresql.PostgresDatabase(url, reactor)
            db.start()
            self.addCleanup(db.close)
            self.nodes.append(db)
        self.clock = Clock()
        self.clock.advance(T0)

    @coro
    async def test_one_prunes_the_other_skips(self):
        import zmirror.db.accesslogs as mod

        self.patch(mod, "PRUNE_CHUNK", 7)
        a, b = self.nodes

        def fill(txn):
            txn.executemany("INSERT INTO access_logs (created_at, node) VALUES (?, ?)",
                            [(T0 - (99 - i) * HOUR, "n") for i in range(100)])

        await a.write(fill)
        gate = Gate(a, gated=3)  # node A holds the lock and has deleted one chunk
        first = AccessLogStore(gate, self.clock)
        second = AccessLogStore(b, self.clock)
        from twisted.internet.defer import Deferred

        running = Deferred.fromCoroutine(first.prune(retention_days=2))
        await gate.reached
        self.assertIsNone(await second.prune(retention_days=2))  # skipped: A is at it
        rows = await b.query("SELECT count(*) AS n FROM access_logs")
        self.assertEqual(rows, [{"n": 100 - 7}])  # B deleted nothing
        gate.open()
        self.assertEqual(await running, 51)  # the rows older than 48 h (49 to 99 h old)
        rows = await b.query("SELECT count(*) AS n, min(created_at) AS t FROM access_logs")
        self.assertEqual(rows, [{"n": 49, "t": T0 - 48 * HOUR}])
        # the lock went with A's job: B runs the next round (nothing left to do)
        self.assertEqual(await second.prune(retention_days=2), 0)
        self.assertEqual(await second.prune(max_rows=40), 9)
        self.assertEqual(await first.prune(max_rows=40), 0)

    @coro
    async def test_the_retention_service_of_the_other_node_skips_quietly(self):
        a, b = self.nodes

        def hold(txn):
            txn.execute("SELECT pg_try_advisory_lock(?)", (ACCESS_LOG_RETENTION,))
            return txn.fetchone()[0]

        self.assertTrue(await a.write(hold))  # node A is pruning
        await b.write(lambda txn: txn.execute(
            "INSERT INTO access_logs (created_at) VALUES (?)", (T0 - 10 * DAY,)))
        svc = RetentionService(AccessLogStore(b, self.clock), self.clock, retention_days=1,
                               max_rows=0)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertIsNone(await svc.run_once())
        self.assertEqual(await b.query("SELECT count(*) AS n FROM access_logs"), [{"n": 1}])
        self.assertEqual(self.flushLoggedErrors(), [])
        await a.write(lambda txn: txn.execute("SELECT pg_advisory_unlock(?)", (ACCESS_LOG_RETENTION,)))
        self.assertEqual(await svc.run_once(), 1)
        self.assertEqual(await b.query("SELECT count(*) AS n FROM access_logs"), [{"n": 0}])


# the same tests against a real PostgreSQL (tests/fixtures/pgserver.py)
from tests.fixtures.pgserver import on_postgresql  # noqa: E402

LogRoutePostgresTests = on_postgresql(LogRouteTests)
StatsPostgresTests = on_postgresql(StatsTests)
PrunePostgresTests = on_postgresql(PruneTests)
PruneRealDatabasePostgresTests = on_postgresql(PruneRealDatabaseTests)
