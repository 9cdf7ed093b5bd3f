"""The lockout shared by the nodes of a cluster (PostgreSQL): :class:`LockoutSync`.

Every node's :class:`~zmirror.auth.lockout.Lockout` keeps deciding alone; this
module publishes its failures on the bus, writes them to ``login_failures`` and
counts the other nodes' ones (docs/design/auth.md, "Login lockout").
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from zmirror.auth.lockout import ACCOUNT, Lockout, finite_time, parse_key

log = Logger()

FAILURE_EVENT = "lockout.failure"  # data {"k": [hex keys], "at": time}
CLEAR_EVENT = "lockout.clear"  # data {"k": hex key of an account}
MAX_EVENT_KEYS = 4  # a failure counts an account and an address


def _parse_failure(data: Any) -> Optional[tuple[list[bytes], float]]:
    if not isinstance(data, dict):
        return None
    hexkeys, at = data.get("k"), finite_time(data.get("at"))
    if at is None or not isinstance(hexkeys, list) or not 0 < len(hexkeys) <= MAX_EVENT_KEYS:
        return None
    keys = [parse_key(h) for h in hexkeys]
    if any(k is None for k in keys):
        return None
    return keys, at


def _insert_failures(txn: Any, clears: list[str], rows: list[tuple[str, float]], node: str,
                     cutoff: float) -> None:
    for key in clears:
        txn.execute("DELETE FROM login_failures WHERE key = ?", (key,))
    for i in range(0, len(rows), LockoutSync.ROWS_PER_INSERT):
        part = rows[i:i + LockoutSync.ROWS_PER_INSERT]
        txn.execute("INSERT INTO login_failures (key, at, node) VALUES "
                    + ", ".join(["(?, ?, ?)"] * len(part)),
                    [v for key, at in part for v in (key, at, node)])
    # the table's own upkeep: what is older than the window no longer counts anywhere
    txn.execute("DELETE FROM login_failures WHERE at < ?", (cutoff,))


class LockoutSync:
    """Shares one node's :class:`Lockout` with the other nodes of a cluster.

    The :class:`Lockout` keeps deciding alone, at once and in memory; this is
    its ``listener``:

    - each failure is published on the bus (:data:`FAILURE_EVENT`, the keys'
      digests in hex, never a name) and queued for ``login_failures``; a
      success that cleared an account publishes :data:`CLEAR_EVENT` and
      deletes the account's rows;
    - the other nodes' events are counted by :meth:`Lockout.record_remote` /
      :meth:`Lockout.clear_remote`; malformed ones are ignored (``ignored``);
    - at start and on the bus's ``RESYNC``, the failures still inside the
      window are read from ``login_failures`` and merged (:meth:`Lockout.merge`).

    Writes go through the database's writer, at most one batch in flight,
    ``flush_interval`` seconds after the first queued row (at once at
    ``max_batch`` rows); a slow or failing database never makes a login wait:
    at most ``max_pending`` rows wait (the oldest are dropped and counted in
    ``dropped``), a failed batch is logged and dropped.  Each batch also
    deletes the rows older than the window.  ``db`` None: the bus only.
    """

    ROWS_PER_INSERT = 500

    def __init__(self, lockout: Lockout, bus: Any = None, db: Any = None, *, clock: Any = None,
                 node: str = "", flush_interval: float = 0.5, max_batch: int = 500,
                 max_pending: int = 10_000, max_load: int = 200_000):
        self.lockout = lockout
        self.bus = bus
        self.db = db
        self.clock = clock if clock is not None else lockout.clock
        self.node = str(node or getattr(bus, "origin", "") or "")[:200]
        self.flush_interval = flush_interval
        self.max_batch = max(1, max_batch)
        self.max_pending = max(self.max_batch, max_pending)
        self.max_load = max_load
        self._rows: deque = deque()  # (hex key, at) not yet written
        self._clears: set[str] = set()  # hex keys whose rows go
        self._timer: Any = None
        self._writing: Any = None  # the batch in flight
        self._idle: list = []  # Deferreds waiting for it
        self._stopped = False
        self._write_failing = False
        self.written = 0
        self.dropped = 0
        self.ignored = 0  # malformed events from the bus
        self.loaded = 0
        self.loading: Any = None  # the read of login_failures in progress
        lockout.listen(self)
        if bus is not None:
            from zmirror.cluster import RESYNC

            bus.subscribe(FAILURE_EVENT, self._on_failure)
            bus.subscribe(CLEAR_EVENT, self._on_clear)
            bus.subscribe(RESYNC, lambda _data: self.load())

    @property
    def queue_depth(self) -> int:
        """Rows and clears waiting to be written to ``login_failures`` (/metrics)."""
        return len(self._rows) + len(self._clears)

    # --- the Lockout's listener --------------------------------------------------------

    def failed(self, keys: list[bytes], at: float) -> None:
        hexkeys = [k.hex() for k in keys]
        if not hexkeys:
            return
        if self.db is not None:
            if self._stopped:
                self.dropped += len(hexkeys)
            else:
                for h in hexkeys:
                    if len(self._rows) >= self.max_pending:
                        self._rows.popleft()
                        self.dropped += 1
                    self._rows.append((h, at))
                self._schedule()
        if self.bus is not None:
            self.bus.publish(FAILURE_EVENT, {"k": hexkeys, "at": at})

    def cleared(self, key: bytes) -> None:
        h = key.hex()
        if self.db is not None and not self._stopped:
            if any(k == h for k, _at in self._rows):
                self._rows = deque(r for r in self._rows if r[0] != h)
            if len(self._clears) >= self.max_pending:
                self.dropped += 1
            else:
                self._clears.add(h)
                self._schedule()
        if self.bus is not None:
            self.bus.publish(CLEAR_EVENT, {"k": h})

    # --- the other nodes ----------------------------------------------------------------

    def _on_failure(self, data: Any) -> None:
        parsed = _parse_failure(data)
        if parsed is None:
            self.ignored += 1
            return
        keys, at = parsed
        self.lockout.record_remote(keys, at)

    def _on_clear(self, data: Any) -> None:
        key = parse_key(data.get("k")) if isinstance(data, dict) else None
        if key is None or key[:1] != ACCOUNT:
            self.ignored += 1
            return
        self.lockout.clear_remote(key)

    # --- the table ----------------------------------------------------------------------

    def load(self):
        """Read the failures inside the window from ``login_failures`` and
        merge them; the Deferred never errbacks (a failure is logged: the next
        ``RESYNC`` tries again)."""
        if self.db is None or self._stopped:
            return succeed(None)
        since = self.clock.seconds() - self.lockout.window
        d = maybeDeferred(self.db.query, "SELECT key, at FROM login_failures WHERE at >= ?"
                          " ORDER BY at DESC LIMIT ?", (since, int(self.max_load)))

        def loaded(rows):
            parsed = []
            for row in rows:
                key = parse_key(row.get("key"))
                if key is not None:
                    parsed.append((key, row.get("at")))
            self.lockout.merge(parsed)
            self.loaded += len(parsed)

        def finished(result):
            if self.loading is d:
                self.loading = None
            return result

        d.addCallback(loaded)
        d.addErrback(lambda f: log.failure(
            "lockout: reading the nodes' failed logins failed (read again on the next resync)", f))
        d.addBoth(finished)
        if not d.called:
            self.loading = d
        return d

    def start(self):
        d = self.load()
        self._schedule(prune=True)
        return d

    def _schedule(self, prune: bool = False) -> None:
        if self._stopped or self._writing is not None:
            return  # the batch in flight schedules the next one
        if self._timer is not None and self._timer.active():
            if len(self._rows) >= self.max_batch:
                self._timer.reset(0)
            return
        if self._rows or self._clears or prune:
            delay = 0 if len(self._rows) >= self.max_batch else self.flush_interval
            self._timer = self.clock.callLater(delay, self._flush)

    def _take(self, n: int) -> tuple[list[str], list[tuple[str, float]]]:
        # every pending clear goes with the batch: a clear left behind would
        # delete a newer row of its key written in this batch
        clears, self._clears = sorted(self._clears), set()
        rows = [self._rows.popleft() for _ in range(min(n, len(self._rows)))]
        return clears, rows

    def _flush(self, everything: bool = False):
        self._timer = None
        clears, rows = self._take(len(self._rows) if everything else self.max_batch)
        cutoff = self.clock.seconds() - self.lockout.window
        d = maybeDeferred(self.db.write, _insert_failures, clears, rows, self.node, cutoff)
        self._writing = d

        def ok(_):
            self.written += len(rows)
            if self._write_failing:
                self._write_failing = False
                log.info("lockout: writing failed logins works again")

        def failed(f):
            self.dropped += len(rows)
            if not self._write_failing:  # once until it works again
                self._write_failing = True
                log.failure("lockout: writing failed logins to the database failed "
                            "(the batch is dropped; this node still counts them)", f)

        def done(_):
            self._writing = None
            idle, self._idle = self._idle, []
            for w in idle:
                w.callback(None)
            self._schedule()

        d.addCallbacks(ok, failed)
        d.addBoth(done)
        return d

    def flush(self):
        """Write what is queued now (after the batch in flight); fires when written."""
        if self.db is None:
            return succeed(None)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

        def rest(_=None):
            if self._rows or self._clears:
                return self._flush(everything=True).addBoth(lambda _: None)
            return None

        if self._writing is not None:
            w = Deferred()
            self._idle.append(w)
            return w.addCallback(rest)
        return succeed(None).addCallback(rest)

    def stop(self):
        """Write what is queued (after the batch in flight); hook it to a service
        that stops before the database closes."""
        self._stopped = True
        return self.flush()
