"""Pull-through blobs: a local store in front of the upstreams, as one blob source.

:class:`PullThroughBlobs` serves a hit from the cache once the blob is known to
be in the requested repository, starts one cache download per digest for a
miss (every client follows it), and relays from the upstreams what the cache
cannot store.  Counters (hits, misses) are the local store's.

Design: docs/design/pull-path.md ("Blobs").
"""

from __future__ import annotations

from typing import Any, Optional

from zope.interface import implementer

from twisted.internet.defer import Deferred

from zmirror.cache.download import CacheUnavailable
from zmirror.singleflight import SingleFlight
from zmirror.transfer.bodies import DownloadBody
from zmirror.transfer.interfaces import BlobInfo, IBlobBody, IBlobSource
from zmirror.transfer.ranges import range_headers


@implementer(IBlobSource)
class PullThroughBlobs:
    def __init__(self, local: Any, remote: Any):
        self.local = local  # CacheBlobs or None
        self.remote = remote  # RemoteBlobs
        self.starting: SingleFlight = SingleFlight()  # downloads waiting for the upstream's answer

    async def _member(self, repo: str, digest: str, record: Any) -> bool:
        """Is ``digest`` cached for ``repo``?  A blob cached via another
        repository is confirmed upstream (a HEAD) first."""
        local = self.local
        await local.ready()
        if local.lookup(digest) is None:
            return False
        if not local.knows(digest, repo):
            await self.remote.exists(repo, digest, record=record)
            local.add_repo(digest, repo)
        return local.lookup(digest) is not None

    async def stat(self, repo: str, digest: str, *, record: Any = None) -> BlobInfo:
        local = self.local
        if local is not None and await self._member(repo, digest, record):
            info = await local.stat(repo, digest, record=record)
            if info is not None:
                return info
        info = await self.remote.stat(repo, digest, record=record)
        if local is not None and record is not None:
            record.cache_hit = False
        return info

    async def open(self, repo: str, digest: str, byte_range: Optional[str], *,
                   record: Any = None) -> IBlobBody:
        local = self.local
        if local is not None:
            if await self._member(repo, digest, record):
                body = await local.open(repo, digest, byte_range, record=record)
                if body is not None:
                    return body
            if local.storing():
                # a miss, Range or not, fills the cache; ranges are served from the download
                try:
                    return await self._from_download(repo, digest, byte_range, record)
                except CacheUnavailable:
                    pass  # relay this one from upstream without storing
            else:
                local.missed(record)
            if record is not None:
                record.cache_hit = False
        return await self.remote.open(repo, digest, byte_range, record=record)

    async def _from_download(self, repo: str, digest: str, byte_range: Optional[str],
                             record: Any) -> DownloadBody:
        local = self.local
        local.missed(record)
        dl = local.running(digest)
        if dl is None:
            # the fetch belongs to the download, not to this request: when this
            # client goes away (Klein cancels its handler) only this wait is cancelled
            dl = await self.starting.run(digest, lambda: self._start(repo, digest, record))
        status, start, end, headers = range_headers(byte_range, dl.length)
        headers[b"Content-Type"] = dl.content_type
        return DownloadBody(status, headers, dl, start, end, record=record)

    async def prefetch(self, repo: str, digest: str, *, record: Any = None,
                       on_download: Any = None) -> bool:
        """Fill the cache with ``digest`` of ``repo`` without sending it anywhere
        (pre-warm jobs): True when it was fetched, False when it was cached
        already (no upstream GET).  Joins the download clients start (one
        upstream GET per blob, whoever asks first) and waits for it to complete;
        raises CacheUnavailable when the blob cannot be stored now (limits, disk),
        DownloadFailed when the download broke, RegistryError when no upstream
        has it.  Cancelling the wait leaves the download to
        its clients.  ``on_download(dl)``: told the download waited for (its
        ``written`` bytes show the progress)."""
        local = self.local
        if local is None or not local.storing():
            raise CacheUnavailable("the blob cache is not storing")
        if await self._member(repo, digest, record):
            return False
        dl = local.running(digest)
        if dl is None:
            dl = await self.starting.run(digest, lambda: self._start(repo, digest, record))
        if on_download is not None:
            on_download(dl)
        if await _completion(dl) != "done":
            raise DownloadFailed(f"download failed: {dl.failure_reason}")
        return True

    async def _start(self, repo: str, digest: str, record: Any):
        local = self.local
        local.admit()  # spare the upstream a request whose answer could not be stored
        answer = await self.remote.fetch(repo, digest, record=record)
        dl = local.fill(digest, repo, answer)
        flight = self.starting.get(digest)
        # Every caller left while the upstream took its time.  (No flight yet: the
        # answer came at once, before any caller could wait, let alone leave.)
        if flight is not None and flight.waiting == 0:
            local.check_orphan(dl)
        return dl


class DownloadFailed(Exception):
    """A prefetch's download ended without the blob (broken, digest mismatch, abandoned)."""


class _Completion:
    """A silent follower of a download: sent nothing, told when it ends."""

    pos = -1  # never at the download's write position: no bytes are pushed to it

    def __init__(self, dl: Any):
        self.dl = dl
        self.ended: Deferred = Deferred(self._cancel)

    def push(self, data: bytes, offset: int) -> None:
        pass

    def data_available(self) -> None:
        if self.dl.state in ("done", "failed") and not self.ended.called:
            if self in self.dl.followers:
                self.dl.followers.remove(self)
            self.ended.callback(self.dl.state)

    def _cancel(self, _d: Deferred) -> None:
        self.dl._unfollow(self)  # the last one gone: the download's orphan rules apply


def _completion(dl: Any) -> Deferred:
    """Fires with the download's final state (done | failed)."""
    watcher = _Completion(dl)
    if dl.state in ("done", "failed"):
        watcher.ended.callback(dl.state)
    else:
        dl.followers.append(watcher)
        dl.orphaned = False  # waited for again
    return watcher.ended


__all__ = ["PullThroughBlobs", "DownloadFailed"]
