"""Access log queries (``access_logs`` table): listing, deletion, dashboard
statistics and retention pruning.

Rows are written by :class:`zmirror.accesslog.BatchedAccessLog`; everything
here runs on the database threads, never on the reactor thread.

Design: docs/design/accesslog.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from zmirror.db.jobs import ACCESS_LOG_RETENTION, JobLock

log = Logger()

ROW_COLUMNS = ("id", "created_at", "client_ip", "username", "method", "repository", "reference",
               "kind", "status", "bytes", "duration_ms", "upstream", "cache_hit", "user_agent",
               "namespace", "node")
KINDS = ("manifest", "blob", "tags", "token", "denied", "other")
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500
TOP_N = 10
HOUR = 3600
DAY = 86400
# Rows removed per transaction when pruning, so the single writer is never
# held long enough to back up the access-log queue or an admin change.
PRUNE_CHUNK = 5000

_STATUS_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)


@dataclass(frozen=True)
class LogFilter:
    """Filters of ``GET /api/logs`` (all optional, already validated)."""

    since: Optional[float] = None  # created_at >= since   (query "from")
    until: Optional[float] = None  # created_at <  until   (query "to")
    username: Optional[str] = None  # exact
    client_ip: Optional[str] = None  # exact
    repository: Optional[str] = None  # substring (of the canonical name: "ghcr.io/owner/img")
    namespace: Optional[str] = None  # exact ("docker.io", "ghcr.io", ...)
    status: Optional[int] = None  # exact code
    status_class: Optional[int] = None  # 4 for "4xx"
    kind: Optional[str] = None
    node: Optional[str] = None  # exact ([server] node of the node that served it)

    def where(self) -> tuple[str, tuple]:
        clauses, params = [], []
        if self.since is not None:
            clauses.append("created_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("created_at < ?")
            params.append(self.until)
        if self.username is not None:
            clauses.append("username = ?")
            params.append(self.username)
        if self.client_ip is not None:
            clauses.append("client_ip = ?")
            params.append(self.client_ip)
        if self.repository:
            clauses.append("repository LIKE ? ESCAPE '\\'")
            params.append("%" + _like_escape(self.repository) + "%")
        if self.namespace is not None:
            clauses.append("namespace = ?")
            params.append(self.namespace)
        if self.status is not None:
            clauses.append("status = ?")
            params.append(self.status)
        if self.status_class is not None:
            clauses.append("status >= ? AND status < ?")
            params += [self.status_class * 100, self.status_class * 100 + 100]
        if self.kind is not None:
            clauses.append("kind = ?")
            params.append(self.kind)
        if self.node is not None:
            clauses.append("node = ?")
            params.append(self.node)
        if not clauses:
            return "", ()
        return " WHERE " + " AND ".join(clauses), tuple(params)


def parse_status(value: str) -> tuple[Optional[int], Optional[int]]:
    """``"404"`` → (404, None); ``"4xx"`` → (None, 4).  Raises ValueError."""
    value = value.strip()
    m = _STATUS_CLASS.match(value)
    if m:
        return None, int(m.group(1))
    if value.isdigit() and len(value) == 3 and 100 <= int(value) <= 599:
        return int(value), None
    raise ValueError("must be a status code such as 404 or a class such as 4xx")


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _row(values) -> dict:
    row = dict(zip(ROW_COLUMNS, values))
    if row["cache_hit"] is not None:
        row["cache_hit"] = bool(row["cache_hit"])
    return row


# errors on the dashboard: status >= 400, except 401 — the challenge every
# docker/containerd pull goes through before it fetches a token
_ERROR_SQL = "CASE WHEN status >= 400 AND status != 401 THEN 1 ELSE 0 END"
# sums of BIGINT columns are NUMERIC on PostgreSQL (Decimal in Python): cast back
_BYTES_SUM = "CAST(coalesce(sum(bytes), 0) AS BIGINT)"


def _bucket_sql(db: Any) -> str:
    """The bucket number of ``created_at`` (>= the start, so truncation is floor):
    SQLite's CAST truncates, PostgreSQL's rounds."""
    if getattr(db, "dialect", "sqlite") == "postgresql":
        return "CAST(floor((created_at - ?) / ?) AS INTEGER)"
    return "CAST((created_at - ?) / ? AS INTEGER)"


class AccessLogStore:
    def __init__(self, db: Any, clock: Any):
        self.db = db
        self.clock = clock

    # --- listing -----------------------------------------------------------

    def list(self, flt: LogFilter = LogFilter(), page: int = 1,
             page_size: int = PAGE_SIZE_DEFAULT):
        """Deferred → ``{"items", "total", "page", "page_size"}``, newest first."""
        page = max(1, int(page))
        page_size = max(1, min(PAGE_SIZE_MAX, int(page_size)))
        where, params = flt.where()

        def run(txn):
            txn.execute("SELECT count(*) FROM access_logs" + where, params)
            total = txn.fetchone()[0]
            txn.execute(
                f"SELECT {', '.join(ROW_COLUMNS)} FROM access_logs{where}"
                " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                params + (page_size, (page - 1) * page_size),
            )
            items = [_row(r) for r in txn.fetchall()]
            return {"items": items, "total": total, "page": page, "page_size": page_size}

        return self.db.read(run)

    def count(self):
        def run(txn):
            txn.execute("SELECT count(*) FROM access_logs")
            return txn.fetchone()[0]

        return self.db.read(run)

    # --- deletion ----------------------------------------------------------

    def delete(self, before: Optional[float] = None):
        """Deferred → number of rows deleted (all, or those created before ``before``)."""

        def run(txn):
            if before is None:
                txn.execute("DELETE FROM access_logs")
            else:
                txn.execute("DELETE FROM access_logs WHERE created_at < ?", (before,))
            return txn.rowcount

        return self.db.write(run)

    async def prune(self, retention_days: int = 0, max_rows: int = 0,
                    keep_going=lambda: True) -> Optional[int]:
        """Drop rows older than ``retention_days`` and beyond the newest ``max_rows``
        (0 = no limit), in chunks of ``PRUNE_CHUNK`` rows per transaction;
        stops between chunks once ``keep_going()`` is false (shutdown).
        Returns the rows deleted, or None when another node is pruning (on
        PostgreSQL one node at a time: :class:`zmirror.db.jobs.JobLock`)."""
        if not (retention_days and retention_days > 0) and not (max_rows and max_rows > 0):
            return 0
        lock = JobLock(self.db, ACCESS_LOG_RETENTION)
        if not await lock.acquire():
            log.debug("access log pruning: another node is running it; skipped this round")
            return None
        try:
            return await self._prune(retention_days, max_rows, keep_going)
        finally:
            await lock.release()

    async def _prune(self, retention_days: int, max_rows: int, keep_going) -> int:
        deleted = 0
        if retention_days and retention_days > 0:
            cutoff = self.clock.seconds() - retention_days * DAY
            while True:
                n = await self.db.write(_delete_chunk,
                                        "created_at < ?", (cutoff,))
                deleted += n
                if n < PRUNE_CHUNK or not keep_going():
                    break
        if max_rows and max_rows > 0 and keep_going():
            # the id of the oldest row to keep; everything with a smaller id goes
            def boundary(txn):
                txn.execute("SELECT id FROM access_logs ORDER BY id DESC LIMIT 1 OFFSET ?",
                            (max_rows - 1,))
                r = txn.fetchone()
                return r[0] if r else None

            keep_from = await self.db.read(boundary)
            if keep_from is not None:
                while True:
                    n = await self.db.write(_delete_chunk, "id < ?", (keep_from,))
                    deleted += n
                    if n < PRUNE_CHUNK or not keep_going():
                        break
        return deleted

    # --- statistics ----------------------------------------------------------

    def stats(self, tz_offset: int = 0):
        """Deferred → the dashboard numbers (see docs/api.md ``GET /api/stats``).

        ``tz_offset``: minutes east of UTC for the day buckets (hours are the
        same everywhere but for half-hour zones, which get their own offset too).
        """
        now = self.clock.seconds()
        off = tz_offset * 60

        def bucket_start(t: float, size: int) -> int:
            return int((t + off) // size * size - off)

        hour0 = bucket_start(now, HOUR) - 23 * HOUR
        day0 = bucket_start(now, DAY) - 6 * DAY
        return self.db.read(_stats, _bucket_sql(self.db), hour0, day0)


def _stats(txn, bucket: str, hour0: int, day0: int) -> dict:
    """The dashboard numbers since the first hour / day bucket (one read transaction)."""
    since = min(hour0, day0)
    txn.execute(
        f"SELECT count(*), {_BYTES_SUM}, coalesce(sum({_ERROR_SQL}), 0)"
        " FROM access_logs WHERE created_at >= ?", (since,))
    requests, nbytes, errors = txn.fetchone()
    hourly = _series(txn, bucket, hour0, HOUR, 24)
    daily = _series(txn, bucket, day0, DAY, 7)
    top_repositories = _top(txn, "repository", since, exclude_empty=True)
    top_users = _top(txn, "username", since, exclude_empty=False)
    upstreams = _top(txn, "upstream", since, exclude_empty=True)
    namespaces = _top(txn, "namespace", since, exclude_empty=True)
    return {
        "since": since,
        "totals": {
            "requests": requests,
            "bytes": nbytes,
            "errors": errors,
            "error_rate": round(errors / requests, 4) if requests else 0.0,
            **_row_counts(txn),
        },
        "hourly": hourly,
        "daily": daily,
        "top_repositories": top_repositories,
        "top_users": top_users,
        "upstreams": upstreams,
        "top_namespaces": namespaces,
        "cache": None,
    }


def _series(txn, bucket: str, start: int, size: int, n: int) -> list[dict]:
    """Requests and bytes in ``n`` buckets of ``size`` seconds from ``start``."""
    txn.execute(
        f"SELECT {bucket} AS b, count(*), {_BYTES_SUM}"
        " FROM access_logs WHERE created_at >= ? GROUP BY b", (start, size, start))
    got = {b: (c, s) for b, c, s in txn.fetchall()}
    return [{"t": start + i * size, "requests": got.get(i, (0, 0))[0],
             "bytes": got.get(i, (0, 0))[1]} for i in range(n)]


def _top(txn, col: str, since: int, *, exclude_empty: bool) -> list[dict]:
    """The ``TOP_N`` values of ``col`` with the most requests since ``since``."""
    extra = f" AND {col} != ''" if exclude_empty else ""
    txn.execute(
        f"SELECT {col}, count(*) AS n, {_BYTES_SUM} FROM access_logs"
        f" WHERE created_at >= ?{extra} GROUP BY {col} ORDER BY n DESC, {col} LIMIT ?",
        (since, TOP_N))
    return [{col: v, "requests": n, "bytes": b} for v, n, b in txn.fetchall()]


def _row_counts(txn) -> dict:
    """How many users, registries and whitelist entries there are."""
    counts = {}
    for table in ("users", "registries", "whitelists"):
        txn.execute(f"SELECT count(*) FROM {table}")
        counts[table] = txn.fetchone()[0]
    return counts


def _delete_chunk(txn, condition: str, params: tuple) -> int:
    txn.execute(
        f"DELETE FROM access_logs WHERE id IN (SELECT id FROM access_logs WHERE {condition}"
        f" LIMIT {PRUNE_CHUNK})", params)
    return txn.rowcount


class RetentionService(Service):
    """Prunes the access log by ``[log] retention_days`` / ``max_rows`` every
    ``interval`` seconds (first run ``first_delay`` s after start)."""

    def __init__(self, store: AccessLogStore, clock: Any, retention_days: int, max_rows: int,
                 interval: float = 3600.0, first_delay: float = 60.0):
        self.store = store
        self.clock = clock
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.interval = interval
        self.first_delay = first_delay
        self._loop: Optional[LoopingCall] = None
        self._first = None
        self._running: Optional[Deferred] = None

    @property
    def enabled(self) -> bool:
        return bool(self.retention_days or self.max_rows)

    def startService(self):
        super().startService()
        if not self.enabled:
            return
        self._loop = LoopingCall(self.run_once)
        self._loop.clock = self.clock
        self._first = self.clock.callLater(self.first_delay, self._start_loop)

    def _start_loop(self):
        self._first = None
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("access log pruning loop stopped", failure=f))

    def run_once(self) -> Deferred:
        """One pruning pass; errors are logged, never raised (the loop keeps going)."""
        if self._running is not None:
            return self._running
        d = Deferred.fromCoroutine(self.store.prune(
            self.retention_days, self.max_rows, keep_going=lambda: self.running))

        def done(n):
            if n:
                log.info("access log: pruned {n} rows", n=n)
            return n

        def failed(f):
            log.failure("access log pruning failed", failure=f)
            return 0

        def clear(r):
            self._running = None
            return r

        d.addCallbacks(done, failed).addBoth(clear)
        if not d.called:
            self._running = d
        return d

    def stopService(self):
        super().stopService()
        if self._first is not None and self._first.active():
            self._first.cancel()
        self._first = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        # an in-flight pass stops after its current chunk (keep_going is now
        # false); not waited for: the database pool finishes queued work on close


__all__ = ["AccessLogStore", "LogFilter", "RetentionService", "parse_status", "KINDS",
           "PAGE_SIZE_MAX", "PAGE_SIZE_DEFAULT"]
