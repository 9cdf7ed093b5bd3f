"""Which nodes share this database, whether they are alive, what they run.

:class:`NodeHeartbeat` keeps this node's row of ``cluster_nodes`` (upserted
every :data:`HEARTBEAT` seconds, ``stopped_at`` at a clean stop, stale rows
pruned one node at a time); :meth:`NodeHeartbeat.listing` answers
``GET /api/nodes`` with a derived ``state`` (``up``, ``stale``, ``stopped``).
Two processes with one name are reported as a ``conflict``.

Design: docs/design/cluster.md ("Which nodes there are").
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from zmirror import __version__
from zmirror.db.errors import one_line
from zmirror.db.jobs import JobLock

log = Logger()

HEARTBEAT = 10.0  # seconds between two upserts of this node's row
STALE_AFTER = 3 * HEARTBEAT  # not seen for longer than three heartbeats: "stale"
RETENTION = 7 * 86400.0  # rows not seen for this long are deleted
PRUNE_EVERY = 3600.0  # seconds between two pruning passes of one node
MAX_ROWS = 1000  # GET /api/nodes answers at most this many rows
NODE_PRUNE = 0x7A6D_6A6F_6202  # pg_advisory_lock key ("zmjob" 2; zmirror.db.jobs has 1)
# tables `zmirror db copy` leaves alone: per-process state, written again by every node
TABLES = ("cluster_nodes",)

COLUMNS = ("node", "instance", "version", "db_schema", "address", "hostname", "pid", "started_at",
           "last_seen", "stopped_at", "bus", "bus_since", "cache_bytes", "cache_blobs",
           "cache_max_bytes", "conflict_at", "cache_hits", "cache_misses", "cache_bytes_served",
           "cache_bytes_fetched", "cache_gets_avoided")
# the cache figures of zmirror.cache.view.node_figures, by column
FIGURE_COLUMNS = {"cache_hits": "hits", "cache_misses": "misses", "cache_bytes_served": "bytes_from_cache",
                  "cache_bytes_fetched": "bytes_from_upstream", "cache_gets_avoided": "manifest_gets_avoided"}
_UPDATED = [c for c in COLUMNS if c not in ("node", "conflict_at")]
_UPSERT = (
    f"INSERT INTO cluster_nodes ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
    " ON CONFLICT (node) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _UPDATED)
    + ", conflict_at = COALESCE(excluded.conflict_at, cluster_nodes.conflict_at)"
)
_ENDPOINT = re.compile(r"^tcp6?:(\d+)(?::(.*))?$")


def endpoint_address(endpoint: str) -> str:
    """``host:port`` of a Twisted ``tcp:PORT[:interface=HOST]`` endpoint string
    (``[::1]:8080`` for IPv6, ``0.0.0.0:8080`` without an interface), else ``""``."""
    m = _ENDPOINT.match((endpoint or "").strip())
    if m is None:
        return ""
    host = "0.0.0.0"
    for part in re.split(r"(?<!\\):", m.group(2) or ""):
        if part.startswith("interface="):
            host = part[len("interface="):].replace("\\:", ":") or host
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{m.group(1)}"


def node_state(row: dict, now: float, stale_after: float = STALE_AFTER) -> str:
    """``stopped``, ``up`` or ``stale`` for a ``cluster_nodes`` row at ``now``."""
    if row.get("stopped_at") is not None:
        return "stopped"
    return "up" if now - float(row["last_seen"]) <= stale_after else "stale"


class NodeHeartbeat(Service):
    """This node's row in ``cluster_nodes`` (a Service: start it after the
    database's pools, it stops before they close).

    ``db``: the database (``write`` / ``read`` / ``dialect``); ``clock``: the
    heartbeat's LoopingCall and every time written; ``node``: ``[server]
    node``; ``bus``: its ``origin`` is the instance id, its ``connected`` /
    ``connected_at`` / ``disconnected_since`` the bus state (a bus without
    ``connected`` is a node alone: ``local``); ``cache``: the
    :class:`~zmirror.cache.blobs.CacheBlobs` (or None); ``address``: where it listens
    (``host:port``).
    """

    def __init__(self, db: Any, clock: Any, *, node: str, bus: Any = None, cache: Any = None,
                 address: str = "", version: str = __version__, interval: float = HEARTBEAT,
                 retention: float = RETENTION, stale_after: Optional[float] = None,
                 instance: Optional[str] = None, figures: Any = None):
        from zmirror.db.schema import latest_version

        self.db = db
        self.clock = clock
        self.node = node
        self.bus = bus
        self.cache = cache
        self.figures = figures  # () -> the cache figures since start (zmirror.cache.view.node_figures)
        self.address = address
        self.version = version
        self.schema = latest_version()
        self.interval = interval
        self.retention = retention
        self.stale_after = stale_after if stale_after is not None else 3 * interval
        self.instance = instance or getattr(bus, "origin", None) or secrets.token_hex(8)
        try:
            self.hostname = socket.gethostname()[:255]
        except OSError:
            self.hostname = ""
        self.started_at: Optional[float] = None
        self.beats = 0  # heartbeats written
        self.failures = 0  # heartbeats that failed
        self.pruned = 0  # rows this node deleted
        self.conflicts = 0  # heartbeats that found another process's instance in the row
        self.other_instance: Optional[str] = None  # that process's instance id
        self._written = False  # this process's row is in the table (since this start)
        self._stopped = False  # stopService ran: no more writes (the pools may be closing)
        self._warned = False
        self._failing = False
        self._next_prune: Optional[float] = None
        self._prune_lock = JobLock(db, NODE_PRUNE)
        self._loop: Optional[LoopingCall] = None
        self._inflight: Optional[Deferred] = None

    def __repr__(self) -> str:
        return f"<NodeHeartbeat {self.node!r}>"

    # --- the service ----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.started_at = self.clock.seconds()
        self._written = False
        self._stopped = False
        self._inflight = None  # one left from before a stop is not waited for
        self._next_prune = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("node heartbeat loop stopped", failure=f))

    def stopService(self):
        super().stopService()
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if not (self._written or self._inflight is not None):
            return succeed(None)
        # Written at once, not after the heartbeat in flight: the pools may close right
        # after this call, and a write asked for after that never answers.  The single
        # writer runs the two in order, so the stop mark lands after the heartbeat.
        self._written = False
        d = self.db.write(_mark_stopped, self.node, self.instance, self.clock.seconds())

        def failed(f):
            log.warn("node heartbeat: cannot mark node {node!r} stopped ({error}); it shows as "
                     "stale once its last heartbeat is {s:.0f}s old", node=self.node,
                     error=one_line(f.value, 200), s=self.stale_after)

        return d.addCallbacks(lambda _: None, failed)

    def settled(self) -> Deferred:
        """Fires once the heartbeat in flight (if any) is done (never errbacks)."""
        d = self._inflight
        if d is None:
            return succeed(None)
        out: Deferred = Deferred()
        d.addBoth(lambda r: (out.callback(None), r)[1])
        return out

    def _tick(self) -> Optional[Deferred]:
        if self._inflight is not None:
            return None
        d = Deferred.fromCoroutine(self.beat())
        if d.called:
            return d

        def clear(r):
            if self._inflight is d:
                self._inflight = None
            return r

        self._inflight = d
        return d.addBoth(clear)

    # --- one heartbeat ----------------------------------------------------------------

    def row(self, now: float) -> dict:
        """What this node writes at ``now``."""
        bus = self.bus
        if bus is not None and hasattr(bus, "connected"):
            up = bool(bus.connected)
            state = "connected" if up else "disconnected"
            since = getattr(bus, "connected_at" if up else "disconnected_since", None)
        else:
            state, since = "local", None
        cache_bytes = cache_blobs = cache_max = None
        if self.cache is not None:
            try:
                s = self.cache.summary()
                cache_bytes, cache_blobs, cache_max = (int(s["size"]), int(s["entries"]),
                                                       int(s["max_size"]))
            except Exception as e:
                log.debug("node heartbeat: no cache summary ({error})", error=one_line(e, 200))
        figures = dict.fromkeys(FIGURE_COLUMNS)
        if self.figures is not None:
            try:
                f = self.figures()
                figures = {c: int(f[k]) for c, k in FIGURE_COLUMNS.items()}
            except Exception as e:
                log.debug("node heartbeat: no cache figures ({error})", error=one_line(e, 200))
        return {
            **figures,
            "node": self.node, "instance": self.instance, "version": self.version,
            "db_schema": self.schema, "address": self.address, "hostname": self.hostname,
            "pid": os.getpid(),  # after twistd's fork: the process that runs
            "started_at": self.started_at if self.started_at is not None else now,
            "last_seen": now, "stopped_at": None, "bus": state, "bus_since": since,
            "cache_bytes": cache_bytes, "cache_blobs": cache_blobs, "cache_max_bytes": cache_max,
            "conflict_at": None,
        }

    async def beat(self) -> None:
        """Upsert this node's row now (and prune when due); never raises."""
        now = self.clock.seconds()
        try:
            other = await self.db.write(_upsert, self.row(now), self._written)
        except Exception as e:
            self.failures += 1
            if not self._failing:
                self._failing = True
                log.warn("node heartbeat: cannot write node {node!r}'s row ({error}); retrying "
                         "every {s:.0f}s", node=self.node, error=one_line(e, 200), s=self.interval)
            return
        self.beats += 1
        self._written = True
        if self._failing:
            self._failing = False
            log.info("node heartbeat: node {node!r}'s row is written again", node=self.node)
        if other is not None:
            self._conflict(other)
        if self._stopped:
            return
        if self._next_prune is None or now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            await self.prune()

    def _conflict(self, other: str) -> None:
        self.conflicts += 1
        self.other_instance = other
        if self._warned:
            return
        self._warned = True
        log.warn("node name {node!r} is used by another running zmirror process too (instance "
                 "{other} overwrote the heartbeat of this one, {mine}): give every node its own "
                 "[server] node (the access log's node column and the node list tell nodes apart "
                 "by it) and restart one of them", node=self.node, other=other, mine=self.instance)

    async def prune(self) -> Optional[int]:
        """Delete rows not seen for ``retention`` seconds; the number deleted, or None
        when another node is pruning (PostgreSQL's advisory lock).  Never raises."""
        cutoff = self.clock.seconds() - self.retention
        lock = self._prune_lock
        try:
            if not await lock.acquire():
                return None
            try:
                if self._stopped:  # stopped meanwhile
                    return None
                n = await self.db.write(_prune, cutoff, self.node)
            finally:
                await lock.release()
        except Exception as e:
            log.warn("node heartbeat: pruning old node rows failed ({error})", error=one_line(e, 200))
            return None
        if n:
            self.pruned += n
            log.info("node heartbeat: removed {n} node row(s) not seen for {d:.0f} days", n=n,
                     d=self.retention / 86400)
        return n

    # --- the list ------------------------------------------------------------------------

    async def listing(self, limit: int = MAX_ROWS) -> dict:
        """``GET /api/nodes``: every row (at most ``limit``, by name) with its state."""
        rows, total = await self.db.read(_rows, limit)
        now = self.clock.seconds()
        items = []
        for r in rows:
            conflict_at = r.get("conflict_at")
            items.append({
                "node": r["node"], "state": node_state(r, now, self.stale_after),
                "self": r["node"] == self.node, "instance": r["instance"],
                "version": r["version"], "schema": r["db_schema"], "address": r["address"],
                "hostname": r["hostname"], "pid": r["pid"], "started_at": r["started_at"],
                "last_seen": r["last_seen"], "stopped_at": r["stopped_at"],
                "bus": {"state": r["bus"], "since": r["bus_since"]},
                "cache": (None if r["cache_bytes"] is None else
                          {"bytes": r["cache_bytes"], "blobs": r["cache_blobs"],
                           "max_bytes": r["cache_max_bytes"]}),
                "conflict": (conflict_at is not None and r.get("stopped_at") is None
                             and now - float(conflict_at) <= self.stale_after),
                "conflict_at": conflict_at,
            })
        return {"items": items, "self": self.node, "now": now, "heartbeat": self.interval,
                "stale_after": self.stale_after, "total": total, "truncated": total > len(items)}


# --- on the database threads ---------------------------------------------------------------


def _upsert(txn, row: dict, written: bool) -> Optional[str]:
    """Write ``row``; returns the other instance id when another process had
    overwritten this one's earlier write (``written``) — a duplicate name."""
    txn.execute("SELECT instance, stopped_at FROM cluster_nodes WHERE node = ?", (row["node"],))
    found = txn.fetchone()
    other = None
    if written and found is not None and found[0] != row["instance"] and found[1] is None:
        other = str(found[0])
        row = dict(row, conflict_at=row["last_seen"])
    txn.execute(_UPSERT, tuple(row[c] for c in COLUMNS))
    return other


def _mark_stopped(txn, node: str, instance: str, now: float) -> int:
    # only this process's row: a duplicate that wrote it last is still running
    txn.execute("UPDATE cluster_nodes SET stopped_at = ?, last_seen = ? WHERE node = ? AND instance = ?",
                (now, now, node, instance))
    return txn.rowcount


def _prune(txn, cutoff: float, own: str) -> int:
    txn.execute("DELETE FROM cluster_nodes WHERE last_seen < ? AND node != ?", (cutoff, own))
    return max(0, txn.rowcount or 0)


def _rows(txn, limit: int) -> tuple[list[dict], int]:
    txn.execute("SELECT count(*) FROM cluster_nodes")
    total = int(txn.fetchone()[0])
    txn.execute(f"SELECT {', '.join(COLUMNS)} FROM cluster_nodes ORDER BY node LIMIT ?", (limit,))
    return [dict(zip(COLUMNS, r)) for r in txn.fetchall()], total


__all__ = ["NodeHeartbeat", "endpoint_address", "node_state", "HEARTBEAT", "STALE_AFTER",
           "RETENTION", "MAX_ROWS", "NODE_PRUNE", "TABLES"]
