"""Work shared by several callers and owned by none of them.

A client that disconnects cancels its own handler's Deferred (Klein does
that); if that handler had started shared work (an upstream token fetch, a
store load, a manifest fetch, a blob download) and awaited it directly, the
cancellation would reach the work and every other waiter would get
``CancelledError``.  Here the work runs in a Deferred no caller holds: each
caller gets its own from :meth:`Flight.wait`, and cancelling it only detaches
that caller.  :class:`SingleFlight` keeps at most one :class:`Flight` per key;
the key is free again once the work ended, so a failure is retried by the
next caller.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Generic, Hashable, Optional, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.python.failure import Failure

T = TypeVar("T")

_PENDING = object()


class Flight(Generic[T]):
    """The outcome of one run of some work, handed to any number of waiters."""

    def __init__(self, work: "Deferred[T] | Awaitable[T]", on_done: Optional[Callable[[], None]] = None):
        self._waiters: list[Deferred] = []
        self._result: Any = _PENDING
        self._on_done = on_done
        self._work: Deferred = ensureDeferred(work) if not isinstance(work, Deferred) else work
        self._work.addBoth(self._finished)

    @classmethod
    def start(cls, f: Callable[[], "Awaitable[T] | Deferred[T]"],
              on_done: Optional[Callable[[], None]] = None) -> "Flight[T]":
        """Run ``f()`` (a coroutine function or a function returning a Deferred,
        or a plain value).  ``on_done()`` runs when it ends, before the waiters
        are told."""
        try:
            work = f()
        except BaseException:
            work = fail(Failure())
        if not isinstance(work, Deferred) and not hasattr(work, "__await__"):
            work = succeed(work)
        return cls(work, on_done)

    @property
    def done(self) -> bool:
        return self._result is not _PENDING

    @property
    def waiting(self) -> int:
        """How many callers are waiting (cancelled ones are not counted)."""
        return len(self._waiters)

    def _finished(self, result: Any) -> None:
        self._result = result
        if self._on_done is not None:
            self._on_done()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)
        return None  # the failure, if any, went to the waiters; nobody else holds it

    def _fire(self, d: Deferred) -> None:
        if d.called:
            return
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(self._result)

    def wait(self) -> "Deferred[T]":
        """A new Deferred with the work's result; cancelling it detaches only this caller."""
        d: Deferred = Deferred(self._detach)
        if self.done:
            self._fire(d)
        else:
            self._waiters.append(d)
        return d

    def _detach(self, d: Deferred) -> None:
        try:
            self._waiters.remove(d)
        except ValueError:
            pass
        # Deferred.cancel then errbacks d with CancelledError

    def cancel(self) -> None:
        """Stop the work itself (shutdown); waiters get its failure."""
        self._work.cancel()


class SingleFlight(Generic[T]):
    """One :class:`Flight` per key at a time."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, Flight] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: Hashable) -> Optional[Flight]:
        return self._flights.get(key)

    def flight(self, key: Hashable, f: Callable[[], "Awaitable[T] | Deferred[T]"]) -> tuple[Flight, bool]:
        """The running flight of ``key``, started with ``f()`` if there is none.
        Returns ``(flight, created)``."""
        running = self._flights.get(key)
        if running is not None:
            return running, False
        box: list[Flight] = []

        def forget() -> None:
            if box and self._flights.get(key) is box[0]:
                del self._flights[key]

        fl = Flight.start(f, forget)
        box.append(fl)
        if not fl.done:
            self._flights[key] = fl
        return fl, True

    def run(self, key: Hashable, f: Callable[[], "Awaitable[T] | Deferred[T]"]) -> "Deferred[T]":
        """Wait for the work of ``key``, starting it with ``f()`` if none is running."""
        return self.flight(key, f)[0].wait()


__all__ = ["Flight", "SingleFlight"]
