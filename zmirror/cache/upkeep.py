"""The caches' background work: load the indexes at start, write the blob
index's access times and the manifests' last pulls every ``interval`` s, run
the retention pass every ``retention_interval`` s, retrying what failed."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from zmirror.cache.blobs import CacheBlobs

log = Logger()

# Background work of the cache (start, index writes) that failed is retried after
# RETRY_FIRST s, doubling on each further failure up to RETRY_MAX s.
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
# the retention pass (zmirror/cache/retentionpass.py): first this long after start, then every
RETENTION_FIRST = 60.0
RETENTION_INTERVAL = 600.0


def retry_delay(failures: int) -> float:
    """Seconds before the next try after ``failures`` failures in a row."""
    return min(RETRY_FIRST * 2 ** (failures - 1), RETRY_MAX)


class CacheUpkeep:
    """The caches' background work, run by a service (zmirror/wiring.py).

    ``start()``: load the blob and manifest indexes (each retried after a
    failure, backing off, until it worked) and write the blob index and the
    manifests' last pulls every ``interval`` s; a failed write keeps its rows
    dirty and is retried sooner, backing off, then the usual interval resumes.
    With a ``retention`` pass: run it ``retention_first`` s after start, then
    every ``retention_interval`` s.  ``stop()``: abort the downloads still
    running, write the index and the last pulls once more, join the transfer
    threads.
    """

    def __init__(self, blobs: CacheBlobs, manifests: Any, clock: Any, *, interval: float = 30.0,
                 retention: Any = None, retention_first: float = RETENTION_FIRST,
                 retention_interval: float = RETENTION_INTERVAL):
        self.blobs = blobs
        self.manifests = manifests
        self.clock = clock
        self.interval = interval
        self.retention = retention  # a RetentionPass, or None
        self.retention_first = retention_first
        self.retention_interval = retention_interval
        self.failures: dict[str, int] = {}  # consecutive failures per job
        self._calls: dict[str, Any] = {}
        self._stopped = False

    def start(self) -> None:
        self._stopped = False
        dir_lock = getattr(self.blobs, "dir_lock", None)
        if dir_lock is not None:
            dir_lock.acquire()  # again, after a stop (held already from the wiring)
        self._run("blob cache start", self.blobs.start, lambda: None)
        if self.manifests is not None:
            self._run("manifest cache start", self.manifests.start, lambda: None)
        self._later("blob index write", self.interval, self._flush)
        if self.retention is not None:
            self._later("retention", self.retention_first, self._retain)

    async def _write(self) -> None:
        """The blob index's changes, then the manifests' last pulls (both batched)."""
        await self.blobs.flush_index()
        flush_pulls = getattr(self.manifests, "flush_pulls", None)
        if flush_pulls is not None:
            await flush_pulls()
        if self.retention is not None and not self._stopped:
            # pins written elsewhere (a sync job, the CLI, another node) protect from the LRU soon
            await self.retention.check_pins()

    def _flush(self) -> None:
        self._run("blob index write", self._write,
                  lambda: self._later("blob index write", self.interval, self._flush))

    def _retain(self) -> None:
        async def once():
            await self.retention.run()

        self._run("retention", once,
                  lambda: self._later("retention", self.retention_interval, self._retain))

    def _run(self, job: str, f: Callable[[], Any], ok: Callable[[], None]) -> None:
        d = Deferred.fromCoroutine(f())

        def worked(_):
            self.failures[job] = 0
            if not self._stopped:
                ok()

        def failed(failure):
            n = self.failures[job] = self.failures.get(job, 0) + 1
            delay = retry_delay(n)
            log.failure("{job} failed ({n} in a row); retrying in {delay:g} s", failure,
                        job=job, n=n, delay=delay)
            self._later(job, delay, lambda: self._run(job, f, ok))

        d.addCallbacks(worked, failed)

    def _later(self, job: str, delay: float, f: Callable[[], None]) -> None:
        if self._stopped:
            return
        self._calls[job] = self.clock.callLater(delay, f)

    def stop(self) -> Deferred:
        self._stopped = True
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        self.blobs.abort_downloads()

        async def last_write():
            try:
                await self._write()
            finally:
                self.blobs.transfers.stop()
                dir_lock = getattr(self.blobs, "dir_lock", None)
                if dir_lock is not None:
                    dir_lock.release()

        return Deferred.fromCoroutine(last_write())

