"""Hashing (and optionally writing) a byte stream on a worker thread.

Relaying a blob costs the reactor thread little; hashing it costs about as
much again.  ``hashlib`` releases the GIL for large updates, so a dedicated
thread per transfer computes the digest on the other core while the reactor
keeps relaying.  The same thread can write the bytes to a file (the cache tee),
keeping blocking disk writes off the reactor thread.

Flow control: ``update`` returns False once more than ``high_water`` bytes are
queued; the caller pauses its producer and ``on_drained`` is called (in the
reactor thread) when the queue is below ``low_water`` again.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any, BinaryIO, Callable, Optional

from twisted.internet.defer import Deferred

_STOP = object()


class DigestWorker:
    def __init__(self, algorithm: str, reactor: Any, *, file: Optional[BinaryIO] = None,
                 on_drained: Optional[Callable[[], None]] = None,
                 on_progress: Optional[Callable[[int], None]] = None,
                 high_water: int = 16 << 20, low_water: int = 4 << 20):
        self.algorithm = algorithm
        self.reactor = reactor
        self.file = file
        self.on_drained = on_drained
        # on_progress(bytes_written) runs in the reactor thread after writes
        # (coalesced: at most one call pending at a time)
        self.on_progress = on_progress
        self.written = 0
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
        self._thread = threading.Thread(target=self._run, name="zmirror-digest", daemon=True)
        self._thread.start()

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
