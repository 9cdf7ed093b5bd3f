"""Content-addressed blob store with single-flight downloads and LRU eviction.

Layout under the cache directory::

    blobs/sha256/ab/abcdef...   verified blobs, named by digest
    tmp/                        downloads in progress (emptied at start)

A blob fetched from upstream is written to ``tmp/`` by a :class:`Download`
(hash + write on a worker thread, never paced by any one client; from a
plain-TCP upstream the body is moved in the kernel, see kernelcopy.py), verified
against its digest, and only then renamed into ``blobs/``.  Every client of
that blob — the first one included — reads the growing temp file at its own
pace (:class:`FollowerProducer`, by sendfile(2) on plain TCP), so a slow
client slows nobody else.  The last
byte is released only after verification: a corrupt or truncated download
aborts its clients' connections and leaves nothing behind.

When the cache disk fails a write, misses are relayed without storing for
STORE_RETRY seconds (:meth:`BlobCache.storing`).

Bounds: downloads hash and write on threads leased from one bounded pool
(:class:`~zmirror.upstream.digestworker.TransferThreads`, never a queue of
waiting transfers); the temp files of running downloads add up to at most
``max_temp_bytes`` (default: ``max_size``); a download every client has left is finished only while at most
``max_orphans`` of them, with at most ``max_orphan_bytes`` still to fetch, are
running.  A miss beyond the first two bounds is relayed uncached; an orphan
beyond the last is aborted and its temp file removed.

The start of a download is single-flight (:class:`~zmirror.singleflight.SingleFlight`):
the upstream fetch belongs to no caller, a caller that goes away only detaches.

The index (size, last access, repositories) lives in memory, loaded from the
``cache_blobs`` table at start and written back in batches; eviction is least
recently used first, accounted incrementally, and never deletes a blob while
a reader holds it open.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IPushProducer, IWriteDescriptor
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from zmirror.cache import kernelcopy
from zmirror.cache.gate import LoadGate
from zmirror.singleflight import SingleFlight
from zmirror.upstream.client import discard
from zmirror.upstream.digestworker import TRANSFER_THREADS, DigestWorker, TransferThreads
from zmirror.upstream.relay import enlarge_reads, abort_client

log = Logger()

# After the cache disk failed a write (full, read-only, gone), misses are relayed
# without storing for this long before the cache tries again.
STORE_RETRY = 60.0
# At start, blob files the index lost are hashed before being adopted, up to this many bytes.
ADOPT_VERIFY_MAX = 4 << 30

CHUNK = 64 << 10  # file reads: 64 KiB measured best here (1 MiB reads were ~3x slower)

# Downloads every client has left are finished while at most this many run,
# with at most this many bytes left to fetch between them; beyond, aborted.
MAX_ORPHANS = 4
MAX_ORPHAN_BYTES = 2 << 30

# Background work of the cache (start, index writes) that failed is retried after
# RETRY_FIRST s, doubling on each further failure up to RETRY_MAX s.
RETRY_FIRST = 5.0
RETRY_MAX = 300.0


OCTET_STREAM = b"application/octet-stream"
# An upstream's blob Content-Type is passed on when it is a media type (RFC 6838
# restricted names) with parameters of printable ASCII, at most this long.
CONTENT_TYPE_MAX = 255
_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_CONTENT_TYPE = re.compile(rf"{_NAME}/{_NAME}(?:[ \t]*;[\x20-\x7e\t]*)?")


def blob_content_type(value: Any) -> bytes:
    """The Content-Type to send with a blob for an upstream's ``value`` (bytes,
    str or None): the value itself when it is a valid media type with printable
    ASCII parameters and at most CONTENT_TYPE_MAX long, else
    ``application/octet-stream``.

    An invalid one is replaced, not treated as a bad answer: the blob's bytes are
    checked against its digest, and registry clients give a blob's Content-Type
    no meaning (the distribution spec's blobs are ``application/octet-stream``),
    so failing over on it would turn a good upstream into an outage."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return OCTET_STREAM
    if not isinstance(value, str):
        return OCTET_STREAM
    value = value.strip(" \t")
    if len(value) > CONTENT_TYPE_MAX or not _CONTENT_TYPE.fullmatch(value):
        return OCTET_STREAM
    return value.encode("ascii")


class CacheUnavailable(Exception):
    """The cache cannot store a blob now (disk full or unwritable)."""


@dataclass
class BlobEntry:
    digest: str
    size: int
    last_access: float
    readers: int = 0
    repos: set = field(default_factory=set)


def _blob_relpath(digest: str) -> str:
    algo, hexd = digest.split(":", 1)
    return os.path.join("blobs", algo, hexd[:2], hexd)


class BlobCache:
    def __init__(self, root: Path, db: Any, reactor: Any, *, max_size: int, threadpool: Any = None,
                 idle_timeout: float = 60.0, transfer_threads: int = TRANSFER_THREADS,
                 max_temp_bytes: Optional[int] = None,
                 max_orphans: int = MAX_ORPHANS, max_orphan_bytes: int = MAX_ORPHAN_BYTES):
        self.root = Path(root)
        self.db = db
        self.reactor = reactor
        self.max_size = max_size
        # temp files of running downloads, in all (None or 0: the cache size)
        self.max_temp_bytes = max_temp_bytes or max_size
        self.idle_timeout = idle_timeout
        self._threadpool = threadpool  # short file jobs (scan, unlink); not transfers
        # threads for transfers (downloads, and pass-through relays that hash)
        self.transfers = TransferThreads(reactor, transfer_threads)
        self.max_orphans = max_orphans
        self.max_orphan_bytes = max_orphan_bytes
        self._starting: SingleFlight = SingleFlight()  # downloads waiting for the upstream's answer
        self._swept = False  # tmp/ is emptied once, at the first start: later its files are ours
        self.entries: "OrderedDict[str, BlobEntry]" = OrderedDict()  # LRU: oldest first
        self.size = 0
        self.downloads: dict[str, Download] = {}
        self._dirty: set[str] = set()
        self._flush_lock = DeferredLock()
        self._doomed: set[str] = set()  # evicted while being read: unlink when the last reader closes
        self.loading = LoadGate()  # closed while start() loads the index: requests wait on it
        self.stats = {"hits": 0, "misses": 0, "bytes_from_cache": 0, "bytes_from_upstream": 0,
                      "evictions": 0, "verify_failures": 0, "write_failures": 0,
                      "relayed_over_limits": 0, "orphans_aborted": 0}
        self._store_failed_at: Optional[float] = None
        self.store_error = ""

    # -- health of the cache disk ------------------------------------------------
    def storing(self) -> bool:
        """False for STORE_RETRY s after a write to the cache failed: misses are
        then relayed from upstream without being stored."""
        if self._store_failed_at is None:
            return True
        if self.reactor.seconds() - self._store_failed_at >= STORE_RETRY:
            self._store_failed_at = None
            return True
        return False

    def store_failed(self, why: str) -> None:
        if self._store_failed_at is None:
            log.error("blob cache cannot store ({why}); relaying without caching for {s:g} s",
                      why=why, s=STORE_RETRY)
        self._store_failed_at = self.reactor.seconds()
        self.store_error = why
        self.stats["write_failures"] += 1

    # -- lifecycle --------------------------------------------------------------
    def _pool(self):
        if self._threadpool is None:
            self._threadpool = self.reactor.getThreadPool()
        return self._threadpool

    def _in_thread(self, f, *a):
        return deferToThreadPool(self.reactor, self._pool(), f, *a)

    async def start(self) -> None:
        """Load the index (:meth:`_load`; requests wait on ``loading`` meanwhile), then evict."""
        self.loading.close()
        try:
            await self._load()
        finally:
            self.loading.open()
        await self.evict()

    async def _load(self) -> None:
        """Clean temp files, load the index, adopt verified files the index lost.

        A file whose size differs from its index row (cut short by a crash before
        the kernel wrote it out) is deleted; a file the index does not know (the
        index write was lost) is hashed before it is adopted."""
        if not self._swept:
            # First thing of the first start only: when a failed start is retried,
            # downloads begun in between have their temp files there.
            self._swept = True
            await self._in_thread(self._sweep_tmp)
        rows = await self.db.query("SELECT digest, size, last_access FROM cache_blobs ORDER BY last_access")
        repos = await self.db.query("SELECT digest, repository FROM cache_blob_repos")
        present = await self._in_thread(self._scan)
        known, stale, damaged = set(), [], []
        for r in rows:
            digest, size = r["digest"], int(r["size"])
            if digest not in present:
                stale.append(digest)  # file gone (deleted by hand): forget it
            elif present[digest] != size:
                stale.append(digest)
                damaged.append(digest)
            else:
                known.add(digest)
                if digest not in self.entries:  # a retried start keeps what it has
                    self._add(BlobEntry(digest, size, float(r["last_access"])))
        unknown = [d for d in present if d not in known and d not in damaged]
        verified, dropped = [], []
        if unknown or damaged:
            verified, dropped = await self._in_thread(self._check_files, unknown, damaged)
        for digest, why in dropped:
            log.warn("cached blob {d} deleted at start: {why}", d=digest, why=why)
        for r in repos:
            e = self.entries.get(r["digest"])
            if e is not None:
                e.repos.add(r["repository"])
        now = self.reactor.seconds()
        adopted = []
        for digest in verified:
            # renamed into place and its content checked again, but the index write was lost
            if digest not in self.entries:
                self._add(BlobEntry(digest, present[digest], now))
            adopted.append(digest)
        if stale:
            await self.db.write(_delete_blob_rows, stale)
        if adopted:
            self._dirty.update(adopted)
            await self.flush_index()
        log.info("blob cache: {n} blobs, {size} bytes in {root}", n=len(self.entries), size=self.size,
                 root=str(self.root))

    def _check_files(self, unknown: list, damaged: list) -> tuple[list, list]:
        """(thread) Delete ``damaged`` files; hash the ``unknown`` ones (up to
        ADOPT_VERIFY_MAX bytes in all, the rest are deleted: the cache refetches).
        Returns (digests whose content matches their name, [(digest, why deleted)])."""
        good, dropped, budget = [], [], ADOPT_VERIFY_MAX
        for digest in damaged:
            dropped.append((digest, "its size differs from the index (cut short by a crash?)"))
            _silent_unlink(self.path(digest))
        for digest in unknown:
            path = self.path(digest)
            algo, hexd = digest.split(":", 1)
            try:
                size = path.stat().st_size
                if size > budget:
                    raise ValueError("over the verification budget")
                budget -= size
                h = hashlib.new(algo)
                with open(path, "rb", buffering=0) as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                ok = h.hexdigest() == hexd
            except (OSError, ValueError) as e:
                dropped.append((digest, f"not in the index and not verifiable ({e})"))
                _silent_unlink(path)
                continue
            if ok:
                good.append(digest)
            else:
                dropped.append((digest, "not in the index and its content does not match its digest"))
                _silent_unlink(path)
        return good, dropped

    def _sweep_tmp(self) -> None:
        """(thread) Empty tmp/ in place (it never disappears, not even for a moment)."""
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(tmp):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                _silent_unlink(entry.path)

    def _scan(self) -> dict[str, int]:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        out: dict[str, int] = {}
        base = self.root / "blobs"
        if not base.exists():
            return out
        for algo in os.scandir(base):
            if not algo.is_dir():
                continue
            for prefix in os.scandir(algo.path):
                if not prefix.is_dir():
                    continue
                for f in os.scandir(prefix.path):
                    if f.is_file():
                        out[f"{algo.name}:{f.name}"] = f.stat().st_size
        return out

    async def flush_index(self) -> None:
        """Write changed entries (new blobs, access times) in one transaction.
        When the write fails they stay dirty for the next flush.  Flushes run one
        at a time: when this returns, every change made before it is written
        (also those a flush already running had taken), e.g. at shutdown."""
        await self._flush_lock.run(lambda: Deferred.fromCoroutine(self._flush()))

    async def _flush(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        rows, repo_rows = [], []
        for d in dirty:
            e = self.entries.get(d)
            if e is None:
                continue
            rows.append((e.digest, e.size, e.last_access, e.last_access))
            repo_rows.extend((e.digest, r) for r in e.repos)
        try:
            await self.db.write(_upsert_blob_rows, rows, repo_rows)
        except BaseException:
            self._dirty |= dirty  # rows are rebuilt from the entries then (evicted ones drop out)
            raise

    # -- index --------------------------------------------------------------
    def _add(self, e: BlobEntry) -> None:
        old = self.entries.pop(e.digest, None)
        if old is not None:
            self.size -= old.size
        self.entries[e.digest] = e
        self.size += e.size

    def path(self, digest: str) -> Path:
        return self.root / _blob_relpath(digest)

    def lookup(self, digest: str) -> Optional[BlobEntry]:
        return self.entries.get(digest)

    def touch(self, e: BlobEntry, repo: Optional[str] = None) -> None:
        e.last_access = self.reactor.seconds()
        self.entries.move_to_end(e.digest)
        if repo and repo not in e.repos:
            e.repos.add(repo)
        self._dirty.add(e.digest)

    def open(self, e: BlobEntry):
        """Open a cached blob for reading (marks it in use) or None if it vanished."""
        try:
            f = open(self.path(e.digest), "rb", buffering=0)
        except OSError:
            self._forget(e.digest)
            return None
        e.readers += 1
        return f

    def release(self, e: BlobEntry) -> None:
        e.readers -= 1
        if e.readers <= 0 and e.digest in self._doomed:
            self._doomed.discard(e.digest)
            self._unlink(e.digest)

    def _forget(self, digest: str) -> None:
        e = self.entries.pop(digest, None)
        if e is not None:
            self.size -= e.size
        self.db.write(_delete_blob_rows, [digest])

    def _unlink(self, digest: str) -> Deferred:
        p = self.path(digest)
        return self._in_thread(_silent_unlink, p)

    async def evict(self) -> int:
        """Delete least recently used blobs until the cache fits ``max_size``."""
        victims = []
        for digest, e in list(self.entries.items()):
            if self.size <= self.max_size:
                break
            self.entries.pop(digest)
            self.size -= e.size
            victims.append(digest)
            if e.readers > 0:
                self._doomed.add(digest)  # unlinked when its last reader closes
            else:
                self._unlink(digest)
        if victims:
            self.stats["evictions"] += len(victims)
            await self.db.write(_delete_blob_rows, victims)
        return len(victims)

    async def delete(self, *, digest: Optional[str] = None, repository: Optional[str] = None) -> int:
        """Delete one blob, every blob of a repository, or (no argument) all."""
        if digest is not None:
            targets = [digest] if digest in self.entries else []
        elif repository is not None:
            targets = [d for d, e in self.entries.items() if repository in e.repos]
        else:
            targets = list(self.entries)
        for d in targets:
            e = self.entries.pop(d)
            self.size -= e.size
            if e.readers > 0:
                self._doomed.add(d)
            else:
                self._unlink(d)
        if targets:
            await self.db.write(_delete_blob_rows, targets)
        return len(targets)

    def summary(self) -> dict:
        hits, misses = self.stats["hits"], self.stats["misses"]
        return {
            "size": self.size,
            "max_size": self.max_size,
            "entries": len(self.entries),
            "downloads": len(self.downloads),
            "temp_bytes": self.temp_bytes(),
            "max_temp_bytes": self.max_temp_bytes,
            "orphans": sum(1 for dl in self.downloads.values() if dl.orphaned),
            "transfer_threads": self.transfers.size,
            "transfer_threads_busy": self.transfers.busy,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "storing": self.storing(),
            "store_error": self.store_error or None,
            **self.stats,
        }

    # -- downloads ------------------------------------------------------------
    def download(self, digest: str, repo: str,
                 fetch: Callable[[], Any]) -> Deferred:
        """The running download of ``digest``, or the one being started with
        ``fetch()`` (a coroutine returning ``(response, length, content_type)``
        of the upstream's 200, or raising its error).  Single-flight: the start
        belongs to no caller; cancelling the returned Deferred detaches only its
        caller.  Fails with :class:`CacheUnavailable` when this miss is to be
        relayed uncached (disk failing, no transfer thread free, temp bytes at
        ``max_temp_bytes``)."""
        dl = self.downloads.get(digest)
        if dl is not None:
            return succeed(dl)
        return self._starting.run(digest, lambda: self._begin(digest, repo, fetch))

    def temp_bytes(self) -> int:
        """Bytes the temp files of running downloads take when complete."""
        return sum(dl.length or 0 for dl in self.downloads.values())

    def _admit(self, length: Optional[int]) -> None:
        """Raise CacheUnavailable unless a download of ``length`` bytes (None:
        not known yet) fits the temp budget and can lease a thread."""
        why = None
        if self.transfers.free < 1:
            why = "no transfer thread free"
        elif length is None and self.temp_bytes() >= self.max_temp_bytes:
            why = "temp files of running downloads at their limit"
        elif length is not None and self.temp_bytes() + length > self.max_temp_bytes:
            why = "temp files of running downloads would exceed their limit"
        if why is not None:
            self.stats["relayed_over_limits"] += 1
            raise CacheUnavailable(why)

    async def _begin(self, digest: str, repo: str, fetch: Callable[[], Any]) -> "Download":
        self._admit(None)  # spare the upstream a request whose answer could not be stored
        response, length, content_type = await fetch()
        if length is None:
            # a body of unknown size cannot be budgeted: relayed (and verified) uncached
            discard(response)
            self.stats["relayed_over_limits"] += 1
            raise CacheUnavailable("upstream sent no Content-Length")
        try:
            self._admit(length)
        except CacheUnavailable:
            discard(response)
            raise
        dl = Download(self, digest, repo)
        self.downloads[digest] = dl
        try:
            dl.start(response, length, content_type)
        except (OSError, CacheUnavailable) as e:
            # the temp file could not be created (or no thread after all): relay it uncached
            self.downloads.pop(digest, None)
            if dl.state == "pending":
                discard(response)
            if isinstance(e, OSError):
                self.store_failed(f"cannot create a temporary file: {e}")
                raise CacheUnavailable(str(e)) from None
            raise
        flight = self._starting.get(digest)
        # Every caller left while the upstream took its time.  (No flight yet: the
        # answer came at once, before any caller could wait, let alone leave.)
        if flight is not None and flight.waiting == 0:
            self._check_orphan(dl)
        return dl

    def _check_orphan(self, dl: "Download") -> None:
        """``dl`` lost its last client: finish it only while under the orphan caps."""
        if dl.state not in ("running", "pending") or dl.followers or dl.orphaned:
            return
        others = [d for d in self.downloads.values() if d.orphaned and d is not dl]
        left = sum(d.remaining for d in others) + dl.remaining
        if len(others) + 1 > self.max_orphans or left > self.max_orphan_bytes:
            self.stats["orphans_aborted"] += 1
            dl.abandon(f"every client left and {len(others)} downloads nobody waits for "
                       f"({left} bytes to fetch) are already running")
        else:
            dl.orphaned = True

    def abort_downloads(self, why: str = "shutting down") -> None:
        for dl in list(self.downloads.values()):
            dl.abandon(why)

    def _download_finished(self, dl: "Download", ok: bool) -> None:
        self.downloads.pop(dl.digest, None)
        if not ok:
            self.stats["verify_failures"] += 1 if dl.verify_failed else 0
            return
        # A copy deleted or evicted while read is unlinked by path when its last reader
        # closes; this new copy was renamed over that path, so that unlink must not happen.
        self._doomed.discard(dl.digest)
        if dl.length > self.max_size:
            # larger than the whole cache: keeping it would evict everything else
            # (and then itself); its readers hold the file open until they finish
            log.info("blob {d} ({n} bytes) is larger than the cache; not kept", d=dl.digest, n=dl.length)
            self._unlink(dl.digest)
            return
        e = BlobEntry(dl.digest, dl.length, self.reactor.seconds(), repos={dl.repo})
        self._add(e)
        self._dirty.add(e.digest)
        d = Deferred.fromCoroutine(self._after_insert())
        d.addErrback(lambda f: log.failure("cache index update failed", f))

    async def _after_insert(self):
        try:
            await self.flush_index()  # a failure leaves the rows dirty for the flusher
        finally:
            await self.evict()


class Download(Protocol):
    """One upstream fetch of a blob into a temp file, shared by all its readers.

    Created by :meth:`BlobCache.download` once the upstream answered (headers
    known); readers attach with :meth:`follow`.
    """

    def __init__(self, cache: BlobCache, digest: str, repo: str):
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
        self.tmp_path: Optional[Path] = None
        self._file = None
        self.worker: Optional[DigestWorker] = None
        self.received = 0
        # "relay": bytes pass through dataReceived; "probe": deciding whether to
        # splice (bytes Twisted already read collect in _prefix); "splice": the
        # kernel moves the body (kernelcopy.SpliceFill)
        self.mode = "relay"
        self._prefix: list = []
        self._tcp = None
        self._early_loss = None

    @property
    def remaining(self) -> int:
        """Bytes still to fetch."""
        return max((self.length or 0) - self.written, 0)

    # called by BlobCache._begin with the upstream's 200 response
    def start(self, response, length: Optional[int], content_type: Optional[bytes]) -> None:
        self.length = length
        self.content_type = blob_content_type(content_type)
        threads = self.cache.transfers
        splice = length is not None and length >= kernelcopy.SPLICE_MIN and kernelcopy.available()
        # the kernel copy needs two threads; with one free the body goes through Python
        lease = threads.lease(kernelcopy.SpliceFill.THREADS) if splice else None
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
            self.mode = "probe"  # connectionMade tells whether the transport allows splicing
        else:
            self._start_worker()
        response.deliverBody(self)
        if self.mode == "probe":
            # No more socket reads; body bytes the HTTP parser already holds are
            # delivered when the call stack that brought us the response unwinds.
            self.upstream.pauseProducing()
            self.cache.reactor.callLater(0, self._start_splice)

    def _start_worker(self) -> None:
        algo = self.digest.split(":", 1)[0]
        self.worker = DigestWorker(algo, self._lease, file=self._file,
                                   on_drained=self._worker_drained, on_progress=self._progress)
        self._lease.close()  # a second thread reserved for a kernel copy is not needed

    def _start_splice(self) -> None:
        """Stop Twisted reading the upstream socket and move the rest of the
        body in the kernel (kernelcopy.SpliceFill)."""
        if self.state != "running":
            self._lease.close()
            self._tcp.abortConnection()  # paused for the switch: never leave it hanging
            return
        prefix, self._prefix = self._prefix, []
        if self._early_loss is not None:
            # the upstream connection ended before the switch: finish the ordinary way
            self.mode = "relay"
            self._start_worker()
            self.received = 0
            for data in prefix:
                self._data(data)
            self.connectionLost(self._early_loss)
            return
        self.mode = "splice"
        self._cancel_idle()
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
        self.worker = kernelcopy.SpliceFill(
            algo, self._lease, sock_fd=fds[0], file_fd=fds[1], read_fd=fds[2], prefix=prefix,
            length=self.length, idle_timeout=self.cache.idle_timeout, on_progress=self._progress)
        self.worker.finish().addCallback(self._spliced)

    def _spliced(self, digest: Optional[str]) -> None:
        # Twisted's HTTP client still waits for the body it never read: drop the connection
        self._tcp.abortConnection()
        if digest is None:
            if self.state == "running":
                if self.worker.disk_error:
                    self.cache.store_failed(self.worker.error)
                self._fail(self.worker.error or "aborted")
            return
        self.received = self.length
        self._verify(digest)

    def abandon(self, why: str) -> None:
        """Stop this download (nobody waits for it, or shutdown) and remove its temp file."""
        if self.state not in ("running", "pending"):
            return
        upstream = self.upstream
        self._fail(why)
        if self.mode != "splice" and upstream is not None:
            upstream.stopProducing()  # a splice ends through the aborted SpliceFill

    # -- upstream protocol --------------------------------------------------------
    def connectionMade(self):
        self.upstream = self.transport
        enlarge_reads(self.transport)
        if self.mode == "probe":
            self._tcp = kernelcopy.plain_tcp(self.transport)
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
        if self.mode == "splice":  # cannot happen: Twisted no longer reads this socket
            self.worker.abort()
            self._fail("body bytes arrived after the switch to splice(2)")
            return
        offset = self.received
        self.received += len(data)
        if self._idle is not None:
            self._idle.reset(self.cache.idle_timeout)
        self.cache.stats["bytes_from_upstream"] += len(data)
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
        if self.mode == "splice":
            self.cache.stats["bytes_from_upstream"] += written - self.written
        self.written = written
        for f in list(self.followers):
            f.data_available()

    def connectionLost(self, reason):
        if self.mode == "probe":
            self._early_loss = reason
            return
        if self.mode == "splice":
            return  # our own abort after the kernel copy ended; SpliceFill reports how it went
        self._cancel_idle()
        if self.state != "running":
            return  # abandoned
        if not (reason.check(ResponseDone) or (reason.check(PotentialDataLoss) and self.length is None)):
            self._fail(f"upstream body broken after {self.received} bytes: {reason.getErrorMessage()}")
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
        self.cache._download_finished(self, True)
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
            _silent_unlink(self.tmp_path)  # followers keep their open handles
        self.cache._download_finished(self, False)
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
    def follow(self, request, start: int = 0, end: Optional[int] = None) -> "FollowerProducer":
        f = FollowerProducer(request, self, start=start, end=end)
        self.followers.append(f)
        self.orphaned = False
        return f

    def _unfollow(self, f: "FollowerProducer") -> None:
        if f in self.followers:
            self.followers.remove(f)
            if not self.followers:
                self.cache._check_orphan(self)


@implementer(IPushProducer)
class FollowerProducer:
    """Streams a blob to one client from a file that may still be growing.

    On plain TCP the body goes by sendfile(2) (:class:`_SendfileWriter`);
    otherwise a push producer writes 64 KiB reads while the client's transport
    is not paused.  When it has caught up with a running download it waits for
    ``data_available``.  ``done`` fires True when every byte was sent, False
    when the client went away or had to be aborted (after its connection is
    gone, so the web layer never finishes a short response as complete).
    """

    def __init__(self, request, download: Optional[Download] = None, *, path: Optional[Path] = None,
                 file=None, size: Optional[int] = None, start: int = 0, end: Optional[int] = None,
                 on_close: Optional[Callable[[], None]] = None, stats: Optional[dict] = None,
                 reactor: Any = None):
        self.request = request
        self.reactor = reactor
        self._sf: Optional[_SendfileWriter] = None  # set while sending with sendfile(2)
        self.download = download
        self.file = file
        self.path = path if path is not None else (download.tmp_path if download else None)
        self.size = size
        self.pos = start
        self.end = end  # inclusive end, or None for "to the end"
        self.on_close = on_close
        self.stats = stats
        self.done: Deferred = Deferred()
        self.sent = 0
        self.paused = False
        self._pumping = False
        self._finished = False
        request.notifyFinish().addErrback(self._client_gone)

    def begin(self) -> Deferred:
        if self.file is None and self.path is not None:
            try:
                self.file = open(self.path, "rb", buffering=0)
            except OSError as e:
                self._abort(f"cannot open blob: {e}")
                return self.done
        # sendfile(2) whenever the client is on plain TCP, also while the download
        # still runs (it then waits for data_available when it has caught up)
        transport = _sendfile_transport(self.request, self.reactor)
        if transport is not None:
            # status line and headers go out through the transport first; the
            # body then moves from the page cache to the socket in the kernel
            self.request.write(b"")
            self._sf = _SendfileWriter(self, transport)
            self.reactor.addWriter(self._sf)
            return self.done
        self.request.registerProducer(self, True)
        self._pump()
        return self.done

    def _sendfile(self):
        """The client socket is writable (sendfile mode)."""
        if self._finished:
            return
        t = self._sf.transport
        if t.offset < len(t.dataBuffer) or t._tempDataLen:
            return  # the headers are still in Twisted's buffer
        limit, final = self._limit()
        if self.pos < limit:
            try:
                n = os.sendfile(self._sf.fd, self.file.fileno(), self.pos, min(limit - self.pos, SENDFILE_MAX))
            except BlockingIOError:
                return
            except OSError as e:
                self._abort(f"send failed: {e}")
                return
            if n == 0:
                self._abort("blob file shorter than expected")
                return
            self.pos += n
            self.sent += n
            self.request.sentLength += n
            if self.stats is not None:
                self.stats["bytes_from_cache"] += n
            return
        if final:
            if self.download is not None and self.download.state == "failed":
                self._abort(self.download.failure_reason)
            else:
                self._complete()
            return
        self._sf.pause()  # caught up with a running download: wait for data_available

    def _limit(self) -> tuple[int, bool]:
        """(readable end offset exclusive, final?)"""
        stop = None if self.end is None else self.end + 1
        dl = self.download
        if dl is None or dl.state == "done":
            total = self.size if dl is None else dl.length
            return (total if stop is None else min(stop, total)), True
        if dl.state == "failed":
            return self.pos, True
        # running: never release the final byte before verification
        avail = dl.written
        if dl.length is not None:
            avail = min(avail, dl.length - 1)
        if stop is not None and stop <= avail:
            return stop, True
        return avail, False

    def _pump(self):
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self.paused and not self._finished:
                limit, final = self._limit()
                if self.pos < limit:
                    n = min(CHUNK, limit - self.pos)
                    try:
                        data = os.pread(self.file.fileno(), n, self.pos)
                    except OSError as e:
                        self._abort(f"read failed: {e}")
                        return
                    if not data:
                        self._abort("blob file shorter than expected")
                        return
                    self.pos += len(data)
                    self.sent += len(data)
                    if self.stats is not None:
                        self.stats["bytes_from_cache"] += len(data)
                    self.request.write(data)
                    continue
                if final:
                    if self.download is not None and self.download.state == "failed":
                        self._abort(self.download.failure_reason)
                    else:
                        self._complete()
                return  # caught up with a running download: wait for data_available
        finally:
            self._pumping = False

    def push(self, data: bytes, offset: int):
        """Bytes as they arrive from upstream, when this reader is right there."""
        if self.paused or self._finished or self.pos != offset or self.end is not None:
            return
        if self._sf is not None:
            return  # the sendfile writer reads the file; bytes written here would pass it
        dl = self.download
        if dl.length is not None and offset + len(data) >= dl.length:
            data = data[: dl.length - 1 - offset]  # the last byte waits for verification
        if data:
            self.pos += len(data)
            self.sent += len(data)
            self.request.write(data)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._pump()

    def data_available(self):
        if self._sf is not None:
            if not self._finished:
                self._sf.resume()
        elif not self.paused:
            self._pump()

    def stopProducing(self):
        self._close()

    def _client_gone(self, _f):
        self._finished = True
        self._close()
        if not self.done.called:
            self.done.callback(False)

    def _complete(self):
        self._finished = True
        if self._sf is None:
            self.request.unregisterProducer()
        self._close()
        if not self.done.called:
            self.done.callback(True)

    def _abort(self, why: str):
        log.warn("aborting blob transfer: {why}", why=why)
        self._finished = True
        try:
            self.request.unregisterProducer()
        except Exception:
            pass
        self._close()
        abort_client(self.request)
        # ``done`` fires from _client_gone once the connection is really gone, so
        # the web layer never finishes this response as if it were complete.

    def _close(self):
        if self._sf is not None:
            self._sf.close()
        if self.download is not None:
            self.download._unfollow(self)
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
        if self.on_close is not None:
            cb, self.on_close = self.on_close, None
            cb()


SENDFILE_MAX = 8 << 20


def _sendfile_transport(request, reactor):
    """The client's plain TCP transport when the body can go by sendfile(2):
    a known Content-Length (no chunking), not a HEAD, no TLS, a real reactor."""
    if reactor is None or not hasattr(reactor, "addWriter") or not hasattr(os, "sendfile"):
        return None
    from twisted.internet import tcp

    t = getattr(getattr(request, "channel", None), "transport", None)
    if type(t) is not tcp.Server or getattr(t, "TLS", False):
        return None
    if not all(hasattr(t, a) for a in ("dataBuffer", "offset", "_tempDataLen")):
        return None
    if request.method == b"HEAD" or request.responseHeaders.getRawHeaders(b"content-length") is None:
        return None
    return t


@implementer(IWriteDescriptor)
class _SendfileWriter:
    """Writability of a duplicate of the client's socket descriptor, so the
    reactor tells us when sendfile(2) can go on (Twisted's transport keeps the
    original descriptor for reading and for the headers)."""

    def __init__(self, producer: "FollowerProducer", transport):
        self.producer = producer
        self.transport = transport
        self.fd = os.dup(transport.fileno())
        self.reactor = producer.reactor
        self.active = True
        self.closed = False

    def fileno(self):
        return self.fd

    def doWrite(self):
        self.producer._sendfile()
        return None

    def connectionLost(self, reason):
        self.close()

    def logPrefix(self):
        return "zmirror-sendfile"

    def pause(self):
        if self.active:
            self.active = False
            self.reactor.removeWriter(self)

    def resume(self):
        if not self.active and not self.closed:
            self.active = True
            self.reactor.addWriter(self)

    def close(self):
        if self.closed:
            return
        self.pause()
        self.closed = True
        os.close(self.fd)


def _silent_unlink(p) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _delete_blob_rows(txn, digests):
    for i in range(0, len(digests), 500):
        part = digests[i:i + 500]
        marks = ",".join("?" * len(part))
        txn.execute(f"DELETE FROM cache_blobs WHERE digest IN ({marks})", part)
        txn.execute(f"DELETE FROM cache_blob_repos WHERE digest IN ({marks})", part)


def _upsert_blob_rows(txn, rows, repo_rows):
    txn.executemany(
        "INSERT INTO cache_blobs (digest, size, created_at, last_access) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(digest) DO UPDATE SET last_access = excluded.last_access, size = excluded.size",
        rows,
    )
    txn.executemany("INSERT OR IGNORE INTO cache_blob_repos (digest, repository) VALUES (?, ?)", repo_rows)


def retry_delay(failures: int) -> float:
    """Seconds before the next try after ``failures`` failures in a row."""
    return min(RETRY_FIRST * 2 ** (failures - 1), RETRY_MAX)


class CacheUpkeep:
    """The caches' background work, run by a service (zmirror/wiring.py).

    ``start()``: load the blob and manifest indexes (each retried after a
    failure, backing off, until it worked) and write the blob index every
    ``interval`` s; a failed write keeps its rows dirty and is retried sooner,
    backing off, then the usual interval resumes.  ``stop()``: abort the
    downloads still running, write the index once more, join the transfer
    threads.
    """

    def __init__(self, blobs: BlobCache, manifests: Any, clock: Any, *, interval: float = 30.0):
        self.blobs = blobs
        self.manifests = manifests
        self.clock = clock
        self.interval = interval
        self.failures: dict[str, int] = {}  # consecutive failures per job
        self._calls: dict[str, Any] = {}
        self._stopped = False

    def start(self) -> None:
        self._stopped = False
        self._run("blob cache start", self.blobs.start, lambda: None)
        if self.manifests is not None:
            self._run("manifest cache start", self.manifests.start, lambda: None)
        self._later("blob index write", self.interval, self._flush)

    def _flush(self) -> None:
        self._run("blob index write", self.blobs.flush_index,
                  lambda: self._later("blob index write", self.interval, self._flush))

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
                await self.blobs.flush_index()
            finally:
                self.blobs.transfers.stop()

        return Deferred.fromCoroutine(last_write())
