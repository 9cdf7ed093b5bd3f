"""SQLite through ``twisted.enterprise.adbapi``: the connection settings, the
0600 database files, the migrations (``PRAGMA user_version``) and
:class:`Database` (reader pools and ONE writer on one file).

Design: docs/design/database.md.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from twisted.enterprise import adbapi
from twisted.logger import Logger

from zmirror.config.files import private_dir, private_file
from zmirror.db.errors import DatabaseError
from zmirror.db.pools import Pools
from zmirror.db.schema import latest_version, migrations, split_sql

log = Logger()

BUSY_TIMEOUT_MS = 10_000

# files SQLite keeps next to the database (WAL mode; a rollback journal if one is left)
SIDE_FILES = ("-wal", "-shm", "-journal")


def configure(conn: sqlite3.Connection) -> None:
    """The settings of every connection: busy timeout, WAL, synchronous=NORMAL, foreign keys."""
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


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
        configure(conn)
        for version, name, sql in migrations():
            if version <= current:
                continue
            try:
                conn.execute("BEGIN IMMEDIATE")
                for statement in split_sql(sql):
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
            cp_openfun=configure,
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


__all__ = ["BUSY_TIMEOUT_MS", "SIDE_FILES", "Database", "configure", "migrate", "secure_files"]
