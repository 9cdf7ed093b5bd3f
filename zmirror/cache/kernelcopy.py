"""Filling the cache from an upstream connection taken over from Twisted, on
two transfer threads: one moves the body into the temp file, the other hashes
the file through mmap(2) right behind it.  :class:`FileFill` is that shared
part; :class:`SpliceFill` moves a plain-TCP body without it entering Python
(splice(2) from the socket through a pipe into the file); the TLS variant is
:class:`zmirror.cache.tlscopy.TLSFill`.  Both have the interface of the
:class:`~zmirror.transfer.threads.DigestWorker` that
:class:`~zmirror.cache.download.Download` uses (see docs/design/cache.md)."""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import select
import threading
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred

# Below this size the ordinary relay is as cheap as starting two threads.
SPLICE_MIN = 4 << 20
PIPE_SIZE = 1 << 20
HASH_WINDOW = 8 << 20  # at most this many bytes hashed per mmap(2)
# The hash starts as soon as this much is on disk (not a whole window later), so
# it runs right behind the writer and has at most this much left when the last
# byte lands: the tail that the client waits for after the body arrived.
HASH_MIN = 2 << 20
# The reactor hears of new bytes (and sends them to clients) once this many are
# new, when the upstream socket is drained, or at the end, never once per splice
# (each report costs the reactor a wake-up and three threads a GIL hand-over).
REPORT_STEP = 4 << 20
_GRANULE = mmap.ALLOCATIONGRANULARITY
_POLL_SLICE_MS = 500
_FALLOC_FL_KEEP_SIZE = 1


def _libc_fallocate() -> Optional[Callable[..., int]]:
    try:
        import ctypes

        f = ctypes.CDLL(None, use_errno=True).fallocate  # the GIL is released during the call
    except (ImportError, OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    f.restype = ctypes.c_int
    return f


_FALLOCATE = _libc_fallocate()  # looked up once, at import, not on a transfer thread


def _preallocate(fd: int, offset: int, length: int) -> None:
    """Reserves the blocks of the rest of the file up front (FALLOC_FL_KEEP_SIZE:
    the size still grows with the bytes written).  ext4 then maps each page of the
    copy to a block it already has instead of reserving one per page for delayed
    allocation, which was half of the writer thread's CPU time.  Best effort: where
    fallocate(2) fails (no support, no space) the copy goes on as before and meets
    the problem, if any, itself."""
    if _FALLOCATE is not None and length > 0:
        _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE, offset, length)


def available() -> bool:
    return all(hasattr(os, a) for a in ("splice", "SPLICE_F_MOVE", "SPLICE_F_NONBLOCK")) \
        and hasattr(mmap, "MAP_POPULATE")


def plain_tcp(transport) -> Any:
    """The TCP connection under a response body's transport if it is plain
    TCP (no TLS, no test double), else None."""
    from twisted.internet import tcp

    t = getattr(transport, "_producer", None)
    if type(t) is tcp.Client and not getattr(t, "TLS", False) and hasattr(t, "fileno"):
        return t
    return None


class FileFill:
    """Writes ``prefix`` (the bytes Twisted had already read) and then
    ``length - len(prefix)`` more bytes of an upstream body into ``file_fd``
    (:meth:`_copy`, one thread) and hashes the file through ``read_fd`` (a
    second thread).  Takes ownership of both descriptors.  Runs on two threads
    of ``lease``; subclasses say where the bytes come from."""

    THREADS = 2

    def __init__(self, algorithm: str, lease: Any, *, file_fd: int, read_fd: int, prefix: list, length: int,
                 idle_timeout: float, on_progress: Optional[Callable[[int], None]] = None):
        self.algorithm = algorithm
        self.reactor = lease.reactor
        self.length = length
        self.idle_timeout = idle_timeout
        self.on_progress = on_progress
        self.written = 0
        self.hashed = 0  # bytes hashed so far (set by the hasher thread; for tests)
        self.error: Optional[str] = None
        self.disk_error = False  # True when writing the cache file (not the upstream) failed
        self._file, self._read = file_fd, read_fd
        self._prefix = prefix
        self._cond = threading.Condition()
        self._stop = False
        self._writing = True
        self._progress_pending = False
        self._reported = 0  # ``written`` at the last report (guarded by _cond)
        self._hash_wants = 0  # the hasher sleeps until ``written`` reaches this (guarded by _cond)
        self._idle = 0.0  # seconds the source has been silent (writer thread)
        self._done: Deferred = Deferred()
        self._hash = hashlib.new(algorithm)
        self.threads_running = 2  # (guarded by _cond) for tests: both loops end on abort
        lease.run(self._writer_thread)
        lease.run(self._hasher_thread)

    def _writer_thread(self) -> None:
        try:
            self._write_loop()
        finally:
            self._thread_ended()

    def _hasher_thread(self) -> None:
        try:
            self._hash_loop()
        finally:
            self._thread_ended()

    def _thread_ended(self) -> None:
        with self._cond:
            self.threads_running -= 1

    # -- reactor side -------------------------------------------------------------
    def finish(self) -> Deferred:
        """Fires with ``"algo:hex"`` when the whole body is written and hashed,
        or with None when it failed (see ``error``).  Either way the writer
        thread is done with the source by then."""
        return self._done

    def abort(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def _fire(self, result) -> None:
        if not self._done.called:
            self._done.callback(result)

    def _report_progress(self) -> None:
        with self._cond:
            self._progress_pending = False
            written = self._reported = self.written
        if self.on_progress is not None and not self._stop:
            self.on_progress(written)

    # -- threads --------------------------------------------------------------------
    def _failed(self, why: str) -> None:
        with self._cond:
            if self.error is None:
                self.error = why
            self._stop = True
            self._cond.notify_all()

    def _advance(self, n: int, *, drained: bool = False) -> None:
        """``n`` more bytes are in the file (``drained``: and the source is empty
        for now).  Wakes the hasher only when it has enough to start on, and
        the reactor only as REPORT_STEP says."""
        with self._cond:
            self.written += n
            if self.written >= self._hash_wants:
                self._cond.notify_all()
            # the first bytes go out at once (the client's first byte does not wait for a step)
            report = not self._progress_pending and self.written > self._reported and (
                drained or not self._reported or self.written - self._reported >= REPORT_STEP
                or self.written >= self.length)
            if report:
                self._progress_pending = True
        if report:
            self.reactor.callFromThread(self._report_progress)

    def _wait(self, poller: select.poll) -> bool:
        """Waits one poll slice for the source; False (after reporting why)
        once it has been silent for ``idle_timeout``."""
        if poller.poll(_POLL_SLICE_MS):
            self._idle = 0.0
            return True
        self._idle += _POLL_SLICE_MS / 1000
        if self._idle >= self.idle_timeout:
            self._failed(f"upstream sent nothing for {self.idle_timeout:g} s "
                         f"after {self.written} of {self.length} bytes")
            return False
        return True

    def _write_loop(self) -> None:
        try:
            for chunk in self._prefix:
                self._write_all(chunk)
                self._advance(len(chunk))
            self._prefix = []
            _preallocate(self._file, self.written, self.length - self.written)
            self._copy()
        except OSError as e:
            what = "cache write failed" if self.disk_error else "upstream body broken"
            self._failed(f"{what} after {self.written} bytes: {e}")
        finally:
            self._release()
            os.close(self._file)
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def _copy(self) -> None:
        """Moves the rest of the body (``length - written`` bytes) into the
        file, calling :meth:`_advance` as it goes; returns early (after
        :meth:`_failed`) when the source breaks, or when aborted."""
        raise NotImplementedError

    def _release(self) -> None:
        """Closes what :meth:`_copy` read from (writer thread, at its end)."""

    def _write_all(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[self._to_file(os.write, self._file, view):]

    def _to_file(self, call, *args, **kw) -> int:
        try:
            return call(*args, **kw)
        except OSError:
            self.disk_error = True
            raise

    def _hash_loop(self) -> None:
        h, pos, length = self._hash, 0, self.length
        try:
            while pos < length:
                with self._cond:
                    # start as soon as HASH_MIN is there; take up to HASH_WINDOW at once
                    self._hash_wants = pos + min(HASH_MIN, length - pos)
                    while not self._stop and self._writing and self.written < self._hash_wants:
                        self._cond.wait()
                    self._hash_wants = 0
                    if self._stop:
                        return
                    end = self.written
                    if end <= pos:  # writer finished short; it reported why
                        return
                while pos < end:
                    base = pos - pos % _GRANULE
                    size = min(end, base + HASH_WINDOW) - base
                    with mmap.mmap(self._read, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                                   prot=mmap.PROT_READ, offset=base) as m:
                        with memoryview(m) as whole, whole[pos - base:] as view:
                            h.update(view)
                    pos = self.hashed = base + size
        except (OSError, ValueError) as e:
            self._failed(f"hashing the cache file failed: {e}")
        finally:
            os.close(self._read)
            # wait for the writer: it is done with the source and ``error`` is
            # final when the reactor hears of the end
            with self._cond:
                while self._writing:
                    self._cond.wait()
            if self.error is None and pos >= length:
                self.reactor.callFromThread(self._fire, f"{self.algorithm}:{h.hexdigest()}")
            else:
                if self.error is None:
                    self.error = "aborted"
                self.reactor.callFromThread(self._fire, None)


class SpliceFill(FileFill):
    """Moves a plain-TCP body from ``sock_fd`` (owned) into the file with
    splice(2) through a pipe: the bytes never enter Python."""

    def __init__(self, algorithm: str, lease: Any, *, sock_fd: int, **kw):
        self._sock = sock_fd
        super().__init__(algorithm, lease, **kw)

    def _release(self) -> None:
        os.close(self._sock)

    def _copy(self) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # a smaller pipe only means more calls
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            remaining = self.length - self.written
            while remaining > 0:
                if self._stop:
                    return
                try:
                    n = os.splice(self._sock, w, min(remaining, PIPE_SIZE),
                                  flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    self._advance(0, drained=True)  # clients get what is there while we wait
                    if not self._wait(poller):
                        return
                    continue
                if n == 0:
                    self._failed(f"upstream sent {self.written} of {self.length} bytes")
                    return
                self._idle = 0.0
                left = n
                while left:
                    moved = self._to_file(os.splice, r, self._file, left, flags=os.SPLICE_F_MOVE)
                    if moved <= 0:  # never expected: the pipe holds ``left`` bytes
                        self.disk_error = True
                        raise OSError(f"splice into the cache file moved {moved} bytes")
                    left -= moved
                remaining -= n
                self._advance(n)
        finally:
            os.close(r)
            os.close(w)
