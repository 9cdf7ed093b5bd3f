"""Operating a cluster: the ``zmirror_cluster_*`` metrics (bus, shared lockout, shared upstream
health), their absence on SQLite, the bus on real PostgreSQL losing its backend and coming back,
and one process per ``[cache] dir`` (the flock on ``zmirror.lock``)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from tests.fixtures.fakes import FailingCache, FakeDB, NeverWrites
from tests.fixtures.helpers import Captured, coro, eventually, write_default_config
from tests.fixtures.metrics import samples, value
from tests.fixtures.upstream import OneAgent
from zmirror.auth.lockout import Lockout
from zmirror.auth.lockoutsync import CLEAR_EVENT, FAILURE_EVENT, LockoutSync
from zmirror.cache import dirlock
from zmirror.cache.dirlock import LOCK_FILE, CacheDirInUse, CacheDirLock
from zmirror.cluster import LoopbackHub
from zmirror.db import listen
from zmirror.db.listen import BACKOFF_FIRST, COALESCE, MAX_PAYLOAD, PostgresBus
from zmirror.db.watch import TABLES
from zmirror.health import HealthChecks
from zmirror.metrics import Metrics
from zmirror.upstream.health import UpstreamHealth
from zmirror.upstream.pool import UpstreamPool
from zmirror.upstream.shared import HealthSharing

START = 100000.0
SECRET = b"cluster-secret-" + b"x" * 17
ROWS = [{"id": 1, "name": "hub", "url": "https://hub.test", "priority": 1}]
ROOT = Path(__file__).resolve().parent.parent


def cluster_names(metrics: Metrics) -> set:
    return {name for name, _labels in samples(metrics) if name.startswith("zmirror_cluster_")}


# --- the bus's counters, driven by hand on a clock -----------------------------------------


class BusMetricsTests(unittest.TestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.clock.advance(START)
        self.db = FakeDB()
        self.bus = PostgresBus("postgresql://zmirror:s3cret@db.invalid:5432/z", self.db, reactor,
                               clock=self.clock)
        self.metrics = Metrics(process=False)
        self.metrics.watch_cluster(self.bus, clock=self.clock)

    def v(self, name, **labels):
        return value(self.metrics, name, **labels)

    def test_connect_loss_and_reconnect_move_the_gauges(self):
        # never connected yet: the first attempt failed
        self.bus._failed("connection refused")
        self.clock.advance(3)
        self.assertEqual(self.v("zmirror_cluster_bus_connected"), 0)
        self.assertEqual(self.v("zmirror_cluster_bus_disconnected_seconds"), 3)
        self.assertIsNone(self.v("zmirror_cluster_bus_last_connect_age_seconds"))
        self.assertEqual(self.v("zmirror_cluster_bus_connect_failures_total"), 1)
        # a failed retry does not restart the outage's clock
        self.bus._failed("connection refused")
        self.clock.advance(2)
        self.assertEqual(self.v("zmirror_cluster_bus_disconnected_seconds"), 5)
        self.bus._connected()
        self.assertEqual(self.v("zmirror_cluster_bus_connected"), 1)
        self.assertEqual(self.v("zmirror_cluster_bus_disconnected_seconds"), 0)
        self.assertEqual(self.v("zmirror_cluster_bus_last_connect_age_seconds"), 0)
        self.assertEqual(self.v("zmirror_cluster_bus_reconnects_total"), 0)  # the first connect
        self.clock.advance(10)
        self.assertEqual(self.v("zmirror_cluster_bus_last_connect_age_seconds"), 10)
        # the backend is terminated
        self.bus._failed("terminated")
        self.clock.advance(0.25)
        self.assertEqual(self.v("zmirror_cluster_bus_connected"), 0)
        self.assertEqual(self.v("zmirror_cluster_bus_disconnected_seconds"), 0.25)
        self.assertEqual(self.v("zmirror_cluster_bus_last_connect_age_seconds"), 10.25)
        self.assertEqual(self.v("zmirror_cluster_bus_connect_failures_total"), 3)
        self.clock.advance(BACKOFF_FIRST)
        self.bus._connected()
        self.assertEqual(self.v("zmirror_cluster_bus_connected"), 1)
        self.assertEqual(self.v("zmirror_cluster_bus_reconnects_total"), 1)
        self.assertEqual(self.v("zmirror_cluster_bus_disconnected_seconds"), 0)
        self.assertEqual(self.v("zmirror_cluster_bus_last_connect_age_seconds"), 0)

    def test_events_and_table_changes_are_counted(self):
        for table in TABLES:  # every table has its series from the start
            self.assertEqual(self.v("zmirror_cluster_bus_table_changes_total", table=table), 0)
        other = json.dumps({"o": "0123456789abcdef", "k": "k", "d": {"n": 2}})
        mine = json.dumps({"o": self.bus.origin, "k": "k", "d": {"n": 1}})
        self.bus._received([(listen.EVENTS, other), (listen.EVENTS, other), (listen.EVENTS, mine),
                            (listen.EVENTS, "{not json"), (listen.CHANGES, "users"),
                            (listen.CHANGES, "users"), (listen.CHANGES, "access_logs")])
        self.clock.advance(COALESCE)
        self.bus._received([(listen.CHANGES, "users"), (listen.CHANGES, "registries")])
        self.clock.advance(COALESCE)
        self.assertEqual(self.v("zmirror_cluster_bus_events_received_total"), 2)  # not its echo
        self.assertEqual(self.v("zmirror_cluster_bus_events_dropped_total"), 1)
        self.assertEqual(self.v("zmirror_cluster_bus_table_changes_total", table="users"), 2)
        self.assertEqual(self.v("zmirror_cluster_bus_table_changes_total", table="registries"), 1)
        self.assertEqual(self.v("zmirror_cluster_bus_table_changes_total", table="whitelists"), 0)
        self.assertIsNone(self.v("zmirror_cluster_bus_table_changes_total", table="access_logs"))
        # publishing: taken, refused by the database, refused as too big
        self.bus.publish("k", {"n": 1})
        self.bus.publish("k", {"n": 2})
        self.db.mode = "error"
        cap = Captured(self)
        self.bus.publish("k", {"n": 3})
        self.bus.publish("k", {"blob": "x" * MAX_PAYLOAD})
        self.assertEqual(self.v("zmirror_cluster_bus_events_published_total"), 2)
        self.assertEqual(self.v("zmirror_cluster_bus_publish_errors_total"), 1)
        self.assertEqual(self.v("zmirror_cluster_bus_events_dropped_total"), 2)
        self.assertTrue([t for t in cap.texts() if "not sent" in t], cap.texts())

    def test_counts_are_counters_and_states_are_gauges(self):
        types = {fam.name: fam.type for fam in
                 text_string_to_metric_families(self.metrics.exposition().decode())}
        for name in ("reconnects", "connect_failures", "events_published", "publish_errors",
                     "events_received", "events_dropped", "table_changes"):
            self.assertEqual(types[f"zmirror_cluster_bus_{name}"], "counter", name)
        for name in ("connected", "disconnected_seconds"):
            self.assertEqual(types[f"zmirror_cluster_bus_{name}"], "gauge", name)

    def test_the_outage_counts_from_the_start_when_it_never_connected(self):
        started = []

        def connect(url):
            started.append(url)
            raise OSError("no route to host")

        bus = PostgresBus("postgresql://zmirror@db.invalid/z", FakeDB(), reactor, clock=self.clock,
                          connect=connect)
        metrics = Metrics(process=False)
        metrics.watch_cluster(bus, clock=self.clock)
        bus.startService()
        self.addCleanup(bus.stopService)
        self.clock.advance(7)
        self.assertEqual(value(metrics, "zmirror_cluster_bus_connected"), 0)
        self.assertEqual(value(metrics, "zmirror_cluster_bus_disconnected_seconds"), 7)


    def test_every_cluster_series_is_documented(self):
        hub = LoopbackHub()
        sharing = HealthSharing(UpstreamHealth(self.clock, cooldown=30), hub.bus(), None, self.clock)
        sync = LockoutSync(Lockout(self.clock, secret=SECRET), hub.bus(), NeverWrites(),
                           clock=self.clock)
        metrics = Metrics(process=False)
        metrics.watch_cluster(self.bus, sync, sharing, clock=self.clock)
        self.bus._connected()
        names = cluster_names(metrics)
        self.assertEqual(len(names), 17)
        docs = (ROOT / "docs" / "operations.md").read_text()
        self.assertEqual([n for n in sorted(names) if f"`{n}`" not in docs], [])


# --- the shared lockout and upstream health, over a LoopbackHub -------------------------------


class LockoutSyncMetricsTests(unittest.TestCase):
    def test_queue_depth_dropped_and_ignored(self):
        hub, clock = LoopbackHub(), MemoryReactorClock()
        clock.advance(START)
        lockout = Lockout(clock, secret=SECRET, max_account=10 ** 6, max_ip=10 ** 6)
        db = NeverWrites()
        bus = hub.bus()
        sync = LockoutSync(lockout, bus, db, clock=clock, max_pending=50, max_batch=10)
        metrics = Metrics(process=False)
        metrics.watch_cluster(bus, sync, clock=clock)
        self.assertEqual(value(metrics, "zmirror_cluster_lockout_queue_depth"), 0)
        for i in range(20):  # two keys each: account and address
            lockout.failure(f"u{i}", f"10.0.0.{i}")
        self.assertEqual(value(metrics, "zmirror_cluster_lockout_queue_depth"), 40)
        clock.advance(1)  # one batch (10 rows) goes out and never comes back
        self.assertEqual(len(db.writes), 1)
        self.assertEqual(value(metrics, "zmirror_cluster_lockout_queue_depth"), 30)
        for i in range(20, 40):
            lockout.failure(f"u{i}", f"10.0.1.{i}")
        self.assertEqual(value(metrics, "zmirror_cluster_lockout_queue_depth"), 50)  # the bound
        self.assertEqual(value(metrics, "zmirror_cluster_lockout_dropped_total"), 30 + 40 - 50)
        self.assertEqual(value(metrics, "zmirror_cluster_lockout_written_total"), 0)
        # another node sends nonsense
        other = hub.bus()
        other.publish(FAILURE_EVENT, {"k": ["zz"], "at": START})
        other.publish(FAILURE_EVENT, {"at": START})
        other.publish(CLEAR_EVENT, {"k": 5})
        self.assertEqual(value(metrics, "zmirror_cluster_lockout_ignored_total"), 3)
        self.assertEqual(sync.ignored, 3)


class HealthSharingMetricsTests(unittest.TestCase):
    def test_publishes_and_applied_snapshots(self):
        hub, clock = LoopbackHub(), Clock()
        clock.advance(START)
        pools, metrics = [], []
        for _ in range(2):
            bus = hub.bus()
            health = UpstreamHealth(clock, cooldown=30)
            pool = UpstreamPool(OneAgent(None), clock, health=health)
            sharing = HealthSharing(health, bus, None, clock)
            pool.set_registries([dict(r) for r in ROWS])
            m = Metrics(process=False)
            m.watch_cluster(bus, sharing=sharing, clock=clock)
            pools.append(pool)
            metrics.append(m)
        a, b = pools
        a.health.mark_failed(a.upstreams[0], "cannot connect to hub.test")
        self.assertEqual(value(metrics[0], "zmirror_cluster_upstream_state_published_total"), 1)
        self.assertEqual(value(metrics[1], "zmirror_cluster_upstream_state_published_total"), 0)
        self.assertEqual(value(metrics[1], "zmirror_cluster_upstream_state_applied_total"), 1)
        self.assertEqual(value(metrics[0], "zmirror_cluster_upstream_state_applied_total"), 0)
        self.assertEqual(b.health.report()[1]["state"], "down")
        # no lockout sync given: no lockout series
        self.assertIsNone(value(metrics[0], "zmirror_cluster_lockout_queue_depth"))


# --- the wiring: SQLite has none of it ----------------------------------------------------


class SqliteWiringTests(unittest.TestCase):
    def test_a_node_alone_exports_no_cluster_series_and_readyz_has_no_bus(self):
        from zmirror.tap import Options, makeService

        data = Path(self.mktemp()).resolve() / "data"
        write_default_config(data)
        opts = Options()
        opts.parseOptions(["--data", str(data), "--listen", "tcp:0:interface=127.0.0.1"])
        top = makeService(opts, reactor)
        self.addCleanup(top.components.db.close)
        c = top.components
        self.assertEqual(type(c.bus).__name__, "LocalBus")
        self.assertEqual(cluster_names(c.metrics), set())
        self.assertIsNone(c.health.bus)
        c.blob_cache.dir_lock.release()


# --- the bus on a real PostgreSQL -----------------------------------------------------------


class PostgresBusMetricsTests(unittest.TestCase):
    """A real bus whose backoff runs on a Clock: the outage lasts until the test moves it."""

    def setUp(self):
        from tests.fixtures.pgserver import postgres_database

        self.url, self.db = postgres_database(self, reactor)
        self.clock = Clock()
        self.clock.advance(START)
        self.bus = PostgresBus(self.url, self.db, reactor, clock=self.clock)
        self.metrics = Metrics(process=False)
        self.metrics.watch_cluster(self.bus, clock=self.clock)
        self.health = HealthChecks(self.db, None, self.clock, bus=self.bus)
        self.bus.startService()
        self.addCleanup(self.bus.stopService)

    def v(self, name, **labels):
        return value(self.metrics, name, **labels)

    def terminate_the_bus(self) -> int:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                " WHERE datname = current_database() AND application_name = %s",
                                (listen.APPLICATION_NAME,)).fetchone()[0]

    @coro
    async def test_the_gauges_follow_a_terminated_backend_and_its_return(self):
        await eventually(lambda: self.v("zmirror_cluster_bus_connected") == 1, what="listening")
        self.assertEqual(self.health.bus_state(self.clock.seconds()), {"bus": "connected"})
        self.clock.advance(30)
        self.assertEqual(self.v("zmirror_cluster_bus_last_connect_age_seconds"), 30)
        self.assertEqual(self.v("zmirror_cluster_bus_reconnects_total"), 0)
        self.assertEqual(self.v("zmirror_cluster_bus_connect_failures_total"), 0)
        self.assertEqual(self.terminate_the_bus(), 1)
        await eventually(lambda: self.v("zmirror_cluster_bus_connected") == 0, timeout=10,
                         what="the loss noticed")
        self.assertEqual(self.v("zmirror_cluster_bus_connect_failures_total"), 1)
        # the retry waits for the backoff on the clock: the outage lasts
        self.clock.advance(BACKOFF_FIRST / 2)
        self.assertEqual(self.v("zmirror_cluster_bus_disconnected_seconds"), BACKOFF_FIRST / 2)
        self.assertEqual(self.v("zmirror_cluster_bus_last_connect_age_seconds"),
                         30 + BACKOFF_FIRST / 2)
        state = self.health.bus_state(self.clock.seconds())
        self.assertTrue(state["bus"].startswith("disconnected since 1970-01-02T"), state)
        self.assertEqual(state["bus_disconnected_seconds"], 0)
        self.clock.advance(BACKOFF_FIRST / 2)  # the backoff is over: the thread tries again
        await eventually(lambda: self.v("zmirror_cluster_bus_connected") == 1, timeout=10,
                         what="listening again")
        self.assertEqual(self.v("zmirror_cluster_bus_reconnects_total"), 1)
        self.assertEqual(self.v("zmirror_cluster_bus_disconnected_seconds"), 0)
        self.assertEqual(self.v("zmirror_cluster_bus_last_connect_age_seconds"), 0)
        self.assertEqual(self.health.bus_state(self.clock.seconds()), {"bus": "connected"})


class PostgresWiringTests(unittest.TestCase):
    @coro
    async def test_a_wired_node_exports_the_cluster_series_and_readyz_reports_the_bus(self):
        from tests.fixtures.pgserver import fresh_database
        from zmirror.tap import Options, makeService

        url = fresh_database(self)
        data = Path(self.mktemp()).resolve() / "data"
        write_default_config(data)
        cfg = data / "config.toml"
        line = '# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"'
        cfg.write_text(cfg.read_text().replace(line, f'url = "{url}"'))
        opts = Options()
        opts.parseOptions(["--data", str(data), "--listen", "tcp:0:interface=127.0.0.1"])
        top = makeService(opts, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        c = top.components
        m = c.metrics
        await eventually(lambda: value(m, "zmirror_cluster_bus_connected") == 1, what="listening")
        names = cluster_names(m)
        for name in ("zmirror_cluster_bus_reconnects_total", "zmirror_cluster_bus_events_published_total",
                     "zmirror_cluster_bus_events_received_total", "zmirror_cluster_lockout_queue_depth",
                     "zmirror_cluster_lockout_dropped_total", "zmirror_cluster_lockout_ignored_total",
                     "zmirror_cluster_upstream_state_published_total"):
            self.assertIn(name, names)
        ready, checks, reasons = await c.health.check()
        self.assertEqual(checks["bus"], "connected")
        self.assertNotIn("bus", " ".join(reasons))


# --- one process per [cache] dir ------------------------------------------------------------

HOLDER = """
import sys, time
from zmirror.cache.dirlock import CacheDirLock
lock = CacheDirLock.take(sys.argv[1])
print("locked" if lock.held else "not held", flush=True)
time.sleep(600)
"""


class CacheDirLockTests(unittest.TestCase):
    def setUp(self):
        self.dir = Path(self.mktemp()).resolve() / "cache"

    def test_a_second_holder_is_refused_with_one_clear_line(self):
        first = CacheDirLock.take(self.dir)
        self.addCleanup(first.release)
        self.assertTrue(first.held)
        with self.assertRaises(CacheDirInUse) as e:
            CacheDirLock.take(self.dir)
        msg = str(e.exception)
        self.assertIn(str(self.dir), msg)
        self.assertIn("each node needs its own [cache] dir", msg)
        self.assertIn(f"(pid {os.getpid()})", msg)
        self.assertNotIn("\n", msg)
        from zmirror.config import ConfigError

        self.assertIsInstance(e.exception, ConfigError)  # exits at start like config errors
        self.assertEqual(stat.S_IMODE(os.stat(self.dir).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.dir / LOCK_FILE).st_mode), 0o600)

    def test_taken_again_after_release(self):
        first = CacheDirLock.take(self.dir)
        first.release()
        first.release()  # twice is harmless
        self.assertFalse(first.held)
        again = CacheDirLock.take(self.dir)
        self.addCleanup(again.release)
        self.assertTrue(again.held)

    def test_a_killed_holder_leaves_no_stale_lock(self):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        child = subprocess.Popen([sys.executable, "-c", HOLDER, str(self.dir)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: child.poll() is None and (child.kill(), child.wait()))
        line = child.stdout.readline().decode().strip()
        self.assertEqual(line, "locked", child.stderr.read().decode() if not line else line)
        with self.assertRaises(CacheDirInUse) as e:
            CacheDirLock.take(self.dir)
        self.assertIn(f"(pid {child.pid})", str(e.exception))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stderr.close()
        after = CacheDirLock.take(self.dir)  # the kernel let it go: nothing to clean up
        self.addCleanup(after.release)
        self.assertTrue(after.held)

    def test_the_cache_service_releases_it_at_stop_and_takes_it_again_at_start(self):
        from zmirror.cache.upkeep import CacheUpkeep

        blobs = FailingCache()
        blobs.dir_lock = CacheDirLock.take(self.dir)
        self.addCleanup(blobs.dir_lock.release)
        upkeep = CacheUpkeep(blobs, None, Clock())
        upkeep.start()
        self.successResultOf(upkeep.stop())  # after the last index write
        self.assertEqual(blobs.flushes, 1)
        self.assertFalse(blobs.dir_lock.held)
        other = CacheDirLock.take(self.dir)  # free for the next process
        with self.assertRaises(CacheDirInUse):
            upkeep.start()  # started again while another holds it: refused
        other.release()
        upkeep.start()
        self.assertTrue(blobs.dir_lock.held)
        self.successResultOf(upkeep.stop())

    def test_the_pid_is_rewritten_by_the_process_that_starts_the_service(self):
        # twistd builds the service (takes the lock), then forks the daemon that starts it
        lock = CacheDirLock.take(self.dir)
        self.addCleanup(lock.release)
        self.assertEqual((self.dir / LOCK_FILE).read_text(), f"{os.getpid()}\n")
        self.patch(dirlock.os, "getpid", lambda: 4242)
        lock.acquire()
        self.assertEqual((self.dir / LOCK_FILE).read_text(), "4242\n")
        with self.assertRaises(CacheDirInUse) as e:
            CacheDirLock.take(self.dir)
        self.assertIn("(pid 4242)", str(e.exception))

    def test_a_file_system_without_locks_is_logged_not_fatal(self):
        import errno

        def no_locks(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

        self.patch(dirlock.fcntl, "flock", no_locks)
        cap = Captured(self)
        lock = CacheDirLock.take(self.dir)
        self.assertFalse(lock.held)
        self.assertTrue([t for t in cap.texts() if "cannot lock" in t and str(self.dir) in t],
                        cap.texts())


class WiredCacheDirTests(unittest.TestCase):
    """Two nodes whose configs name the same ``[cache] dir`` (an absolute path, or an
    earlier version's ``./data/cache`` read against the data dirs' common parent): the
    easy mistake."""

    def setUp(self):
        from zmirror.tap import Options

        self.parent = Path(self.mktemp()).resolve()
        self.opts = []
        for name in ("node1", "node2"):
            data = self.parent / name
            write_default_config(data, {'dir = "cache"': f'dir = "{self.parent / "cache"}"'})
            opts = Options()
            opts.parseOptions(["--data", str(data), "--listen", "tcp:0:interface=127.0.0.1"])
            self.opts.append(opts)

    @coro
    async def test_the_second_node_exits_at_start_and_a_restart_after_the_first_stopped_works(self):
        from zmirror.tap import makeService

        first = makeService(self.opts[0], reactor)
        first.startService()
        stopped = []

        async def stop():
            if not stopped:
                stopped.append(True)
                await first.stopService()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        cache = self.parent / "cache"
        self.assertEqual(first.components.config.cache_dir, cache)
        with self.assertRaises(SystemExit) as e:
            makeService(self.opts[1], reactor)
        msg = str(e.exception.code)
        self.assertTrue(msg.startswith("zmirror: error: cache directory "), msg)
        self.assertIn(str(cache), msg)
        self.assertIn("each node needs its own [cache] dir", msg)
        self.assertNotIn("\n", msg)
        await stop()
        second = makeService(self.opts[1], reactor)
        second.startService()
        await second.stopService()
        self.assertFalse(second.components.blob_cache.dir_lock.held)
