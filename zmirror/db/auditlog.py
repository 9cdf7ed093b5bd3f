"""The audit trail (``audit_log`` table, migration 0015): who changed what, when,
from where, with the values before and after — secrets masked before they are
stored.  Written by the admin API's route wrapper (:mod:`zmirror.admin.api`) and
the CLI (:func:`zmirror.cli.common.audit`); read by ``GET /api/audit``; pruned by
:class:`AuditRetentionService`.

Design: docs/design/admin.md ("Audit trail").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

COLUMNS = ("id", "at", "actor", "node", "client_ip", "action", "target", "before", "after")
LIMIT_DEFAULT = 50
LIMIT_MAX = 500
DAY = 86400
MASK = "****"

# keys whose values are secrets (passwords, hashes, client keys, proxy credentials, tokens)
_SECRET_KEY = re.compile(r"pass|secret|token|hash|private|credential|client_key|^key$|_key$",
                         re.IGNORECASE)
# user:password@ in a URL (a proxy or upstream URL)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@/\s]*@",
                           re.IGNORECASE)


def mask(value: Any) -> Any:
    """``value`` with every secret replaced by ``****``: the values of secret-named keys
    (at any depth; empty values and flags stay) and the password of ``user:pass@`` URLs."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            # a flag ("has_password": true) says whether there is a secret: kept
            if (isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
                    and not isinstance(v, bool)):
                out[k] = MASK
            else:
                out[k] = mask(v)
        return out
    if isinstance(value, (list, tuple)):
        return [mask(v) for v in value]
    if isinstance(value, str) and "@" in value:
        return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", value)
    return value


def _dump(value: Any) -> Optional[str]:
    if value is None:
        return None
    return json.dumps(mask(value), ensure_ascii=False, sort_keys=True, default=str)


def _load(text: Optional[str]) -> Any:
    return None if text is None else json.loads(text)


def _row(values) -> dict:
    row = dict(zip(COLUMNS, values))
    row["before"] = _load(row["before"])
    row["after"] = _load(row["after"])
    return row


@dataclass(frozen=True)
class AuditFilter:
    """Filters of ``GET /api/audit`` (all optional, already validated)."""

    actor: Optional[str] = None  # exact
    action: Optional[str] = None  # exact, or a prefix ending in "." ("registry.")
    target: Optional[str] = None  # exact
    since: Optional[float] = None  # at >= since
    until: Optional[float] = None  # at <  until

    def where(self) -> tuple[str, tuple]:
        clauses, params = [], []
        if self.actor is not None:
            clauses.append("actor = ?")
            params.append(self.actor)
        if self.action is not None:
            if self.action.endswith("."):
                clauses.append("substr(action, 1, ?) = ?")
                params += [len(self.action), self.action]
            else:
                clauses.append("action = ?")
                params.append(self.action)
        if self.target is not None:
            clauses.append("target = ?")
            params.append(self.target)
        if self.since is not None:
            clauses.append("at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("at < ?")
            params.append(self.until)
        if not clauses:
            return "", ()
        return " WHERE " + " AND ".join(clauses), tuple(params)


class AuditStore:
    """The ``audit_log`` rows over ``db`` (:mod:`zmirror.db.pools` or
    :mod:`zmirror.db.sync`); ``clock.seconds()`` stamps them; ``node`` is this node."""

    def __init__(self, db: Any, clock: Any, node: str = ""):
        self.db = db
        self.clock = clock
        self.node = node

    def append(self, *, actor: str, action: str, target: str = "", before: Any = None,
               after: Any = None, client_ip: str = ""):
        """Deferred → the new row's id.  ``before``/``after`` are masked here."""
        values = (self.clock.seconds(), actor, self.node, client_ip or "", action, target or "",
                  _dump(before), _dump(after))

        def run(txn):
            txn.execute("INSERT INTO audit_log (at, actor, node, client_ip, action, target,"
                        " before, after) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id", values)
            return txn.fetchone()[0]

        return self.db.write(run)

    def list(self, flt: AuditFilter = AuditFilter(), limit: int = LIMIT_DEFAULT, offset: int = 0):
        """Deferred → ``{"entries", "total"}``, newest first."""
        limit = max(1, min(LIMIT_MAX, int(limit)))
        offset = max(0, int(offset))
        where, params = flt.where()

        def run(txn):
            txn.execute("SELECT count(*) FROM audit_log" + where, params)
            total = txn.fetchone()[0]
            txn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_log{where}"
                        " ORDER BY at DESC, id DESC LIMIT ? OFFSET ?", params + (limit, offset))
            return {"entries": [_row(r) for r in txn.fetchall()], "total": total}

        return self.db.read(run)

    def prune(self, retention_days: int):
        """Deferred → rows older than ``retention_days`` deleted (0: none).  Idempotent, so
        several nodes may run it at once."""
        if not retention_days or retention_days <= 0:
            return self.db.read(lambda txn: 0)
        cutoff = self.clock.seconds() - retention_days * DAY

        def run(txn):
            txn.execute("DELETE FROM audit_log WHERE at < ?", (cutoff,))
            return txn.rowcount

        return self.db.write(run)


class AuditRetentionService(Service):
    """Prunes the audit trail to ``retention_days`` every ``interval`` seconds (first
    run ``first_delay`` s after start); 0 days keeps everything."""

    def __init__(self, store: AuditStore, clock: Any, retention_days: int,
                 interval: float = 3600.0, first_delay: float = 90.0):
        self.store = store
        self.clock = clock
        self.retention_days = retention_days
        self.interval = interval
        self.first_delay = first_delay
        self._loop: Optional[LoopingCall] = None
        self._first = None

    def startService(self):
        super().startService()
        if not self.retention_days:
            return
        self._loop = LoopingCall(self.run_once)
        self._loop.clock = self.clock
        self._first = self.clock.callLater(self.first_delay, self._start_loop)

    def _start_loop(self):
        self._first = None
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("audit pruning loop stopped", failure=f))

    def run_once(self):
        """One pass; errors are logged, never raised (the loop keeps going)."""
        d = self.store.prune(self.retention_days)

        def failed(f):
            log.failure("audit pruning failed", failure=f)
            return 0

        return d.addErrback(failed)

    def stopService(self):
        super().stopService()
        if self._first is not None and self._first.active():
            self._first.cancel()
        self._first = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


__all__ = ["AuditStore", "AuditFilter", "AuditRetentionService", "mask", "MASK",
           "LIMIT_DEFAULT", "LIMIT_MAX"]
