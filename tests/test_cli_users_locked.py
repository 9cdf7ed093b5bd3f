"""``zmirror user locked|unlock`` and the password policy of ``zmirror user add|passwd``,
on a temporary data directory; the locks a server wrote, the releases it follows."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.helpers import coro, first_start
from zmirror import cli
from zmirror.auth.lockout import Lockout
from zmirror.auth.lockoutrecords import LockoutRecords
from zmirror.auth.passwords import fast_context
from zmirror.cli import users as cli_users
from zmirror.cli.common import open_database
from zmirror.config import load_config
from zmirror.db.lockouts import LockoutStore


class UserLockedCLITests(unittest.TestCase):
    def setUp(self):
        self.data = Path(self.mktemp()).resolve() / "data"
        first_start(self.data)
        self.patch(cli_users, "_hash_user_password", lambda pw: fast_context().hash(pw))
        self.cfg = load_config(self.data)
        self.db = open_database(self.cfg)  # migrated, as the server's first start leaves it
        self.addCleanup(self.db.close)
        # the server's side: its lockout and the rows it writes, on a clock near now
        self.clock = Clock()
        self.clock.advance(time.time())
        self.lockout = Lockout(self.clock, max_account=3, max_ip=100, cooldown=300)
        self.records = LockoutRecords(self.lockout, LockoutStore(self.db), clock=self.clock)

    def run_cli(self, *argv, stdin: str = ""):
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", io.StringIO(stdin))
        code = cli.main(["--data", str(self.data), *argv])
        return code, out.getvalue(), err.getvalue()

    def ok(self, *argv, stdin=""):
        code, out, err = self.run_cli(*argv, stdin=stdin)
        self.assertEqual(code, 0, err)
        return out

    def refused(self, *argv, stdin=""):
        code, out, err = self.run_cli(*argv, stdin=stdin)
        self.assertEqual(code, 1, (out, err))
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertNotIn("Traceback", err)
        return err

    def test_add_and_passwd_follow_the_password_policy(self):
        err = self.refused("user", "add", "alice", "--stdin", stdin="x\n")
        self.assertIn("password: must be at least 8 characters", err)
        self.assertIn("no users", self.ok("user", "list"))
        self.ok("user", "add", "alice", "--stdin", stdin="eight-ch\n")
        err = self.refused("user", "passwd", "alice", "--stdin", stdin="short\n")
        self.assertIn("password: must be at least 8 characters", err)
        self.ok("user", "passwd", "alice", "--stdin", stdin="a-longer-one\n")

    @coro
    async def test_locked_and_unlock(self):
        self.assertIn("nothing is locked", self.ok("user", "locked"))
        self.assertEqual(json.loads(self.ok("user", "locked", "--json")), [])
        for _ in range(3):
            self.lockout.failure("user:mallory", "10.0.0.1")
        self.lockout.failure("admin", "10.0.0.2")
        out = self.ok("user", "locked")
        self.assertIn("mallory", out)
        self.assertIn("registry", out)
        (lock,) = json.loads(self.ok("user", "locked", "--json"))
        self.assertEqual((lock["kind"], lock["name"], lock["login"], lock["failures"]),
                         ("account", "mallory", "registry", 3))
        self.assertIn("nothing named 'bob' is locked", self.refused("user", "unlock", "bob"))
        self.refused("user", "unlock", "bad\x01name")
        await self.records.poll()  # the server's baseline poll
        out = self.ok("user", "unlock", "MALLORY")
        self.assertIn("unlocked account mallory (registry logins)", out)
        self.assertIn("nothing is locked", self.ok("user", "locked"))
        self.assertTrue(self.lockout.check("user:mallory", ""), "until the server polls")
        self.clock.advance(2)
        self.assertEqual(await self.records.poll(), 1)
        self.assertEqual(self.lockout.check("user:mallory", ""), 0)
        # by the lock's id
        for _ in range(3):
            self.lockout.failure("user:eve", "10.0.0.3")
        (lock,) = json.loads(self.ok("user", "locked", "--json"))
        self.ok("user", "unlock", lock["id"])
        self.assertEqual(await self.records.poll(), 1)
        self.assertEqual(self.lockout.check("user:eve", ""), 0)
