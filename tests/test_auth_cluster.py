"""Several nodes, one lockout and one token secret (state shared by the nodes of a cluster).

The nodes hear each other through a :class:`zmirror.cluster.LoopbackHub`
(the interface the PostgreSQL bus implements) on an injected clock; the parts
that live in the database (``cluster_secrets``, ``login_failures``) run on a
real PostgreSQL (tests/fixtures/pgserver.py; skipped where it cannot run).
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.fixtures.auth import START
from tests.fixtures.fakes import FailingWrites, NeverWrites
from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import fresh_database
from zmirror.auth.credentials import Authenticator
from zmirror.auth.lockout import ACCOUNT, KEY_SIZE, Locked, Lockout
from zmirror.auth.lockoutsync import CLEAR_EVENT, FAILURE_EVENT, LockoutSync
from zmirror.cluster import LoopbackHub

SECRET = b"cluster-secret-" + b"x" * 17
LIMITS = dict(max_account=10, max_ip=30, window=600.0, cooldown=300.0)


class FakeUsers:
    """One registry user, alice (password "right")."""

    ROW = {"id": 1, "username": "alice", "password_hash": "h", "enabled": 1, "updated_at": 1.0}

    async def get_by_username(self, name):
        return dict(self.ROW) if name == "alice" else None

    def refresh_one(self, row):
        pass

    async def record_login(self, uid):
        pass


class FakePasswords:
    async def verify(self, password, stored, account=""):
        return password == "right", None

    async def dummy_verify(self, password):
        return None


class Node:
    """One zmirror node's lockout: its Lockout, Authenticator, bus and sync."""

    def __init__(self, hub, clock, *, secret=SECRET, db=None, **limits):
        self.clock = clock
        self.bus = hub.bus()
        self.lockout = Lockout(clock, secret=secret, **{**LIMITS, **limits})
        self.sync = LockoutSync(self.lockout, self.bus, db, clock=clock)
        self.auth = Authenticator(FakeUsers(), FakePasswords(), self.lockout, clock=clock,
                                  admin_username="admin")

    def login(self, testcase, username, password, ip):
        """The outcome of one registry login: a row, None (wrong) or the Locked raised."""
        d = Deferred.fromCoroutine(self.auth.authenticate(username, password, ip))
        out = []
        d.addBoth(out.append)
        testcase.assertEqual(len(out), 1, "the login did not finish")
        result = out[0]
        if isinstance(result, Failure):
            result.trap(Locked)
            return result.value
        return result


def nodes(n=3, **kw):
    hub = LoopbackHub()
    clock = MemoryReactorClock()
    clock.advance(START)
    return hub, clock, [Node(hub, clock, **kw) for _ in range(n)]


class AccountAcrossNodesTests(unittest.TestCase):
    def setUp(self):
        self.hub, self.clock, self.nodes = nodes()

    def test_ten_failures_over_three_nodes_lock_the_account_on_all(self):
        for i in range(9):
            node = self.nodes[i % 3]
            self.assertIsNone(node.login(self, "alice", f"guess{i}", f"10.0.0.{i}"))
            self.clock.advance(1)
        for node in self.nodes:
            self.assertEqual(node.lockout.failures("user:alice"), 9)
            self.assertEqual(node.lockout.check("user:alice", "10.9.9.9"), 0)
        self.assertIsNone(self.nodes[0].login(self, "alice", "guess9", "10.0.0.9"))
        for node in self.nodes:
            locked = node.login(self, "alice", "right", "10.8.8.8")
            self.assertIsInstance(locked, Locked)
            self.assertEqual((locked.reason, locked.retry_after), ("locked", 300))
        # what travelled: digests, never the account's name
        sent = [data for _origin, kind, data in self.hub.sent if kind == FAILURE_EVENT]
        self.assertEqual(len(sent), 10)
        self.assertNotIn("alice", repr(self.hub.sent))
        # the cool-down runs out on every node alike
        self.clock.advance(300)
        for node in self.nodes:
            self.assertEqual(node.lockout.check("user:alice", "10.8.8.8"), 0)
        self.assertEqual(self.nodes[2].login(self, "alice", "right", "10.8.8.8")["id"], 1)

    def test_a_success_on_one_node_clears_the_account_everywhere(self):
        for i in range(9):
            self.nodes[i % 3].login(self, "alice", "bad", "10.0.0.1")
        self.assertEqual(self.nodes[1].login(self, "alice", "right", "10.0.0.2")["id"], 1)
        for node in self.nodes:
            self.assertEqual(node.lockout.failures("user:alice"), 0)
        self.assertEqual([kind for _o, kind, _d in self.hub.sent].count(CLEAR_EVENT), 1)
        # nine more do not lock: the count started over on every node
        for i in range(9):
            self.nodes[(i + 1) % 3].login(self, "alice", "bad", "10.0.0.3")
        for node in self.nodes:
            self.assertEqual(node.lockout.check("user:alice", "x"), 0)
        # the address keeps its count (a valid login does not reset an attacker's address)
        self.assertEqual(self.nodes[2].lockout.failures(ip="10.0.0.1"), 9)

    def test_successes_without_failures_publish_nothing(self):
        # clients sending Basic on every request: no event per request
        for _ in range(5):
            for node in self.nodes:
                self.assertEqual(node.login(self, "alice", "right", "10.0.0.1")["id"], 1)
        self.assertEqual(self.hub.sent, [])

    def test_the_admin_account_is_counted_across_nodes_too(self):
        # the admin API counts the bare name with the same Lockout
        for i in range(10):
            self.nodes[i % 3].lockout.failure("admin", f"10.0.1.{i}")
        for node in self.nodes:
            self.assertEqual(node.lockout.retry_after("admin", "10.9.9.9"), 300)
            self.assertEqual(node.lockout.check("user:admin", "10.9.9.9"), 0,
                             "registry logins as admin are another account")
        self.nodes[2].lockout.success("admin", "10.0.1.1")  # the lock stays until it runs out
        self.assertEqual(self.nodes[0].lockout.retry_after("admin", "x"), 300)

    def test_in_flight_stays_local_and_failures_on_other_nodes_fill_the_limit(self):
        for i in range(9):
            self.nodes[i % 2].login(self, "alice", "bad", "10.0.0.1")
        attempt = self.nodes[2].lockout.attempt("user:alice", "10.0.0.5")
        self.assertEqual(self.nodes[0].lockout.in_flight("user:alice"), 0)
        with self.assertRaises(Locked) as cm:
            self.nodes[2].lockout.attempt("user:alice", "10.0.0.6")
        self.assertEqual(cm.exception.reason, "in_flight")
        attempt.end()

    def test_remote_failures_are_not_logged_as_local_ones(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for i in range(10):
            self.nodes[0].login(self, "alice", "bad", "10.0.0.1")
        local = [e for e in events if "failed {what}" in e.get("log_format", "")]
        self.assertEqual(len(local), 10, "the node that saw them logs them, once each")
        self.assertTrue(all(e["account"] == "user:alice" for e in local))
        locks = [e for e in events if "locked for" in e.get("log_format", "")]
        self.assertEqual(len(locks), 3)  # node 0 with the name, the others without
        self.assertEqual(sum("user:alice" in str(e.get("key")) for e in locks), 1)
        for e in locks:
            self.assertLessEqual(len(str(e.get("key"))), 64)

    def test_nodes_without_the_shared_secret_do_not_understand_each_other(self):
        # the keys are the digests of the shared secret: per-process keys differ
        hub = LoopbackHub()
        clock = Clock()
        a = Node(hub, clock, secret=None)
        b = Node(hub, clock, secret=None)
        c = Node(hub, clock, secret=SECRET)
        d = Node(hub, clock, secret=SECRET)
        self.assertNotEqual(a.lockout._key(ACCOUNT, "bob"), b.lockout._key(ACCOUNT, "bob"))
        self.assertEqual(c.lockout._key(ACCOUNT, "bob"), d.lockout._key(ACCOUNT, "bob"))
        self.assertEqual(len(c.lockout._key(ACCOUNT, "bob")), KEY_SIZE)
        for _ in range(10):
            a.lockout.failure("bob", "ip")
        self.assertEqual(b.lockout.check("bob", "ip2"), 0)
        self.assertGreater(a.lockout.check("bob", "ip2"), 0)


class AddressAcrossNodesTests(unittest.TestCase):
    def test_an_address_is_counted_over_all_nodes_and_accounts(self):
        hub, clock, ns = nodes(max_ip=6, max_account=100)
        for i in range(6):
            ns[i % 3].login(self, f"user{i}", "bad", "192.0.2.7")
        for node in ns:
            locked = node.login(self, "alice", "right", "192.0.2.7")
            self.assertIsInstance(locked, Locked)
            self.assertEqual(locked.retry_after, 300)
            self.assertEqual(node.login(self, "alice", "right", "192.0.2.8")["id"], 1)

    def test_an_ipv6_64_is_one_budget_over_all_nodes(self):
        hub, clock, ns = nodes(max_ip=3, max_account=100)
        for i in range(3):
            ns[i].login(self, f"user{i}", "bad", f"2001:db8:1:2::{i + 1:x}")
        for node in ns:
            self.assertEqual(node.lockout.retry_after("fresh", "2001:db8:1:2::ffff"), 300)
            self.assertEqual(node.lockout.check("fresh", "2001:db8:1:3::1"), 0)


class RemoteTimesTests(unittest.TestCase):
    def setUp(self):
        self.hub, self.clock, (self.a, self.b) = nodes(2, max_account=3)

    def key(self, name):
        return self.a.lockout._key(ACCOUNT, name)

    def test_a_late_event_counts_at_its_own_time(self):
        self.a.lockout.record_remote([self.key("bob")], START - 50)
        self.a.lockout.record_remote([self.key("bob")], START - 550)
        self.assertEqual(self.a.lockout.failures("bob"), 2)
        self.clock.advance(60)  # the older one leaves the window
        self.assertEqual(self.a.lockout.failures("bob"), 1)
        self.a.lockout.record_remote([self.key("bob")], START - 1000)  # outside: ignored
        self.assertEqual(self.a.lockout.failures("bob"), 1)

    def test_a_lock_from_old_failures_ends_when_it_would_have(self):
        # three failures 200 s ago: locked until 100 s from now, not 300
        for dt in (202, 201, 200):
            self.a.lockout.record_remote([self.key("bob")], START - dt)
        self.assertEqual(self.a.lockout.retry_after("bob", "x"), 100)

    def test_a_clock_ahead_never_makes_a_longer_lock(self):
        for _ in range(3):
            self.a.lockout.record_remote([self.key("bob")], START + 30)
        self.assertEqual(self.a.lockout.retry_after("bob", "x"), 300)
        self.assertEqual(self.a.lockout.record_remote([self.key("carol")], START + 3600), 0)
        self.assertEqual(self.a.lockout.failures("carol"), 0)


class HostileEventTests(unittest.TestCase):
    """The bus carries JSON from other processes: anything odd is ignored."""

    def setUp(self):
        self.hub, self.clock, (self.node,) = nodes(1)
        self.sender = self.hub.bus()
        self.good = self.node.lockout._key(ACCOUNT, "bob").hex()

    def test_garbage_is_ignored(self):
        good, now = self.good, START
        bad = [
            None, [], "x", 5, {}, {"k": good, "at": now}, {"k": [], "at": now},
            {"k": [good], "at": "now"}, {"k": [good], "at": None}, {"k": [good], "at": True},
            {"k": [good], "at": float("nan")}, {"k": [good], "at": float("inf")},
            {"k": [good] * 5, "at": now}, {"k": [good, "zz" * KEY_SIZE], "at": now},
            {"k": [good.upper()], "at": now}, {"k": [good + "00"], "at": now},
            {"k": [good[:-2]], "at": now}, {"k": ["78" + good[2:]], "at": now},  # no such kind
            {"k": [" " + good[1:]], "at": now}, {"k": [{"a": 1}], "at": now},
            {"k": [good], "at": 10 ** 400}, {"k": [b"\x00" * KEY_SIZE], "at": now},
        ]
        for data in bad:
            self.sender.publish(FAILURE_EVENT, data)
        for data in (None, {"k": 5}, {"k": [good]}, {"k": "69" + good[2:]}, {"k": good.upper()}):
            self.sender.publish(CLEAR_EVENT, data)
        self.assertEqual(self.node.sync.ignored, len(bad) + 5)
        self.assertEqual(len(self.node.lockout._failures), 0)
        self.assertEqual(self.node.lockout._locked, {})
        # far in the past / future: well-formed, nothing counted
        self.sender.publish(FAILURE_EVENT, {"k": [good], "at": now - 601})
        self.sender.publish(FAILURE_EVENT, {"k": [good], "at": now + 1e9})
        self.assertEqual(self.node.lockout.failures("bob"), 0)
        # the same node still counts a good one
        self.sender.publish(FAILURE_EVENT, {"k": [good], "at": now})
        self.assertEqual(self.node.lockout.failures("bob"), 1)
        self.sender.publish(CLEAR_EVENT, {"k": good})
        self.assertEqual(self.node.lockout.failures("bob"), 0)

    def test_an_address_key_cannot_be_cleared(self):
        ip = self.node.lockout._key(b"i", "10.0.0.1").hex()
        self.sender.publish(FAILURE_EVENT, {"k": [ip], "at": START})
        self.sender.publish(CLEAR_EVENT, {"k": ip})
        self.assertEqual(self.node.lockout.failures(ip="10.0.0.1"), 1)

    def test_memory_stays_bounded_under_a_flood_of_keys(self):
        hub, clock, (node,) = nodes(1, max_keys=100)
        sender = hub.bus()
        for i in range(5000):
            key = (ACCOUNT + i.to_bytes(KEY_SIZE - 1, "big")).hex()
            sender.publish(FAILURE_EVENT, {"k": [key], "at": START})
        self.assertLessEqual(len(node.lockout._failures), 100)
        # many failures of one key keep only the newest `limit` times
        key = self.good
        for _ in range(1000):
            self.sender.publish(FAILURE_EVENT, {"k": [key], "at": START})
        self.assertEqual(len(self.node.lockout._failures[bytes.fromhex(key)]), 10)


class WriteQueueTests(unittest.TestCase):
    def test_a_stalled_database_never_queues_without_bound(self):
        hub, clock = LoopbackHub(), Clock()
        clock.advance(START)
        db = NeverWrites()
        lockout = Lockout(clock, secret=SECRET, max_account=10 ** 6, max_ip=10 ** 6)
        sync = LockoutSync(lockout, hub.bus(), db, clock=clock, max_pending=1000, max_batch=100)
        for i in range(3000):
            lockout.failure(f"u{i}", f"10.0.{i // 250}.{i % 250}")
            clock.advance(0.01)
        self.assertEqual(len(db.writes), 1, "one batch in flight at a time")
        self.assertEqual(len(db.writes[0][1]), 100)
        self.assertEqual(len(sync._rows), 1000)
        self.assertEqual(sync.dropped, 2 * 3000 - 100 - 1000)
        # the logins never waited: all of them were counted
        self.assertEqual(lockout.failures("u2999"), 1)

    def test_a_failing_database_is_logged_once_and_the_node_keeps_counting(self):
        clock = Clock()
        clock.advance(START)
        db = FailingWrites()
        lockout = Lockout(clock, secret=SECRET, max_account=3)
        sync = LockoutSync(lockout, None, db, clock=clock)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(3):
            lockout.failure("bob", "10.0.0.1")
            clock.advance(1)
        self.assertEqual(len(db.writes), 3)
        self.assertEqual(sync.dropped, 6)
        failures = [e for e in events if e.get("log_failure") is not None]
        self.assertEqual(len(failures), 1)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(lockout.retry_after("bob", "x"), 300 - 1)  # locked a second ago

    def test_a_clear_replaces_the_queued_rows_of_its_account(self):
        clock = Clock()
        clock.advance(START)
        db = NeverWrites()
        lockout = Lockout(clock, secret=SECRET)
        sync = LockoutSync(lockout, None, db, clock=clock)
        lockout.failure("bob", "10.0.0.1")
        lockout.failure("carol", "10.0.0.1")
        lockout.success("bob", "10.0.0.1")
        bob = lockout._key(ACCOUNT, "bob").hex()
        self.assertNotIn(bob, [k for k, _at in sync._rows])
        self.assertEqual(sync._clears, {bob})
        clock.advance(1)
        clears, rows = db.writes[0][0], db.writes[0][1]
        self.assertEqual(clears, [bob])
        self.assertEqual(len(rows), 3)  # carol, and the address twice


# --- the database (PostgreSQL) ------------------------------------------------------------


def pg_config(testcase, url: str):
    from zmirror.config import parse_config

    data = Path(testcase.mktemp())
    data.mkdir(parents=True)
    return parse_config(f'[database]\nurl = "{url}"\n', data_dir=data,
                        config_path=data / "config.toml")


class SharedSecretTests(unittest.TestCase):
    def setUp(self):
        from zmirror.db import postgresql

        self.url = fresh_database(self)
        postgresql.migrate(self.url)

    def row(self):
        from zmirror.db import postgresql

        with postgresql.connect(self.url) as conn:
            return conn.execute("SELECT value FROM cluster_secrets WHERE name = 'token'").fetchall()

    def build(self, cfg, bus=None):
        from zmirror.auth.build import build_access
        from zmirror.auth.passwords import Passwords, fast_context
        from zmirror.db.postgresql import PostgresDatabase

        db = PostgresDatabase(cfg.database.url, reactor)
        db.start()
        self.addCleanup(db.close)
        clock = Clock()
        clock.advance(START)
        return build_access(cfg, db, clock, threads=False, bus=bus,
                            passwords=Passwords(context=fast_context(), clock=clock))

    def test_two_nodes_share_the_secret_of_the_first(self):
        from zmirror.auth.tokens import SECRET_FILE, load_or_create_secret

        a_cfg, b_cfg = pg_config(self, self.url), pg_config(self, self.url)
        a = self.build(a_cfg)
        first = load_or_create_secret(a_cfg.data_dir)  # the file node A seeded the row from
        self.assertEqual(self.row(), [(base64.b64encode(first).decode(),)])
        b = self.build(b_cfg)
        self.assertFalse((b_cfg.data_dir / SECRET_FILE).exists(),
                         "a node that finds the row needs no file of its own")
        token, _ = a.tokens.issue_access(subject="", access=[
            {"type": "repository", "name": "library/alpine", "actions": ["pull"]}])
        self.assertTrue(b.tokens.verify_access(token).allows("library/alpine"))
        user = {"id": 7, "username": "u", "password_hash": "h", "enabled": 1, "updated_at": 1.0}
        self.assertEqual(b.tokens.verify_refresh(a.tokens.issue_refresh(user)),
                         (7, a.tokens.fingerprint(user)))
        # the lockouts digest alike too
        self.assertEqual(a.lockout._key(ACCOUNT, "x"), b.lockout._key(ACCOUNT, "x"))
        self.assertIsNotNone(a.lockout_sync)

    def test_a_copied_database_keeps_the_tokens_of_the_node_that_seeds_it(self):
        from zmirror.auth.tokens import TokenIssuer, load_or_create_secret

        cfg = pg_config(self, self.url)
        then = Clock()
        then.advance(START - 86400)
        old = TokenIssuer(load_or_create_secret(cfg.data_dir), then, service="zmirror")
        user = {"id": 3, "username": "u", "password_hash": "h", "enabled": 1, "updated_at": 1.0}
        refresh = old.issue_refresh(user)  # issued while it ran on SQLite
        node = self.build(cfg)
        self.assertEqual(node.tokens.verify_refresh(refresh)[0], 3)

    def test_racing_seeders_agree(self):
        import os

        from zmirror.auth.tokens import shared_secret
        from zmirror.db import postgresql

        n = 6
        barrier = threading.Barrier(n)
        results, errors = [None] * n, []

        def seed(i):
            try:
                with postgresql.connect(self.url, autocommit=True) as conn:
                    def local():
                        barrier.wait(timeout=60)  # every node found the row missing
                        return os.urandom(32)

                    results[i] = shared_secret(conn, local, now=START)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=seed, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(len(set(results)), 1, "every node ends up with one secret")
        self.assertEqual(self.row(), [(base64.b64encode(results[0]).decode(),)])

    def test_an_unusable_row_stops_the_start_without_showing_it(self):
        from zmirror.auth.tokens import SecretError, load_secret
        from zmirror.db import postgresql

        with postgresql.connect(self.url, autocommit=True) as conn:
            conn.execute("INSERT INTO cluster_secrets (name, value, created_at) VALUES"
                         " ('token', 'c2hvcnQ=', 0)")  # "short"
        with self.assertRaises(SecretError) as cm:
            load_secret(pg_config(self, self.url), Clock())
        self.assertIn("too short", str(cm.exception))
        self.assertNotIn("c2hvcnQ", str(cm.exception))
        with postgresql.connect(self.url, autocommit=True) as conn:
            conn.execute("UPDATE cluster_secrets SET value = 'not base64!!' WHERE name = 'token'")
        with self.assertRaises(SecretError) as cm:
            load_secret(pg_config(self, self.url), Clock())
        self.assertNotIn("not base64!!", str(cm.exception))

    @coro
    async def test_two_built_nodes_lock_an_account_together(self):
        hub = LoopbackHub()
        a = self.build(pg_config(self, self.url), bus=hub.bus())
        b = self.build(pg_config(self, self.url), bus=hub.bus())
        for i in range(10):
            node = (a, b)[i % 2]
            self.assertIsNone(await node.authenticator.authenticate("nobody", "x", f"10.0.0.{i}"))
        for node in (a, b):
            with self.assertRaises(Locked):
                await node.authenticator.authenticate("nobody", "x", "10.0.1.1")
        await a.lockout_sync.flush()
        await b.lockout_sync.flush()
        from zmirror.db import postgresql

        with postgresql.connect(self.url) as conn:
            nodes_seen = {r[0] for r in conn.execute("SELECT node FROM login_failures")}
            count = conn.execute("SELECT count(*) FROM login_failures").fetchone()[0]
        self.assertEqual(count, 20)  # an account and an address row per failure
        self.assertEqual(nodes_seen, {a.lockout_sync.node, b.lockout_sync.node})

    def test_sqlite_keeps_the_file_and_shares_nothing(self):
        from zmirror.auth.build import build_access
        from zmirror.auth.tokens import TokenIssuer, load_or_create_secret
        from zmirror.config import parse_config
        from tests.fixtures.pgserver import temp_database

        data = Path(self.mktemp())
        data.mkdir(parents=True)
        cfg = parse_config("", data_dir=data, config_path=data / "config.toml")
        db = temp_database(self)
        self.assertEqual(db.dialect, "sqlite")
        access = build_access(cfg, db, Clock(), threads=False, bus=LoopbackHub().bus())
        file_issuer = TokenIssuer(load_or_create_secret(data), Clock(), service="zmirror")
        token, _ = access.tokens.issue_access(subject="", access=[])
        self.assertEqual(file_issuer.verify_access(token).subject, "")
        self.assertIsNone(access.lockout_sync)
        self.assertIsNone(access.lockout.listener)


class FailureTableTests(unittest.TestCase):
    """``login_failures``: written by each node, read by a node that starts or resyncs."""

    def setUp(self):
        from zmirror.db import postgresql

        self.url = fresh_database(self)
        postgresql.migrate(self.url)
        self.clock = Clock()
        self.clock.advance(START)
        self.hub = LoopbackHub()

    def db(self):
        from zmirror.db.postgresql import PostgresDatabase

        db = PostgresDatabase(self.url, reactor)
        db.start()
        self.addCleanup(db.close)
        return db

    def node(self, hub=None, **kw):
        node = Node(hub or self.hub, self.clock, db=self.db(), **kw)
        self.addCleanup(node.sync.stop)
        return node

    def rows(self, sql="SELECT key, at, node FROM login_failures ORDER BY at"):
        from zmirror.db import postgresql

        with postgresql.connect(self.url) as conn:
            return conn.execute(sql).fetchall()

    async def settle(self, d):
        """Wait for a Deferred that real pool threads fire (bounded, not timed)."""
        for _ in range(20000):
            if d.called:
                break
            await deferLater(reactor, 0.001, lambda: None)
        return await d

    @coro
    async def test_a_fresh_node_loads_the_failures_inside_the_window(self):
        a, b = self.node(), self.node()
        for i in range(10):
            (a, b)[i % 2].login(self, "alice", "bad", f"10.0.0.{i}")
            self.clock.advance(1)
        for i in range(3):
            a.login(self, "carol", "bad", "10.0.1.1")
        await a.sync.flush()
        await b.sync.flush()
        self.assertEqual(len(self.rows()), 26)
        fresh = self.node(hub=LoopbackHub())  # heard none of it
        self.assertEqual(fresh.lockout.check("user:alice", "x"), 0)
        await self.settle(fresh.sync.start())
        # locked at the 10th failure, one second ago
        self.assertEqual(fresh.lockout.retry_after("user:alice", "10.9.9.9"), 300 - 1)
        self.assertEqual(fresh.lockout.failures("user:carol"), 3)
        self.assertEqual(fresh.lockout.failures(ip="10.0.1.1"), 3)
        self.assertEqual(fresh.sync.loaded, 26)

    @coro
    async def test_a_success_deletes_the_rows_of_the_account(self):
        a = self.node()
        for _ in range(4):
            a.login(self, "alice", "bad", "10.0.0.1")
        a.login(self, "alice", "right", "10.0.0.1")
        a.login(self, "alice", "bad", "10.0.0.1")
        await a.sync.flush()
        key = a.lockout._key(ACCOUNT, "user:alice").hex()
        self.assertEqual([r[0] for r in self.rows()].count(key), 1)
        fresh = self.node(hub=LoopbackHub())
        await self.settle(fresh.sync.load())
        self.assertEqual(fresh.lockout.failures("user:alice"), 1)
        self.assertEqual(fresh.lockout.failures(ip="10.0.0.1"), 5)

    @coro
    async def test_rows_older_than_the_window_are_pruned(self):
        from zmirror.db import postgresql

        with postgresql.connect(self.url, autocommit=True) as conn:
            conn.execute("INSERT INTO login_failures (key, at, node) VALUES (?, ?, 'old'),"
                         " (?, ?, 'recent')",
                         ("61" * KEY_SIZE, START - 601, "61" * KEY_SIZE, START - 10))
        a = self.node()
        a.login(self, "alice", "bad", "10.0.0.1")
        await a.sync.flush()
        self.assertEqual(sorted(r[2] for r in self.rows()),
                         sorted([a.sync.node, a.sync.node, "recent"]))

    @coro
    async def test_a_resync_reads_what_was_missed_without_counting_twice(self):
        a = self.node()
        c = self.node()  # hears a's events
        for _ in range(4):
            a.login(self, "alice", "bad", "10.0.0.1")
        await a.sync.flush()
        self.assertEqual(c.lockout.failures("user:alice"), 4)
        # events a sent while c's bus was away: rows only
        from zmirror.db import postgresql

        key = a.lockout._key(ACCOUNT, "user:alice").hex()
        with postgresql.connect(self.url, autocommit=True) as conn:
            conn.execute("INSERT INTO login_failures (key, at, node)"
                         " VALUES (?, ?, 'x'), (?, ?, 'x')",
                         (key, START + 0.25, key, START + 0.5))
        from zmirror.cluster import RESYNC

        c.bus.deliver(RESYNC, {})
        self.assertIsNotNone(c.sync.loading)
        await self.settle(c.sync.loading)
        self.assertEqual(c.lockout.failures("user:alice"), 6, "4 heard and read once, 2 read")

    @coro
    async def test_stop_writes_what_is_queued(self):
        a = self.node()
        a.login(self, "alice", "bad", "10.0.0.1")
        self.assertEqual(self.rows(), [])
        await a.sync.stop()
        self.assertEqual(len(self.rows()), 2)
        a.login(self, "alice", "bad", "10.0.0.1")  # after stop: counted, not written
        self.assertEqual(a.lockout.failures("user:alice"), 2)
        self.assertEqual(a.sync.dropped, 2)
