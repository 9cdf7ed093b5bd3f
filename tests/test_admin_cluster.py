"""The admin password as cluster state on PostgreSQL (zmirror.auth.adminsecret): the
``cluster_secrets`` row ``admin_password`` overrides ``[admin] password`` of config.toml on
every node; ``PUT /api/me/password`` and ``zmirror admin-password`` write it; every node follows
within 2 s.  First the logic with two admin APIs on one database and a loopback bus (SQLite and
PostgreSQL), then whole services (makeService) on one real PostgreSQL over real sockets."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.fixtures.pgserver import on_postgresql
from tests.fixtures.fakes import ControlledRun
from tests.fixtures.helpers import Captured, coro
from tests.fixtures.admin import (
    NO_LOCKOUT,
    AdminTestMixin,
    FakeUpstreams,
    admin_api,
    basic,
    make_config,
)
from zmirror.config import adminpassword as config_module
from zmirror.app import ZMirrorApp
from zmirror.auth import adminsecret
from zmirror.auth.adminsecret import EVENT, ROW, ClusterAdminPassword, value_problem
from zmirror.auth.passwords import (
    AdminCredentials,
    Passwords,
    fast_context,
    hash_admin_password,
    verify_admin_sync,
)
from zmirror.cluster import LoopbackHub
from zmirror.config import DEFAULT_ADMIN_PASSWORD
from zmirror.registry.routes import RegistryRoutes

GATED = {"error": "change the default admin password first", "fields": {}}
NEW = "Cluster-wide-pass-1"
PBKDF2 = "$pbkdf2-sha256$1000$c2FsdHNhbHQ$7CMlGQ8sDj.BaZ7hEnpjbwzGXG6Mw1jIwEBZzvnc.7o"
HOSTILE = {
    "empty": "",
    "blank": "   ",
    "plain text": "Plain-text-pass-9",
    "the default in plain text": DEFAULT_ADMIN_PASSWORD,
    "malformed argon2": "$argon2id$v=19$m=19456,t=2,p=1$bm90aGluZw$",
    "unknown scheme": "$zz$abc$def",
    "with a newline": hash_admin_password("x-password-1") + "\n$argon2id$",
    "too long": "$argon2id$" + "a" * 2000,
}


class RowValueTests(unittest.TestCase):
    def test_hashes_are_accepted(self):
        for value in (hash_admin_password("any-password-1"), PBKDF2):
            self.assertIsNone(value_problem(value), value)

    def test_hostile_values_are_refused_without_repeating_them(self):
        for what, value in HOSTILE.items():
            problem = value_problem(value)
            self.assertIsInstance(problem, str, what)
            if value.strip():
                self.assertNotIn(value.strip()[:12], problem, what)
        for value in (None, 12, b"$argon2id$"):
            self.assertIsInstance(value_problem(value), str)

    def test_the_cli_helper_refuses_a_non_hash(self):
        class NoConn:
            def execute(self, *a):
                raise AssertionError("nothing may be written")

        with self.assertRaises(ValueError):
            adminsecret.store_blocking(NoConn(), "Plain-text-pass-9", now=1.0)


class AdminCacheTests(unittest.TestCase):
    def test_forget_admin_forgets_only_the_admins_verifications(self):
        from twisted.internet.task import Clock

        clock = Clock()
        passwords = Passwords(context=fast_context(), clock=clock)
        stored = hash_admin_password("Admin-pass-1")
        creds = AdminCredentials("admin", stored, passwords)
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(creds.check("admin", "Admin-pass-1"))))
        self.assertTrue(creds.cached("admin", "Admin-pass-1"))
        user_hash = passwords.hash_sync("user-pass-1")
        ok, _ = self.successResultOf(Deferred.fromCoroutine(passwords.verify("user-pass-1", user_hash,
                                                                             account="bob")))
        self.assertTrue(ok)
        passwords.forget_admin()
        self.assertFalse(creds.cached("admin", "Admin-pass-1"))
        self.assertTrue(passwords.is_cached("user-pass-1", user_hash, account="bob"))


def stub(api, clock) -> StubTreq:
    app = ZMirrorApp(RegistryRoutes(None, clock=clock), admin=api.resource())
    return StubTreq(app.resource())


class Node:
    """One "node": its own admin API, password cache and copy of the row, on the shared
    database and a loopback bus."""

    def __init__(self, case, hub, password=DEFAULT_ADMIN_PASSWORD, run=None, bus=None):
        self.passwords = Passwords(context=fast_context(), clock=case.clock, run=run)
        config = make_config(str(case.tmp), password=password, lockout=NO_LOCKOUT)
        self.bus = bus if bus is not None else hub.bus()
        self.secret = ClusterAdminPassword(case.db, self.bus, case.clock, passwords=self.passwords)
        self.api = admin_api(config, case.db, clock=case.clock, registries=case.registries,
                             accesslogs=case.accesslogs, upstreams=FakeUpstreams(),
                             passwords=self.passwords, cluster_password=self.secret)
        self.client = stub(self.api, case.clock)

    def call(self, method, path, password, body=None, user="admin"):
        async def go():
            h = dict(basic(user, password))
            data = None
            if body is not None:
                h["Content-Type"] = "application/json"
                data = json.dumps(body).encode()
            resp = await self.client.request(method, "http://zm.test" + path, data=data, headers=h)
            content = await resp.content()
            return resp.code, (json.loads(content) if content else None)

        return Deferred.fromCoroutine(go())

    def change(self, current, new, auth=None):
        return self.call("PUT", "/api/me/password", auth or current,
                         {"current_password": current, "new_password": new})


async def _call(f, *args):
    return f(*args)


class TwoNodesTests(AdminTestMixin, unittest.TestCase):
    """Two admin APIs on one database; their buses hear each other (LoopbackHub)."""

    def setUp(self):
        super().setUp()
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir()
        self.hub = LoopbackHub()
        self.a = Node(self, self.hub)
        self.b = Node(self, self.hub)
        for node in (self.a, self.b):
            self.successResultOf(node.secret.refresh())

    def row(self):
        rows = self.successResultOf(self.db.query(
            "SELECT value, created_at FROM cluster_secrets WHERE name = ?", (ROW,)))
        return rows[0] if rows else None

    def put_row(self, value):
        def txn(cur):
            cur.execute("DELETE FROM cluster_secrets WHERE name = ?", (ROW,))
            if value is not None:
                cur.execute("INSERT INTO cluster_secrets (name, value, created_at) VALUES (?, ?, ?)",
                            (ROW, value, 1.0))

        self.successResultOf(self.db.write(txn))

    @coro
    async def test_without_a_row_config_applies_with_the_gate(self):
        self.assertTrue(self.a.secret.loaded)
        self.assertIsNone(self.a.secret.value)
        self.assertEqual(await self.b.call("GET", "/api/registries", DEFAULT_ADMIN_PASSWORD),
                         (403, GATED))
        code, obj = await self.b.call("GET", "/api/me", DEFAULT_ADMIN_PASSWORD)
        self.assertEqual((code, obj["default_password"]), (200, True))

    @coro
    async def test_a_change_on_one_node_applies_on_the_other(self):
        code, obj = await self.a.change(DEFAULT_ADMIN_PASSWORD, NEW)
        self.assertEqual((code, obj), (200, {"username": "admin", "default_password": False}))
        row = self.row()
        self.assertTrue(verify_admin_sync(NEW, row["value"]))
        self.assertTrue(row["value"].startswith("$argon2id$"))
        self.assertEqual(row["created_at"], self.clock.seconds())
        self.assertEqual([(k, d) for _o, k, d in self.hub.sent], [(EVENT, {"at": self.clock.seconds()})])
        self.assertNotIn(row["value"], json.dumps(self.hub.sent))  # the event carries no hash
        for node in (self.a, self.b):
            self.assertEqual((await node.call("GET", "/api/me", DEFAULT_ADMIN_PASSWORD))[0], 401)
            code, obj = await node.call("GET", "/api/registries", NEW)
            self.assertEqual(code, 200, obj)  # the gate is open on both
            code, obj = await node.call("GET", "/api/me", NEW)
            self.assertEqual(obj, {"username": "admin", "default_password": False})
        # the config of the nodes is not what answers
        self.assertEqual(self.b.api.account.settings.password, DEFAULT_ADMIN_PASSWORD)

    @coro
    async def test_the_old_passwords_cached_verification_is_forgotten_everywhere(self):
        first = "First-cluster-pass-1"
        self.assertEqual((await self.a.change(DEFAULT_ADMIN_PASSWORD, first))[0], 200)
        for node in (self.a, self.b):
            self.assertEqual((await node.call("GET", "/api/registries", first))[0], 200)
            self.assertTrue(node.api.account.credentials().cached("admin", first))
        stale = [AdminCredentials("admin", n.secret.value, n.passwords) for n in (self.a, self.b)]
        self.assertEqual((await self.b.change(first, NEW))[0], 200)
        for node, creds in zip((self.a, self.b), stale):
            self.assertFalse(creds.cached("admin", first))  # dropped, not merely unreachable
            self.assertEqual((await node.call("GET", "/api/registries", first))[0], 401)
            self.assertEqual((await node.call("GET", "/api/registries", NEW))[0], 200)

    @coro
    async def test_a_node_that_missed_the_event_cannot_change_it_with_the_old_password(self):
        deaf = Node(self, self.hub, bus=LoopbackHub().bus())  # hears nobody
        self.successResultOf(deaf.secret.refresh())
        self.assertEqual((await self.a.change(DEFAULT_ADMIN_PASSWORD, NEW))[0], 200)
        self.assertIsNone(deaf.secret.value)  # its copy is old
        code, obj = await deaf.change(DEFAULT_ADMIN_PASSWORD, "Attackers-pass-1")
        self.assertEqual(code, 400, obj)  # checked against the row, not the copy
        self.assertIn("current_password", obj["fields"])
        self.assertTrue(verify_admin_sync(NEW, self.row()["value"]))
        # and that read brought it up to date
        self.assertEqual((await deaf.call("GET", "/api/me", DEFAULT_ADMIN_PASSWORD))[0], 401)
        self.assertEqual((await deaf.call("GET", "/api/me", NEW))[0], 200)

    @coro
    async def test_two_changes_at_once_on_two_nodes_one_wins(self):
        run = ControlledRun()
        a = Node(self, self.hub, run=run)
        b = Node(self, self.hub, run=run)
        for n in (a, b):
            self.successResultOf(n.secret.refresh())
        ra = a.change(DEFAULT_ADMIN_PASSWORD, "Change-from-a-1", auth=DEFAULT_ADMIN_PASSWORD)
        rb = b.change(DEFAULT_ADMIN_PASSWORD, "Change-from-b-1", auth=DEFAULT_ADMIN_PASSWORD)
        self.assertEqual(len(run.pending), 2)  # both checked the password and are hashing
        for _ in range(10):  # the hashes, then the writes; the responses finish late
            run.drain()
            a.client.flush()
            b.client.flush()
            if ra.called and rb.called:
                break
        results = sorted([(await ra)[0], (await rb)[0]])
        self.assertEqual(results, [200, 409])
        value = self.row()["value"]
        winner = "Change-from-a-1" if verify_admin_sync("Change-from-a-1", value) else "Change-from-b-1"
        self.assertTrue(verify_admin_sync(winner, value))
        self.assertEqual(a.secret.value, value)
        self.assertEqual(b.secret.value, value)

    @coro
    async def test_hostile_rows_are_refused_and_config_applies(self):
        node = Node(self, self.hub, password="Config-pass-1")
        for what, value in HOSTILE.items():
            cap = Captured(self)
            self.put_row(value)
            await node.secret.refresh()
            self.assertIsNone(node.secret.value, what)
            texts = [t for t in cap.texts() if "refused" in t]
            self.assertEqual(len(texts), 1, (what, cap.texts()))
            self.assertIn(repr(ROW), texts[0])
            self.assertIn(value_problem(value), texts[0])
            if value.strip():
                self.assertFalse([t for t in cap.texts() if value.strip() in t], what)
            code, obj = await node.call("GET", "/api/registries", "Config-pass-1")
            self.assertEqual(code, 200, (what, obj))
            self.assertEqual((await node.call("GET", "/api/me", value or "x"))[0], 401, what)
        # the same bad row again: not logged again (a RESYNC every reconnect)
        cap = Captured(self)
        await node.secret.refresh()
        self.assertFalse([t for t in cap.texts() if "refused" in t])
        # a good row takes over again; removing it falls back to config.toml
        self.put_row(hash_admin_password(NEW))
        await node.secret.refresh()
        self.assertEqual((await node.call("GET", "/api/registries", "Config-pass-1"))[0], 401)
        self.assertEqual((await node.call("GET", "/api/registries", NEW))[0], 200)
        self.put_row(None)
        await node.secret.refresh()
        self.assertEqual((await node.call("GET", "/api/registries", NEW))[0], 401)
        self.assertEqual((await node.call("GET", "/api/registries", "Config-pass-1"))[0], 200)

    @coro
    async def test_a_hostile_row_is_replaced_by_a_change_with_configs_password(self):
        node = Node(self, self.hub, password="Config-pass-1")
        self.put_row("Plain-text-pass-9")
        await node.secret.refresh()
        self.assertEqual((await node.change("Plain-text-pass-9", NEW))[0], 401)  # not a password
        code, obj = await node.change("Config-pass-1", NEW)
        self.assertEqual(code, 200, obj)
        self.assertTrue(verify_admin_sync(NEW, self.row()["value"]))

    @coro
    async def test_resync_re_reads_the_row(self):
        self.put_row(hash_admin_password(NEW))  # written while nobody listened
        self.assertIsNone(self.b.secret.value)
        self.b.bus.resync(set())
        await self.b.secret.wait()
        self.assertTrue(verify_admin_sync(NEW, self.b.secret.value))
        self.assertEqual((await self.b.call("GET", "/api/registries", NEW))[0], 200)

    @coro
    async def test_not_loaded_yet_is_503_not_configs_password(self):
        node = Node(self, self.hub, password="Config-pass-1")
        self.assertFalse(node.secret.loaded)
        code, obj = await node.call("GET", "/api/me", "Config-pass-1")
        self.assertEqual(code, 503, obj)
        self.assertNotIn("Config-pass-1", json.dumps(obj))
        await node.secret.refresh()
        self.assertEqual((await node.call("GET", "/api/me", "Config-pass-1"))[0], 200)

    @coro
    async def test_unreadable_database_during_the_change_is_503_and_changes_nothing(self):
        def broken(sql, params=()):
            raise RuntimeError("connection to server lost")

        self.patch(self.db, "query", broken)
        code, obj = await self.a.change(DEFAULT_ADMIN_PASSWORD, NEW)
        self.assertEqual(code, 503, obj)
        self.assertNotIn("lost", obj["error"])
        self.assertEqual(self.hub.sent, [])

    @coro
    async def test_a_failed_write_logs_no_part_of_either_hash(self):
        self.assertEqual((await self.a.change(DEFAULT_ADMIN_PASSWORD, NEW))[0], 200)
        old = self.row()["value"]
        seen = []

        class Refusing:
            def execute(self, sql, params=()):
                seen.append(params)
                # what PostgreSQL says of a failing row (a CHECK constraint, say): the hash lies
                # across the point where the message is cut to one short line
                raise RuntimeError('new row for relation "cluster_secrets" violates check constraint '
                                   f'"value_short"\nDETAIL:  Failing row contains (admin_password, '
                                   f'{params[0]}, 1.0) where value = {params[-1]}')

        self.patch(self.db, "write", lambda f, *a: Deferred.fromCoroutine(_call(f, Refusing())))
        cap = Captured(self)
        code, obj = await self.a.change(NEW, "Another-pass-22")
        self.assertEqual(code, 503, obj)
        [(new, _at, _row, expected)] = seen
        self.assertEqual(expected, old)
        logged = "\n".join(cap.texts()) + json.dumps(obj)
        self.assertIn("violates check constraint", logged)
        for h in (new, old):
            for i in range(0, len(h) - 12, 4):
                self.assertNotIn(h[i:i + 12], logged)

    @coro
    async def test_validation_is_unchanged(self):
        for body, field in (({"current_password": DEFAULT_ADMIN_PASSWORD, "new_password": "short"},
                             "new_password"),
                            ({"current_password": "Wrong-pass-1", "new_password": NEW}, "current_password"),
                            ({"current_password": DEFAULT_ADMIN_PASSWORD,
                              "new_password": DEFAULT_ADMIN_PASSWORD}, "new_password")):
            code, obj = await self.a.call("PUT", "/api/me/password", DEFAULT_ADMIN_PASSWORD, body)
            self.assertEqual(code, 400, obj)
            self.assertIn(field, obj["fields"])
        self.assertIsNone(self.row())
        self.assertEqual(self.hub.sent, [])


TwoNodesPostgresTests = on_postgresql(TwoNodesTests)


class BlockingLoadTests(unittest.TestCase):
    """The read at start, on a blocking connection (SQLite has the table too)."""

    def setUp(self):
        import sqlite3

        from zmirror.db.sqlite import migrate

        path = Path(self.mktemp())
        migrate(path)
        self.conn = sqlite3.connect(str(path), isolation_level=None)
        self.addCleanup(self.conn.close)

    def test_a_hostile_row_at_start_is_refused_with_a_log_line(self):
        self.conn.execute("INSERT INTO cluster_secrets (name, value, created_at) VALUES (?, ?, 1)",
                          (ROW, "Plain-text-pass-9"))
        cap = Captured(self)
        secret = ClusterAdminPassword(None, None, None)
        self.assertTrue(secret.load_blocking(self.conn))
        self.assertTrue(secret.loaded)
        self.assertIsNone(secret.value)
        self.assertTrue([t for t in cap.texts() if "refused (not a password hash" in t], cap.texts())
        self.assertFalse([t for t in cap.texts() if "Plain-text-pass-9" in t])

    def test_a_database_error_leaves_it_not_loaded(self):
        self.conn.close()
        cap = Captured(self)
        secret = ClusterAdminPassword(None, None, None)
        self.assertFalse(secret.load_blocking(self.conn))
        self.assertFalse(secret.loaded)
        self.assertTrue([t for t in cap.texts() if "answer 503" in t], cap.texts())


# --- whole services on one real PostgreSQL -----------------------------------------------------


async def http(base, method, path, password=None, body=None, user="admin"):
    import treq

    headers = dict(basic(user, password)) if password is not None else {}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    resp = await treq.request(method, base + path, data=data, headers=headers, persistent=False)
    text = await resp.content()
    return resp.code, (json.loads(text) if text else None)


async def within(predicate, timeout, what):
    """Poll the async ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await deferLater(reactor, 0.05, lambda: None)


class ClusterServiceTests(unittest.TestCase):
    """Nodes built by zmirror.tap.makeService on one PostgreSQL database, over real sockets."""

    def setUp(self):
        from tests.fixtures.pgserver import fresh_database

        self.url = fresh_database(self)
        self.nodes = []
        for name in ("a", "b"):
            self.node(name)

    def node(self, name, before_start=None):
        from tests.fixtures.helpers import write_default_config
        from zmirror.tap import Options, makeService

        data = Path(self.mktemp()).resolve() / name
        write_default_config(data)
        cfg = data / "config.toml"
        line = '# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"'
        cfg.write_text(cfg.read_text().replace(line, f'url = "{self.url}"'))
        if before_start is not None:
            before_start(data)
        opts = Options()
        opts.parseOptions(["--data", str(data), "--listen", "tcp:0:interface=127.0.0.1"])
        top = makeService(opts, reactor)
        top.data = data
        top.config_path = cfg
        top.startService()
        port = reactor.listenTCP(0, top.components.site, interface="127.0.0.1")
        top.base = f"http://127.0.0.1:{port.getHost().port}"

        async def stop():
            await port.stopListening()
            await top.stopService()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        self.nodes.append(top)
        return top

    async def listening(self):
        from tests.fixtures.helpers import eventually

        for top in self.nodes:
            bus = top.components.bus
            await eventually(lambda: bus.connects >= 1, what="listening")
            secret = top.components.cluster_admin_password
            self.assertIsNotNone(secret, "the node has no cluster admin password")
            await secret.wait()

    def row(self):
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            r = conn.execute("SELECT value FROM cluster_secrets WHERE name = %s", (ROW,)).fetchone()
        return None if r is None else r[0]

    async def follows(self, node, new, old, what):
        async def ok():
            refused = (await http(node.base, "GET", "/api/registries", old))[0] == 401
            return refused and (await http(node.base, "GET", "/api/registries", new))[0] == 200

        return await within(ok, 2.0, what)

    @coro
    async def test_a_change_through_node_a_applies_on_node_b_within_2_s(self):
        await self.listening()
        a, b = self.nodes
        before = [n.config_path.read_bytes() for n in self.nodes]
        self.assertEqual(await http(b.base, "GET", "/api/registries", DEFAULT_ADMIN_PASSWORD),
                         (403, GATED))
        start = time.monotonic()
        code, obj = await http(a.base, "PUT", "/api/me/password", DEFAULT_ADMIN_PASSWORD,
                               {"current_password": DEFAULT_ADMIN_PASSWORD, "new_password": NEW})
        self.assertEqual((code, obj), (200, {"username": "admin", "default_password": False}))
        done = await self.follows(b, NEW, DEFAULT_ADMIN_PASSWORD, "the new password on node b")
        self.assertLess(done - start, 2.0)
        code, obj = await http(b.base, "GET", "/api/me", NEW)
        self.assertEqual((code, obj), (200, {"username": "admin", "default_password": False}))
        self.assertEqual((await http(a.base, "GET", "/api/me", DEFAULT_ADMIN_PASSWORD))[0], 401)
        value = self.row()
        self.assertTrue(value.startswith("$argon2id$") and verify_admin_sync(NEW, value))
        # config.toml is not written on PostgreSQL (either node)
        self.assertEqual([n.config_path.read_bytes() for n in self.nodes], before)
        # a node started now reads the row before it serves anything
        c = self.node("c")
        self.assertEqual((await http(c.base, "GET", "/api/me", DEFAULT_ADMIN_PASSWORD))[0], 401)
        self.assertEqual((await http(c.base, "GET", "/api/registries", NEW))[0], 200)
        # SIGHUP re-reads config.toml; the cluster's password stays in force
        b.components.reloader.reload()
        await b.components.cluster_admin_password.wait()
        self.assertEqual((await http(b.base, "GET", "/api/registries", NEW))[0], 200)
        self.assertEqual((await http(b.base, "GET", "/api/me", DEFAULT_ADMIN_PASSWORD))[0], 401)

    @coro
    async def test_a_read_only_config_does_not_break_the_change(self):
        def read_only(path, text):
            raise OSError(30, "Read-only file system")

        self.patch(config_module, "write_preserving_mode", read_only)
        await self.listening()
        a, b = self.nodes
        a.config_path.chmod(0o444)
        before = a.config_path.read_bytes()
        code, obj = await http(a.base, "PUT", "/api/me/password", DEFAULT_ADMIN_PASSWORD,
                               {"current_password": DEFAULT_ADMIN_PASSWORD, "new_password": NEW})
        self.assertEqual(code, 200, obj)
        self.assertEqual(a.config_path.read_bytes(), before)
        await self.follows(b, NEW, DEFAULT_ADMIN_PASSWORD, "the new password on node b")

    @coro
    async def test_the_cli_on_postgresql_writes_the_row_and_running_nodes_follow(self):
        from zmirror import cli

        await self.listening()
        a, b = self.nodes
        before = a.config_path.read_bytes()
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", io.StringIO(NEW + "\n"))
        start = time.monotonic()
        self.assertEqual(cli.main(["--data", str(a.data), "admin-password", "--stdin"]), 0)
        value = self.row()
        self.assertTrue(verify_admin_sync(NEW, value))
        self.assertEqual(a.config_path.read_bytes(), before)
        self.assertNotIn(value, out.getvalue() + err.getvalue())
        self.assertNotIn(NEW, out.getvalue() + err.getvalue())
        self.assertIn("within 2 s", err.getvalue())
        for node in (a, b):
            done = await self.follows(node, NEW, DEFAULT_ADMIN_PASSWORD, "the CLI's password")
            self.assertLess(done - start, 2.0)
        # a second change through the CLI replaces the row (no current password needed there)
        self.patch(sys, "stdin", io.StringIO("Second-cli-pass-2\n"))
        self.assertEqual(cli.main(["--data", str(a.data), "admin-password", "--stdin"]), 0)
        await self.follows(b, "Second-cli-pass-2", NEW, "the second CLI password")

    @coro
    async def test_no_default_password_warning_once_the_cluster_has_one(self):
        # config.toml keeps admin123 on every node; the cluster's row is what applies
        from zmirror import cli

        await self.listening()
        a = self.nodes[0]

        def check_config():
            err = io.StringIO()
            self.patch(sys, "stdout", io.StringIO())
            self.patch(sys, "stderr", err)
            self.assertEqual(cli.main(["--data", str(a.data), "check-config"]), 0)
            return err.getvalue()

        self.assertIn("admin password is still the default", check_config())
        self.patch(sys, "stdin", io.StringIO(NEW + "\n"))
        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(cli.main(["--data", str(a.data), "admin-password", "--stdin"]), 0)
        self.assertNotIn("still the default", check_config())
        cap = Captured(self)
        self.node("c")
        self.assertFalse([t for t in cap.texts() if "still the default" in t], cap.texts())

    @coro
    async def test_a_hostile_row_at_start_keeps_configs_password(self):
        import psycopg

        await self.listening()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("INSERT INTO cluster_secrets (name, value, created_at) VALUES (%s, %s, 1)",
                         (ROW, "Plain-text-pass-9"))
        cap = Captured(self)
        c = self.node("c", before_start=lambda data: (data / "config.toml").write_text(
            (data / "config.toml").read_text().replace('password = "admin123"',
                                                       'password = "Config-pass-1"')))
        self.assertTrue([t for t in cap.texts() if "refused (not a password hash" in t], cap.texts())
        self.assertFalse([t for t in cap.texts() if "Plain-text-pass-9" in t])
        self.assertEqual((await http(c.base, "GET", "/api/registries", "Config-pass-1"))[0], 200)
        self.assertEqual((await http(c.base, "GET", "/api/me", "Plain-text-pass-9"))[0], 401)
