"""The stores' database interface on one blocking connection, in the calling thread.

:class:`SyncDatabase` has what the stores use of :class:`zmirror.db.sqlite.Database`
(``read``, ``write``, ``query``, ``execute``, ``dialect``, ``path``) and runs
each interaction at once in a transaction of its own, returning an
already-fired Deferred; :func:`result` takes the value of a store coroutine run
on it.  So the command line (no reactor, no threads) runs the server's store
code.  :meth:`SyncDatabase.transaction` puts several interactions into one
transaction (all or nothing).
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.python.failure import Failure

from zmirror.db.engine import begin_sql
from zmirror.db.pools import Interactions

_SAVEPOINT = "interaction"


class SyncDatabase(Interactions):
    """Store interactions on ``conn``: a connection in autocommit mode whose
    ``execute`` takes ``?`` placeholders (:func:`zmirror.db.engine.connect_config`, or
    ``sqlite3.connect(..., isolation_level=None)``); this class runs ``BEGIN`` …
    ``COMMIT`` / ``ROLLBACK`` as adbapi would (commit on return, rollback on an
    exception)."""

    def __init__(self, conn: Any, *, path: Optional[Path] = None):
        self.conn = conn
        self.path = path
        self.dialect = "sqlite" if isinstance(conn, sqlite3.Connection) else "postgresql"
        self._outer = False

    def _run(self, f: Callable[..., Any], write: bool, args: tuple, kw: dict) -> Deferred:
        if self._outer:  # inside transaction(): this interaction is a savepoint
            begin = f"SAVEPOINT {_SAVEPOINT}"
            commit = (f"RELEASE SAVEPOINT {_SAVEPOINT}",)
            rollback = (f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", f"RELEASE SAVEPOINT {_SAVEPOINT}")
        else:
            begin = begin_sql(self.conn) if write else "BEGIN"
            commit, rollback = ("COMMIT",), ("ROLLBACK",)
        cur = self.conn.cursor()
        try:
            cur.execute(begin)
            try:
                value = f(cur, *args, **kw)
                for statement in commit:
                    cur.execute(statement)
            except BaseException:
                failure = Failure()
                _undo(cur, rollback)
                return fail(failure)
        except BaseException:
            return fail()
        finally:
            cur.close()
        return succeed(value)

    def read(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred:
        return self._run(f, False, args, kw)

    def write(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred:
        return self._run(f, True, args, kw)

    @staticmethod
    def _lastrowid(txn) -> Optional[int]:
        return txn.lastrowid  # None on PostgreSQL (zmirror.db.postgresql.Cursor)

    @contextmanager
    def transaction(self) -> Iterator[SyncDatabase]:
        """``with db.transaction():`` every interaction inside runs in one write
        transaction, each in a savepoint (a failed one is undone alone, as if it
        had its own transaction); all are committed when the block ends, none
        when it raises."""
        if self._outer:
            raise RuntimeError("transaction() does not nest")
        self.conn.execute(begin_sql(self.conn))
        self._outer = True
        try:
            yield self
        except BaseException:
            self._outer = False
            self.conn.execute("ROLLBACK")
            raise
        self._outer = False
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def _undo(cur: Any, statements: tuple) -> None:
    """Roll back after a failure; the failure is what the caller reports (an
    engine may have ended the transaction itself)."""
    try:
        for statement in statements:
            cur.execute(statement)
    except Exception:
        pass


def result(awaitable: Any) -> Any:
    """The value of ``awaitable`` (a coroutine or Deferred of a store on a
    :class:`SyncDatabase`, complete without a reactor); its exception is raised."""
    outcome: list = []
    ensureDeferred(awaitable).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("the store call waited for something: it needs a reactor")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]
