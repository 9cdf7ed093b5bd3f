"""Notice commits to the users / whitelists / registries tables made by other
processes (the ``zmirror`` CLI), so a running server can re-read its stores.

:class:`ChangeWatcher` reads ``PRAGMA data_version`` on one dedicated
connection and, when it moved, compares a cheap fingerprint per table.

Design: docs/design/database.md ("SQLite: the data_version watch").
"""

from __future__ import annotations

import sqlite3
from typing import Any, Optional

from twisted.internet.defer import succeed
from twisted.internet.threads import deferToThreadPool

from zmirror.db.sqlite import BUSY_TIMEOUT_MS

TABLES = ("users", "whitelists", "registries", "policy_rules")

_FINGERPRINT = ("SELECT count(*), total(id), max(updated_at), total(updated_at), total(enabled)"
                " FROM {table}")


class ChangeWatcher:
    """``check()`` → Deferred firing with the set of :data:`TABLES` whose content
    changed since the previous check.

    The first check reports every table (there is nothing to compare with).
    Not reentrant: callers wait for one check before starting the next.
    """

    def __init__(self, path: Any, reactor: Any, threadpool: Any, tables: tuple[str, ...] = TABLES):
        self.path = str(path)
        self.reactor = reactor
        self.threadpool = threadpool
        self.tables = tables
        self._conn: Optional[sqlite3.Connection] = None
        self._version: Optional[int] = None
        self._prints: dict[str, tuple] = {}
        self.checks = 0  # data_version reads
        self.fingerprints = 0  # fingerprint queries (the version had changed)

    @classmethod
    def for_database(cls, db: Any, **kw: Any) -> "ChangeWatcher":
        """Checks on ``db``'s reader thread pool, with its own connection."""
        return cls(db.path, db.reactor, db.reader.threadpool, **kw)

    def check(self):
        return deferToThreadPool(self.reactor, self.threadpool, self._check)

    def close(self):
        """Close the connection (on a pool thread if it runs); returns a Deferred."""
        if self._conn is None or not getattr(self.threadpool, "started", True):
            self._close()
            return succeed(None)
        return deferToThreadPool(self.reactor, self.threadpool, self._close)

    # --- on a pool thread ------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = 1")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check(self) -> set[str]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        self.checks += 1
        # the version first: a commit landing between the two reads is then seen
        # by the fingerprint now or by the version on the next check
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return set()
        self.fingerprints += 1
        prints = {}
        for table in self.tables:
            prints[table] = tuple(conn.execute(_FINGERPRINT.format(table=table)).fetchone())
        changed = {t for t in self.tables if self._prints.get(t) != prints[t]}
        self._version, self._prints = version, prints
        return changed

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        self._version = None
        if conn is not None:
            conn.close()


__all__ = ["ChangeWatcher", "TABLES"]
