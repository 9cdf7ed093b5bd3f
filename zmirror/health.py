"""``/healthz`` (liveness) and ``/readyz`` (readiness), unauthenticated and tiny.

``/healthz`` answers 200 while the reactor runs; ``/readyz`` 200 when the database
answers and at least one enabled upstream is usable, else 503 with ``reasons``.
On PostgreSQL ``checks.bus`` reports the cluster bus, never a reason to be unready.
Answers carry ``Cache-Control: no-store`` and only states and counts.  The rules
and their reasons: docs/design/operations.md.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()


def _send(request, status: int, obj: dict) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


def _ping(txn) -> int:
    txn.execute("SELECT 1")
    return txn.fetchone()[0]


class HealthChecks:
    """The two handlers, given to ``ZMirrorApp(extra=...)`` by the wiring."""

    def __init__(self, db: Any, upstreams: Any, clock: Any, *, db_timeout: float = 2.0,
                 down_window: float = 60.0, bus: Any = None):
        self.db = db
        self.upstreams = upstreams
        self.clock = clock
        self.bus = bus  # the cluster bus (PostgreSQL); None: a node alone
        self.db_timeout = db_timeout
        self.down_window = down_window

    def healthz(self, request) -> bytes:
        return _send(request, 200, {"status": "ok"})

    def readyz(self, request) -> Deferred:
        return Deferred.fromCoroutine(self._readyz(request))

    async def _readyz(self, request) -> bytes:
        ready, checks, reasons = await self.check()
        body: dict = {"status": "ready" if ready else "not ready", "checks": checks}
        if reasons:
            body["reasons"] = reasons
        warnings = self.warnings(checks)
        if warnings:
            body["warnings"] = warnings
        return _send(request, 200 if ready else 503, body)

    async def check(self) -> tuple[bool, dict, list[str]]:
        reasons: list[str] = []
        checks: dict = {}
        # --- database ---
        try:
            d = self.db.read(_ping)
            d.addTimeout(self.db_timeout, self.clock)
            await d
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = "error"
            name = type(e).__name__
            if name in ("TimeoutError", "CancelledError"):
                reasons.append(f"database did not answer within {self.db_timeout:g}s")
            else:
                reasons.append(f"database unreachable ({name})")
        # --- upstreams ---
        enabled = list(getattr(self.upstreams, "upstreams", []) or [])
        try:
            health = self.upstreams.health.report() if enabled else {}
        except Exception:
            log.failure("readyz: upstream health failed")
            health = {}
        now = self.clock.seconds()
        usable = 0
        states: dict[str, int] = {}
        for up in enabled:
            h = health.get(up.id) or {}
            state = h.get("state") or "unknown"
            if state == "down":
                last = h.get("last_checked_at")
                if last is None or now - last >= self.down_window:
                    state = "unknown"  # an old failure: the next pull retries it
            states[state] = states.get(state, 0) + 1
            if state not in ("down", "cooldown"):
                usable += 1
        checks["upstreams"] = {"enabled": len(enabled), "usable": usable, "states": states}
        if not enabled:
            reasons.append("no upstream registry is enabled")
        elif usable == 0:
            reasons.append("every enabled upstream registry is down or cooling down")
        # --- the cluster bus: reported, never a reason (docs/design/operations.md) ---
        if self.bus is not None:
            checks.update(self.bus_state(now))
        return not reasons, checks, reasons

    def bus_state(self, now: float) -> dict:
        bus = self.bus
        if getattr(bus, "connected", False):
            return {"bus": "connected"}
        since = getattr(bus, "disconnected_since", None)
        if since is None:
            return {"bus": "not started"}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
        return {"bus": f"disconnected since {stamp}",
                "bus_disconnected_seconds": int(max(0.0, now - since))}

    @staticmethod
    def warnings(checks: dict) -> list[str]:
        if "bus_disconnected_seconds" not in checks:
            return []
        return [f"cluster bus disconnected for {checks['bus_disconnected_seconds']}s: changes "
                "made on other nodes (users, whitelists, registries, lockouts, upstream health) "
                "reach this node when it reconnects"]


__all__ = ["HealthChecks"]
