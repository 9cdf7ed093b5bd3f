"""The blob cache's index and files: :class:`CacheBlobs`, the local blob source.

Layout under the cache directory::

    blobs/sha256/ab/abcdef...   verified blobs, named by digest
    tmp/                        downloads in progress (emptied at start)
    zmirror.lock                held (flock) by the one process using the directory

**One process per cache directory** (:class:`CacheDirLock`): the index and the
files describe one process's downloads; a second process on the same directory
(two nodes on one machine left with the same ``[cache] dir``) would evict the
other's files and overwrite its index.  At start the wiring takes an exclusive,
non-blocking ``flock`` on ``zmirror.lock``; when another process holds it the
start fails with :class:`CacheDirInUse` (a :class:`~zmirror.config.ConfigError`:
one line, exit status 1).  The kernel releases the lock when its holder dies, so
a crashed node leaves nothing to clean up; a node that stops releases it after
its last index write.

Three layers, three modules: this one keeps the index and the files (lookup,
LRU eviction, persistence, the limits a download is admitted under);
:mod:`zmirror.cache.download` fills a temp file from an upstream answer,
verifies it and hands it to the index; :mod:`zmirror.transfer` sends bodies to
clients (cached files and running downloads alike, by sendfile(2) on plain
TCP).  Who decides between the cache and the upstreams, and makes the start of
a download single-flight, is :class:`zmirror.registry.blobs.PullThroughBlobs`.

When the cache disk fails a write, misses are relayed without storing for
STORE_RETRY seconds (:meth:`CacheBlobs.storing`).

Bounds: downloads hash and write on threads leased from one bounded pool
(:class:`~zmirror.transfer.threads.TransferThreads`, never a queue of
waiting transfers); the temp files of running downloads add up to at most
``max_temp_bytes`` (default: ``max_size``); a download every client has left is finished only while at most
``max_orphans`` of them, with at most ``max_orphan_bytes`` still to fetch, are
running.  A miss beyond the first two bounds is relayed uncached
(:class:`CacheUnavailable` from :meth:`CacheBlobs.admit`/:meth:`CacheBlobs.fill`);
an orphan beyond the last is aborted and its temp file removed.

The index (size, last access, repositories) lives in memory, loaded from the
``cache_blobs`` table at start and written back in batches (the node's own
database: the main one on SQLite, ``<dir>/index.sqlite`` on PostgreSQL, see
:mod:`zmirror.cache.index`); eviction is least
recently used first, accounted incrementally, and never deletes a blob while
a reader holds it open.  The counters (``stats``) are changed only here and
by the downloads of this cache.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from zmirror.cache.download import CacheUnavailable, Download, silent_unlink as _silent_unlink
from zmirror.cache.gate import LoadGate
from zmirror.config import ConfigError, private_dir
from zmirror.transfer.bodies import FileBody
from zmirror.transfer.interfaces import OCTET_STREAM, BlobInfo, IBlobSource
from zmirror.transfer.ranges import range_headers
from zmirror.httpbody import discard
from zmirror.transfer.threads import TRANSFER_THREADS, TransferThreads

log = Logger()

# After the cache disk failed a write (full, read-only, gone), misses are relayed
# without storing for this long before the cache tries again.
STORE_RETRY = 60.0
# At start, blob files the index lost are hashed before being adopted, up to this many bytes.
ADOPT_VERIFY_MAX = 4 << 30

# Downloads every client has left are finished while at most this many run,
# with at most this many bytes left to fetch between them; beyond, aborted.
MAX_ORPHANS = 4
MAX_ORPHAN_BYTES = 2 << 30

# Background work of the cache (start, index writes) that failed is retried after
# RETRY_FIRST s, doubling on each further failure up to RETRY_MAX s.
RETRY_FIRST = 5.0
RETRY_MAX = 300.0


LOCK_FILE = "zmirror.lock"


class CacheDirInUse(ConfigError):
    """Another process holds the cache directory's lock."""


class CacheDirLock:
    """The exclusive ``flock`` on ``<cache dir>/zmirror.lock`` (module doc).

    :meth:`acquire` (blocking file system calls: at start, before the reactor
    runs) creates the directory (0700) and the file (0600), takes the lock or
    raises :class:`CacheDirInUse`, and writes this process's id into the file
    (only for the message another process shows).  A file system without
    locks, or a lock file that cannot be created, is logged and not held: the
    cache's own start then meets the same disk.  :meth:`release` (or the
    process's end) lets it go.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None  # written into the file

    @property
    def held(self) -> bool:
        return self._fd is not None

    @classmethod
    def take(cls, root: Path) -> "CacheDirLock":
        lock = cls(root)
        lock.acquire()
        return lock

    def acquire(self) -> None:
        """Take the lock (see the class doc); when held already, only write this
        process's id again (twistd takes it in the process that forks the daemon)."""
        if self._fd is not None:
            self._write_pid()
            return
        try:
            for w in private_dir(self.root, "cache directory"):
                log.warn("{problem}", problem=w)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.warn("cache directory {root}: cannot create its lock file ({error}); not checking "
                     "that no other process uses it", root=str(self.root), error=e.strerror or e)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _lock_holder(fd) if e.errno in (errno.EAGAIN, errno.EACCES) else None
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):  # ENOLCK, EOPNOTSUPP: no locks here
                log.warn("cache directory {root}: cannot lock {file} ({error}); not checking "
                         "that no other process uses it", root=str(self.root), file=LOCK_FILE,
                         error=e.strerror or e)
                return
            raise CacheDirInUse(
                f"cache directory {self.root} is in use by another zmirror process"
                f"{f' (pid {holder})' if holder else ''}: each node needs its own [cache] dir"
            ) from None
        self._fd = fd
        self._write_pid()

    def _write_pid(self) -> None:
        pid = os.getpid()
        if self._fd is None or self._pid == pid:
            return
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{pid}\n".encode(), 0)
            self._pid = pid
        except OSError:
            pass  # only informative

    def release(self) -> None:
        fd, self._fd, self._pid = self._fd, None, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the open file releases the lock

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass


def _lock_holder(fd: int) -> Optional[int]:
    """The process id the holder wrote into the lock file, if readable."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and len(text) <= 10 else None


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


@implementer(IBlobSource)
class CacheBlobs:
    """The local blob store (index, LRU, files); an :class:`IBlobSource` whose
    ``stat``/``open`` answer None for a blob it does not hold.  It does not
    check repository membership (``knows``: the caller's job) and never
    fetches: :meth:`fill` starts a :class:`Download` from an upstream answer."""

    def __init__(self, root: Path, db: Any, reactor: Any, *, max_size: int, threadpool: Any = None,
                 idle_timeout: float = 60.0, transfer_threads: int = TRANSFER_THREADS,
                 max_temp_bytes: Optional[int] = None,
                 max_orphans: int = MAX_ORPHANS, max_orphan_bytes: int = MAX_ORPHAN_BYTES,
                 dir_lock: Optional[CacheDirLock] = None):
        self.root = Path(root)
        self.dir_lock = dir_lock  # held while this cache runs (CacheUpkeep releases it)
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

    def _make_root(self) -> None:
        """(thread) The cache directory, 0700 whatever the umask (an existing one
        that group or others may use is restricted, with a warning)."""
        for w in private_dir(self.root, "cache directory"):
            log.warn("{problem}", problem=w)

    def _sweep_tmp(self) -> None:
        """(thread) Empty tmp/ in place (it never disappears, not even for a moment)."""
        self._make_root()
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(tmp):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                _silent_unlink(entry.path)

    def _scan(self) -> dict[str, int]:
        self._make_root()
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

    def open_file(self, e: BlobEntry):
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

    # -- the blob source ------------------------------------------------------
    def knows(self, digest: str, repo: str) -> bool:
        """Is ``digest`` cached and known to be in ``repo``?  (Content addressing
        alone must not let a pull of repository A read a blob only seen in B.)"""
        e = self.entries.get(digest)
        return e is not None and repo in e.repos

    def add_repo(self, digest: str, repo: str) -> None:
        """``digest`` was confirmed to be in ``repo`` (by an upstream)."""
        e = self.entries.get(digest)
        if e is not None:
            self.touch(e, repo)

    async def ready(self) -> None:
        """Wait while the index is being loaded at start."""
        if self.loading.closed:
            await self.loading.wait()

    async def stat(self, repo: str, digest: str, *, record: Any = None) -> Optional[BlobInfo]:
        """The cached blob's size (a hit, counted), or None."""
        e = self.entries.get(digest)
        if e is None:
            return None
        self._hit(e, repo, record)
        return BlobInfo(e.size, OCTET_STREAM)

    async def open(self, repo: str, digest: str, byte_range: Optional[str], *,
                   record: Any = None) -> Optional[FileBody]:
        """A :class:`~zmirror.transfer.bodies.FileBody` of the cached blob (a hit,
        counted; the file is held open until it was sent), or None when it is
        not (or no longer) here; RANGE_INVALID for a range it cannot satisfy."""
        e = self.entries.get(digest)
        f = self.open_file(e) if e is not None else None
        if f is None:
            return None
        # the reader is released exactly once, when the body's follower closes
        # (a release without an open would let eviction unlink a blob being read)
        release = lambda: self.release(e)  # noqa: E731
        self._hit(e, repo, record)
        try:
            status, start, end, headers = range_headers(byte_range, e.size)
        except Exception:
            f.close()
            release()
            raise
        headers[b"Content-Type"] = OCTET_STREAM
        return FileBody(status, headers, f, e.size, start, end, on_close=release,
                        on_sent=self.count_sent, reactor=self.reactor)

    def _hit(self, e: BlobEntry, repo: str, record: Any) -> None:
        self.touch(e, repo)
        self.stats["hits"] += 1
        if record is not None:
            record.cache_hit = True

    def missed(self, record: Any = None) -> None:
        """A request this cache could not answer (it goes upstream)."""
        self.stats["misses"] += 1
        if record is not None:
            record.cache_hit = False

    def count_sent(self, n: int) -> None:
        self.stats["bytes_from_cache"] += n

    def count_fetched(self, n: int) -> None:
        self.stats["bytes_from_upstream"] += n

    # -- downloads ------------------------------------------------------------
    def running(self, digest: str) -> Optional[Download]:
        """The running download of ``digest``, if any."""
        return self.downloads.get(digest)

    def temp_bytes(self) -> int:
        """Bytes the temp files of running downloads take when complete."""
        return sum(dl.length or 0 for dl in self.downloads.values())

    def admit(self, length: Optional[int] = None) -> None:
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

    def fill(self, digest: str, repo: str, answer: Any) -> Download:
        """Start the download of ``digest`` from ``answer`` (an upstream's 200:
        ``response``, ``length`` or None, ``content_type``), or raise
        :class:`CacheUnavailable` (the answer discarded) when it is to be
        relayed uncached: no Content-Length, over the limits, temp file not
        creatable (the disk is then marked failing)."""
        response, length = answer.response, answer.length
        if length is None:
            # a body of unknown size cannot be budgeted: relayed (and verified) uncached
            discard(response)
            self.stats["relayed_over_limits"] += 1
            raise CacheUnavailable("upstream sent no Content-Length")
        try:
            self.admit(length)
        except CacheUnavailable:
            discard(response)
            raise
        dl = Download(self, digest, repo)
        self.downloads[digest] = dl
        try:
            dl.start(answer)
        except (OSError, CacheUnavailable) as e:
            # the temp file could not be created (or no thread after all): relay it uncached
            self.downloads.pop(digest, None)
            if dl.state == "pending":
                discard(response)
            if isinstance(e, OSError):
                self.store_failed(f"cannot create a temporary file: {e}")
                raise CacheUnavailable(str(e)) from None
            raise
        return dl

    def check_orphan(self, dl: Download) -> None:
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

    def download_finished(self, dl: Download, ok: bool) -> None:
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
    txn.executemany("INSERT INTO cache_blob_repos (digest, repository) VALUES (?, ?)"
                    " ON CONFLICT DO NOTHING", repo_rows)


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

    def __init__(self, blobs: CacheBlobs, manifests: Any, clock: Any, *, interval: float = 30.0):
        self.blobs = blobs
        self.manifests = manifests
        self.clock = clock
        self.interval = interval
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
                dir_lock = getattr(self.blobs, "dir_lock", None)
                if dir_lock is not None:
                    dir_lock.release()

        return Deferred.fromCoroutine(last_write())


BlobCache = CacheBlobs  # the name used before the blob sources (wiring, tests, admin)
