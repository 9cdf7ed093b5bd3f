"""The local blob store: :class:`CacheBlobs`, the index in memory (lookup,
LRU eviction, the limits a download is admitted under) over the verified blob
files; an :class:`~zmirror.transfer.interfaces.IBlobSource` that answers None
for what it does not hold.  Layout, bounds and persistence:
docs/design/cache.md."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from zmirror.cache.blobindex import (BlobEntry, blob_relpath, check_files, compare, delete_blob_rows,
                                     delete_repo_rows, read_rows, rows_of, scan, sweep_tmp,
                                     upsert_blob_rows)
from zmirror.cache.dirlock import CacheDirLock
from zmirror.cache.download import CacheUnavailable, Download, silent_unlink
from zmirror.cache.gate import LoadGate
from zmirror.cache.retention import BlobView
from zmirror.httpbody import discard
from zmirror.transfer.bodies import FileBody
from zmirror.transfer.interfaces import OCTET_STREAM, BlobInfo, IBlobSource
from zmirror.transfer.ranges import range_headers
from zmirror.transfer.threads import TRANSFER_THREADS, TransferThreads

log = Logger()

# After the cache disk failed a write (full, read-only, gone), misses are relayed
# without storing for this long before the cache tries again.
STORE_RETRY = 60.0

# Downloads every client has left are finished while at most this many run,
# with at most this many bytes left to fetch between them; beyond, aborted.
MAX_ORPHANS = 4
MAX_ORPHAN_BYTES = 2 << 30


def _retention_rows(txn, deleted, pairs):
    delete_blob_rows(txn, deleted)
    delete_repo_rows(txn, pairs)


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
                      "relayed_over_limits": 0, "orphans_aborted": 0,
                      # upstream bodies taken over by a fill thread: by splice(2) (plain TCP),
                      # decrypted on the thread (TLS); the others went through the reactor
                      "fills_splice": 0, "fills_tls": 0}
        self._store_failed_at: Optional[float] = None
        self.store_error = ""
        # what retention's pins keep (``keeps_blob(digest, repos)``): the LRU skips it
        self.pinned: Any = None

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
            await self._in_thread(sweep_tmp, self.root)
        rows, repos = await read_rows(self.db)
        present = await self._in_thread(scan, self.root)
        found = compare(rows, present)
        for digest, size, last_access in found.known:
            if digest not in self.entries:  # a retried start keeps what it has
                self._add(BlobEntry(digest, size, last_access))
        verified, dropped = [], []
        if found.unknown or found.damaged:
            verified, dropped = await self._in_thread(check_files, self.root, found.unknown, found.damaged)
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
        if found.stale:
            await self.db.write(delete_blob_rows, found.stale)
        if adopted:
            self._dirty.update(adopted)
            await self.flush_index()
        log.info("blob cache: {n} blobs, {size} bytes in {root}", n=len(self.entries), size=self.size,
                 root=str(self.root))

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
        rows, repo_rows = rows_of(self.entries, dirty)
        try:
            await self.db.write(upsert_blob_rows, rows, repo_rows)
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
        return self.root / blob_relpath(digest)

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
        self.db.write(delete_blob_rows, [digest])

    def _unlink(self, digest: str) -> Deferred:
        p = self.path(digest)
        return self._in_thread(silent_unlink, p)

    async def evict(self) -> int:
        """Delete least recently used blobs until the cache fits ``max_size``;
        pinned blobs (:attr:`pinned`) are skipped.  A blob being read is
        unlinked when its last reader closes (the reader is not cut)."""
        victims = []
        pinned = self.pinned
        for digest, e in list(self.entries.items()):
            if self.size <= self.max_size:
                break
            if pinned is not None and pinned.keeps_blob(digest, e.repos):
                continue
            self.entries.pop(digest)
            self.size -= e.size
            victims.append(digest)
            if e.readers > 0:
                self._doomed.add(digest)  # unlinked when its last reader closes
            else:
                self._unlink(digest)
        if victims:
            self.stats["evictions"] += len(victims)
            await self.db.write(delete_blob_rows, victims)
        return len(victims)

    def busy(self, digest: str) -> bool:
        """Read by a client or being downloaded: retention leaves it alone."""
        e = self.entries.get(digest)
        return digest in self.downloads or (e is not None and e.readers > 0)

    def views(self) -> list:
        """The entries as retention's planner sees them (LRU order, oldest first)."""
        return [BlobView(d, e.size, e.last_access, frozenset(e.repos), self.busy(d))
                for d, e in self.entries.items()]

    async def apply_retention(self, actions: list) -> dict:
        """Apply retention's blob actions (:class:`~zmirror.cache.retention.BlobAction`):
        drop their memberships, delete a file whose last membership went.  A blob
        that is busy (a reader, a download) or gained a membership since it was
        planned is left alone.  Returns ``{"blobs", "bytes", "memberships"}`` done."""
        deleted, pairs, freed = [], [], 0
        for a in actions:
            e = self.entries.get(a.digest)
            if e is None or self.busy(a.digest):
                continue
            if a.delete and e.repos - a.drop:
                continue  # a membership was added since the plan
            drop = e.repos & a.drop
            e.repos -= drop
            if a.delete:
                self.entries.pop(a.digest)
                self.size -= e.size
                freed += e.size
                deleted.append(a.digest)
                self._unlink(a.digest)
            else:
                pairs.extend((a.digest, r) for r in drop)
        if deleted:
            self.stats["evictions"] += len(deleted)
        if deleted or pairs:
            await self.db.write(_retention_rows, deleted, pairs)
        return {"blobs": len(deleted), "bytes": freed, "memberships": len(pairs)}

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
            await self.db.write(delete_blob_rows, targets)
        return len(targets)

    async def drop_repos(self, repos: set) -> int:
        """A purge of repositories: they leave every blob's repositories; a blob no
        other repository uses is deleted (unlinked once its last reader closed).
        Returns the number of blobs deleted."""
        touched = [e for e in self.entries.values() if e.repos & repos]
        gone, links = [], []
        for e in touched:
            links += [(e.digest, r) for r in e.repos & repos]
            e.repos -= repos
            if not e.repos:
                gone.append(e.digest)
        for d in gone:
            e = self.entries.pop(d)
            self.size -= e.size
            if e.readers > 0:
                self._doomed.add(d)
            else:
                self._unlink(d)
        if touched:
            await self.db.write(_drop_links, links, gone)
        return len(gone)

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


def _drop_links(txn, links, gone):
    txn.executemany("DELETE FROM cache_blob_repos WHERE digest = ? AND repository = ?", links)
    delete_blob_rows(txn, gone)
