"""The lockout's locks by name, for the admin: listed and lifted on every node.

:class:`LockoutRecords` writes a row to ``lockouts``
(:class:`~zmirror.db.lockouts.LockoutStore`) when this node's
:class:`~zmirror.auth.lockout.Lockout` locks an account or an address (the
attempted name or the address, sanitized and bounded), lists the locks in force
(``GET /api/lockouts``; ``zmirror user locked`` reads the same rows) and
unlocks (``DELETE /api/lockouts/<name>``; ``zmirror user unlock``): the rows
are marked released and every node, polling for released rows every
``interval`` seconds, lifts its own lock of them.  See docs/design/auth.md,
"Login lockout".
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from zmirror.auth.lockout import Lockout, parse_key, printable_name
from zmirror.db.lockouts import row_out

log = Logger()

POLL_INTERVAL = 2.0  # seconds: an unlock reaches every node within this
NAME_CHARS = 200  # an unlock's target as given (a name, an address or a lock's id)


class LockoutRecords:
    """``lockout``: this node's; ``store``: the ``lockouts`` rows; ``shared``:
    several nodes keep their locks in one database (PostgreSQL: the rows outlive
    a node's restart); else the rows of the previous run are deleted at start
    (the locks of one node die with its process)."""

    def __init__(self, lockout: Lockout, store: Any, *, clock: Any, node: str = "",
                 shared: bool = False, interval: float = POLL_INTERVAL):
        self.lockout = lockout
        self.store = store
        self.clock = clock
        self.node = str(node or "")[:200]
        self.shared = shared
        self.interval = interval
        self._since: Optional[float] = None
        self._applied: set = set()  # (key, released_at) already lifted
        self._loop: Any = None
        self._stopped = False
        self._failing = False
        lockout.watch_locks(self)

    # --- the Lockout's lock watcher ---------------------------------------------------

    def locked(self, info: dict) -> None:
        row = {"key": info["key"], "kind": info["kind"], "name": info["name"],
               "login": info["login"], "failures": info["failures"],
               "locked_at": info["locked_at"], "until": info["until"], "node": self.node}
        cutoff = self.clock.seconds() - max(self.lockout.window, self.lockout.cooldown)
        d = Deferred.fromCoroutine(self._put(row, cutoff))
        d.addErrback(lambda f: log.failure("lockout: writing a lock failed", f))

    async def _put(self, row: dict, cutoff: float) -> None:
        await self.store.put(row, cutoff=cutoff)

    # --- the admin's view --------------------------------------------------------------

    async def list(self) -> list[dict]:
        """The locks in force: the rows (every node's), then this node's locks
        that have none (another node's failures, a row not written): by id,
        name ``None`` when no node recorded it."""
        now = self.clock.seconds()
        rows = await self.store.locked(now)
        out = [row_out(r, now) for r in rows]
        seen = {r["id"] for r in out}
        for lock in self.lockout.locks():
            if lock["key"] in seen:
                continue
            out.append(row_out({**lock, "node": self.node}, now))
        return out

    async def unlock(self, target: str) -> list[dict]:
        """Lift the locks of the account or address ``target`` (or of the lock
        whose id it is), here at once and on the other nodes within
        :data:`POLL_INTERVAL`; the locks lifted (empty: none in force)."""
        target = printable_name(str(target or "").strip(), NAME_CHARS)
        now = self.clock.seconds()
        key = parse_key(target)
        keys = [key] if key is not None else self.lockout.keys_named(target)
        hexkeys = {k.hex() for k in keys}
        rows = await self.store.release(now, name="" if key is not None else target,
                                        keys=sorted(hexkeys))
        released = [row_out(r, now) for r in rows]
        done = {r["id"] for r in released}
        for lock in self.lockout.locks():  # this node's locks without a row
            if lock["key"] in hexkeys and lock["key"] not in done:
                released.append(row_out({**lock, "node": self.node}, now))
                done.add(lock["key"])
        for h in done:
            k = parse_key(h)
            if k is not None:
                self.lockout.release(k)
        return released

    # --- the other nodes' unlocks (and the CLI's) -----------------------------------------

    async def poll(self) -> int:
        """Lift the locks whose rows were released since the last poll; how many."""
        since = self._since if self._since is not None else self.clock.seconds() - 60.0
        rows = await self.store.released_since(since)
        lifted = 0
        for hexkey, at in rows:
            if (hexkey, at) in self._applied:
                continue
            self._applied.add((hexkey, at))
            key = parse_key(hexkey)
            if key is not None and self.lockout.release(key):
                lifted += 1
            if at is not None and (self._since is None or at > self._since):
                self._since = at
        if self._since is None:
            self._since = since
        if len(self._applied) > 10_000:
            self._applied = {a for a in self._applied if a[1] is not None and a[1] >= self._since}
        return lifted

    def _poll(self):
        def failed(f):
            if not self._failing:  # once until it works again
                log.failure("lockout: reading unlocks failed (retrying)", f)
            self._failing = True

        def ok(_):
            self._failing = False

        return Deferred.fromCoroutine(self.poll()).addCallbacks(ok, failed)

    def start(self):
        """Delete the previous run's rows (one node), then poll every ``interval``
        seconds (not when :meth:`stop` came first)."""
        self._stopped = False

        async def go():
            if not self.shared:
                await self.store.clear()

        d = Deferred.fromCoroutine(go())
        d.addErrback(lambda f: log.failure("lockout: clearing the previous run's locks failed", f))

        def loop(_):
            if self._stopped or self._loop is not None:
                return
            self._loop = LoopingCall(self._poll)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=True)

        return d.addCallback(loop)

    def stop(self) -> None:
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


__all__ = ["POLL_INTERVAL", "LockoutRecords"]
