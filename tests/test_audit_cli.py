"""The audit trail of the ``zmirror`` commands: actor ``cli:<os user>``, the change with
its before/after, secrets masked; read back through GET /api/audit (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import sqlite3
import sys
import time
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.cli import CLIWithAPICase
from tests.fixtures.helpers import coro, first_start
from tests.fixtures.pgserver import on_postgresql
from zmirror import cli
from zmirror.auth.lockout import Lockout
from zmirror.auth.lockoutrecords import LockoutRecords
from zmirror.cli.common import cli_actor, open_database
from zmirror.config import load_config
from zmirror.db.auditlog import AuditStore
from zmirror.db.lockouts import LockoutStore
from zmirror.db.retention import RetentionStore

USER_PW = "Us3r-secret-pw!"
USER_PW2 = "Us3r-other-pw!!"
UPSTREAM_PW = "upstream-S3cret"
PROXY_PW = "S0cks-pw-secret"


class AuditCommandTests(CLIWithAPICase):
    def setUp(self):
        super().setUp()
        self.client = self.stub(self.make_api(audit=AuditStore(self.db, self.clock, node="n1"),
                                              retention_store=RetentionStore(self.db, self.clock)))

    @coro
    async def test_commands_are_recorded(self):
        self.ok("user", "add", "sam", "--stdin", stdin=USER_PW + "\n")
        self.ok("user", "passwd", "sam", "--stdin", stdin=USER_PW2 + "\n")
        self.ok("user", "disable", "sam")
        self.ok("whitelist", "add", "library/nginx")
        self.ok("whitelist", "remove", "library/nginx")
        self.ok("registry", "add", "private", "https://registry.internal:5000", "--username", "u",
                "--password-file", "-", stdin=UPSTREAM_PW + "\n")
        self.ok("registry", "set", "private", "--proxy-file", "-",
                stdin=f"socks5h://sock:{PROXY_PW}@127.0.0.1:1080\n")
        self.ok("registry", "remove", "private")
        self.ok("retention", "add", "docker.io", "--max-age-days", "30")
        self.ok("cache", "purge", "--repository", "nginx")
        # a refused command records nothing
        self.refused("user", "disable", "nobody")

        code, _h, obj = await self.call("GET", "/api/audit?limit=500")
        self.assertEqual(code, 200, obj)
        rows = obj["entries"][::-1]
        node = load_config(self.data).server.node
        self.assertEqual([x["action"] for x in rows],
                         ["user.create", "user.update", "user.update", "whitelist.create",
                          "whitelist.delete", "registry.create", "registry.update", "registry.delete",
                          "cache.rule.create", "cache.purge"])
        for x in rows:
            self.assertEqual((x["actor"], x["node"], x["client_ip"]), (cli_actor(), node, ""))
            for secret in (USER_PW, USER_PW2, UPSTREAM_PW, PROXY_PW, "$argon2"):
                self.assertNotIn(secret, repr(x))
        self.assertTrue(cli_actor().startswith("cli:"))
        self.assertEqual(rows[0]["after"]["username"], "sam")
        self.assertEqual(rows[1]["after"]["password"], "****")
        self.assertEqual((rows[2]["before"]["enabled"], rows[2]["after"]["enabled"]), (True, False))
        self.assertEqual(rows[4]["before"]["prefix"], "library/nginx")
        self.assertIs(rows[5]["after"]["has_password"], True)
        self.assertIn("****", repr(rows[6]["after"]["proxy"]))
        self.assertEqual(rows[9]["target"], "cache?repository=nginx")
        code, _h, obj = await self.call("GET", "/api/audit?action=registry.")
        self.assertEqual(obj["total"], 3)


AuditCommandPostgresTests = on_postgresql(AuditCommandTests)


class AuditBackupAndPasswordTests(CLIWithAPICase):
    """SQLite only: ``zmirror backup`` copies the database, audit trail included;
    ``zmirror admin-password`` is recorded without the password."""

    def test_backup_has_the_trail(self):
        self.ok("whitelist", "add", "library/nginx")
        dest = self.mktemp()
        self.ok("backup", dest)
        copy = sqlite3.connect(str(next(p for p in Path(dest).iterdir() if p.suffix == ".db")))
        self.addCleanup(copy.close)
        rows = copy.execute("SELECT actor, action, target FROM audit_log").fetchall()
        self.assertEqual(rows, [(cli_actor(), "whitelist.create", "whitelists/1")])

    def test_admin_password(self):
        secret = "N3w-admin-pass!"
        self.ok("admin-password", "--stdin", stdin=secret + "\n")
        rows = self.db.conn.execute("SELECT actor, action, target, before, after FROM audit_log").fetchall()
        self.assertEqual(rows, [(cli_actor(), "admin.password", "admin", None, '{"password": "****"}')])


class AuditUnlockTests(unittest.TestCase):
    """``zmirror user unlock`` is recorded as lockout.delete (the locks it lifted)."""

    def setUp(self):
        self.data = Path(self.mktemp()).resolve() / "data"
        first_start(self.data)
        self.db = open_database(load_config(self.data))
        self.addCleanup(self.db.close)
        # the server's side: its lockout and the rows it writes, on a clock near now
        self.clock = Clock()
        self.clock.advance(time.time())
        self.lockout = Lockout(self.clock, max_account=3, max_ip=100, cooldown=300)
        self.records = LockoutRecords(self.lockout, LockoutStore(self.db), clock=self.clock)

    def ok(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(cli.main(["--data", str(self.data), *argv]), 0, err.getvalue())

    @coro
    async def test_unlock_is_recorded(self):
        for _ in range(3):
            self.lockout.failure("user:mallory", "10.0.0.1")
        await self.records.poll()
        self.ok("user", "unlock", "mallory")
        rows = self.db.conn.execute("SELECT actor, action, target, before FROM audit_log").fetchall()
        self.assertEqual(rows, [(cli_actor(), "lockout.delete", "lockouts/mallory",
                                 '[{"kind": "account", "login": "registry", "name": "mallory"}]')])
