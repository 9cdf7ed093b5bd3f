"""Access log records.

The registry routes fill one :class:`AccessRecord` per request a user cares
about and hand it to an ``AccessLog`` (anything with ``record(rec)``) when the
response ends, aborted downloads included.  ``record`` must never block or
fail: :class:`BatchedAccessLog` queues it and writes batches to the database.

Design: docs/design/accesslog.md.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

log = Logger()


@dataclass
class AccessRecord:
    created_at: float
    client_ip: str = ""
    username: str = ""
    method: str = ""
    repository: str = ""
    reference: str = ""
    kind: str = ""  # manifest | blob | tags | token | denied | other
    status: int = 0
    bytes: int = 0
    duration_ms: float = 0.0
    upstream: str = ""  # the upstream that answered; of a resumed blob, those that sent it ("a,b")
    cache_hit: Optional[bool] = None
    user_agent: str = ""
    resumes: int = 0  # times the blob's upstream body broke and was resumed
    namespace: str = ""  # the registry the repository belongs to ("docker.io", "ghcr.io", ...)

    def as_row(self) -> dict:
        row = dataclasses.asdict(self)
        if row["cache_hit"] is not None:
            row["cache_hit"] = int(row["cache_hit"])
        return row


COLUMNS = tuple(f.name for f in dataclasses.fields(AccessRecord))


class MemoryAccessLog:
    """Keeps records in a list (tests)."""

    def __init__(self):
        self.records: list[AccessRecord] = []

    def record(self, rec: AccessRecord) -> None:
        self.records.append(rec)


def _clean_row(rec: AccessRecord, node: str = "") -> tuple:
    """The INSERT parameters (:data:`INSERT_COLUMNS`) of one record written by
    ``node``, coerced to the column types so a stray value can never make a
    whole batch fail."""
    row = rec.as_row()
    out = []
    for name in COLUMNS:
        v = row.get(name)
        if name == "cache_hit":
            out.append(None if v is None else int(bool(v)))
        elif name in ("status", "bytes", "resumes"):
            try:
                out.append(int(v or 0))
            except (TypeError, ValueError):
                out.append(0)
        elif name in ("created_at", "duration_ms"):
            try:
                out.append(float(v or 0.0))
            except (TypeError, ValueError):
                out.append(0.0)
        else:
            out.append("" if v is None else str(v)[:1000])
    out.append(str(node)[:1000])
    return tuple(out)


# The columns written: a record's, and the node that served it ([server] node, set by the
# writer, not the record).
INSERT_COLUMNS = COLUMNS + ("node",)

# Rows per INSERT statement: a batch (max_batch 500) is ONE multi-row INSERT; 500 rows x 16
# columns = 8,000 parameters (SQLite >= 3.32 allows 32,766; PostgreSQL 65,535).  The final
# flush at shutdown may hold more: it is several such statements in one transaction.
ROWS_PER_INSERT = 500
_ROW_MARKS = "(" + ", ".join("?" for _ in INSERT_COLUMNS) + ")"


@functools.lru_cache(maxsize=64)
def _insert_sql(n: int) -> str:
    return f"INSERT INTO access_logs ({', '.join(INSERT_COLUMNS)}) VALUES " + ", ".join([_ROW_MARKS] * n)


def _insert_rows(txn, rows: list) -> int:
    for i in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[i:i + ROWS_PER_INSERT]
        txn.execute(_insert_sql(len(part)), [v for row in part for v in row])
    return len(rows)


class BatchedAccessLog:
    """Queues records in memory and writes them in batches, one transaction each.

    ``record(rec)`` only appends to a deque (never blocks, never raises).  A
    batch is written ``flush_interval`` seconds after the first queued record,
    or as soon as ``max_batch`` records are waiting, whichever comes first; one
    write is in flight at a time (the next batch waits for it).  If the
    database stays unwritable, at most ``max_queue`` records are kept (the
    oldest are dropped and counted in ``dropped``).  ``stop()`` writes what is
    left in one transaction and returns its Deferred (hook it to a
    :class:`zmirror.service.CallbackService` that stops before the database).
    Every row names ``node``, the node that wrote it (``[server] node``).
    """

    def __init__(self, db: Any, clock: Any, flush_interval: float = 0.5, max_batch: int = 500,
                 max_queue: int = 200_000, max_retries: int = 3, node: str = ""):
        self.db = db
        self.clock = clock
        self.node = node
        self.flush_interval = flush_interval
        self.max_batch = max(1, max_batch)
        self.max_queue = max(self.max_batch, max_queue)
        self.max_retries = max_retries
        self._queue: deque = deque()
        self._timer = None
        self._inflight: Optional[Deferred] = None
        self._failures = 0
        self._stopped = False
        self.written = 0
        self.dropped = 0
        self.failed_batches = 0

    @property
    def queue_depth(self) -> int:
        """Records waiting to be written (not counting a batch in flight)."""
        return len(self._queue)

    def record(self, rec: AccessRecord) -> None:
        try:
            row = _clean_row(rec, self.node)
        except Exception:
            log.failure("access log: unusable record dropped")
            self.dropped += 1
            return
        if self._stopped:
            # after shutdown began the database may already be closed
            self.dropped += 1
            log.warn("access log: record after shutdown dropped ({repository} {status})",
                     repository=row[COLUMNS.index("repository")], status=row[COLUMNS.index("status")])
            return
        self._queue.append(row)
        if len(self._queue) > self.max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._schedule()

    def _schedule(self) -> None:
        if self._inflight is not None or not self._queue:
            return
        if len(self._queue) >= self.max_batch:
            self._cancel_timer()
            self._timer = self.clock.callLater(0, self._flush)
        elif self._timer is None:
            delay = self.flush_interval * (2 ** min(self._failures, 5))
            self._timer = self.clock.callLater(delay, self._flush)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _flush(self) -> None:
        self._timer = None
        if self._inflight is not None or not self._queue:
            return
        n = min(len(self._queue), self.max_batch)
        batch = [self._queue.popleft() for _ in range(n)]
        d = self.db.write(_insert_rows, batch)
        self._inflight = d
        d.addCallbacks(self._written, self._write_failed, errbackArgs=(batch,))
        d.addBoth(self._done)

    def _written(self, n: int) -> None:
        self.written += n
        self._failures = 0

    def _write_failed(self, failure, batch: list) -> None:
        self._failures += 1
        self.failed_batches += 1
        if self._failures <= self.max_retries and not self._stopped:
            log.warn("access log: writing {n} rows failed ({err}); will retry",
                     n=len(batch), err=failure.getErrorMessage())
            self._queue.extendleft(reversed(batch))
            while len(self._queue) > self.max_queue:
                self._queue.popleft()
                self.dropped += 1
        else:
            log.error("access log: dropping {n} rows after repeated write failures ({err})",
                      n=len(batch), err=failure.getErrorMessage())
            self.dropped += len(batch)
            self._failures = 0

    def _done(self, _) -> None:
        self._inflight = None
        if not self._stopped:
            self._schedule()

    def flush(self) -> Deferred:
        """Write everything queued now; fires when it is in the database."""
        return Deferred.fromCoroutine(self._flush_all())

    async def _flush_all(self) -> None:
        while True:
            if self._inflight is not None:
                await _wait(self._inflight)
                continue
            if not self._queue:
                return
            self._cancel_timer()
            self._flush()

    def stop(self) -> Deferred:
        """Clean shutdown: no new batches; what is queued goes out in ONE
        transaction, dispatched right now (before the database pool closes)."""
        self._stopped = True
        self._cancel_timer()
        rows = list(self._queue)
        self._queue.clear()
        pending = [self._inflight] if self._inflight is not None else []
        if rows:
            d = self.db.write(_insert_rows, rows)
            d.addCallbacks(self._written, self._final_failed, errbackArgs=(rows,))
            pending.append(d)
        return gatherResults([_wait(p) for p in pending]).addCallback(lambda _: None)

    def _final_failed(self, failure, rows: list) -> None:
        self.dropped += len(rows)
        log.error("access log: {n} rows lost at shutdown ({err})", n=len(rows),
                  err=failure.getErrorMessage())


def _wait(d: Deferred) -> Deferred:
    """A Deferred that fires (with None) when ``d`` has, without consuming ``d``'s result."""
    out: Deferred = Deferred()

    def fire(r):
        if not out.called:
            out.callback(None)
        return r

    d.addBoth(fire)
    return out
