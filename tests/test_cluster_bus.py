"""The cluster bus on PostgreSQL (zmirror.db.listen.PostgresBus): the reactor-side logic on a
Clock, then two buses on one real PostgreSQL (tests/fixtures/pgserver.py), then two wired services."""

from __future__ import annotations

import io
import json
import socket
import sys
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from tests.fixtures.fakes import FakeDB
from tests.fixtures.helpers import Captured, coro, eventually
from zmirror.cluster import RESYNC, IBus
from zmirror.db import listen
from zmirror.db.listen import BACKOFF_FIRST, BACKOFF_MAX, COALESCE, MAX_PAYLOAD, PostgresBus
from zmirror.db.watch import TABLES


class Recorder:
    """What a bus delivers: table sets, events by kind, resyncs."""

    def __init__(self, bus, *kinds):
        self.tables: list[set] = []
        self.events: list[tuple[str, dict]] = []
        self.resyncs = 0
        bus.on_tables(self.tables.append)
        bus.subscribe(RESYNC, self._resync)
        for kind in kinds:
            bus.subscribe(kind, lambda data, kind=kind: self.events.append((kind, data)))

    def _resync(self, _data):
        self.resyncs += 1

    def seen(self, table):
        return any(table in t for t in self.tables)


class ReactorSideTests(unittest.TestCase):
    """What happens on the reactor thread, driven by hand on a Clock (no thread, no server)."""

    def setUp(self):
        self.clock = Clock()
        self.db = FakeDB()
        self.bus = PostgresBus("postgresql://zmirror:s3cret-pw@db.invalid:5432/z", self.db,
                               reactor, clock=self.clock)
        self.rec = Recorder(self.bus, "k")

    def test_provides_the_interface(self):
        self.assertTrue(IBus.providedBy(self.bus))
        self.assertNotIn("s3cret-pw", repr(self.bus))

    def test_a_burst_of_table_notifications_is_one_delivery(self):
        for _ in range(10):
            self.bus._received([(listen.CHANGES, "users")] * 100)
        self.bus._received([(listen.CHANGES, "whitelists"), (listen.CHANGES, "access_logs")])
        self.assertEqual(self.rec.tables, [])
        self.clock.advance(COALESCE)
        self.assertEqual(self.rec.tables, [{"users", "whitelists"}])  # unknown names are ignored
        self.clock.advance(10 * COALESCE)
        self.assertEqual(len(self.rec.tables), 1)
        self.bus._received([(listen.CHANGES, "registries")])
        self.clock.advance(COALESCE)
        self.assertEqual(self.rec.tables, [{"users", "whitelists"}, {"registries"}])

    def test_events_of_others_are_delivered_its_own_and_bad_ones_are_dropped(self):
        mine = json.dumps({"o": self.bus.origin, "k": "k", "d": {"n": 1}})
        other = json.dumps({"o": "0123456789abcdef", "k": "k", "d": {"n": 2}})
        self.bus._received([(listen.EVENTS, mine), (listen.EVENTS, other), (listen.EVENTS, "{not json"),
                            (listen.EVENTS, json.dumps({"o": "x", "k": "k", "d": [1]})),
                            (listen.EVENTS, json.dumps([1, 2]))])
        self.assertEqual(self.rec.events, [("k", {"n": 2})])
        self.assertEqual(self.bus.dropped, 3)

    def test_an_event_nested_too_deep_is_dropped_and_the_rest_of_its_batch_delivered(self):
        other = json.dumps({"o": "0123456789abcdef", "k": "k", "d": {"n": 2}})
        deep = '{"o": "x", "k": "k", "d": ' + "[" * 3000 + "]" * 3000 + "}"  # < 8000 bytes
        self.bus._received([(listen.EVENTS, deep), (listen.EVENTS, other), (listen.CHANGES, "users")])
        self.assertEqual(self.rec.events, [("k", {"n": 2})])
        self.assertEqual(self.bus.dropped, 1)
        self.clock.advance(COALESCE)
        self.assertEqual(self.rec.tables, [{"users"}])

    def test_publish_goes_through_the_writer_and_refuses_big_payloads(self):
        self.bus.publish("k", {"n": 1})
        (sql, (payload,)), = self.db.executed
        self.assertIn("pg_notify('zmirror_events', ?)", sql)
        self.assertEqual(json.loads(payload), {"o": self.bus.origin, "k": "k", "d": {"n": 1}})
        self.assertNotIn(" ", payload)  # compact
        cap = Captured(self)
        d = self.bus.publish("k", {"blob": "é" * (MAX_PAYLOAD // 2)})  # > MAX_PAYLOAD as UTF-8
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(self.db.executed), 1)
        self.assertTrue([t for t in cap.texts() if "over the 7000 byte limit" in t], cap.texts())
        self.assertIsNone(self.successResultOf(self.bus.publish("k", {"x": float("nan")})))
        self.assertEqual(len(self.db.executed), 1)

    def test_backoff_doubles_up_to_a_bound_and_resets_on_connect(self):
        cap = Captured(self)
        delays = []
        for _ in range(12):
            self.bus._failed("connection refused")
            call = self.bus._retry
            delays.append(round(call.getTime() - self.clock.seconds(), 3))
            self.assertFalse(self.bus._go.is_set())
            self.clock.advance(delays[-1])
            self.assertTrue(self.bus._go.is_set())  # the thread may try again
            self.bus._go.clear()
        self.assertEqual(delays[:4], [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST,
                                      8 * BACKOFF_FIRST])
        self.assertEqual(max(delays), BACKOFF_MAX)
        self.assertEqual(delays[-1], BACKOFF_MAX)
        warnings = [t for t in cap.texts() if "cannot listen" in t]
        self.assertEqual(len(warnings), 1)  # once per outage, not per attempt
        self.assertIn("***", warnings[0])
        self.assertFalse([t for t in cap.texts() if "s3cret-pw" in t])
        self.bus._connected()
        self.bus._failed("lost")
        self.assertEqual(round(self.bus._retry.getTime() - self.clock.seconds(), 3), BACKOFF_FIRST)

    def test_every_connect_resyncs_every_table(self):
        self.bus._connected()
        self.assertEqual((self.rec.resyncs, self.rec.tables), (1, [set(TABLES)]))
        self.bus._failed("terminated")
        self.clock.advance(BACKOFF_FIRST)
        self.bus._connected()
        self.assertEqual((self.rec.resyncs, self.rec.tables), (2, [set(TABLES), set(TABLES)]))
        self.assertEqual(self.bus.connects, 2)

    def test_nothing_is_delivered_after_stop(self):
        self.bus._received([(listen.CHANGES, "users")])
        self.bus.stopService()
        self.clock.advance(COALESCE)
        self.bus._received([(listen.CHANGES, "users")])
        self.bus._connected()
        self.bus._failed("x")
        self.clock.advance(BACKOFF_MAX)
        self.assertEqual((self.rec.tables, self.rec.resyncs), ([], 0))
        self.assertIsNone(self.bus._retry)


class PostgresBusTests(unittest.TestCase):
    """Two buses (two "nodes") on one real PostgreSQL database."""

    def setUp(self):
        from tests.fixtures.pgserver import postgres_database

        self.url, self.db = postgres_database(self, reactor)
        self.a = PostgresBus(self.url, self.db, reactor)
        self.b = PostgresBus(self.url, self.db, reactor)
        self.ra = Recorder(self.a, "hello", "mark")
        self.rb = Recorder(self.b, "hello", "mark")
        for bus in (self.a, self.b):
            bus.startService()
        # cleanups run last-in first-out: the buses stop, then the pools close, then the
        # database is dropped (postgres_database's cleanups, added first)
        self.addCleanup(self.b.stopService)
        self.addCleanup(self.a.stopService)

    def other(self):
        """Another client of the database (the CLI, another node's writer)."""
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True)
        self.addCleanup(conn.close)
        return conn

    async def listening(self):
        await eventually(lambda: self.a.connects >= 1 and self.b.connects >= 1, what="listening")

    @coro
    async def test_an_event_reaches_the_other_bus_and_not_itself(self):
        await self.listening()
        await self.a.publish("hello", {"from": "a", "n": [1, 2]})
        await eventually(lambda: self.rb.events, what="b hearing a")
        self.assertEqual(self.rb.events, [("hello", {"from": "a", "n": [1, 2]})])
        # b answers; once a hears it, a's own echo (sent before) has long been read
        await self.b.publish("mark", {"from": "b"})
        await eventually(lambda: self.ra.events, what="a hearing b")
        self.assertEqual(self.ra.events, [("mark", {"from": "b"})])
        self.assertEqual(self.rb.events, [("hello", {"from": "a", "n": [1, 2]})])

    @coro
    async def test_a_user_written_by_another_client_is_a_users_change(self):
        await self.listening()
        await eventually(lambda: self.rb.tables, what="the first resync")
        self.rb.tables.clear()
        self.other().execute("INSERT INTO users (username, password_hash, created_at, updated_at)"
                             " VALUES ('ivan', 'x', 1, 1)")
        await eventually(lambda: self.rb.seen("users"), timeout=2.0, what="users change")
        self.assertEqual(self.rb.tables, [{"users"}])

    @coro
    async def test_a_login_timestamp_is_no_change(self):
        await self.listening()
        await eventually(lambda: self.ra.tables, what="the first resync")
        self.ra.tables.clear()
        conn = self.other()
        conn.execute("INSERT INTO users (username, password_hash, created_at, updated_at)"
                     " VALUES ('ivan', 'x', 1, 1)")
        await eventually(lambda: self.ra.seen("users"), what="insert")
        self.ra.tables.clear()
        conn.execute("UPDATE users SET last_login_at = 5 WHERE username = 'ivan'")
        # a marker after it: when the marker is heard, the update would have been too
        conn.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('team', 1, 1)")
        await eventually(lambda: self.ra.seen("whitelists"), what="the marker")
        self.assertFalse(self.ra.seen("users"), self.ra.tables)
        conn.execute("UPDATE users SET enabled = 0, updated_at = 2 WHERE username = 'ivan'")
        await eventually(lambda: self.ra.seen("users"), what="disable")

    @coro
    async def test_a_burst_of_writes_is_coalesced(self):
        await self.listening()
        await eventually(lambda: self.ra.tables, what="the first resync")
        self.ra.tables.clear()
        conn = self.other()
        # a thousand separate commits (the reactor waits meanwhile: they are all sent
        # before the bus can deliver anything)
        for i in range(1000):
            conn.execute("INSERT INTO users (username, password_hash, created_at, updated_at)"
                         " VALUES (%s, 'x', 1, 1)", (f"u{i}",))
        await eventually(lambda: self.ra.seen("users"), what="the burst")
        await deferLater(reactor, 3 * COALESCE, lambda: None)  # anything left over
        self.assertLessEqual(len(self.ra.tables), 3, self.ra.tables)
        self.assertEqual(set().union(*self.ra.tables), {"users"})

    @coro
    async def test_reconnects_and_resyncs_after_the_backends_are_killed(self):
        await self.listening()
        await eventually(lambda: self.ra.resyncs == 1, what="the first resync")
        self.ra.tables.clear()
        conn = self.other()
        killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                              " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                              ).fetchone()[0]
        self.assertGreaterEqual(killed, 2)  # both buses' connections (and the pools')
        # a change while nobody listens is covered by the resync
        conn.execute("INSERT INTO registries (name, url, created_at, updated_at)"
                     " VALUES ('b', 'https://b.test', 1, 1)")
        await eventually(lambda: self.a.connects >= 2 and self.b.connects >= 2, timeout=10,
                         what="reconnect")
        await eventually(lambda: self.ra.resyncs == 2, what="the resync")
        self.assertIn(set(TABLES), self.ra.tables)  # every store is re-read
        self.assertGreaterEqual(self.a.failures, 1)
        self.ra.tables.clear()
        conn.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('x', 1, 1)")
        await eventually(lambda: self.ra.seen("whitelists"), what="listening again")

    @coro
    async def test_stop_ends_the_thread_and_closes_the_connection(self):
        await self.listening()
        thread = self.a._thread
        await self.a.stopService()
        self.assertFalse(thread.is_alive())
        rows = self.other().execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                                    " AND datname = current_database()",
                                    (listen.APPLICATION_NAME,)).fetchone()[0]
        self.assertEqual(rows, 1)  # b's only

    @coro
    async def test_stopped_and_started_again_it_listens_again(self):
        await self.listening()
        first = self.a._thread
        await self.a.stopService()
        self.a.startService()
        await eventually(lambda: self.a.connects >= 2, what="listening again")
        self.assertFalse(first.is_alive())
        self.ra.events.clear()
        await self.b.publish("hello", {"n": 3})
        await eventually(lambda: self.ra.events, what="a hearing b")
        self.assertEqual(self.ra.events, [("hello", {"n": 3})])


class UnreachableTests(unittest.TestCase):
    def silent_server(self) -> int:
        """A port that accepts TCP connections and never answers (a hung server)."""
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        self.addCleanup(s.close)
        return s.getsockname()[1]

    @coro
    async def test_stop_does_not_wait_for_a_hanging_connect(self):
        port = self.silent_server()
        bus = PostgresBus(f"postgresql://zmirror:pw-9@127.0.0.1:{port}/z", FakeDB(), reactor)
        bus.startService()
        await eventually(lambda: bus._thread is not None and not bus._go.is_set(), what="connecting")
        await bus.stopService()
        # the stop timeout let it go; the connect (10 s timeout) is still blocked
        self.assertTrue(bus._thread.is_alive())
        self.assertEqual(bus.connects, 0)

    @coro
    async def test_a_wrong_password_is_retried_and_never_logged(self):
        from tests.fixtures.pgserver import fresh_database

        url = fresh_database(self)
        bad = url.replace(":pg-test-secret@", ":Wrong-Secret-77@")
        self.assertNotEqual(bad, url)
        cap = Captured(self)
        bus = PostgresBus(bad, FakeDB(), reactor)
        bus.startService()
        self.addCleanup(bus.stopService)
        await eventually(lambda: bus.failures >= 2, timeout=10, what="two failed connects")
        self.assertEqual(bus.connects, 0)
        texts = cap.texts()
        self.assertTrue([t for t in texts if "cannot listen on" in t and "***" in t], texts)
        self.assertFalse([t for t in texts if "Wrong-Secret-77" in t], texts)


class WiredServicesTests(unittest.TestCase):
    """Two whole services (makeService) on one PostgreSQL database."""

    def setUp(self):
        from tests.fixtures.pgserver import fresh_database
        from tests.fixtures.helpers import write_default_config
        from zmirror.tap import Options, makeService

        self.url = fresh_database(self)
        self.nodes = []
        for name in ("a", "b"):
            data = Path(self.mktemp()).resolve() / name
            write_default_config(data)
            cfg = data / "config.toml"
            line = '# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"'
            cfg.write_text(cfg.read_text().replace(line, f'url = "{self.url}"'))
            opts = Options()
            opts.parseOptions(["--data", str(data), "--listen", "tcp:0:interface=127.0.0.1"])
            top = makeService(opts, reactor)
            top.data = data
            top.startService()
            self.addCleanup(top.stopService)
            self.nodes.append(top)

    async def started(self):
        for top in self.nodes:
            bus = top.components.bus
            changes = top.components.table_changes
            await eventually(lambda: bus.connects >= 1 and changes.refreshes >= 1, what="listening")
            await changes.wait()

    @coro
    async def test_wired_with_the_postgres_bus(self):
        a = self.nodes[0].components
        self.assertIsInstance(a.bus, PostgresBus)
        self.assertIn(a.bus, list(self.nodes[0]))
        self.assertIsNone(a.db_watch)
        self.assertIs(a.upstream_sharing.bus, a.bus)

    @coro
    async def test_a_user_created_on_one_node_reaches_the_other(self):
        await self.started()
        a, b = (top.components for top in self.nodes)
        row = await a.access.accounts.create("ivan", "ivan-password-1")
        start = time.monotonic()
        await eventually(lambda: b.access.users._by_id and row["id"] in b.access.users._by_id,
                         timeout=2.0, what="the user on node b")
        self.assertLess(time.monotonic() - start, 2.0)
        self.assertTrue((await b.access.users.auth_user(row["id"]))["enabled"])
        await a.access.accounts.update(row["id"], enabled=False)
        await eventually(lambda: not b.access.users._by_id[row["id"]]["enabled"], timeout=2.0,
                         what="disabled on node b")

    @coro
    async def test_the_cli_against_postgresql_reaches_a_running_node(self):
        from zmirror import cli
        from zmirror.cli import users as cli_users
        from zmirror.auth.passwords import fast_context

        await self.started()
        b = self.nodes[1].components
        self.patch(cli_users, "_hash_user_password", lambda pw: fast_context().hash(pw))
        self.patch(sys, "stdout", io.StringIO())
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.patch(sys, "stdin", io.StringIO("pw-of-ivan\n"))
        self.assertEqual(cli.main(["--data", str(self.nodes[0].data), "user", "add", "ivan", "--stdin"]),
                         0)
        await eventually(lambda: any(u["username"] == "ivan" for u in b.access.users._by_id.values()),
                         timeout=2.0, what="the CLI's user on node b")
        self.assertIn("within 2 s", stderr.getvalue())
        self.assertNotIn("send the running servers SIGHUP", stderr.getvalue())

    @coro
    async def test_an_upstream_cooldown_on_one_node_shows_on_the_other(self):
        from zmirror.upstream.health import FAILURES_BEFORE_COOLDOWN

        await self.started()
        a, b = (top.components for top in self.nodes)
        hub_a = a.upstreams.upstreams[0]
        for _ in range(FAILURES_BEFORE_COOLDOWN):
            a.upstreams.health.mark_failed(hub_a, "cannot connect to registry-1.docker.io")
        self.assertEqual(a.upstreams.health.report()[hub_a.id]["state"], "cooldown")
        # the cool-down goes out once the publish interval (1 s) is over
        await eventually(lambda: b.upstreams.health.report()[hub_a.id]["state"] == "cooldown",
                         timeout=3.0, what="the cool-down on node b")
        self.assertEqual(b.upstreams.upstreams[0].health.cooldown_until, hub_a.health.cooldown_until)
        rows = await b.db.query("SELECT upstream, node FROM upstream_state")
        self.assertEqual(rows, [{"upstream": str(hub_a.id), "node": a.bus.origin}])
