"""The database watch: CLI changes reach a running server within 2 s without SIGHUP."""

import io
import os
import sqlite3
import sys
from pathlib import Path
from urllib.parse import urlencode

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.fixtures.auth import basic, make_env
from tests.fixtures.helpers import Captured, coro, write_default_config
from tests.fixtures.pgserver import temp_database
from zmirror import cli
from zmirror.cli import users as cli_users
from zmirror.auth.passwords import fast_context
from zmirror.config import DEFAULT_CONFIG
from zmirror.db.watch import TABLES, ChangeWatcher
from zmirror.dbwatch import DB_POLL_INTERVAL, DatabaseWatchService
from zmirror.reload import Reloader, Stores
from zmirror.tap import Options, makeService

FORM = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
M = "http://mirror/v2/{}/manifests/latest"


def other_connection(db) -> sqlite3.Connection:
    """A second process's view: its own connection, autocommit."""
    conn = sqlite3.connect(str(db.path), isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


class ChangeWatcherTests(unittest.TestCase):
    def setUp(self):
        self.db = temp_database(self)
        self.watcher = ChangeWatcher.for_database(self.db)
        self.addCleanup(self.watcher.close)
        self.other = other_connection(self.db)
        self.addCleanup(self.other.close)

    @coro
    async def test_reports_only_tables_changed_by_other_connections(self):
        self.assertEqual(await self.watcher.check(), set(TABLES))  # first check: everything
        self.assertEqual(await self.watcher.check(), set())
        self.assertEqual(self.watcher.fingerprints, 1)  # unchanged version: no fingerprint query
        self.other.execute("INSERT INTO users (username, password_hash, created_at, updated_at)"
                           " VALUES ('ivan', 'x', 1, 1)")
        self.assertEqual(await self.watcher.check(), {"users"})
        self.other.execute("UPDATE users SET enabled = 0, updated_at = 2 WHERE username = 'ivan'")
        self.other.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('a', 1, 1)")
        self.assertEqual(await self.watcher.check(), {"users", "whitelists"})
        self.other.execute("DELETE FROM registries")
        self.assertEqual(await self.watcher.check(), {"registries"})
        self.assertEqual(await self.watcher.check(), set())

    @coro
    async def test_server_writes_to_other_tables_cost_a_fingerprint_not_a_reload(self):
        await self.watcher.check()
        before = self.watcher.fingerprints
        # what the server's writer connection does all the time (access-log batches)
        await self.db.execute("INSERT INTO access_logs (created_at) VALUES (1)")
        self.assertEqual(await self.watcher.check(), set())
        self.assertEqual(self.watcher.fingerprints, before + 1)
        # its own user writes are seen (a harmless re-read of the users store)
        await self.db.execute("INSERT INTO users (username, password_hash, created_at, updated_at)"
                              " VALUES ('jo', 'x', 1, 1)")
        self.assertEqual(await self.watcher.check(), {"users"})

    @coro
    async def test_the_check_uses_one_dedicated_read_only_connection(self):
        await self.watcher.check()
        conn = self.watcher._conn
        for _ in range(5):
            await self.watcher.check()
            self.assertIs(self.watcher._conn, conn)
        with self.assertRaises(sqlite3.OperationalError):
            conn.execute("DELETE FROM users")
        await self.watcher.close()
        self.assertIsNone(self.watcher._conn)
        # reopened on demand; what changed meanwhile is still reported
        self.other.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('b', 1, 1)")
        self.assertEqual(await self.watcher.check(), {"whitelists"})


class WatchServiceTests(unittest.TestCase):
    """The poll on a Clock against a real SQLite file, changes made with the CLI."""

    @coro
    async def setUp(self):
        self.env = make_env(self, lockout_kw={"max_account": 50, "max_ip": 500})
        await self.env.whitelists.create("helloz")
        self.alice = await self.env.accounts.create("alice", "alice-pw1")
        # a data directory whose config points the CLI at the test's database
        self.data = Path(self.mktemp()).resolve() / "data"
        write_default_config(self.data)
        path = self.data / "config.toml"
        path.write_text(DEFAULT_CONFIG.replace('path = "registry.db"',
                                               f'path = "{self.env.db.path.resolve()}"'))
        os.chmod(path, 0o600)
        self.patch(cli_users, "_hash_user_password", lambda pw: fast_context().hash(pw))
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", io.StringIO())
        self.patch(sys, "stderr", self.stderr)
        self.reloader = Reloader(None, Stores(users=self.env.users, whitelists=self.env.whitelists))
        self.watch = DatabaseWatchService(ChangeWatcher.for_database(self.env.db), self.reloader,
                                          self.env.clock)
        self.watch.startService()  # first check at once: the baseline
        self.addCleanup(self.watch.stopService)
        await self.watch.wait()

    def cli(self, *argv, stdin=None):
        if stdin is not None:
            self.patch(sys, "stdin", io.StringIO(stdin))
        self.assertEqual(cli.main(["--data", str(self.data), *argv]), 0, self.stderr.getvalue())

    async def tick(self):
        self.env.clock.advance(DB_POLL_INTERVAL)
        await self.watch.wait()

    async def login(self, password="alice-pw1"):
        q = urlencode({"account": "alice", "client_id": "docker", "offline_token": "true",
                       "service": "zmirror", "scope": "repository:secret/x:pull"})
        return await self.env.json("GET", "http://mirror/token?" + q,
                                   headers={b"Authorization": [basic("alice", password)]})

    async def refresh(self, refresh_token):
        form = urlencode({"grant_type": "refresh_token", "refresh_token": refresh_token,
                          "client_id": "docker", "scope": "repository:secret/x:pull",
                          "service": "zmirror"}).encode()
        resp, body = await self.env.json("POST", "http://mirror/token", headers=FORM, data=form)
        return resp.code

    async def pull(self, token):
        resp, _ = await self.env.call("GET", M.format("secret/x"),
                                      headers={b"Authorization": [b"Bearer " + token.encode()]})
        return resp.code

    @coro
    async def test_user_disabled_with_the_cli_loses_its_tokens_after_one_poll(self):
        resp, body = await self.login()
        self.assertEqual(resp.code, 200, body)
        refresh_token, access_token = body["refresh_token"], body["token"]
        self.assertEqual(await self.refresh(refresh_token), 200)
        self.assertEqual(await self.pull(access_token), 200)

        self.cli("user", "disable", "alice")
        self.assertNotIn("on SIGHUP", self.stderr.getvalue())
        self.assertIn("2 s", self.stderr.getvalue())
        # the server's copy is stale until the next poll ...
        self.assertTrue((await self.env.users.auth_user(self.alice["id"]))["enabled"])
        self.assertEqual(await self.refresh(refresh_token), 200)
        self.env.clock.advance(DB_POLL_INTERVAL - 0.1)
        await self.watch.wait()
        self.assertTrue((await self.env.users.auth_user(self.alice["id"]))["enabled"])
        # ... which re-reads it
        await self.tick()
        self.assertFalse((await self.env.users.auth_user(self.alice["id"]))["enabled"])
        self.assertEqual(await self.refresh(refresh_token), 401)
        self.assertEqual(await self.pull(access_token), 401)
        resp, body = await self.login()
        self.assertEqual(resp.code, 401, body)

    @coro
    async def test_password_change_and_new_user_and_whitelist(self):
        resp, body = await self.login()
        refresh_token = body["refresh_token"]
        self.cli("user", "passwd", "alice", "--stdin", stdin="new-pw-123\n")
        self.cli("user", "add", "ivan", "--stdin", stdin="ivan-pw-12\n")
        conn = other_connection(self.env.db)
        now = self.env.clock.seconds()
        conn.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('team', ?, ?)",
                     (now, now))
        conn.close()
        self.assertFalse(self.env.whitelist.matcher.allows("team/app"))
        await self.tick()
        self.assertEqual(await self.refresh(refresh_token), 401)
        users = {u["username"] for u in self.env.users._by_id.values()}
        self.assertEqual(users, {"alice", "ivan"})
        self.assertTrue(self.env.whitelist.matcher.allows("team/app"))
        resp, _ = await self.login("new-pw-123")
        self.assertEqual(resp.code, 200)

    @coro
    async def test_quiet_when_nothing_changed_and_only_changed_stores_reread(self):
        cap = Captured(self)
        loads = []
        original = self.env.whitelists.load

        async def counting_load():
            loads.append(True)
            return await original()

        self.env.whitelists.load = counting_load
        for _ in range(3):
            await self.tick()
        await self.env.db.execute("INSERT INTO access_logs (created_at) VALUES (1)")
        await self.tick()
        self.assertEqual(loads, [])
        self.assertEqual([t for t in cap.texts() if "re-read" in t], [])
        self.cli("user", "disable", "alice")
        await self.tick()
        self.assertEqual(loads, [])  # the whitelist did not change
        self.assertIn("database changed: users re-read from the database", cap.texts())

    @coro
    async def test_stop_waits_for_the_check_and_closes_the_connection(self):
        self.env.clock.advance(DB_POLL_INTERVAL)
        self.assertIsNotNone(self.watch._pending)
        await self.watch.stopService()
        self.assertIsNone(self.watch._pending)
        self.assertIsNone(self.watch.watcher._conn)
        polls = self.watch.polls
        self.env.clock.advance(10 * DB_POLL_INTERVAL)
        self.assertEqual(self.watch.polls, polls)

    @coro
    async def test_a_failing_check_is_logged_once_and_retried(self):
        cap = Captured(self)
        watcher = self.watch.watcher
        real = watcher._check
        watcher._check = lambda: (_ for _ in ()).throw(sqlite3.OperationalError("disk I/O error"))
        for _ in range(3):
            await self.tick()
        self.assertEqual(len([t for t in cap.texts() if "checking for changes failed" in t]), 1)
        self.flushLoggedErrors(sqlite3.OperationalError)
        watcher._check = real
        self.cli("user", "disable", "alice")
        await self.tick()
        self.assertFalse((await self.env.users.auth_user(self.alice["id"]))["enabled"])


class WiringTests(unittest.TestCase):
    def setUp(self):
        self.data = Path(self.mktemp()).resolve() / "data"
        write_default_config(self.data)
        opts = Options()
        opts.parseOptions(["--data", str(self.data), "--listen", "tcp:0:interface=127.0.0.1"])
        self.top = makeService(opts, reactor)
        self.c = self.top.components
        self.addCleanup(self.c.db.close)

    @inlineCallbacks
    def test_make_service_watches_the_database(self):
        watch = self.c.db_watch
        self.assertIn(watch, list(self.top))
        self.assertIs(list(self.top)[-1], watch)  # stops first, before the database closes
        self.assertEqual(watch.interval, 2.0)
        self.assertIs(watch.reloader, self.c.reloader)
        self.patch(cli_users, "_hash_user_password", lambda pw: fast_context().hash(pw))
        self.patch(sys, "stdout", io.StringIO())
        self.patch(sys, "stderr", io.StringIO())
        yield watch.poll()  # the baseline (what start does)
        self.patch(sys, "stdin", io.StringIO("pw-of-ivan\n"))
        self.assertEqual(cli.main(["--data", str(self.data), "user", "add", "ivan", "--stdin"]), 0)
        conn = sqlite3.connect(str(self.data / "registry.db"))
        conn.execute("UPDATE registries SET url = 'https://mirror.test', updated_at = 5 WHERE id = 1")
        conn.commit()
        conn.close()
        yield watch.poll()
        self.assertEqual((yield self.c.access.users.auth_user(1))["username"], "ivan")
        self.assertEqual([u.url for u in self.c.upstreams.upstreams], ["https://mirror.test"])
        yield watch.watcher.close()


class PostgresWiringTests(unittest.TestCase):
    """On PostgreSQL the bus (LISTEN/NOTIFY) replaces the SQLite data_version watch
    (tests/test_cluster_bus.py tests it working)."""

    def test_the_bus_watches_postgresql(self):
        from tests.fixtures.pgserver import fresh_database
        from twisted.logger import formatEvent, globalLogPublisher

        url = fresh_database(self)
        data = Path(self.mktemp()).resolve() / "data"
        write_default_config(data)
        cfg = data / "config.toml"
        line = '# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"'
        cfg.write_text(cfg.read_text().replace(line, f'url = "{url}"'))
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        opts = Options()
        opts.parseOptions(["--data", str(data), "--listen", "tcp:0:interface=127.0.0.1"])
        top = makeService(opts, reactor)
        self.addCleanup(top.components.db.close)
        self.assertEqual(top.components.db.dialect, "postgresql")
        self.assertIsNone(top.components.db_watch)
        self.assertFalse([s for s in top if type(s).__name__ == "DatabaseWatchService"])
        self.assertIs(top.components.table_changes.reloader, top.components.reloader)
        self.assertEqual(type(top.components.bus).__name__, "PostgresBus")
        texts = [formatEvent(e) for e in seen]
        self.assertFalse([t for t in texts if "change watch: off" in t], texts)
        self.assertFalse([t for t in texts if "pg-test-secret" in t])
