"""Database errors: the one-line start-up problem (:class:`DatabaseError`) and
the store-level errors the admin API maps to HTTP answers."""

from __future__ import annotations

import sqlite3
import sys


class DatabaseError(Exception):
    """A user-facing database problem at start (one line, no traceback)."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """An error's message on one line, at most ``limit`` characters (for
    :class:`DatabaseError` texts and log lines); the error's type name when it
    has no message."""
    return " ".join(str(e).split())[:limit] or type(e).__name__


def is_unique_violation(e: BaseException) -> bool:
    """A UNIQUE constraint failed (SQLite or PostgreSQL)."""
    if isinstance(e, sqlite3.IntegrityError):
        return "UNIQUE" in str(e).upper()
    # a psycopg error exists only once psycopg is imported: no import here
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(e, psycopg.errors.UniqueViolation)


class StoreError(Exception):
    pass


class NotFound(StoreError):
    """No row with that id (→ 404)."""


class Conflict(StoreError):
    """A unique value already exists (→ 409).  ``field`` names it."""

    def __init__(self, field: str, message: str = "already exists"):
        self.field = field
        super().__init__(f"{field}: {message}")


class InvalidField(ValueError):
    """Bad input for one field; ``str(e)`` is the reason, ``field`` names the field (→ 400)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(message)
