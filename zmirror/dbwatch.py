"""Changes other processes make to the stored users, whitelists and registries reach
the running server: :class:`DatabaseWatchService` polls SQLite for them,
:class:`TableChanges` takes PostgreSQL's (LISTEN/NOTIFY on the cluster bus); both
re-read the changed stores with :meth:`zmirror.reload.Reloader.refresh_stores`
(docs/design/wiring.md).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()

# seconds between checks for database changes made by other processes (the CLI)
DB_POLL_INTERVAL = 2.0


class DatabaseWatchService(Service):
    """Every ``interval`` seconds (on ``clock``) asks a
    :class:`~zmirror.db.watch.ChangeWatcher` whether the users / whitelists /
    registries tables changed, and re-reads those stores with
    :meth:`~zmirror.reload.Reloader.refresh_stores` (the SIGHUP path).  So a
    user disabled with the ``zmirror`` CLI loses its tokens within ``interval``
    seconds.

    One check at a time (``LoopingCall`` waits for the returned Deferred); the
    first one runs at start and re-reads every store quietly.  Changes the server
    makes itself (admin API) are re-read too, which is harmless.  Stopping waits
    for a running check, then closes the watcher's connection.
    """

    def __init__(self, watcher: Any, reloader: Any, clock: Any, interval: float = DB_POLL_INTERVAL):
        self.watcher = watcher
        self.reloader = reloader
        self.clock = clock
        self.interval = interval
        self.polls = 0
        self._loop: Any = None
        self._pending: Any = None
        self._waiters: list = []
        self._failing = False

    def startService(self):
        super().startService()
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("database watch stopped", f))

    def poll(self):
        """One check (and re-read); a Deferred that never errbacks."""
        from twisted.internet.defer import Deferred

        outer: Deferred = Deferred()
        self._pending = outer

        def finished(_):
            outer.callback(None)  # the LoopingCall schedules the next check first,
            self._done()  # then wait() returns

        Deferred.fromCoroutine(self._poll()).addBoth(finished)
        return outer

    async def _poll(self) -> None:
        first = self.polls == 0
        self.polls += 1
        try:
            changed = await self.watcher.check()
        except Exception:
            if not self._failing:  # once until it works again, not every interval
                log.failure("database watch: checking for changes failed (retrying)")
            self._failing = True
            return
        self._failing = False
        if changed:
            await self.reloader.refresh_stores(changed, reason="database changed", quiet=first)

    def _done(self) -> None:
        self._pending = None
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(None)

    def wait(self):
        """A Deferred that fires when no check is running."""
        from twisted.internet.defer import Deferred, succeed

        if self._pending is None:
            return succeed(None)
        w: Deferred = Deferred()
        self._waiters.append(w)
        return w

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        d = self.wait()
        d.addCallback(lambda _: self.watcher.close())
        d.addErrback(lambda f: log.failure("database watch: closing failed", f))
        return d


class TableChanges:
    """The bus's table changes (PostgreSQL's LISTEN/NOTIFY,
    :class:`zmirror.db.listen.PostgresBus`) →
    :meth:`~zmirror.reload.Reloader.refresh_stores`, the path of the SQLite
    watch and of SIGHUP.

    One refresh at a time: tables reported while one runs are re-read together
    after it, so an older read never lands after a newer one and a burst of
    changes costs a few refreshes.  The first one (the bus's resync when it first
    connects: every table) is logged quietly, like the SQLite watch's first check.
    """

    def __init__(self, reloader: Any):
        self.reloader = reloader
        self.refreshes = 0
        self._pending: set = set()
        self._running: Any = None

    def changed(self, tables: Any) -> None:
        from twisted.internet.defer import Deferred

        self._pending |= set(tables)
        if self._running is None:
            self._running = Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        try:
            while self._pending:
                tables, self._pending = self._pending, set()
                quiet = self.refreshes == 0
                self.refreshes += 1
                await self.reloader.refresh_stores(tables, reason="database changed", quiet=quiet)
        finally:
            self._running = None

    def wait(self):
        """A Deferred that fires when no refresh is running (tests)."""
        from twisted.internet.defer import succeed

        if self._running is None:
            return succeed(None)
        from twisted.internet.defer import Deferred

        d: Deferred = Deferred()
        self._running.addBoth(lambda r: (d.callback(None), r)[1])
        return d


__all__ = ["DB_POLL_INTERVAL", "DatabaseWatchService", "TableChanges"]
