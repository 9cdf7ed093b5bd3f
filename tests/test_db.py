import sqlite3
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial import unittest

from zmirror.db import Database, DatabaseError, latest_version, migrate


class MigrateTests(unittest.TestCase):
    def setUp(self):
        self.path = Path(self.mktemp()) / "registry.db"

    def test_fresh(self):
        v = migrate(self.path)
        self.assertEqual(v, latest_version())
        self.assertGreaterEqual(v, 1)
        conn = sqlite3.connect(self.path)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        self.assertTrue({"users", "registries", "whitelists", "access_logs"} <= tables)
        regs = conn.execute("SELECT url, priority, enabled FROM registries").fetchall()
        self.assertEqual(regs, [("https://registry-1.docker.io", 1, 1)])
        idx = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        self.assertIn("access_logs_created_at", idx)
        conn.close()

    def test_idempotent(self):
        migrate(self.path)
        migrate(self.path)
        conn = sqlite3.connect(self.path)
        self.assertEqual(conn.execute("SELECT count(*) FROM registries").fetchone()[0], 1)
        conn.close()

    def test_newer_database_refused_untouched(self):
        self.path.parent.mkdir(parents=True)
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE keepme (x)")
        conn.execute("PRAGMA user_version = 999")
        conn.commit()
        conn.close()
        before = self.path.read_bytes()
        with self.assertRaises(DatabaseError) as e:
            migrate(self.path)
        self.assertIn("newer", str(e.exception))
        self.assertEqual(self.path.read_bytes(), before)

    def test_not_a_database(self):
        self.path.parent.mkdir(parents=True)
        self.path.write_bytes(b"this is not sqlite" * 100)
        with self.assertRaises(DatabaseError):
            migrate(self.path)


class PoolTests(unittest.TestCase):
    def setUp(self):
        self.path = Path(self.mktemp()) / "registry.db"
        migrate(self.path)
        self.db = Database(self.path, reactor)
        self.db.start()
        self.addCleanup(self.db.close)

    async def _many_writes(self):
        ds = [
            self.db.execute(
                "INSERT INTO whitelists (prefix, created_at, updated_at) VALUES (?, 0, 0)", (f"p{i}",)
            )
            for i in range(200)
        ]
        results = await DeferredList(ds, consumeErrors=True)
        return results

    def test_concurrent_writes_serialized(self):
        d = Deferred.fromCoroutine(self._many_writes())

        def check(results):
            self.assertTrue(all(ok for ok, _ in results))
            return self.db.query("SELECT count(*) AS n FROM whitelists")

        d.addCallback(check)
        d.addCallback(lambda rows: self.assertEqual(rows[0]["n"], 200))
        return d

    def test_pragmas_on_pool_connections(self):
        def pragmas(txn):
            return [txn.execute(f"PRAGMA {p}").fetchone()[0] for p in
                    ("foreign_keys", "busy_timeout", "synchronous", "journal_mode")]

        d = self.db.read(pragmas)
        d.addCallback(lambda r: self.assertEqual(r, [1, 10000, 1, "wal"]))
        return d
