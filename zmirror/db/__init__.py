"""SQLite through ``twisted.enterprise.adbapi``.

Two pools on one file: readers (a few threads) and ONE writer thread, so writes
are serialized in-process and "database is locked" never reaches a user.  Every
connection gets WAL, ``synchronous=NORMAL``, ``foreign_keys=ON`` and a
``busy_timeout`` from ``cp_openfun``.

The database holds upstream registry passwords and user password hashes: the
file is created 0600 before SQLite opens it (SQLite gives ``-wal`` / ``-shm``
the main file's mode), and looser modes found at start are fixed and logged.

PostgreSQL (``[database] url``) has the same interface in
:mod:`zmirror.db.postgresql`; :func:`migrate_config` / :func:`open_database` /
:func:`connect_config` pick the engine from the configuration.

Migrations run synchronously at start (before the reactor serves anything):
numbered ``migrations/NNNN_*.sql`` files shipped as package data, tracked with
``PRAGMA user_version``.
"""

from __future__ import annotations

import re
import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.enterprise import adbapi
from twisted.logger import Logger

from zmirror.config import private_dir, private_file
from zmirror.db.pools import Pools

log = Logger()

BUSY_TIMEOUT_MS = 10_000

# files SQLite keeps next to the database (WAL mode; a rollback journal if one is left)
SIDE_FILES = ("-wal", "-shm", "-journal")


class DatabaseError(Exception):
    """A user-facing database problem at start (one line, no traceback)."""


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


_BASE = re.compile(r"^(\d+)_[^.]*\.sql$")
_OVERRIDE = re.compile(r"^(\d+)_[^.]*\.(postgresql)\.sql$")


def _migration_files() -> tuple[list[tuple[int, str, str]], dict[int, tuple[str, str]]]:
    """The shipped migrations ``[(version, filename, sql)]`` sorted by version, and
    the PostgreSQL override files ``{version: (filename, sql)}``."""
    base, overrides = [], {}
    pkg = resources.files("zmirror.db") / "migrations"
    for entry in pkg.iterdir():
        m = _BASE.match(entry.name)
        if m:
            base.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
            continue
        m = _OVERRIDE.match(entry.name)
        if m:
            overrides[int(m.group(1))] = (entry.name, entry.read_text(encoding="utf-8"))
    base.sort()
    return base, overrides


def migrations() -> list[tuple[int, str, str]]:
    """``[(version, filename, sql)]`` sorted by version (the SQLite text)."""
    return _migration_files()[0]


def latest_version() -> int:
    ms = migrations()
    return ms[-1][0] if ms else 0


def migrate(path: Path) -> int:
    """Create or upgrade the database at ``path``; returns the resulting version.

    Blocking: call at start, before the reactor runs.
    """
    try:
        secure_files(path)
    except OSError as e:
        raise DatabaseError(f"{path}: cannot create database: {e.strerror}") from None
    try:
        conn = sqlite3.connect(str(path), isolation_level=None)
    except sqlite3.Error as e:
        raise DatabaseError(f"{path}: cannot open database: {e}") from None
    try:
        try:
            # read the version before anything that writes (journal_mode=WAL does)
            current = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise DatabaseError(f"{path}: not a usable SQLite database: {e}") from None
        latest = latest_version()
        if current > latest:
            raise DatabaseError(
                f"{path}: database schema version {current} is newer than this ZMirror "
                f"understands ({latest}); upgrade ZMirror or restore a backup (database left untouched)"
            )
        _configure(conn)
        for version, name, sql in migrations():
            if version <= current:
                continue
            try:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _split_sql(sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                conn.execute("ROLLBACK")
                raise DatabaseError(f"{path}: migration {name} failed: {e}") from None
            current = version
        return current
    finally:
        conn.close()


def secure_files(path: Path) -> None:
    """Create the database file 0600 (and a missing directory 0700) before
    SQLite opens it, whatever the umask; chmod an existing database and its
    ``-wal`` / ``-shm`` / ``-journal`` 0600 if group or others may read them
    (logged as a warning).  An existing directory is left as it is (it may be
    shared, e.g. /var/lib); the data directory is restricted by
    :func:`zmirror.config.load.ensure_data_dir`.  Blocking: call at start."""
    path = Path(path)
    warnings = []
    if not path.parent.exists():
        warnings += private_dir(path.parent, "database directory")
    warnings += private_file(path, "database file")
    for suffix in SIDE_FILES:
        warnings += private_file(path.with_name(path.name + suffix), "database file", create=False)
    for w in warnings:
        log.warn("{problem}", problem=w)


def _split_sql(sql: str) -> list[str]:
    # Statements are separated by ';' at line ends; a PostgreSQL function body keeps its
    # inner ';' on the line of its CREATE FUNCTION (0005_cluster.postgresql.sql).
    out, buf = [], []
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        buf.append(line)
        if line.rstrip().endswith(";"):
            stmt = "\n".join(buf).strip()
            if stmt:
                out.append(stmt)
            buf = []
    rest = "\n".join(buf).strip()
    if rest:
        out.append(rest)
    return out


class Database(Pools):
    """Reader and writer pools on one SQLite file.

    ``read(f, *a)`` / ``write(f, *a)`` run ``f(cursor_or_txn, *a)`` in a
    transaction on a pool thread and return a Deferred.  ``write`` uses the
    single writer connection, so writes never contend with each other.
    """

    dialect = "sqlite"

    def __init__(self, path: Path, reactor: Any, readers: int = 3):
        self.path = path
        self.reactor = reactor
        kw = dict(
            check_same_thread=False,
            cp_openfun=_configure,
            cp_reactor=reactor,
            cp_noisy=False,
        )
        self.reader = adbapi.ConnectionPool(
            "sqlite3", str(path), cp_min=1, cp_max=readers, **kw
        )
        self.writer = adbapi.ConnectionPool("sqlite3", str(path), cp_min=1, cp_max=1, **kw)

    @staticmethod
    def _lastrowid(txn):
        return txn.lastrowid


# --- the engine the configuration names ---------------------------------------------------


def is_postgresql(config: Any) -> bool:
    return bool(getattr(config.database, "url", ""))


def describe(config: Any) -> str:
    """The database for messages: the file, or the URL without its password."""
    if is_postgresql(config):
        from zmirror.db.postgresql import redact_url

        return redact_url(config.database.url)
    return str(config.database_path)


def migrate_config(config: Any) -> int:
    """:func:`migrate` the configured database (SQLite file or PostgreSQL URL). Blocking."""
    if is_postgresql(config):
        from zmirror.db import postgresql

        return postgresql.migrate(config.database.url)
    return migrate(config.database_path)


def open_database(config: Any, reactor: Any):
    """The pools for the configured database (not started)."""
    if is_postgresql(config):
        from zmirror.db.postgresql import PostgresDatabase

        return PostgresDatabase(config.database.url, reactor)
    return Database(config.database_path, reactor)


def connect_config(config: Any):
    """A blocking DB-API connection to the (migrated) configured database, in
    autocommit mode (callers run ``BEGIN`` … ``COMMIT``: :func:`begin_sql`), whose
    ``execute(sql, params)`` takes ``?`` placeholders on both engines."""
    if is_postgresql(config):
        from zmirror.db import postgresql

        try:
            return postgresql.connect(config.database.url, autocommit=True)
        except Exception as e:
            raise DatabaseError(f"{describe(config)}: cannot connect: {postgresql._one_line(e)}") from None
    conn = sqlite3.connect(str(config.database_path), isolation_level=None)
    _configure(conn)
    return conn


def begin_sql(conn: Any) -> str:
    """The statement that opens a write transaction on ``conn``."""
    return "BEGIN IMMEDIATE" if isinstance(conn, sqlite3.Connection) else "BEGIN"


def is_unique_violation(e: BaseException) -> bool:
    """A UNIQUE constraint failed (either engine)."""
    if isinstance(e, sqlite3.IntegrityError):
        return "UNIQUE" in str(e).upper()
    from zmirror.db.postgresql import is_unique_violation as pg

    return pg(e)
