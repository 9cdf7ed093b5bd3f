"""Relative paths of config.toml: inside the data directory, and a config written
the earlier way (relative to the data directory's parent) still finding its files."""

import io
import os
import sqlite3
import sys
from pathlib import Path

from twisted.trial import unittest

from tests.fixtures.helpers import free_port, start_twistd, stop, wait_port, write_default_config
from zmirror import cli
from zmirror.config import DEFAULT_CONFIG, load_config, parse_config

# what earlier versions generated
OLD_LINES = {'path = "registry.db"': 'path = "./data/registry.db"', 'dir = "cache"': 'dir = "./data/cache"'}


def old_config_text() -> str:
    text = DEFAULT_CONFIG
    for new, old in OLD_LINES.items():
        assert new in text, new
        text = text.replace(new, old)
    return text


def make_sqlite(path: Path, user: str = "") -> None:
    """A SQLite database file at ``path`` (migrated, with ``user`` if given)."""
    from zmirror.db import sqlite as zsqlite

    path.parent.mkdir(parents=True, exist_ok=True)
    zsqlite.migrate(path)
    if user:
        conn = sqlite3.connect(str(path))
        conn.execute("INSERT INTO users (username, password_hash, enabled, created_at, updated_at) "
                     "VALUES (?, 'x', 1, 0, 0)", (user,))
        conn.commit()
        conn.close()


def make_cache(path: Path) -> None:
    (path / "blobs").mkdir(parents=True)
    (path / "zmirror.lock").write_text("")


class GeneratedConfigTests(unittest.TestCase):
    def setUp(self):
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()

    def test_default_says_paths_inside_the_data_dir(self):
        self.assertIn('\npath = "registry.db"\n', DEFAULT_CONFIG)
        self.assertIn('\ndir = "cache"\n', DEFAULT_CONFIG)
        self.assertNotIn("./data/", DEFAULT_CONFIG)
        self.assertNotIn("data directory's parent", DEFAULT_CONFIG)

    def test_any_name_keeps_everything_inside(self):
        for name in ("a", "b", "data", "x-data"):
            data = self.base / name
            cfg = load_config(data)
            self.assertEqual(cfg.database_path, data / "registry.db")
            self.assertEqual(cfg.cache_dir, data / "cache")
            self.assertEqual(cfg.parent_relative, frozenset())
            self.assertEqual(cfg.warnings, ())
            # read again from disk (probing): the same
            again = load_config(data)
            self.assertEqual((again.database_path, again.cache_dir, again.warnings),
                             (cfg.database_path, cfg.cache_dir, ()))

    def test_relative_and_absolute(self):
        cfg = parse_config('[database]\npath = "db/z.db"\n[cache]\ndir = "/var/cache/zm"\n',
                           data_dir=Path("/srv/a"), config_path=Path("/srv/a/config.toml"))
        self.assertEqual(cfg.database_path, Path("/srv/a/db/z.db"))
        self.assertEqual(cfg.cache_dir, Path("/var/cache/zm"))
        self.assertEqual(cfg.resolve("../shared"), Path("/srv/shared"))

    def test_a_new_config_does_not_pick_up_files_beside_the_data_dir(self):
        # on first start the config was just written: nothing on disk is looked at
        make_sqlite(self.base / "registry.db")
        make_cache(self.base / "cache")
        cfg = load_config(self.base / "a")
        self.assertEqual(cfg.database_path, self.base / "a" / "registry.db")
        self.assertEqual(cfg.cache_dir, self.base / "a" / "cache")
        self.assertEqual(cfg.warnings, ())

    def test_a_plain_file_or_directory_beside_it_is_not_taken_for_the_database(self):
        data = self.base / "a"
        write_default_config(data)
        os.chmod(data, 0o700)
        (self.base / "registry.db").write_text("not a database")
        (self.base / "cache").mkdir()  # no cache inside
        cfg = load_config(data)
        self.assertEqual(cfg.database_path, data / "registry.db")
        self.assertEqual(cfg.cache_dir, data / "cache")
        self.assertEqual(cfg.warnings, ())


class OldConfigTests(unittest.TestCase):
    """Configs written by earlier versions: ``./data/…`` read against the parent."""

    def setUp(self):
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()

    def write_old(self, data: Path, text: str | None = None) -> None:
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)
        (data / "config.toml").write_text(old_config_text() if text is None else text)
        os.chmod(data / "config.toml", 0o600)

    def test_generated_form_in_a_data_dir_named_data(self):
        data = self.base / "data"
        self.write_old(data)
        make_sqlite(data / "registry.db", "olduser")
        for probe in (True, False):  # the form alone decides, disk or not
            cfg = parse_config(old_config_text(), data_dir=data, config_path=data / "config.toml",
                               probe=probe)
            self.assertEqual(cfg.database_path, data / "registry.db")
            self.assertEqual(cfg.cache_dir, data / "cache")
        cfg = load_config(data)
        self.assertEqual(cfg.database_path, data / "registry.db")
        self.assertEqual(cfg.cache_dir, data / "cache")
        self.assertEqual(cfg.parent_relative, frozenset({"database.path", "cache.dir"}))
        self.assertEqual(len(cfg.warnings), 2, cfg.warnings)
        db_warning = [w for w in cfg.warnings if "database.path" in w][0]
        self.assertNotIn("\n", db_warning)
        self.assertIn(str(data / "registry.db"), db_warning)
        self.assertIn("'registry.db'", db_warning)  # what to write instead
        cache_warning = [w for w in cfg.warnings if "cache.dir" in w][0]
        self.assertIn("'cache'", cache_warning)

    def test_written_as_suggested_the_warning_goes_and_the_files_stay(self):
        data = self.base / "data"
        self.write_old(data, DEFAULT_CONFIG)  # what the warning says to write
        make_sqlite(data / "registry.db", "olduser")
        cfg = load_config(data)
        self.assertEqual((cfg.database_path, cfg.cache_dir, cfg.warnings),
                         (data / "registry.db", data / "cache", ()))

    def test_old_install_in_another_name_finds_its_database_beside(self):
        # --data /srv/a with the generated ./data/registry.db used /srv/data/registry.db
        data = self.base / "a"
        self.write_old(data)
        make_sqlite(self.base / "data" / "registry.db", "olduser")
        make_cache(self.base / "data" / "cache")
        cfg = load_config(data)
        self.assertEqual(cfg.database_path, self.base / "data" / "registry.db")
        self.assertEqual(cfg.cache_dir, self.base / "data" / "cache")
        self.assertEqual(len(cfg.warnings), 2, cfg.warnings)
        self.assertTrue(all(str(self.base / "data") in w for w in cfg.warnings), cfg.warnings)
        # outside the data dir: the absolute path is what to write
        self.assertTrue(any(repr(str(self.base / "data" / "registry.db")) in w for w in cfg.warnings))

    def test_once_inside_the_data_dir_inside_wins(self):
        data = self.base / "a"
        self.write_old(data)
        make_sqlite(self.base / "data" / "registry.db")
        make_sqlite(data / "data" / "registry.db")
        cfg = load_config(data)
        self.assertEqual(cfg.database_path, data / "data" / "registry.db")

    def test_absent_keys_find_the_earlier_defaults(self):
        data = self.base / "a"
        self.write_old(data, "[server]\nport = 9090\n")
        make_sqlite(self.base / "data" / "registry.db")
        cfg = load_config(data)
        self.assertEqual(cfg.database_path, self.base / "data" / "registry.db")
        self.assertEqual(cfg.database.path, "./data/registry.db")
        self.assertEqual(cfg.cache_dir, data / "cache")  # nothing cached there: the new default
        self.assertEqual(len(cfg.warnings), 1, cfg.warnings)
        self.assertIn("database.path is not set", cfg.warnings[0])

    def test_postgresql_ignores_the_path(self):
        data = self.base / "a"
        self.write_old(data, old_config_text().replace(
            '# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"',
            'url = "postgresql://zmirror@127.0.0.1:5432/zmirror"'))
        make_sqlite(self.base / "data" / "registry.db")
        cfg = load_config(data)
        self.assertNotIn("database.path", cfg.parent_relative)

    def test_the_cli_finds_the_old_database(self):
        data = self.base / "data"
        self.write_old(data)
        make_sqlite(data / "registry.db", "olduser")
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(cli.main(["--data", str(data), "user", "list"]), 0, err.getvalue())
        self.assertIn("olduser", out.getvalue())
        self.assertFalse((data / "data").exists())
        self.assertEqual(cli.main(["--data", str(data), "check-config"]), 0, err.getvalue())
        self.assertIn("warning: ", err.getvalue())
        self.assertIn("'registry.db'", err.getvalue())


class TwoInstancesTests(unittest.TestCase):
    """The real ``twistd -n zmirror --data DIR``: two instances side by side."""

    timeout = 60

    def test_each_keeps_everything_in_its_data_dir(self):
        base = Path(self.mktemp()).resolve() / "x"
        base.mkdir(parents=True)
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        procs, ports = [], []
        try:
            for name in ("a", "b"):
                port = free_port()
                procs.append(start_twistd(work, "zmirror", "--data", str(base / name), "--listen",
                                          f"tcp:{port}:interface=127.0.0.1"))
                ports.append(port)
            for port, proc in zip(ports, procs):
                wait_port(port, proc=proc)
        finally:
            for proc in procs:
                stop(proc)
        self.assertEqual(sorted(os.listdir(base)), ["a", "b"])
        self.assertEqual(os.listdir(work), [])
        for name in ("a", "b"):
            held = set(os.listdir(base / name))
            self.assertTrue({"config.toml", "token.key", "registry.db", "cache"} <= held, held)
            self.assertTrue((base / name / "cache" / "zmirror.lock").exists())
