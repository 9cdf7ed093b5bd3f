"""Hashing (and optionally writing) a byte stream on a worker thread, with
threads leased from a bounded pool that never queues a transfer
(see docs/design/transfer.md)."""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any, BinaryIO, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

_STOP = object()

TRANSFER_THREADS = 16  # default size of a TransferThreads pool


class _TransferPool(ThreadPool):
    # daemon threads: a transfer stuck in a system call never holds the process at exit
    @staticmethod
    def threadFactory(*a, **kw) -> threading.Thread:
        return threading.Thread(*a, daemon=True, **kw)


class TransferThreads:
    """At most ``size`` threads for blob transfers (digest workers, kernel copies).

    :meth:`lease` reserves ``n`` threads only if that many are free, else
    returns None: work is never queued behind running transfers.  Accounting
    happens in the reactor thread; a thread's slot is free again once the
    function it ran has returned.  The Twisted ThreadPool under it starts on
    first use; :meth:`stop` (the cache's service, at shutdown) joins it.
    """

    def __init__(self, reactor: Any, size: int = TRANSFER_THREADS, name: str = "zmirror-transfer"):
        self.reactor = reactor
        self.size = size
        self.name = name
        self.busy = 0  # leased slots (running or reserved)
        self._pool: Optional[ThreadPool] = None

    @property
    def free(self) -> int:
        return self.size - self.busy

    def lease(self, n: int = 1) -> Optional["Lease"]:
        if n > self.free:
            return None
        self.busy += n
        return Lease(self, n)

    def _release(self, n: int) -> None:
        self.busy -= n

    def _call(self, f: Callable[[], None]) -> None:
        if self._pool is None:
            self._pool = _TransferPool(0, self.size, self.name)
        if not self._pool.started:
            self._pool.start()

        def body():
            try:
                f()
            finally:
                self.reactor.callFromThread(self._release, 1)

        self._pool.callInThread(body)

    def stop(self) -> None:
        """Join the threads (their transfers must have been told to stop)."""
        pool, self._pool = self._pool, None
        if pool is not None and pool.started:
            pool.stop()


class Lease:
    """Threads reserved in a :class:`TransferThreads`: :meth:`run` uses one,
    :meth:`close` gives back those not used (idempotent)."""

    def __init__(self, threads: TransferThreads, n: int):
        self.threads = threads
        self.left = n

    @property
    def reactor(self) -> Any:
        return self.threads.reactor

    def run(self, f: Callable[[], None]) -> None:
        if self.left <= 0:
            raise RuntimeError("no thread left in this lease")
        self.left -= 1
        self.threads._call(f)

    def close(self) -> None:
        if self.left:
            self.threads._release(self.left)
            self.left = 0


class DigestWorker:
    """Runs on one thread of ``lease`` (see :class:`TransferThreads`)."""

    def __init__(self, algorithm: str, lease: Lease, *, file: Optional[BinaryIO] = None,
                 on_drained: Optional[Callable[[], None]] = None,
                 on_progress: Optional[Callable[[int], None]] = None,
                 high_water: int = 16 << 20, low_water: int = 4 << 20,
                 prefix_path: Any = None, prefix_length: int = 0):
        self.algorithm = algorithm
        self.reactor = lease.reactor
        self.file = file
        self.on_drained = on_drained
        # on_progress(bytes_written) runs in the reactor thread after writes
        # (coalesced: at most one call pending at a time)
        self.on_progress = on_progress
        self._progress_pending = False
        self.high_water = high_water
        self.low_water = low_water
        self._hash = hashlib.new(algorithm)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0
        self._lock = threading.Lock()
        self._over = False
        self._done: Deferred = Deferred()
        self.error: Optional[BaseException] = None
        # ``prefix_length`` bytes already in the file at ``prefix_path`` (a kernel
        # copy that broke off): hashed first, then what is queued follows them
        self.prefix_path = prefix_path
        self.prefix_length = prefix_length
        self.written = prefix_length
        lease.run(self._run)

    def update(self, data: bytes) -> bool:
        """Queue ``data``; False means "pause: the worker is behind"."""
        with self._lock:
            self._queued += len(data)
            over = self._queued > self.high_water
            if over:
                self._over = True
        self._queue.put(data)
        return not over

    def finish(self) -> Deferred:
        """Fires with ``"algo:hex"`` once every queued byte is hashed (and written)."""
        self._queue.put(_STOP)
        return self._done

    def abort(self) -> None:
        self._queue.put(_STOP)

    def _run(self):
        h, f = self._hash, self.file
        if self.prefix_length:
            try:
                with open(self.prefix_path, "rb", buffering=0) as src:
                    left = self.prefix_length
                    while left > 0:
                        chunk = src.read(min(left, 1 << 20))
                        if not chunk:
                            raise OSError(f"file shorter than the {self.prefix_length} bytes written")
                        h.update(chunk)
                        left -= len(chunk)
            except BaseException as e:
                self.error = e
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if self.error is None:
                try:
                    h.update(item)
                    if f is not None:
                        view = memoryview(item)
                        while view:
                            n = f.write(view)
                            view = view[n:]
                except BaseException as e:  # disk full, closed file...
                    self.error = e
            with self._lock:
                self._queued -= len(item)
                self.written += len(item)
                signal = self._over and self._queued <= self.low_water
                if signal:
                    self._over = False
                progress = self.on_progress is not None and not self._progress_pending
                if progress:
                    self._progress_pending = True
            if signal and self.on_drained is not None:
                self.reactor.callFromThread(self.on_drained)
            if progress:
                self.reactor.callFromThread(self._report_progress)
        digest = f"{self.algorithm}:{h.hexdigest()}"
        self.reactor.callFromThread(self._fire, digest)

    def _report_progress(self):
        with self._lock:
            self._progress_pending = False
            written = self.written
        self.on_progress(written)

    def _fire(self, digest: str):
        if not self._done.called:
            self._done.callback(digest)
