"""The download of one blob into the cache: a :class:`Download` fills a temp
file from an upstream answer, verifies it and hands it to the index; its
clients follow the growing file (:meth:`Download.follow`) and get the last byte
only after verification (see docs/design/cache.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

import zmirror.cache.kernelcopy as kernelcopy
import zmirror.cache.tlscopy as tlscopy
from zmirror.transfer.connections import enlarge_reads
from zmirror.transfer.follower import FollowerProducer
from zmirror.transfer.interfaces import OCTET_STREAM, blob_content_type
from zmirror.transfer.threads import DigestWorker
from zmirror.httpbody import failure_text

log = Logger()


class CacheUnavailable(Exception):
    """The cache cannot store a blob now (disk full or unwritable)."""


def silent_unlink(p) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


class Download(Protocol):
    """One upstream fetch of a blob into a temp file, shared by all its readers.

    Created by :meth:`~zmirror.cache.blobs.CacheBlobs.fill` once the upstream answered (headers
    known); readers attach with :meth:`follow`.
    """

    def __init__(self, cache: Any, digest: str, repo: str):
        self.cache = cache
        self.digest = digest
        self.repo = repo
        self.length: Optional[int] = None
        self.content_type = OCTET_STREAM  # replayed to every follower
        self.written = 0  # bytes on disk, readable by followers
        self.state = "pending"  # pending | running | done | failed
        self.failure_reason = ""
        self.verify_failed = False
        self.orphaned = False  # every client left; finishing it counts against the orphan caps
        self._lease = None  # the transfer threads this download may use
        self.followers: list[FollowerProducer] = []
        self.upstream = None
        self._idle = None
        self._paused = False
        self.answer: Any = None  # the upstream answer being read (UpstreamBlob)
        self.tmp_path: Optional[Path] = None
        self._file = None
        self.worker: Optional[DigestWorker] = None
        self.received = 0
        # "relay": bytes pass through dataReceived; "probe": deciding whether to
        # take the connection over (bytes Twisted already read collect in
        # _prefix); "splice": the kernel moves the body (kernelcopy.SpliceFill);
        # "tls": a transfer thread decrypts it (tlscopy.TLSFill)
        self.mode = "relay"
        self._prefix: list = []
        self._tcp = None  # the TCP connection taken over
        self._tls = None  # the TLS layer over it (mode "tls")
        self._early_loss = None
        self._paused_for_probe = False

    @property
    def upstreams(self) -> list:
        """Names of the upstreams that sent bytes of this blob, in order."""
        body = getattr(self.answer, "response", None)
        names = getattr(body, "upstreams", None)
        if names is not None:
            return list(names)
        up = getattr(self.answer, "upstream", None)
        return [up.name] if up is not None else []

    @property
    def resumes(self) -> int:
        return getattr(getattr(self.answer, "response", None), "resumes", 0)

    @property
    def remaining(self) -> int:
        """Bytes still to fetch."""
        return max((self.length or 0) - self.written, 0)

    # called by CacheBlobs.fill
    def start(self, answer: Any) -> None:
        """Begin with ``answer`` (:class:`~zmirror.upstream.blobs.UpstreamBlob`:
        the upstream's 200 ``response``, its ``length`` and raw ``content_type``)."""
        response, length = answer.response, answer.length
        self.answer = answer
        self.length = length
        self.content_type = blob_content_type(answer.content_type)
        threads = self.cache.transfers
        splice = length is not None and length >= kernelcopy.SPLICE_MIN and (
            kernelcopy.available() or tlscopy.available())
        # taking the connection over needs two threads; with one free the body goes through Python
        lease = threads.lease(kernelcopy.FileFill.THREADS) if splice else None
        if lease is None:
            splice = False
            lease = threads.lease(1)
        if lease is None:
            raise CacheUnavailable("no transfer thread free")
        self._lease = lease
        try:
            tmpdir = self.cache.root / "tmp"
            tmpdir.mkdir(parents=True, exist_ok=True)
            fd_path = tmpdir / f"{self.digest.split(':', 1)[1]}.{os.getpid()}.{id(self):x}"
            self.tmp_path = fd_path
            self._file = open(fd_path, "wb", buffering=0)
        except OSError:
            lease.close()
            raise
        self.state = "running"
        if splice:
            self.mode = "probe"  # connectionMade tells whether the connection can be taken over
        else:
            self._start_worker()
        response.deliverBody(self)
        if self.mode == "probe":
            # No more socket reads; body bytes the HTTP parser already holds are
            # delivered when the call stack that brought us the response unwinds.
            self.upstream.pauseProducing()
            self._paused_for_probe = True
            self.cache.reactor.callLater(0, self._start_splice)

    def _start_worker(self) -> None:
        algo = self.digest.split(":", 1)[0]
        self.worker = DigestWorker(algo, self._lease, file=self._file,
                                   on_drained=self._worker_drained, on_progress=self._progress)
        self._lease.close()  # a second thread reserved for a kernel copy is not needed

    @staticmethod
    def _takeover(transport) -> tuple:
        """``(tls, tcp)``: the connection under a response body's transport if
        a fill thread can take it over (plain TCP: ``tls`` None), else (None, None)."""
        if kernelcopy.available():
            tcp = kernelcopy.plain_tcp(transport)
            if tcp is not None:
                return None, tcp
        if tlscopy.available():
            found = tlscopy.tls_over_tcp(transport)
            if found is not None:
                return found
        return None, None

    @property
    def taken_over(self) -> bool:
        """A fill thread reads the upstream connection, not Twisted."""
        return self.mode in ("splice", "tls")

    def _start_splice(self) -> None:
        """Stop Twisted reading the upstream socket and move the rest of the
        body on two transfer threads: in the kernel (kernelcopy.SpliceFill)
        or, over TLS, decrypted there (tlscopy.TLSFill)."""
        if self.state != "running":
            self._lease.close()
            self._tcp.abortConnection()  # paused for the switch: never leave it hanging
            return
        prefix, self._prefix = self._prefix, []
        current = getattr(self.upstream, "current", self.upstream)
        if self._early_loss is None and self._takeover(current)[1] is not self._tcp:
            # the body broke and was resumed over another connection meanwhile: go on
            # the ordinary way with what arrived (the resumed bytes came after it)
            self._lease.close()
            self.mode = "relay"
            self._start_worker()
            self.received = 0
            for data in prefix:
                self._data(data)
            if self._paused_for_probe:
                self._paused_for_probe = False
                if not self._paused:
                    self.upstream.resumeProducing()
            return
        if self._early_loss is not None:
            # the upstream connection ended before the switch: finish the ordinary way
            self.mode = "relay"
            self._start_worker()
            self.received = 0
            for data in prefix:
                self._data(data)
            self.connectionLost(self._early_loss)
            return
        self.mode = "splice" if self._tls is None else "tls"
        self.cache.stats[f"fills_{self.mode}"] += 1  # how many bodies a fill thread took over, by kind
        self._cancel_idle()
        if hasattr(self.upstream, "detach"):
            self.upstream.detach()  # this connection's end is the fill thread's now
        connection = tlscopy.take_over(self._tls) if self._tls is not None else None
        fds = []
        try:
            fds.append(os.dup(self._tcp.fileno()))
            fds.append(os.dup(self._file.fileno()))
            fds.append(os.open(self.tmp_path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as e:  # out of descriptors, temp file gone
            for fd in fds:
                os.close(fd)
            self._tcp.abortConnection()
            self._fail(f"cannot start the cache fill: {e}")
            return
        algo = self.digest.split(":", 1)[0]
        common = {"sock_fd": fds[0], "file_fd": fds[1], "read_fd": fds[2], "prefix": prefix,
                  "length": self.length, "idle_timeout": self.cache.idle_timeout, "on_progress": self._progress}
        if connection is None:
            self.worker = kernelcopy.SpliceFill(algo, self._lease, **common)
        else:
            self.worker = tlscopy.TLSFill(algo, self._lease, connection=connection, **common)
        self.worker.finish().addCallback(self._spliced)

    def _spliced(self, digest: Optional[str]) -> None:
        # Twisted's HTTP client still waits for the body it never read: drop the
        # connection (a TLS one, whose state the fill thread moved on, included)
        self._tcp.abortConnection()
        if digest is None:
            if self.state == "running":
                if self.worker.disk_error:
                    self.cache.store_failed(self.worker.error)
                elif hasattr(self.upstream, "restart") and self.worker.error:
                    self._resume_after_splice(self.worker.written, self.worker.error)
                    return
                self._fail(self.worker.error or "aborted")
            return
        self.received = self.length
        self._verify(digest)

    def _resume_after_splice(self, offset: int, why: str, tries: int = 0) -> None:
        """The upstream broke off a kernel or TLS copy after ``offset`` bytes
        (all on disk): hash those again and continue through Python from there, with
        the body resumed by the upstream side (ResumingBody.restart)."""
        if self.state != "running":
            return
        # the kernel copy's two threads are handed back just after it reported
        lease = self.cache.transfers.lease(1)
        if lease is None:
            if tries < 40:
                self.cache.reactor.callLater(0.025, self._resume_after_splice, offset, why, tries + 1)
            else:
                self._fail(f"{why}; no transfer thread free to resume")
            return
        try:
            self._file.seek(offset)
            self._file.truncate()
        except OSError as e:
            lease.close()
            self.cache.store_failed(f"cache write failed: {e}")
            self._fail(f"cache write failed: {e}")
            return
        self._lease = lease
        self.mode = "relay"
        self.received = offset
        self.written = offset
        algo = self.digest.split(":", 1)[0]
        self.worker = DigestWorker(algo, lease, file=self._file, on_drained=self._worker_drained,
                                   on_progress=self._progress, prefix_path=self.tmp_path, prefix_length=offset)
        self._paused = self._paused_for_probe = False
        self.upstream.resumeProducing()  # paused for the switch to splice(2)
        self.upstream.restart(offset, why)

    def abandon(self, why: str) -> None:
        """Stop this download (nobody waits for it, or shutdown) and remove its temp file."""
        if self.state not in ("running", "pending"):
            return
        upstream = self.upstream
        self._fail(why)
        if not self.taken_over and upstream is not None:
            upstream.stopProducing()  # a taken-over connection ends through the aborted fill

    # -- upstream protocol --------------------------------------------------------
    def connectionMade(self):
        self.upstream = self.transport
        enlarge_reads(self.transport)
        if self.mode == "probe":
            self._tls, self._tcp = self._takeover(getattr(self.transport, "current", self.transport))
            if self._tcp is None:
                self.mode = "relay"
                self._start_worker()
        self._arm_idle()

    def dataReceived(self, data: bytes):
        if self.state != "running":
            return  # abandoned: the upstream connection is being closed
        self._data(data)

    def _data(self, data: bytes):
        if self.mode == "probe":  # keep what Twisted read before the switch
            self._prefix.append(data)
            self.received += len(data)
            return
        if self.taken_over:  # cannot happen: Twisted no longer reads this socket
            self.worker.abort()
            self._fail(f"body bytes arrived after the switch to the {self.mode} fill")
            return
        offset = self.received
        self.received += len(data)
        if self._idle is not None:
            self._idle.reset(self.cache.idle_timeout)
        self.cache.count_fetched(len(data))
        keep_up = self.worker.update(data)
        # readers that are keeping up get the bytes straight from memory;
        # the others catch up from the file at their own pace
        for f in self.followers:
            if f.pos == offset:
                f.push(data, offset)
        if not keep_up:
            self._paused = True
            self._cancel_idle()
            self.upstream.pauseProducing()

    def _worker_drained(self):
        if self._paused and self.state == "running":
            self._paused = False
            self._arm_idle()
            self.upstream.resumeProducing()

    def _progress(self, written: int):
        if self.taken_over:
            self.cache.count_fetched(written - self.written)
        self.written = written
        for f in list(self.followers):
            f.data_available()

    def connectionLost(self, reason):
        if self.mode == "probe":
            self._early_loss = reason
            return
        if self.taken_over:
            return  # our own abort after the fill thread ended; the fill reports how it went
        self._cancel_idle()
        if self.state != "running":
            return  # abandoned
        if not (reason.check(ResponseDone) or (reason.check(PotentialDataLoss) and self.length is None)):
            self._fail(f"upstream body broken after {self.received} bytes: {failure_text(reason)}")
            return
        if self.length is not None and self.received != self.length:
            self._fail(f"upstream sent {self.received} of {self.length} bytes")
            return
        if self.length is None:
            self.length = self.received
        self.worker.finish().addCallback(self._verify)

    def _verify(self, digest: str):
        self._close_file()
        if self.worker.error is not None:
            why = f"cache write failed: {self.worker.error}"
            if getattr(self.worker, "disk_error", True):
                self.cache.store_failed(why)
            self._fail(why)
            return
        if digest != self.digest:
            self.verify_failed = True
            self._fail(f"digest mismatch: upstream content hashed to {digest}")
            return
        final = self.cache.path(self.digest)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp_path, final)
        except OSError as e:
            self.cache.store_failed(f"cannot store blob: {e}")
            self._fail(f"cannot store blob: {e}")
            return
        self.state = "done"
        self.written = self.length
        self.cache.download_finished(self, True)
        for f in list(self.followers):
            f.data_available()

    def _fail(self, why: str):
        log.warn("blob download {d} failed: {why}", d=self.digest, why=why)
        self.state = "failed"
        self.failure_reason = why
        self._cancel_idle()
        if self._lease is not None:
            self._lease.close()
        if self.worker is not None:
            self.worker.abort()
        self._close_file()
        if self.tmp_path is not None:
            silent_unlink(self.tmp_path)  # followers keep their open handles
        self.cache.download_finished(self, False)
        for f in list(self.followers):
            f.data_available()

    def _close_file(self):
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    # -- idle timer --------------------------------------------------------------
    def _arm_idle(self):
        if getattr(self.upstream, "idle_managed", False):
            return  # the upstream side resumes an idle body (ResumingBody)
        if self._idle is None:
            self._idle = self.cache.reactor.callLater(self.cache.idle_timeout, self._idle_fired)
        else:
            self._idle.reset(self.cache.idle_timeout)

    def _cancel_idle(self):
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idle_fired(self):
        self._idle = None
        self.upstream.stopProducing()

    # -- readers -----------------------------------------------------------------
    def follow(self, request, start: int = 0, end: Optional[int] = None) -> FollowerProducer:
        """A reader of this download for ``request`` (call its ``begin()``)."""
        f = FollowerProducer(request, self, start=start, end=end, on_sent=self.cache.count_sent,
                             reactor=self.cache.reactor)
        self.followers.append(f)
        self.orphaned = False
        return f

    def _unfollow(self, f: "FollowerProducer") -> None:
        if f in self.followers:
            self.followers.remove(f)
            if not self.followers:
                self.cache.check_orphan(self)
