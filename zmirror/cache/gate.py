"""A gate that holds requests while a cache loads its index at start."""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred


class LoadGate:
    """Closed from the moment a cache's ``start()`` begins until its index is in memory.

    The server answers as soon as it listens, while the index is still being read
    (a database query, and for blobs a scan of the cache directory that grows with
    it): a request answered then would miss a cached item — an upstream fetch, or an
    error when every upstream is down — and a blob download begun before the
    start-up sweep of ``tmp/`` would lose its temp file.  Requests :meth:`wait`.
    """

    def __init__(self) -> None:
        self._waiters: Optional[list[Deferred]] = None

    @property
    def closed(self) -> bool:
        return self._waiters is not None

    def close(self) -> None:
        if self._waiters is None:
            self._waiters = []

    def open(self) -> None:
        waiters, self._waiters = self._waiters or [], None
        for d in waiters:
            if not d.called:  # a waiter whose request went away was cancelled
                d.callback(None)

    def wait(self) -> Deferred:
        """Fires (with None) once the gate is open: at once if it is."""
        d: Deferred = Deferred()
        if self._waiters is None:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d
