"""The node list: every node's heartbeat row in ``cluster_nodes`` (zmirror/nodes.py) and
``GET /api/nodes``, on SQLite and on a real PostgreSQL (tests/fixtures/pgserver.py): the heartbeat
on an injected clock, a clean stop, a silent node ageing to stale and being pruned by one
node at a time, a duplicate node name, the API's bounds and query checks, and two wired
nodes on one database."""

from __future__ import annotations

import json
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.fakes import FakeBus
from tests.fixtures.helpers import (
    Captured,
    admin_password_line,
    coro,
    eventually,
    start_services,
    write_default_config,
)
from tests.fixtures.pgserver import on_postgresql, temp_database
from tests.fixtures.admin import ADMIN, AdminTestMixin, basic
from zmirror import __version__
from zmirror.cluster import LocalBus
from zmirror.db.schema import latest_version
from zmirror.nodes import (
    HEARTBEAT,
    MAX_ROWS,
    NODE_PRUNE,
    RETENTION,
    STALE_AFTER,
    NodeHeartbeat,
    endpoint_address,
    node_state,
)

T0 = 1_700_000_000.0


class FakeCache:
    def __init__(self, size=3 * 2**20, entries=7, max_size=2**30):
        self.figures = {"size": size, "entries": entries, "max_size": max_size, "hits": 0}

    def summary(self):
        return dict(self.figures)


class PureTests(unittest.TestCase):
    def test_endpoint_address(self):
        self.assertEqual(endpoint_address("tcp:8081:interface=127.0.0.1"), "127.0.0.1:8081")
        self.assertEqual(endpoint_address("tcp:8080"), "0.0.0.0:8080")
        self.assertEqual(endpoint_address("tcp:8080:interface=\\:\\:1"), "[::1]:8080")
        self.assertEqual(endpoint_address("tcp:8080:backlog=50:interface=10.0.0.2"), "10.0.0.2:8080")
        for other in ("unix:/run/z.sock", "", "ssl:443:privateKey=k.pem", "tcp:x"):
            self.assertEqual(endpoint_address(other), "", other)

    def test_state_of_a_row(self):
        row = {"last_seen": T0, "stopped_at": None}
        self.assertEqual(node_state(row, T0 + STALE_AFTER), "up")
        self.assertEqual(node_state(row, T0 + STALE_AFTER + 0.5), "stale")
        self.assertEqual(node_state(row, T0 - 3), "up")  # a writer whose clock is ahead
        self.assertEqual(node_state(dict(row, stopped_at=T0), T0), "stopped")
        self.assertEqual(STALE_AFTER, 3 * HEARTBEAT)


class HeartbeatTests(unittest.TestCase):
    """Real pools (SQLite here, PostgreSQL in the subclass); the heartbeat on a Clock."""

    def setUp(self):
        self.db = temp_database(self)
        self.clock = Clock()
        self.clock.advance(T0)
        self.log = Captured(self)

    def heartbeat(self, node="node-a", **kw) -> NodeHeartbeat:
        kw.setdefault("bus", LocalBus())
        hb = NodeHeartbeat(self.db, self.clock, node=node, **kw)
        self.addCleanup(lambda: hb.stopService() if hb.running else None)
        return hb

    async def rows(self, hb) -> dict:
        return {r["node"]: r for r in (await hb.listing())["items"]}

    def warnings(self) -> list[str]:
        return [t for t in self.log.texts() if "is used by another running zmirror process" in t]

    @coro
    async def test_a_row_every_heartbeat_and_stopped_at_a_clean_stop(self):
        bus = LocalBus()
        hb = self.heartbeat(bus=bus, cache=FakeCache(), address="127.0.0.1:8081")
        hb.startService()  # the first heartbeat at once
        await hb.settled()
        rows = await self.rows(hb)
        self.assertEqual(list(rows), ["node-a"])
        r = rows["node-a"]
        self.assertEqual((r["state"], r["self"], r["instance"], r["version"], r["schema"]),
                         ("up", True, bus.origin, __version__, latest_version()))
        self.assertEqual((r["started_at"], r["last_seen"], r["stopped_at"]), (T0, T0, None))
        self.assertEqual(r["bus"], {"state": "local", "since": None})
        self.assertEqual(r["cache"], {"bytes": 3 * 2**20, "blobs": 7, "max_bytes": 2**30})
        self.assertEqual(r["address"], "127.0.0.1:8081")
        self.assertFalse(r["conflict"])
        self.clock.advance(HEARTBEAT / 2)  # between two heartbeats: nothing written
        await hb.settled()
        self.assertEqual(hb.beats, 1)
        self.clock.advance(HEARTBEAT / 2)
        await hb.settled()
        self.assertEqual(hb.beats, 2)
        r = (await self.rows(hb))["node-a"]
        self.assertEqual((r["started_at"], r["last_seen"]), (T0, T0 + HEARTBEAT))
        await hb.stopService()
        r = (await self.rows(hb))["node-a"]
        self.assertEqual((r["state"], r["stopped_at"]), ("stopped", T0 + HEARTBEAT))
        self.clock.advance(HEARTBEAT * 5)  # the loop is gone
        self.assertEqual(hb.beats, 2)
        # started again (same process): up, the stop mark cleared
        hb.startService()
        await hb.settled()
        r = (await self.rows(hb))["node-a"]
        self.assertEqual((r["state"], r["stopped_at"], r["started_at"]),
                         ("up", None, T0 + 6 * HEARTBEAT))

    @coro
    async def test_a_stop_while_the_pools_close_does_not_hang(self):
        """Stopped together with the pools (a plain MultiService stops its children at
        once): the stop mark is asked for before they close, and nothing the heartbeat
        in flight would still write is waited for (a write asked for after the close
        never answers)."""
        from twisted.application.service import MultiService
        from zmirror.service import CallbackService

        top = MultiService()
        CallbackService(stop=self.db.close).setServiceParent(top)
        hb = self.heartbeat("node-a")
        hb.setServiceParent(top)
        top.startService()
        self.assertIsNotNone(hb._inflight)  # the first heartbeat is on the writer thread
        stopped = top.stopService()
        stopped.addTimeout(10, reactor)  # a hang fails here, not after trial's 120 s
        results = await stopped  # a DeferredList: a cancelled child is (False, CancelledError)
        self.assertEqual([ok for ok, _ in results], [True, True], results)
        self.assertEqual(hb.failures, 0)

    @coro
    async def test_the_bus_state_is_written(self):
        bus = FakeBus(connected=True, since=T0 - 5)
        hb = self.heartbeat(bus=bus)
        await hb.beat()
        self.assertEqual((await self.rows(hb))["node-a"]["bus"],
                         {"state": "connected", "since": T0 - 5})
        self.assertEqual((await self.rows(hb))["node-a"]["instance"], bus.origin)
        bus.connected, bus.disconnected_since = False, T0 + 1
        await hb.beat()
        self.assertEqual((await self.rows(hb))["node-a"]["bus"],
                         {"state": "disconnected", "since": T0 + 1})

    @coro
    async def test_a_silent_node_ages_to_stale_and_is_pruned(self):
        old = self.heartbeat("node-old")
        await old.beat()  # then it dies: no stop mark
        hb = self.heartbeat("node-a")
        hb.startService()
        await hb.settled()
        self.clock.advance(3 * HEARTBEAT)
        await hb.settled()
        rows = await self.rows(hb)
        self.assertEqual({n: r["state"] for n, r in rows.items()}, {"node-a": "up", "node-old": "up"})
        self.clock.advance(HEARTBEAT)
        await hb.settled()
        rows = await self.rows(hb)
        self.assertEqual({n: r["state"] for n, r in rows.items()},
                         {"node-a": "up", "node-old": "stale"})
        self.assertEqual(rows["node-old"]["last_seen"], T0)
        # a week later the next pruning pass of node-a removes it
        self.clock.advance(RETENTION)
        await hb.settled()
        self.assertEqual(list(await self.rows(hb)), ["node-a"])
        self.assertEqual(hb.pruned, 1)
        self.assertTrue(any("removed 1 node row(s) not seen for 7 days" in t for t in self.log.texts()))

    @coro
    async def test_two_processes_with_one_name_are_warned_once_each(self):
        a = self.heartbeat("dup", bus=LocalBus())
        b = self.heartbeat("dup", bus=LocalBus())
        await a.beat()
        await b.beat()  # b's first write: a's row could be its own earlier process's
        self.assertEqual(self.warnings(), [])
        await a.beat()  # a finds b's instance where it had written its own
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn(b.instance, self.warnings()[0])
        self.assertIn("'dup'", self.warnings()[0])
        self.assertIn("[server] node", self.warnings()[0])
        await b.beat()
        self.assertEqual(len(self.warnings()), 2)
        self.assertIn(a.instance, self.warnings()[1])
        for _ in range(3):
            self.clock.advance(HEARTBEAT)
            await a.beat()
            await b.beat()
        self.assertEqual(len(self.warnings()), 2)  # once per process
        self.assertEqual((a.other_instance, b.other_instance), (b.instance, a.instance))
        self.assertEqual((a.conflicts, b.conflicts), (4, 4))
        row = (await self.rows(a))["dup"]
        self.assertTrue(row["conflict"])
        self.assertEqual(row["instance"], b.instance)
        # a's clean stop leaves b's row alone: b is still running
        await a.stopService()
        self.assertEqual((await self.rows(a))["dup"]["state"], "up")
        # once b is alone the conflict fades after three heartbeats
        for _ in range(4):
            self.clock.advance(HEARTBEAT)
            await b.beat()
        self.assertFalse((await self.rows(b))["dup"]["conflict"])
        self.assertEqual(len(self.warnings()), 2)

    @coro
    async def test_a_restart_is_no_conflict(self):
        first = self.heartbeat("node-r")
        await first.beat()  # then it is killed
        second = self.heartbeat("node-r")
        for _ in range(3):
            self.clock.advance(HEARTBEAT)
            await second.beat()
        self.assertEqual(self.warnings(), [])
        row = (await self.rows(second))["node-r"]
        self.assertEqual((row["instance"], row["conflict"], row["state"]),
                         (second.instance, False, "up"))

    @coro
    async def test_the_list_is_bounded_and_sorted(self):
        def fill(txn):
            txn.executemany(
                "INSERT INTO cluster_nodes (node, instance, started_at, last_seen) VALUES (?, ?, ?, ?)",
                [(f"n{i:05d}", "x", T0, T0) for i in range(MAX_ROWS + 5, 0, -1)])

        await self.db.write(fill)
        hb = self.heartbeat("n00003")
        await hb.beat()
        out = await hb.listing()
        self.assertEqual(len(out["items"]), MAX_ROWS)
        self.assertEqual((out["total"], out["truncated"], out["self"]), (MAX_ROWS + 5, True, "n00003"))
        names = [r["node"] for r in out["items"]]
        self.assertEqual(names, sorted(names))
        self.assertEqual(names[0], "n00001")
        self.assertEqual([r["node"] for r in out["items"] if r["self"]], ["n00003"])

    @coro
    async def test_a_database_outage_is_logged_once_and_the_heartbeat_goes_on(self):
        hb = self.heartbeat("node-a")
        real = self.db.write
        calls = []

        def broken(f, *a, **kw):
            calls.append(f)
            from twisted.internet.defer import fail

            return fail(RuntimeError("connection refused"))

        self.db.write = broken
        hb.startService()
        await hb.settled()
        self.clock.advance(HEARTBEAT)
        await hb.settled()
        self.assertEqual((hb.failures, hb.beats), (2, 0))
        lines = [t for t in self.log.texts() if "cannot write node 'node-a'" in t]
        self.assertEqual(len(lines), 1)
        self.assertIn("connection refused", lines[0])
        self.db.write = real
        self.clock.advance(HEARTBEAT)
        await hb.settled()
        self.assertEqual(hb.beats, 1)
        self.assertEqual((await self.rows(hb))["node-a"]["last_seen"], T0 + 2 * HEARTBEAT)
        self.assertTrue(any("written again" in t for t in self.log.texts()))


HeartbeatPostgresTests = on_postgresql(HeartbeatTests)


class PruneLockPostgresTests(unittest.TestCase):
    """Pruning takes the advisory lock: a node that finds it held skips the round."""

    backend = "postgresql"

    @coro
    async def test_one_node_at_a_time(self):
        import psycopg

        db = temp_database(self)
        clock = Clock()
        clock.advance(T0)
        old = NodeHeartbeat(db, clock, node="node-old", bus=LocalBus())
        await old.beat()
        clock.advance(RETENTION + 1)
        a = NodeHeartbeat(db, clock, node="node-a", bus=LocalBus())
        with psycopg.connect(db.url, autocommit=True) as other:  # another node pruning
            self.assertTrue(other.execute("SELECT pg_try_advisory_lock(%s)", (NODE_PRUNE,)).fetchone()[0])
            self.assertIsNone(await a.prune())
            self.assertEqual([r["node"] for r in (await a.listing())["items"]], ["node-old"])
            other.execute("SELECT pg_advisory_unlock(%s)", (NODE_PRUNE,))
        self.assertEqual(await a.prune(), 1)
        self.assertEqual((await a.listing())["items"], [])
        self.assertFalse(a._prune_lock.held)


class NodesApiTests(AdminTestMixin, unittest.TestCase):
    """``GET /api/nodes`` through the admin API (SQLite; PostgreSQL in the subclass)."""

    def setUp(self):
        super().setUp()
        self.hb = NodeHeartbeat(self.db, self.clock, node="node-b", bus=LocalBus(),
                                cache=FakeCache(), address="0.0.0.0:8080")
        self.api = self.make_api(nodes=self.hb)
        self.client = self.stub(self.api)

    @coro
    async def test_the_nodes_with_their_state(self):
        other = NodeHeartbeat(self.db, self.clock, node="node-a", bus=LocalBus())
        gone = NodeHeartbeat(self.db, self.clock, node="node-c", bus=LocalBus())
        await other.beat()
        await gone.beat()
        await gone.stopService()
        self.clock.advance(STALE_AFTER + 1)
        await self.hb.beat()
        code, _headers, obj = await self.call("GET", "/api/nodes")
        self.assertEqual(code, 200, obj)
        self.assertEqual((obj["self"], obj["now"], obj["heartbeat"], obj["total"], obj["truncated"]),
                         ("node-b", T0 + STALE_AFTER + 1, HEARTBEAT, 3, False))
        self.assertEqual([(r["node"], r["state"], r["self"]) for r in obj["items"]],
                         [("node-a", "stale", False), ("node-b", "up", True),
                          ("node-c", "stopped", False)])
        b = obj["items"][1]
        self.assertEqual((b["version"], b["address"], b["cache"]["blobs"], b["bus"]["state"]),
                         (__version__, "0.0.0.0:8080", 7, "local"))
        self.assertIsNone(obj["items"][0]["cache"])
        self.assertEqual(obj["items"][2]["stopped_at"], T0)
        text = json.dumps(obj)
        self.assertNotIn(ADMIN[1], text)

    @coro
    async def test_admin_only(self):
        await self.hb.beat()
        self.assertError(await self.call("GET", "/api/nodes", auth=False), 401)
        self.assertError(await self.call("GET", "/api/nodes", auth=basic("admin", "wrong")), 401)

    @coro
    async def test_query_parameters_are_refused(self):
        await self.hb.beat()
        for qs, field in (("state=up", "state"), ("limit=5000", "limit"), ("%ff=1", "?"),
                          ("x=1&x=2", "x")):
            obj = self.assertError(await self.call("GET", "/api/nodes?" + qs), 400, field)
            self.assertIn("invalid query", obj["error"])
        self.assertError(await self.call("POST", "/api/nodes", {}), 405)
        self.assertError(await self.call("DELETE", "/api/nodes"), 405)

    @coro
    async def test_without_a_heartbeat_the_list_is_empty(self):
        await self.hb.beat()
        self.client = self.stub(self.make_api(nodes=None))  # an API built without one knows of no row
        code, _headers, obj = await self.call("GET", "/api/nodes")
        self.assertEqual(code, 200, obj)
        self.assertEqual((obj["items"], obj["total"], obj["self"], obj["now"]),
                         ([], 0, self.config.server.node, T0))


NodesApiPostgresTests = on_postgresql(NodesApiTests)


# --- wired nodes -------------------------------------------------------------------------------

ADMIN_PW = "Nodes-admin-pw-1"


class WiredNodesTests(unittest.TestCase):
    """Nodes built by zmirror.wiring.build, over real sockets."""

    backend = "sqlite"

    def setUp(self):
        self.url = None
        if self.backend == "postgresql":
            from tests.fixtures.pgserver import fresh_database

            self.url = fresh_database(self)
        self.nodes = {}

    async def start(self, name: str) -> dict:
        from zmirror.config import load_config
        from zmirror.wiring import build

        data = Path(self.mktemp()).resolve() / "data"  # its own parent: its own cache dir
        repl = {**admin_password_line(ADMIN_PW), '# node = "mirror-1"': f'node = "{name}"'}
        if self.url:
            repl['# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"'] = f'url = "{self.url}"'
        write_default_config(data, repl)
        components = build(load_config(data), reactor)
        top = start_services(components)
        port = reactor.listenTCP(0, components.site, interface="127.0.0.1")
        node = {"c": components, "top": top, "port": port, "stopped": False,
                "base": f"http://127.0.0.1:{port.getHost().port}"}

        async def stop():
            if not node["stopped"]:
                node["stopped"] = True
                await port.stopListening()
                await top.stopService()

        node["stop"] = stop
        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        self.nodes[name] = node
        await components.nodes.settled()
        return node

    async def get_nodes(self, name: str) -> dict:
        resp = await treq.get(self.nodes[name]["base"] + "/api/nodes",
                              headers=basic("admin", ADMIN_PW), persistent=False)
        body = json.loads(await resp.content())
        self.assertEqual(resp.code, 200, body)
        return body

    @coro
    async def test_a_node_alone_lists_itself(self):
        node = await self.start("solo")
        self.assertIs(node["c"].admin.nodes, node["c"].nodes)
        obj = await self.get_nodes("solo")
        self.assertEqual(obj["self"], "solo")
        self.assertEqual([(r["node"], r["state"], r["self"]) for r in obj["items"]],
                         [("solo", "up", True)])
        r = obj["items"][0]
        self.assertEqual((r["version"], r["address"], r["instance"]),
                         (__version__, "0.0.0.0:8080", node["c"].bus.origin))
        # a node alone has no bus to lose; on PostgreSQL it may still be connecting
        self.assertIn(r["bus"]["state"], ("local",) if self.backend == "sqlite"
                      else ("connected", "disconnected"))
        self.assertEqual(r["cache"]["blobs"], 0)
        self.assertEqual(r["cache"]["max_bytes"], node["c"].blob_cache.max_size)
        await node["stop"]()
        from zmirror.db.engine import connect_config

        conn = connect_config(node["c"].config)
        try:
            row = conn.execute("SELECT stopped_at FROM cluster_nodes WHERE node = 'solo'").fetchone()
        finally:
            conn.close()
        self.assertIsNotNone(row[0])


class WiredNodesPostgresTests(WiredNodesTests):
    backend = "postgresql"

    @coro
    async def test_two_nodes_on_one_database(self):
        a = await self.start("node-a")
        b = await self.start("node-b")
        for node in (a, b):  # the bus listens: the next heartbeat says so
            bus = node["c"].bus
            await eventually(lambda: bus.connected, what="the bus listening")
            await node["c"].nodes.beat()
        for asked in ("node-a", "node-b"):
            obj = await self.get_nodes(asked)
            self.assertEqual(obj["self"], asked)
            self.assertEqual([(r["node"], r["state"], r["self"]) for r in obj["items"]],
                             [("node-a", "up", asked == "node-a"), ("node-b", "up", asked == "node-b")])
            self.assertEqual({r["bus"]["state"] for r in obj["items"]}, {"connected"})
            self.assertEqual({r["instance"] for r in obj["items"]},
                             {a["c"].bus.origin, b["c"].bus.origin})
        await b["stop"]()
        obj = await self.get_nodes("node-a")
        self.assertEqual([(r["node"], r["state"]) for r in obj["items"]],
                         [("node-a", "up"), ("node-b", "stopped")])


class DatabaseCopyPostgresTests(unittest.TestCase):
    """``zmirror db copy`` leaves the heartbeat rows alone: they are each process's own
    state (a running node's row in the target does not make the copy refuse, and the
    SQLite node's row does not turn up in the cluster's list)."""

    backend = "postgresql"

    @coro
    async def test_heartbeat_rows_are_not_copied(self):
        from tests.fixtures.pgserver import postgres_database
        from zmirror.cli.dbcopy import copy_database
        from zmirror.db.sqlite import Database, migrate

        source = Path(self.mktemp()).resolve() / "registry.db"
        source.parent.mkdir(parents=True)
        migrate(source)
        lite = Database(source, reactor)
        lite.start()
        self.addCleanup(lite.close)
        clock = Clock()
        clock.advance(T0)
        await NodeHeartbeat(lite, clock, node="old-single-node").beat()
        url, pg = postgres_database(self, reactor)
        running = NodeHeartbeat(pg, clock, node="node-1")
        await running.beat()
        lines = []
        counts = await Deferred.fromCoroutine(_in_thread(copy_database, source, url, out=lines.append))
        self.assertNotIn("cluster_nodes", counts)
        self.assertFalse([ln for ln in lines if "cluster_nodes" in ln], lines)
        self.assertEqual([r["node"] for r in (await running.listing())["items"]], ["node-1"])


async def _in_thread(f, *a, **kw):
    from twisted.internet.threads import deferToThread

    return await deferToThread(f, *a, **kw)
