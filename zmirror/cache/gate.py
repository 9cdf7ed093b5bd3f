"""A gate that holds requests while a cache loads its index at start."""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred, succeed

from zmirror.singleflight import Flight


class LoadGate:
    """Closed from the moment a cache's ``start()`` begins until its index is in memory.

    The server answers as soon as it listens, while the index is still being read
    (a database query, and for blobs a scan of the cache directory that grows with
    it): a request answered then would miss a cached item — an upstream fetch, or an
    error when every upstream is down — and a blob download begun before the
    start-up sweep of ``tmp/`` would lose its temp file.  Requests :meth:`wait`.

    The load is a :class:`~zmirror.singleflight.Flight` owned by the gate: a
    waiting request that goes away (Klein cancels it) only detaches itself.
    """

    def __init__(self) -> None:
        self._loaded: Optional[Deferred] = None  # fired by open()
        self._flight: Optional[Flight] = None

    @property
    def closed(self) -> bool:
        return self._flight is not None

    @property
    def waiting(self) -> int:
        """Requests waiting for the gate to open (cancelled ones are not counted)."""
        return self._flight.waiting if self._flight is not None else 0

    def close(self) -> None:
        if self._flight is None:
            self._loaded = Deferred()
            self._flight = Flight(self._loaded)

    def open(self) -> None:
        loaded, self._loaded, self._flight = self._loaded, None, None
        if loaded is not None:
            loaded.callback(None)

    def wait(self) -> Deferred:
        """Fires (with None) once the gate is open: at once if it is."""
        if self._flight is None:
            return succeed(None)
        return self._flight.wait()
