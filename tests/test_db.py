import sqlite3
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial import unittest

from zmirror.db.errors import DatabaseError
from zmirror.db.schema import latest_version, migrations, split_sql
from zmirror.db.sqlite import Database, migrate


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


    def test_upstream_tls_columns_added_to_existing_rows(self):
        """0007: a database at version 6 with registries keeps them; they get the
        default proxy (NULL), verification on and empty TLS settings."""
        self.path.parent.mkdir(parents=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        for version, _name, sql in migrations():
            if version > 6:
                break
            for stmt in split_sql(sql):
                conn.execute(stmt)
        conn.execute("PRAGMA user_version = 6")
        conn.execute("INSERT INTO registries (name, url, username, password, created_at, updated_at)"
                     " VALUES ('Quay', 'https://quay.io', 'bot', 'pw', 1, 1)")
        conn.close()
        self.assertEqual(migrate(self.path), latest_version())
        conn = sqlite3.connect(self.path)
        rows = conn.execute("SELECT name, password, proxy, tls_verify, ca, client_cert, client_key,"
                            " server_name FROM registries ORDER BY id").fetchall()
        conn.close()
        self.assertEqual(rows, [("Docker Hub", "", None, 1, "", "", "", ""),
                                ("Quay", "pw", None, 1, "", "", "", "")])


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


class FileModeTests(unittest.TestCase):
    """registry.db holds upstream passwords and password hashes: 0600 whatever the umask."""

    def setUp(self):
        import os

        old = os.umask(0o022)  # permissive: files 0644, directories 0755 by default
        self.addCleanup(os.umask, old)
        self.path = Path(self.mktemp()).resolve() / "data" / "registry.db"

    def mode(self, p):
        import stat

        return stat.S_IMODE(p.stat().st_mode)

    def side(self, suffix):
        return self.path.with_name(self.path.name + suffix)

    def test_new_database_and_wal_files_private(self):
        migrate(self.path)
        self.assertEqual(self.mode(self.path.parent), 0o700, "a directory made for it")
        # -wal and -shm exist while a connection writes in WAL mode
        conn = sqlite3.connect(str(self.path))
        self.addCleanup(conn.close)
        conn.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('p', 0, 0)")
        conn.commit()
        for p in (self.path, self.side("-wal"), self.side("-shm")):
            self.assertTrue(p.exists(), p)
            self.assertEqual(self.mode(p), 0o600, p)

    def test_loose_existing_files_restricted_and_logged(self):
        import os

        from twisted.logger import globalLogPublisher

        migrate(self.path)
        conn = sqlite3.connect(str(self.path))
        self.addCleanup(conn.close)
        conn.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('p', 0, 0)")
        conn.commit()
        for p in (self.path, self.side("-wal"), self.side("-shm")):
            os.chmod(p, 0o644)
        os.chmod(self.path.parent, 0o755)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        migrate(self.path)
        for p in (self.path, self.side("-wal"), self.side("-shm")):
            self.assertEqual(self.mode(p), 0o600, p)
        # an existing directory is not the database's to change (it may be /var/lib)
        self.assertEqual(self.mode(self.path.parent), 0o755)
        warned = [e["problem"] for e in events if "problem" in e]
        self.assertEqual(len(warned), 3, warned)
        self.assertTrue(all("0644" in w and "0600" in w for w in warned), warned)
        # nothing to fix: nothing logged
        del events[:]
        migrate(self.path)
        self.assertEqual([e for e in events if "problem" in e], [])

    def test_database_still_opens_and_keeps_its_data(self):
        migrate(self.path)
        conn = sqlite3.connect(str(self.path))
        conn.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('keep', 0, 0)")
        conn.commit()
        conn.close()
        self.assertEqual(migrate(self.path), latest_version())
        conn = sqlite3.connect(str(self.path))
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT prefix FROM whitelists WHERE prefix='keep'").fetchall(),
                         [("keep",)])
