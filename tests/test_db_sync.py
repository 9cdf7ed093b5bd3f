"""zmirror.db.sync: the stores' database interface on one blocking connection
(what the command line runs the server's stores on)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.fixtures.admin import sync_database
from tests.fixtures.pgserver import on_postgresql
from zmirror.db.errors import Conflict
from zmirror.db.sync import SyncDatabase, result
from zmirror.db.users import UserStore


class Boom(Exception):
    pass


class _Clock:
    def seconds(self) -> float:
        return 1_700_000_000.0


def _insert(name: str):
    def run(txn):
        txn.execute("INSERT INTO whitelists (prefix, enabled, note, created_at, updated_at)"
                    " VALUES (?, 1, '', 0, 0)", (name,))

    return run


def _insert_then_fail(name: str):
    def run(txn):
        _insert(name)(txn)
        raise Boom(name)

    return run


class SyncDatabaseTests(unittest.TestCase):
    def setUp(self):
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        self.db = sync_database(self, tmp / "registry.db")
        self.addCleanup(self.db.close)

    def prefixes(self) -> list[str]:
        return [r["prefix"] for r in result(self.db.query("SELECT prefix FROM whitelists ORDER BY id"))]

    def test_is_the_store_interface(self):
        self.assertIsInstance(self.db, SyncDatabase)
        self.assertEqual(self.db.dialect, getattr(self, "backend", "sqlite"))
        for name in ("read", "write", "query", "execute"):
            self.assertTrue(callable(getattr(self.db, name)), name)

    def test_a_write_is_committed_and_fires_at_once(self):
        d = self.db.write(_insert("a/"))
        self.assertIsInstance(d, Deferred)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.successResultOf(self.db.execute(
            "UPDATE whitelists SET note = ? WHERE prefix = ?", ("n", "a/")))[1], 1)
        self.assertEqual(self.prefixes(), ["a/"])

    def test_a_failed_interaction_is_rolled_back(self):
        self.failureResultOf(self.db.write(_insert_then_fail("a/")), Boom)
        self.assertEqual(self.prefixes(), [])
        with self.assertRaises(Boom):
            result(self.db.write(_insert_then_fail("b/")))
        self.db.write(_insert("c/"))  # the connection is usable afterwards
        self.assertEqual(self.prefixes(), ["c/"])

    def test_transaction_is_all_or_nothing(self):
        with self.assertRaises(Boom):
            with self.db.transaction():
                result(self.db.write(_insert("a/")))
                result(self.db.write(_insert("b/")))
                raise Boom("dry run")
        self.assertEqual(self.prefixes(), [])
        with self.db.transaction():
            result(self.db.write(_insert("a/")))
            result(self.db.write(_insert("b/")))
        self.assertEqual(self.prefixes(), ["a/", "b/"])

    def test_a_failed_interaction_inside_a_transaction_is_undone_alone(self):
        with self.db.transaction():
            result(self.db.write(_insert("a/")))
            self.failureResultOf(self.db.write(_insert_then_fail("b/")), Boom)
            result(self.db.write(_insert("c/")))
            with self.assertRaises(RuntimeError):
                with self.db.transaction():
                    pass
        self.assertEqual(self.prefixes(), ["a/", "c/"])

    def test_runs_the_server_store(self):
        users = UserStore(self.db, _Clock(), admin_username="admin")
        row = result(users.create_with_hash("ivan", "$hash$1", created_at=5.0))
        self.assertEqual((row["username"], row["created_at"], row["updated_at"]),
                         ("ivan", 5.0, 1_700_000_000.0))
        self.assertEqual(result(users.find("IVAN"))["id"], row["id"])
        self.assertIsNone(result(users.find("nobody")))
        with self.assertRaises(Conflict):
            result(users.create_with_hash("Ivan", "$hash$2"))
        full = result(users.list_with_hashes())
        self.assertEqual([(r["username"], r["password_hash"]) for r in full], [("ivan", "$hash$1")])

    def test_result_of_something_that_waits(self):
        with self.assertRaises(RuntimeError):
            result(Deferred())


SyncDatabasePostgresTests = on_postgresql(SyncDatabaseTests)
