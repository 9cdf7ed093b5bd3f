"""Upstream health and rate-limit state shared by the nodes of a cluster: each
node's health transitions go to the bus and ``upstream_state``, the other
nodes' are merged into its own health memory (design, keys and merging rules:
docs/design/upstream.md)."""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from twisted.logger import Logger

from zmirror.cluster import RESYNC
from zmirror.upstream.health import DEFAULT_RATELIMIT_COOLDOWN, MAX_RATELIMIT_COOLDOWN, UpstreamHealth
from zmirror.upstream.models import BACKOFF_MAX_STEPS, RateLimit, Upstream

log = Logger()

KIND = "upstream.state"
MIN_INTERVAL = 1.0  # seconds between two publications about one upstream
MAX_DEADLINE = MAX_RATELIMIT_COOLDOWN  # no shared deadline lies further ahead than this
MAX_BACKOFF = DEFAULT_RATELIMIT_COOLDOWN  # nor a shared (or stored) backoff rest than this

UPSERT = ("INSERT INTO upstream_state (upstream, state, node, updated_at) VALUES (?, ?, ?, ?)"
          " ON CONFLICT (upstream) DO UPDATE SET state = excluded.state, node = excluded.node,"
          " updated_at = excluded.updated_at")


def key_of(up: Upstream) -> str:
    return str(up.id)


def snapshot(up: Upstream, now: float) -> dict:
    """What other nodes follow of ``up``'s health (a small JSON-able dict)."""
    h = up.health
    rl = h.rate_limit
    return {
        "id": up.id,
        "url": up.url,
        "at": now,
        "state": "down" if h.state == "down" else "up",
        "error": h.last_error if h.state == "down" else None,
        "cooldown_until": h.cooldown_until,
        "ratelimited_until": h.ratelimited_until,
        "scope": h.ratelimit_scope,
        "reason": h.ratelimit_reason,
        "rate_limit": None if rl is None else [rl.limit, rl.remaining, rl.window, rl.updated_at],
        "backoff": h.backoff,
        "backoff_until": h.backoff_until,
        "backoff_cleared_at": h.backoff_cleared_at,
    }


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        value = float(value)
    except OverflowError:  # an int beyond any float (JSON allows any number of digits)
        return 0.0
    return value if math.isfinite(value) else 0.0


def _count(value: Any) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 31:
        return None
    return value


def merge(up: Upstream, data: dict, now: float) -> bool:
    """Fold a peer's :func:`snapshot` into ``up``'s health (rules: docs/design/upstream.md).
    Returns True when something changed."""
    h = up.health
    before = (h.state, h.last_error, h.cooldown_until, h.ratelimited_until, h.ratelimit_scope,
              h.ratelimit_reason, h.rate_limit, h.backoff, h.backoff_until)
    cap = now + MAX_DEADLINE
    at = min(_num(data.get("at")), now)
    # down / up: the newer observation wins
    if at >= (h.last_checked_at or 0.0):
        if data.get("state") == "down":
            h.state = "down"
            error = data.get("error")
            h.last_error = str(error)[:300] if error else h.last_error
            h.last_checked_at = at
            cd = min(_num(data.get("cooldown_until")), cap)
            if cd > now and cd > h.cooldown_until:
                h.cooldown_until = cd
        elif data.get("state") == "up" and h.state == "down":
            h.state = "up"
            h.consecutive_failures = 0
            h.cooldown_until = 0.0
            h.last_checked_at = at
    # the rate-limit numbers: the newer answer wins
    rl = data.get("rate_limit")
    peer_rl_at = 0.0
    if isinstance(rl, list) and len(rl) == 4:
        peer_rl_at = min(_num(rl[3]), now)
        if peer_rl_at > ((h.rate_limit.updated_at or 0.0) if h.rate_limit else 0.0):
            h.rate_limit = RateLimit(limit=_count(rl[0]), remaining=_count(rl[1]),
                                     window=_count(rl[2]), updated_at=peer_rl_at)
    # the rate-limit cool-down: the later deadline wins
    until = min(_num(data.get("ratelimited_until")), cap)
    if until > now:
        if until > h.ratelimited_until:
            keep_all = h.rate_limited(now) and h.ratelimit_scope == "all"
            h.ratelimited_until = until
            reason = data.get("reason")
            h.ratelimit_reason = reason if reason in ("retry-after", "window") else "window"
            h.ratelimit_scope = "all" if data.get("scope") == "all" or keep_all else "pulls"
    elif (h.rate_limited(now) and h.ratelimit_reason == "window" and h.rate_limit is not None
          and peer_rl_at > 0 and peer_rl_at >= (h.rate_limit.updated_at or 0.0)):
        # the peer has a newer answer and no cool-down: pulls are left again
        h.ratelimited_until = 0.0
        h.ratelimit_reason = ""
    _merge_backoff(up, data, now, at)
    after = (h.state, h.last_error, h.cooldown_until, h.ratelimited_until, h.ratelimit_scope,
             h.ratelimit_reason, h.rate_limit, h.backoff, h.backoff_until)
    return after != before


def _merge_backoff(up: Upstream, data: dict, now: float, at: float) -> None:
    """A peer's backoff: its rest (at most :data:`MAX_BACKOFF` from now, so a brief
    rest stays brief however it was stored) when it ends later than this node's,
    with its count of 429s in a row; an answer that ended the peer's backoff
    after this node's last 429 ends this node's too."""
    h = up.health
    until = min(_num(data.get("backoff_until")), now + MAX_BACKOFF)
    cleared = min(_num(data.get("backoff_cleared_at")), now)
    if until > now and until > h.backoff_until:
        h.backoff_until = until
        h.backoff = min(max(h.backoff, _count(data.get("backoff")) or 1), BACKOFF_MAX_STEPS)
        h.backoff_at = at
    elif until <= now and (h.backoff or h.backoff_until) and cleared > h.backoff_at:
        h.backoff, h.backoff_until = 0, 0.0
        h.backoff_cleared_at = max(h.backoff_cleared_at, cleared)


def in_force(data: dict, now: float) -> bool:
    """A stored snapshot that still holds an upstream back."""
    return any(_num(data.get(k)) > now for k in ("cooldown_until", "ratelimited_until", "backoff_until"))


class HealthSharing:
    """Shares the transitions of ``health`` over ``bus`` (a
    :class:`zmirror.cluster.IBus`) and ``upstream_state`` (``db``; None: the bus
    only) and applies the other nodes' to it."""

    def __init__(self, health: UpstreamHealth, bus: Any, db: Any, clock: Any):
        self.health = health
        self.bus = bus
        self.db = db
        self.clock = clock
        self.sent = 0  # snapshots sent (published and stored)
        self.applied = 0  # peers' snapshots that changed something here
        self.store_failures = 0  # upserts of upstream_state that failed
        self._last: dict[int, float] = {}  # upstream id -> when its last snapshot went out
        self._timers: dict[int, Any] = {}
        self._writes: set = set()  # upserts not answered yet
        self._failing = False
        bus.subscribe(KIND, self.received)
        bus.subscribe(RESYNC, lambda _data: self.load())
        health.subscribe(self.health_changed)

    # -- this node's transitions ---------------------------------------------------

    def health_changed(self, up: Upstream) -> None:
        uid = up.id
        if uid in self._timers:
            return  # a send is due: it takes the latest state
        now = self.clock.seconds()
        wait = self._last.get(uid, -math.inf) + MIN_INTERVAL - now
        if wait <= 0:
            self._send(uid)
        else:
            self._timers[uid] = self.clock.callLater(wait, self._send, uid)

    def _send(self, uid: int) -> None:
        self._timers.pop(uid, None)
        up = self.health.upstream(uid)
        if up is None:
            return
        now = self.clock.seconds()
        self._last[uid] = now
        snap = snapshot(up, now)
        self.sent += 1
        if self.db is not None:
            d = self.db.execute(UPSERT, (key_of(up), json.dumps(snap, separators=(",", ":")),
                                         getattr(self.bus, "origin", ""), now))
            d.addCallbacks(self._stored, self._store_failed, errbackArgs=(up.name,))
            if not d.called:
                self._writes.add(d)
                d.addBoth(lambda r: (self._writes.discard(d), r)[1])
        self.bus.publish(KIND, snap)

    def _stored(self, _result: Any) -> None:
        self._failing = False

    def _store_failed(self, failure: Any, name: str) -> None:
        self.store_failures += 1
        if not self._failing:  # once until a write works again
            log.error("upstream {name}: storing its shared state failed: {error}", name=name,
                      error=" ".join(str(failure.value).split())[:200])
        self._failing = True

    def flush(self):
        """A Deferred firing when the upserts sent so far are answered."""
        from twisted.internet.defer import DeferredList

        return DeferredList(list(self._writes)).addCallback(lambda _: None)

    def stop(self):
        """Send what is due now (the bus and the pools stop after this), then wait for
        the upserts on their way."""
        timers, self._timers = self._timers, {}
        for uid, call in timers.items():
            if call.active():
                call.cancel()
                self._send(uid)
        return self.flush()

    # -- the other nodes' ------------------------------------------------------------

    def received(self, data: dict) -> None:
        """An ``upstream.state`` event from another node."""
        uid = data.get("id")
        if type(uid) is not int:
            return
        up = self.health.upstream(uid, data.get("url"))
        if up is None:
            return  # a registry this node does not know (or no longer has)
        if merge(up, data, self.clock.seconds()):
            self.applied += 1

    async def _load(self) -> int:
        rows = await self.db.query("SELECT upstream, state FROM upstream_state")
        now = self.clock.seconds()
        n = 0
        for row in rows:
            try:
                data = json.loads(row["state"])
            except (TypeError, ValueError, RecursionError):  # RecursionError: nested too deep
                continue
            if not isinstance(data, dict) or type(data.get("id")) is not int or not in_force(data, now):
                continue
            up = self.health.upstream(data.get("id"), data.get("url"))
            if up is not None and merge(up, data, now):
                n += 1
        self.applied += n
        return n

    def load(self):
        """Apply the ``upstream_state`` rows still in force (at start and on
        RESYNC); a Deferred firing with how many changed something (never errbacks)."""
        from twisted.internet.defer import Deferred, succeed

        if self.db is None:
            return succeed(0)
        d = Deferred.fromCoroutine(self._load())

        def failed(f):
            log.error("reading the shared upstream state failed: {error}",
                      error=" ".join(str(f.value).split())[:200])
            return 0

        return d.addErrback(failed)


__all__ = ["HealthSharing", "KIND", "MIN_INTERVAL", "merge", "snapshot", "key_of", "in_force"]
