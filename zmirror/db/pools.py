"""What both database engines share: a reader pool and ONE writer pool.

``read(f, *a)`` / ``write(f, *a)`` run ``f(txn, *a)`` in a transaction on a
pool thread and return a Deferred; ``write`` uses the single writer
connection, so writes never contend with each other.  An engine sets
``self.reader`` / ``self.writer`` (``adbapi.ConnectionPool``) and says what
:meth:`execute` returns for an inserted row (``_lastrowid``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional


class Interactions:
    """``query`` and ``execute`` on top of a class's ``read`` / ``write``
    (:class:`Pools`, and :class:`zmirror.db.sync.SyncDatabase` for the CLI)."""

    def read(self, f: Callable[..., Any], *args: Any, **kw: Any):
        raise NotImplementedError

    def write(self, f: Callable[..., Any], *args: Any, **kw: Any):
        raise NotImplementedError

    def query(self, sql: str, params: tuple = ()):
        """Rows of a SELECT as a list of dicts."""

        def run(txn):
            txn.execute(sql, params)
            cols = [c[0] for c in txn.description]
            return [dict(zip(cols, row)) for row in txn.fetchall()]

        return self.read(run)

    @staticmethod
    def _lastrowid(txn) -> Optional[int]:
        return None

    def execute(self, sql: str, params: tuple = ()):
        """Run one write statement; fires with ``(lastrowid, rowcount)``
        (lastrowid None where the engine has none: use ``RETURNING id``)."""

        def run(txn):
            txn.execute(sql, params)
            return self._lastrowid(txn), txn.rowcount

        return self.write(run)


class Pools(Interactions):
    reader: Any
    writer: Any

    def read(self, f: Callable[..., Any], *args: Any, **kw: Any):
        return self.reader.runInteraction(f, *args, **kw)

    def write(self, f: Callable[..., Any], *args: Any, **kw: Any):
        return self.writer.runInteraction(f, *args, **kw)

    def start(self) -> None:
        self.reader.start()
        self.writer.start()

    def close(self) -> None:
        for pool in (self.reader, self.writer):
            if pool.running:
                pool.close()
