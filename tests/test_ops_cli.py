"""The ``zmirror`` command line on temporary data directories."""

import hashlib
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

from tests.fixtures.helpers import REPO, first_start, write_default_config
from zmirror import cli
from zmirror.cli import users as cli_users
from zmirror.auth.passwords import (
    Passwords,
    fast_context,
    is_hash,
    is_legacy_md5,
    make_context,
    verify_admin_sync,
)
from zmirror.config import DEFAULT_CONFIG, load_config


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


PG_URL_LINE = '# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"'


class _Row(tuple):
    """A psycopg row that behaves as sqlite3.Row does: by index, by name, dict()."""

    def __new__(cls, names, values):
        row = super().__new__(cls, values)
        row._names = names
        return row

    def keys(self):
        return list(self._names)

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)


def _pg_rows(cursor):
    names = [d.name for d in cursor.description] if cursor.description else []
    return lambda values: _Row(names, values)


class CLITestCase(unittest.TestCase):
    def setUp(self):
        self.work = Path(self.mktemp()).resolve()
        self.work.mkdir()
        self.data = self.work / "data"
        # cheap hashing in tests (the CLI uses the production argon2 context otherwise)
        self.patch(cli_users, "_hash_user_password", lambda pw: fast_context().hash(pw))
        if getattr(self, "backend", "sqlite") == "postgresql":
            from tests.fixtures.pgserver import fresh_database

            self.url = fresh_database(self)
            write_default_config(self.data, {PG_URL_LINE: f'url = "{self.url}"'})
        else:
            first_start(self.data)  # the commands create nothing

    def run_cli(self, *argv, stdin: str = "", data=None):
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", io.StringIO(stdin))
        code = cli.main(["--data", str(data or self.data), *argv])
        return code, out.getvalue(), err.getvalue()

    def ok(self, *argv, stdin=""):
        code, out, err = self.run_cli(*argv, stdin=stdin)
        self.assertEqual(code, 0, err)
        return out

    def db(self, data=None):
        if getattr(self, "backend", "sqlite") == "postgresql" and data is None:
            from zmirror.db import postgresql

            conn = postgresql.connect(self.url, autocommit=True)
            conn.row_factory = _pg_rows
            self.addCleanup(conn.close)
            return conn
        conn = sqlite3.connect(str((data or self.data) / "registry.db"))
        conn.row_factory = sqlite3.Row
        self.addCleanup(conn.close)
        return conn

    def user(self, name, data=None):
        return self.db(data).execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone()


class UserTests(CLITestCase):
    def test_add_list_disable_enable(self):
        out = self.ok("user", "add", "alice", "--stdin", stdin="pa55word-alice\n")
        self.assertIn("user alice created", out)
        row = self.user("alice")
        self.assertEqual(row["enabled"], 1)
        self.assertTrue(make_context().verify("pa55word-alice", row["password_hash"]))
        self.assertNotIn("pa55word", row["password_hash"])
        out = self.ok("user", "list")
        self.assertIn("alice", out)
        self.assertNotIn(row["password_hash"], out)
        self.ok("user", "disable", "alice")
        self.assertEqual(self.user("alice")["enabled"], 0)
        listed = json.loads(self.ok("user", "list", "--json"))
        self.assertEqual([(u["username"], u["enabled"]) for u in listed], [("alice", False)])
        self.assertNotIn("password_hash", listed[0])
        before = self.user("alice")["updated_at"]
        self.ok("user", "enable", "alice")
        after = self.user("alice")
        self.assertEqual(after["enabled"], 1)
        self.assertGreater(after["updated_at"], before)  # ends outstanding tokens

    def test_passwd(self):
        self.ok("user", "add", "bob", "--stdin", stdin="first-pass\n")
        old = self.user("bob")
        self.ok("user", "passwd", "bob", "--stdin", stdin="second-pass\n")
        new = self.user("bob")
        self.assertNotEqual(old["password_hash"], new["password_hash"])
        self.assertTrue(make_context().verify("second-pass", new["password_hash"]))
        self.assertGreater(new["updated_at"], old["updated_at"])

    def test_add_disabled(self):
        self.ok("user", "add", "carol", "--stdin", "--disabled", stdin="pw-carol\n")
        self.assertEqual(self.user("carol")["enabled"], 0)

    def test_errors_are_one_line(self):
        self.ok("user", "add", "dave", "--stdin", stdin="dave-pw-1\n")
        for argv, stdin, expect in [
            (("user", "add", "DAVE", "--stdin"), "pw\n", "already exists"),
            (("user", "add", "admin", "--stdin"), "pw\n", "admin account"),
            (("user", "add", "bad name", "--stdin"), "pw\n", "may only contain"),
            (("user", "add", "eve", "--stdin"), "", "no password on stdin"),
            (("user", "passwd", "nobody", "--stdin"), "pw\n", "no user named 'nobody'"),
            (("user", "disable", "nobody"), "", "no user named"),
        ]:
            code, out, err = self.run_cli(*argv, stdin=stdin)
            self.assertEqual(code, 1, (argv, out, err))
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertIn(expect, err)
            self.assertNotIn("Traceback", err)
        self.assertIsNone(self.user("eve"))

    def test_not_a_tty_without_stdin_flag(self):
        code, _, err = self.run_cli("user", "add", "frank", stdin="x\n")
        self.assertEqual(code, 1)
        self.assertIn("--stdin", err)

    def test_console_script_entry_point(self):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run([sys.executable, "-m", "zmirror.cli", "--data", str(self.data),
                               "check-config"], capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("config.toml: OK", proc.stdout)
        self.assertIn("admin password is still the default", proc.stderr)

    def test_user_added_by_cli_logs_in_through_the_server_code(self):
        # what the CLI writes is what the server's Authenticator accepts
        from twisted.internet.task import Clock

        from zmirror.auth.credentials import Authenticator
        from zmirror.auth.lockout import Lockout

        self.ok("user", "add", "grace", "--stdin", stdin="grace-pw-1\n")
        row = dict(self.user("grace"))
        row["enabled"] = bool(row["enabled"])

        class Users:
            async def get_by_username(self, name):
                return row if name == "grace" else None

            def refresh_one(self, r):
                pass

            async def record_login(self, uid):
                pass

        clock = Clock()
        auth = Authenticator(Users(), Passwords(fast_context(), clock=clock), Lockout(clock), clock=clock)
        d = auth.authenticate("grace", "grace-pw-1", "127.0.0.1")
        self.assertEqual(self.successResultOf(d)["username"], "grace")
        d = auth.authenticate("grace", "wrong", "127.0.0.1")
        self.assertIsNone(self.successResultOf(d))


class AdminPasswordTests(CLITestCase):
    def test_hash_stored_rest_preserved(self):
        self.ok("check-config")
        cfg_path = self.data / "config.toml"
        before = cfg_path.read_text()
        self.assertEqual(stat.S_IMODE(cfg_path.stat().st_mode), 0o600)
        out = self.ok("admin-password", "--stdin", stdin="N3w-admin-pass\n")
        self.assertIn("admin password updated", out)
        after = cfg_path.read_text()
        self.assertEqual(stat.S_IMODE(cfg_path.stat().st_mode), 0o600)
        self.assertNotIn("N3w-admin-pass", after)
        changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
        self.assertEqual(len(changed), 1)
        self.assertEqual(changed[0][0], 'password = "admin123"')
        self.assertEqual(len(before.splitlines()), len(after.splitlines()))
        cfg = load_config(self.data)
        self.assertTrue(is_hash(cfg.admin.password))
        self.assertTrue(verify_admin_sync("N3w-admin-pass", cfg.admin.password))
        self.assertFalse(cfg.admin_password_is_default)
        # every comment survives
        self.assertEqual([ln for ln in before.splitlines() if ln.startswith("#")],
                         [ln for ln in after.splitlines() if ln.startswith("#")])

    def test_refuses_default_and_mismatch(self):
        code, _, err = self.run_cli("admin-password", "--stdin", stdin="admin123\n")
        self.assertEqual(code, 1)
        self.assertIn("default", err)
        self.assertIn('password = "admin123"', (self.data / "config.toml").read_text())

    def test_refuses_what_the_api_refuses(self):
        # the same rules as PUT /api/me/password (zmirror.config.admin_password_problem)
        self.ok("check-config")
        before = (self.data / "config.toml").read_bytes()
        for password, words in (("short7!", "at least 8"), ("x" * 1025, "at most 1024"),
                                ("with\ttab-inside", "control characters")):
            code, _, err = self.run_cli("admin-password", "--stdin", stdin=password + "\n")
            self.assertEqual(code, 1, password)
            self.assertIn(words, err)
            self.assertNotIn("Traceback", err)
        self.assertEqual((self.data / "config.toml").read_bytes(), before)

    def test_odd_layouts_keep_their_comments(self):
        self.ok("check-config")
        path = self.data / "config.toml"
        text = ('# top comment\n[admin]  # the admin\nusername = "root"\n'
                'password = \'old-literal\'   # trailing note\n\n# about logs\n[log]\nlevel = "info"\n')
        path.write_text(text)
        os.chmod(path, 0o600)
        self.ok("admin-password", "--stdin", stdin="N3w-admin-pass\n")
        after = path.read_text()
        for keep in ("# top comment\n", "[admin]  # the admin\n", 'username = "root"\n',
                     "   # trailing note\n", "# about logs\n[log]\nlevel = \"info\"\n"):
            self.assertIn(keep, after)
        cfg = load_config(self.data)
        self.assertEqual(cfg.admin.username, "root")
        self.assertTrue(verify_admin_sync("N3w-admin-pass", cfg.admin.password))
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        # an inline table is edited in place
        path.write_text('admin = { username = "root", password = "old-password" } # inline\n')
        self.ok("admin-password", "--stdin", stdin="N3w-admin-pass\n")
        self.assertIn("# inline", path.read_text())
        self.assertTrue(verify_admin_sync("N3w-admin-pass", load_config(self.data).admin.password))

    def test_refuses_a_file_the_server_would_refuse(self):
        self.ok("check-config")
        path = self.data / "config.toml"
        path.write_text('admin = "not a table"\n')
        code, _, err = self.run_cli("admin-password", "--stdin", stdin="N3w-admin-pass\n")
        self.assertEqual(code, 1)
        self.assertIn("admin", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(path.read_text(), 'admin = "not a table"\n')

    def test_set_text_variants(self):
        from zmirror.cli import adminpassword as cli_adminpassword
        from zmirror.config.adminpassword import set_admin_password_text, update_admin_password

        h = "$argon2id$v=19$m=19456,t=2,p=1$abc$def"
        # no password key in [admin]: added to the table, the rest kept
        t = set_admin_password_text('[admin]\nusername = "root"\n\n[log]\nlevel = "info"\n', h)
        self.assertEqual(t, f'[admin]\nusername = "root"\npassword = "{h}"\n\n[log]\nlevel = "info"\n')
        # no [admin] section
        t = set_admin_password_text('[server]\nport = 1\n', h)
        self.assertTrue(t.endswith(f'[admin]\npassword = "{h}"\n'))
        self.assertTrue(t.startswith('[server]\nport = 1\n'))
        # a "password" in another section is not touched; the line's comment stays
        t = set_admin_password_text('[log]\npassword = "x"\n[admin]\npassword = "y" # old\n', h)
        self.assertEqual(t, f'[log]\npassword = "x"\n[admin]\npassword = "{h}" # old\n')
        # a value that needs escaping stays a valid TOML string
        import toml

        t = set_admin_password_text('[admin]\npassword = "y"\n', 'a"b\\c')
        self.assertEqual(toml.loads(t)["admin"]["password"], 'a"b\\c')
        # one editor for both: the CLI's admin-password and PUT /api/me/password
        self.assertIs(cli_adminpassword.update_admin_password, update_admin_password)

    def test_mode_kept_when_not_0600(self):
        self.ok("check-config")
        cfg_path = self.data / "config.toml"
        os.chmod(cfg_path, 0o640)
        self.ok("admin-password", "--stdin", stdin="An0ther-pass\n")
        self.assertEqual(stat.S_IMODE(cfg_path.stat().st_mode), 0o640)


class CheckConfigTests(CLITestCase):
    def test_ok_and_errors(self):
        out = self.ok("check-config")
        self.assertIn("OK", out)
        (self.data / "config.toml").write_text(DEFAULT_CONFIG.replace('listen = ""', 'listen = "bogus:x"'))
        code, _, err = self.run_cli("check-config")
        self.assertEqual(code, 1)
        self.assertIn("metrics.listen", err)
        (self.data / "config.toml").write_text("[server\n")
        code, _, err = self.run_cli("check-config")
        self.assertEqual(code, 1)
        self.assertIn("invalid TOML", err)
        self.assertNotIn("Traceback", err)


class BackupTests(CLITestCase):
    def test_backup_and_restore(self):
        self.ok("user", "add", "alice", "--stdin", stdin="pw-alice-1\n")
        self.ok("user", "add", "bob", "--stdin", stdin="pw-bob-12\n")
        (self.data / "token.key").write_text("ab" * 32 + "\n")
        os.chmod(self.data / "token.key", 0o600)
        # a writer with an open transaction does not block an online backup
        writer = sqlite3.connect(str(self.data / "registry.db"), isolation_level=None)
        self.addCleanup(writer.close)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('uncommitted', 0, 0)")
        dest = self.work / "backup-1"
        out = self.ok("backup", str(dest))
        writer.execute("ROLLBACK")
        self.assertIn("backup written", out)
        self.assertEqual(sorted(p.name for p in dest.iterdir()), ["config.toml", "registry.db", "token.key"])
        self.assertEqual(stat.S_IMODE(dest.stat().st_mode), 0o700)
        for p in dest.iterdir():
            self.assertEqual(stat.S_IMODE(p.stat().st_mode), 0o600, p)
        # restore into a fresh data directory
        restored = self.work / "restored"
        restored.mkdir()
        for p in dest.iterdir():
            (restored / p.name).write_bytes(p.read_bytes())
        conn = sqlite3.connect(str(restored / "registry.db"))
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        self.assertEqual(conn.execute("SELECT count(*) FROM whitelists WHERE prefix='uncommitted'").fetchone()[0], 0)
        code, out, err = self.run_cli("user", "list", "--json", data=restored)
        self.assertEqual(code, 0, err)
        self.assertEqual([u["username"] for u in json.loads(out)], ["alice", "bob"])
        self.assertEqual(self.user("alice", restored)["password_hash"], self.user("alice")["password_hash"])
        self.assertEqual((restored / "config.toml").read_text(), (self.data / "config.toml").read_text())
        self.assertEqual(self.run_cli("check-config", data=restored)[0], 0)

    def test_refuses_non_empty_destination(self):
        self.ok("check-config")
        dest = self.work / "full"
        dest.mkdir()
        (dest / "x").write_text("keep me")
        code, _, err = self.run_cli("backup", str(dest))
        self.assertEqual(code, 1)
        self.assertIn("not an empty directory", err)
        self.assertEqual((dest / "x").read_text(), "keep me")


def make_original_db(path: Path) -> None:
    """A database shaped like the original ZMirror's (its exact schema is unknown:
    plausible table and column names, MD5 hex passwords, string timestamps)."""
    conn = sqlite3.connect(str(path))
    conn.executescript(f"""
        CREATE TABLE user (id INTEGER PRIMARY KEY, username TEXT, password TEXT, status INTEGER,
                           create_time TEXT);
        INSERT INTO user VALUES (1, 'alice', '{md5("alice-old-pw")}', 1, '2023-05-01 10:00:00');
        INSERT INTO user VALUES (2, 'bob', '{md5("bob-pw").upper()}', 0, '2023-05-02 11:00:00');
        INSERT INTO user VALUES (3, 'admin', '{md5("x")}', 1, NULL);
        INSERT INTO user VALUES (4, 'bad name!', '{md5("y")}', 1, NULL);
        INSERT INTO user VALUES (5, 'plain', 'not-a-hash', 1, NULL);
        CREATE TABLE registry (id INTEGER PRIMARY KEY, name TEXT, url TEXT, priority INTEGER,
                               enabled INTEGER);
        INSERT INTO registry VALUES (1, 'Docker Hub', 'https://registry-1.docker.io', 1, 1);
        INSERT INTO registry VALUES (2, 'USTC', 'https://docker.mirrors.ustc.edu.cn/', 2, 1);
        INSERT INTO registry VALUES (3, 'Quay', 'quay.io', 3, 0);
        INSERT INTO registry VALUES (4, 'broken', 'ftp://x', 4, 1);
        CREATE TABLE whitelist (id INTEGER PRIMARY KEY, prefix TEXT, created_at INTEGER);
        INSERT INTO whitelist VALUES (1, 'library', 1690000000);
        INSERT INTO whitelist VALUES (2, 'helloz', 1690000000);
        INSERT INTO whitelist VALUES (3, 'bitnami/*', 1690000000);
        INSERT INTO whitelist VALUES (4, '', 1690000000);
    """)
    conn.commit()
    conn.close()


class ImportTests(CLITestCase):
    def setUp(self):
        super().setUp()
        self.source = self.work / "old-registry.db"
        make_original_db(self.source)

    def test_import_and_idempotent(self):
        out = self.ok("import-zmirror", str(self.source))
        self.assertIn("mapped: users=user registries=registry whitelists=whitelist", out)
        self.assertIn("users: 2 imported (MD5 kept, re-hashed at next login)", out)
        self.assertIn("1 skipped (invalid)", out)
        self.assertIn("1 skipped (password)", out)
        self.assertIn("registries: 1 already present, 2 imported, 1 skipped (invalid)", out)
        self.assertIn("whitelists: 3 imported, 1 skipped (invalid)", out)
        alice, bob = self.user("alice"), self.user("bob")
        self.assertEqual(alice["password_hash"], md5("alice-old-pw"))
        self.assertEqual(bob["password_hash"], md5("bob-pw"))  # normalized to lower case
        self.assertEqual((alice["enabled"], bob["enabled"]), (1, 0))
        self.assertAlmostEqual(alice["created_at"], 1682935200.0)
        self.assertIsNone(self.user("admin"))
        regs = {r["url"]: dict(r) for r in self.db().execute("SELECT * FROM registries")}
        self.assertEqual(set(regs), {"https://registry-1.docker.io", "https://docker.mirrors.ustc.edu.cn",
                                     "https://quay.io"})
        self.assertEqual(regs["https://quay.io"]["enabled"], 0)
        self.assertEqual(regs["https://docker.mirrors.ustc.edu.cn"]["priority"], 2)
        prefixes = sorted(r[0] for r in self.db().execute("SELECT prefix FROM whitelists"))
        self.assertEqual(prefixes, ["bitnami/*", "helloz", "library"])
        # the MD5 hash verifies and asks for a re-hash (done by the server at login)
        ok, new = Passwords(fast_context()).verify_sync("alice-old-pw", alice["password_hash"])
        self.assertTrue(ok)
        self.assertTrue(new and not is_legacy_md5(new))
        # second run: nothing new
        out = self.ok("import-zmirror", str(self.source))
        self.assertIn("users: 2 already present", out)
        self.assertIn("registries: 3 already present", out)
        self.assertIn("whitelists: 3 already present", out)
        self.assertNotIn(" imported", out.split("mapped:")[1])
        self.assertEqual(self.db().execute("SELECT count(*) FROM users").fetchone()[0], 2)

    def test_dry_run_writes_nothing(self):
        out = self.ok("import-zmirror", "--dry-run", str(self.source))
        self.assertIn("dry run", out)
        self.assertIn("users: 2 imported", out)
        self.assertEqual(self.db().execute("SELECT count(*) FROM users").fetchone()[0], 0)
        self.assertEqual(self.db().execute("SELECT count(*) FROM whitelists").fetchone()[0], 0)

    def test_plaintext_option(self):
        self.ok("import-zmirror", "--plaintext-passwords", str(self.source))
        row = self.user("plain")
        self.assertTrue(make_context().verify("not-a-hash", row["password_hash"]))

    def test_other_column_names(self):
        other = self.work / "other.db"
        conn = sqlite3.connect(str(other))
        conn.executescript(f"""
            CREATE TABLE users (uid INTEGER PRIMARY KEY, name TEXT, password_hash TEXT, disabled INTEGER);
            INSERT INTO users VALUES (1, 'zoe', '{md5("z")}', 1);
            INSERT INTO users VALUES (2, 'yan', '{md5("y")}', 0);
            CREATE TABLE upstreams (id INTEGER, address TEXT, sort INTEGER, username TEXT, password TEXT);
            INSERT INTO upstreams VALUES (1, 'mirror.example.com:5000', 7, 'u', 'p');
            CREATE TABLE white_list (pattern TEXT, remark TEXT, is_active TEXT);
            INSERT INTO white_list VALUES ('nginx', 'official nginx', 'true');
            INSERT INTO white_list VALUES ('myorg', NULL, 'false');
        """)
        conn.commit()
        conn.close()
        out = self.ok("import-zmirror", str(other))
        self.assertIn("mapped: users=users registries=upstreams whitelists=white_list", out)
        self.assertEqual((self.user("zoe")["enabled"], self.user("yan")["enabled"]), (0, 1))
        reg = self.db().execute("SELECT * FROM registries WHERE url LIKE '%example%'").fetchone()
        self.assertEqual((reg["url"], reg["name"], reg["priority"], reg["username"], reg["password"]),
                         ("https://mirror.example.com:5000", "mirror.example.com", 7, "u", "p"))
        wl = {r["prefix"]: dict(r) for r in self.db().execute("SELECT * FROM whitelists")}
        self.assertEqual(wl["nginx"]["note"], "official nginx")
        self.assertEqual(wl["myorg"]["enabled"], 0)

    def test_bad_sources(self):
        code, _, err = self.run_cli("import-zmirror", str(self.work / "missing.db"))
        self.assertEqual(code, 1)
        self.assertIn("no such file", err)
        junk = self.work / "junk.db"
        junk.write_bytes(b"this is not sqlite" * 100)
        code, _, err = self.run_cli("import-zmirror", str(junk))
        self.assertEqual(code, 1)
        self.assertIn("not a readable SQLite database", err)
        self.ok("check-config")
        if getattr(self, "backend", "sqlite") == "postgresql":
            return  # no database file to import from itself
        code, _, err = self.run_cli("import-zmirror", str(self.data / "registry.db"))
        self.assertEqual(code, 1)
        self.assertIn("own database", err)
        self.assertNotIn("Traceback", err)


class DbCopyTests(CLITestCase):
    """``zmirror db copy --to postgresql://...``: an existing SQLite database moves over."""

    def setUp(self):
        super().setUp()
        from tests.fixtures.pgserver import fresh_database

        self.url = fresh_database(self)
        self.ok("user", "add", "alice", "--stdin", stdin="alice-pw-1\n")
        self.ok("user", "add", "bob", "--stdin", "--disabled", stdin="bob-pw-1\n")
        self.ok("user", "add", "carol", "--stdin", stdin="carol-pw-1\n")
        self.ok("user", "disable", "alice")
        self.ok("import-zmirror", str(self._source()))
        conn = sqlite3.connect(str(self.data / "registry.db"))
        conn.execute("DELETE FROM users WHERE username = 'bob'")  # a gap in the ids
        conn.executemany("INSERT INTO access_logs (created_at, repository, bytes, cache_hit, status)"
                         " VALUES (?, ?, ?, ?, ?)",
                         [(1.7e9 + i, f"library/r{i}", 3 << 31, i % 2 if i % 3 else None, 200)
                          for i in range(2500)])
        conn.execute("INSERT INTO cache_manifests VALUES ('sha256:m', 'application/json', ?, 1.5, 2.5)",
                     (b"\x00{}\xff",))
        conn.execute("INSERT INTO cache_tags (repository, tag, media_type, digest, fetched_at) VALUES ('library/app', 'v1', 'application/json', 'sha256:m', 3.5)")
        conn.execute("INSERT INTO cache_blobs VALUES ('sha256:b', ?, 1.0, 2.0)", (5 << 30,))
        conn.execute("INSERT INTO cache_blob_repos VALUES ('sha256:b', 'library/app')")
        conn.commit()
        conn.close()

    def _source(self):
        source = self.work / "old-registry.db"
        make_original_db(source)
        return source

    def tables(self, conn):
        names = [r[0] for r in sqlite3.connect(str(self.data / "registry.db")).execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {t}").fetchall()) for t in names}

    def test_copy_all_tables_and_identities(self):
        from zmirror.db import postgresql

        code, out, err = self.run_cli("db", "copy", "--to", self.url)
        self.assertEqual(code, 0, err)
        self.assertNotIn("pg-test-secret", out + err)
        self.assertIn("access_logs: 2500 rows", out)
        lite = sqlite3.connect(str(self.data / "registry.db"))
        self.addCleanup(lite.close)
        pg = postgresql.connect(self.url, autocommit=True)
        self.addCleanup(pg.close)
        want, got = self.tables(lite), self.tables(pg)
        self.assertEqual(set(got), set(want))
        from zmirror.cache.index import BLOB_TABLES, MANIFEST_TABLES

        # the blob index stays with this node's files: its local file, not the shared database;
        # the manifest cache (no files) goes to the shared database
        self.assertIn("cache index: 2 blob rows copied", out)
        self.assertIn("cache_manifests: 1 rows", out)
        index = sqlite3.connect(str(self.data / "cache" / "index.sqlite"))
        self.addCleanup(index.close)
        local = self.tables(index)
        for table in want:
            if table in BLOB_TABLES:
                self.assertEqual(got[table], [], table)
                self.assertEqual(local[table], want[table], table)
            else:
                self.assertEqual(got[table], want[table], table)
                if table in MANIFEST_TABLES:
                    self.assertEqual(local[table], [], table)
        self.assertEqual(got["cache_manifests"], [("sha256:m", "application/json", b"\x00{}\xff", 1.5, 2.5)])
        self.assertEqual(got["cache_tags"], [("library/app", "v1", "application/json", "sha256:m", 3.5, None)])
        self.assertEqual([r[:2] for r in want["users"]], [(1, "alice"), (3, "carol")])
        # the identities continue after the copied ids
        for table in ("users", "registries", "whitelists", "access_logs"):
            top = lite.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
            cols = {"users": "(username, password_hash, created_at, updated_at) VALUES ('new', 'h', 0, 0)",
                    "registries": "(name, url, created_at, updated_at) VALUES ('n', 'https://n', 0, 0)",
                    "whitelists": "(prefix, created_at, updated_at) VALUES ('new/*', 0, 0)",
                    "access_logs": "(created_at) VALUES (0)"}[table]
            new = pg.execute(f"INSERT INTO {table} {cols} RETURNING id").fetchone()[0]
            self.assertEqual(new, top + 1, table)

    def test_refuses_a_non_empty_target_unless_forced(self):
        from zmirror.db import postgresql

        self.ok("db", "copy", "--to", self.url)
        with postgresql.connect(self.url, autocommit=True) as pg:
            pg.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('only/here', 0, 0)")
        code, out, err = self.run_cli("db", "copy", "--to", self.url)
        self.assertEqual(code, 1)
        self.assertIn("already holds data", err)
        self.assertIn("--force", err)
        self.assertNotIn("pg-test-secret", err)
        with postgresql.connect(self.url, autocommit=True) as pg:
            self.assertEqual(pg.execute("SELECT count(*) FROM whitelists WHERE prefix = 'only/here'")
                             .fetchone()[0], 1)  # untouched
        self.ok("db", "copy", "--to", self.url, "--force")
        with postgresql.connect(self.url, autocommit=True) as pg:
            self.assertEqual(pg.execute("SELECT count(*) FROM whitelists WHERE prefix = 'only/here'")
                             .fetchone()[0], 0)
            self.assertEqual(pg.execute("SELECT count(*) FROM access_logs").fetchone()[0], 2500)

    def test_then_the_cli_works_on_postgresql(self):
        self.ok("db", "copy", "--to", self.url)
        cfg = self.data / "config.toml"
        cfg.write_text(cfg.read_text().replace(PG_URL_LINE, f'url = "{self.url}"'))
        from zmirror.db import postgresql

        listed = json.loads(self.ok("user", "list", "--json"))
        self.assertEqual([(u["id"], u["username"], u["enabled"]) for u in listed],
                         [(1, "alice", False), (3, "carol", True)])
        self.ok("user", "add", "zed", "--stdin", stdin="zed-pw-12\n")
        self.ok("user", "disable", "carol")
        with postgresql.connect(self.url) as pg:
            rows = pg.execute("SELECT id, username, enabled FROM users ORDER BY id").fetchall()
        self.assertEqual(rows, [(1, "alice", 0), (3, "carol", 0), (4, "zed", 1)])
        # the SQLite file is left as it was
        lite = sqlite3.connect(str(self.data / "registry.db"))
        self.addCleanup(lite.close)
        self.assertEqual(lite.execute("SELECT count(*) FROM users").fetchone()[0], 2)

    def test_bad_target(self):
        for url, why in (("mysql://x/y", "postgresql://"),
                         (self.url.replace("pg-test-secret", "Wr0ngPw"), "cannot connect")):
            code, out, err = self.run_cli("db", "copy", "--to", url)
            self.assertEqual(code, 1)
            self.assertIn(why, err)
            self.assertNotIn("Wr0ngPw", err)
            self.assertNotIn("Traceback", err)


# the same CLI tests against a real PostgreSQL ([database] url; tests/fixtures/pgserver.py)
from tests.fixtures.pgserver import on_postgresql  # noqa: E402

UserPostgresTests = on_postgresql(UserTests)
ImportPostgresTests = on_postgresql(ImportTests)
