"""The engine the configuration names: SQLite (``database_path``) or
PostgreSQL (``[database] url``), for start-up (migrate, open the pools) and the
CLI (a blocking connection)."""

from __future__ import annotations

import sqlite3
from typing import Any

from zmirror.db import sqlite
from zmirror.db.errors import DatabaseError, one_line

# zmirror.db.postgresql is imported where it is used: it loads psycopg (~0.1 s),
# which a SQLite node never needs


def is_postgresql(config: Any) -> bool:
    return bool(getattr(config.database, "url", ""))


def describe(config: Any) -> str:
    """The database for messages: the file, or the URL without its password."""
    if is_postgresql(config):
        from zmirror.db import postgresql

        return postgresql.redact_url(config.database.url)
    return str(config.database_path)


def migrate_config(config: Any) -> int:
    """Migrate the configured database (SQLite file or PostgreSQL URL). Blocking."""
    if is_postgresql(config):
        from zmirror.db import postgresql

        return postgresql.migrate(config.database.url)
    return sqlite.migrate(config.database_path)


def open_database(config: Any, reactor: Any):
    """The pools for the configured database (not started)."""
    if is_postgresql(config):
        from zmirror.db import postgresql

        return postgresql.PostgresDatabase(config.database.url, reactor)
    return sqlite.Database(config.database_path, reactor)


def connect_config(config: Any):
    """A blocking DB-API connection to the (migrated) configured database, in
    autocommit mode (callers run ``BEGIN`` … ``COMMIT``: :func:`begin_sql`), whose
    ``execute(sql, params)`` takes ``?`` placeholders on both engines."""
    if is_postgresql(config):
        from zmirror.db import postgresql

        try:
            return postgresql.connect(config.database.url, autocommit=True)
        except Exception as e:
            raise DatabaseError(f"{describe(config)}: cannot connect: {one_line(e)}") from None
    conn = sqlite3.connect(str(config.database_path), isolation_level=None)
    sqlite.configure(conn)
    return conn


def begin_sql(conn: Any) -> str:
    """The statement that opens a write transaction on ``conn``."""
    return "BEGIN IMMEDIATE" if isinstance(conn, sqlite3.Connection) else "BEGIN"


__all__ = ["is_postgresql", "describe", "migrate_config", "open_database", "connect_config",
           "begin_sql"]
