"""The proxy core: decides where an answer comes from and shapes it.

``Proxy.pull(pull_request)`` returns a result object with ``send(request)``:
:class:`BytesResult` for manifests, tag lists and HEADs (small bodies held in
memory) or :class:`StreamResult` for blob bodies (relayed with backpressure,
never buffered).  Upstreams are tried in priority order with failover
(:class:`zmirror.upstream.failover.Failover`); the pull-through cache plugs in
before that.

Manifests come from a :class:`~zmirror.registry.manifests.ManifestSource`
(the upstreams, or the pull-through cache in front of them) and tag lists from
:class:`~zmirror.upstream.manifests.RemoteTags`; here they only get their
headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.logger import Logger
from twisted.web.iweb import UNKNOWN_LENGTH
from werkzeug.http import parse_range_header

from zmirror.cache.blobs import CacheUnavailable, FollowerProducer, blob_content_type
from zmirror.registry.errors import RegistryError
from zmirror.registry.manifests import PullThroughManifests
from zmirror.registry.reference import BLOB, MANIFEST, TAGS, parse_tag
from zmirror.upstream.client import UpstreamError, UpstreamPool, discard
from zmirror.upstream.failover import Failover, header as _header
from zmirror.upstream.manifests import ManifestResult, RemoteManifests, RemoteTags
from zmirror.upstream.relay import BlobRelay

log = Logger()

IMMUTABLE = "max-age=31536000, immutable"
TAG_TTL = "max-age=300"


@dataclass
class BytesResult:
    """A small answer held in memory (manifest, tag list, any HEAD)."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes = b""
    head: bool = False
    content_length: Optional[int] = None

    def send(self, request) -> bytes:
        request.setResponseCode(self.status)
        for k, v in self.headers.items():
            request.setHeader(k, v)
        length = self.content_length if self.content_length is not None else len(self.body)
        request.setHeader(b"Content-Length", str(length).encode())
        return b"" if self.head else self.body


@dataclass
class StreamResult:
    """A blob body relayed from an upstream response."""

    status: int
    headers: dict[bytes, bytes]
    response: Any
    clock: Any
    expected_digest: Optional[str]
    expected_length: Optional[int]
    idle_timeout: float
    threads: Any = None  # TransferThreads to hash on (else inline)

    async def send(self, request):
        request.setResponseCode(self.status)
        for k, v in self.headers.items():
            request.setHeader(k, v)
        if self.expected_length is not None:
            request.setHeader(b"Content-Length", str(self.expected_length).encode())
        relay = BlobRelay(
            request, self.clock,
            expected_digest=self.expected_digest,
            expected_length=self.expected_length,
            idle_timeout=self.idle_timeout,
            threads=self.threads,
        )
        self.response.deliverBody(relay)
        await relay.done  # cancelling this aborts the upstream transfer
        return None


@dataclass
class DownloadResult:
    """A blob read from a (possibly still running) cache download."""

    status: int
    headers: dict[bytes, bytes]
    download: Any
    start: int
    end: Optional[int]

    async def send(self, request):
        request.setResponseCode(self.status)
        for k, v in self.headers.items():
            request.setHeader(k, v)
        producer = self.download.follow(request, self.start, self.end)
        producer.stats = self.download.cache.stats
        producer.reactor = self.download.cache.reactor
        await producer.begin()
        return None


@dataclass
class FileResult:
    """A cached blob served from its file (or a HEAD answered from the index)."""

    status: int
    headers: dict[bytes, bytes]
    file: Any
    size: int
    start: int = 0
    end: Optional[int] = None
    on_close: Optional[Callable[[], None]] = None
    stats: Optional[dict] = None
    reactor: Any = None

    async def send(self, request):
        request.setResponseCode(self.status)
        for k, v in self.headers.items():
            request.setHeader(k, v)
        if self.file is None:  # HEAD: answered from the index, no file was opened
            return b""
        producer = FollowerProducer(request, file=self.file, size=self.size, start=self.start,
                                    end=self.end, on_close=self.on_close, stats=self.stats,
                                    reactor=self.reactor)
        await producer.begin()
        return None


_UNSATISFIABLE = object()


def _parse_range(value: Optional[str], size: int):
    """A single ``bytes=`` range → (start, end) inclusive; None to send it all
    (no header, several ranges, another unit, or a form werkzeug rejects as
    malformed — ``bytes=5-3``, ``bytes=-0`` — which RFC 9110 lets us ignore);
    _UNSATISFIABLE for 416."""
    rng = parse_range_header(value) if value else None
    if rng is None or rng.units != "bytes" or len(rng.ranges) != 1:
        return None
    first, stop = rng.ranges[0]  # stop is exclusive, None for "to the end"
    if first < 0:  # suffix: the last -first bytes
        return (max(size + first, 0), size - 1) if size else _UNSATISFIABLE
    if first >= size:
        return _UNSATISFIABLE
    return first, size - 1 if stop is None else min(stop - 1, size - 1)


def _file_result(pull, out: dict, size: int, *, file, on_close, stats) -> "FileResult":
    if pull.head:
        out[b"Content-Length"] = str(size).encode()
        return FileResult(200, out, None, size)
    rng = _parse_range(pull.range, size)
    if rng is _UNSATISFIABLE:
        file.close()
        on_close()
        raise RegistryError("RANGE_INVALID", headers={b"Content-Range": f"bytes */{size}".encode()})
    if rng is None:
        out[b"Content-Length"] = str(size).encode()
        return FileResult(200, out, file, size, on_close=on_close, stats=stats)
    start, end = rng
    out[b"Content-Range"] = f"bytes {start}-{end}/{size}".encode()
    out[b"Content-Length"] = str(end - start + 1).encode()
    return FileResult(206, out, file, size, start, end, on_close=on_close, stats=stats)


def _cache_control(pull, max_age: str) -> bytes:
    scope = "private" if pull.identity.private else "public"
    return f"{scope}, {max_age}".encode()


class Proxy:
    def __init__(self, pool: UpstreamPool, clock: Any, *, idle_timeout: float = 60.0,
                 blobs: Any = None, manifests: Any = None):
        self.pool = pool
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.blobs = blobs  # zmirror.cache.BlobCache or None
        self.manifests = manifests  # zmirror.cache.ManifestCache or None
        self.failover = Failover(pool, clock)
        self.manifest_source, self.tag_source = _manifest_sources(self.failover, clock, idle_timeout, manifests)

    async def pull(self, pull):
        kind = pull.path.kind
        if kind == MANIFEST:
            return await self.manifest(pull)
        if kind == BLOB:
            return await self.blob(pull)
        if kind == TAGS:
            return await self.tags(pull)
        raise RegistryError("NOT_FOUND", status=404)

    async def _fetch(self, pull, method: bytes, path: str, headers: dict, **kw):
        """:meth:`Failover.fetch` for this pull request (its repository's scope,
        its access-log record, its path in the logs)."""
        return await self.failover.fetch(method, path, headers, name=pull.path.name,
                                         what=(pull.path.kind, pull.path.reference), record=pull.record,
                                         **kw)

    # -- manifests --------------------------------------------------------
    async def manifest(self, pull) -> BytesResult:
        m = await self.manifest_source.get(pull.path.name, pull.path.reference, pull.accept,
                                           head=pull.head, record=pull.record)
        if pull.record is not None and m.cache_hit is not None:
            pull.record.cache_hit = m.cache_hit
        return _manifest_result(pull, m)

    # -- blobs --------------------------------------------------------------
    async def blob(self, pull):
        name, digest = pull.path.name, pull.path.reference
        out = {
            b"Content-Type": b"application/octet-stream",
            b"Docker-Content-Digest": digest.encode(),
            b"Etag": f'"{digest}"'.encode(),
            b"Accept-Ranges": b"bytes",
            b"Cache-Control": _cache_control(pull, IMMUTABLE),
        }
        cache = self.blobs
        if cache is not None:
            if cache.loading.closed:
                await cache.loading.wait()  # the index is being loaded at start
            entry = cache.lookup(digest)
            if entry is not None and name not in entry.repos:
                # Cached via another repository: content addressing alone must not
                # let a pull of repository A read a blob only known to be in B.
                up, resp, _ = await self._fetch(pull, b"HEAD", f"/v2/{name}/blobs/{digest}", {},
                                                unknown_code="BLOB_UNKNOWN")
                discard(resp)
                entry = cache.lookup(digest)
                if entry is not None:
                    cache.touch(entry, name)
            if entry is not None:
                f = None if pull.head else cache.open(entry)
                if pull.head or f is not None:
                    cache.touch(entry, name)
                    cache.stats["hits"] += 1
                    if pull.record is not None:
                        pull.record.cache_hit = True
                    # a HEAD took no reader: nothing to release (a release without an
                    # open would let eviction unlink a blob another client is reading)
                    release = None if f is None else (lambda: cache.release(entry))
                    result = _file_result(pull, out, entry.size, file=f, on_close=release,
                                          stats=cache.stats)
                    result.reactor = cache.reactor
                    return result
            if not pull.head:
                if cache.storing():
                    # a miss, Range or not, fills the cache; ranges are served from the download
                    try:
                        return await self._cached_download(pull, out)
                    except CacheUnavailable:
                        pass  # the cache disk failed: relay this one from upstream without storing
                else:
                    cache.stats["misses"] += 1  # (_cached_download counts its own)
                if pull.record is not None:
                    pull.record.cache_hit = False
        return await self._upstream_blob(pull, out)

    async def _cached_download(self, pull, out):
        """Single-flight: the first request starts the download, everyone reads it."""
        cache, name, digest = self.blobs, pull.path.name, pull.path.reference
        cache.stats["misses"] += 1
        if pull.record is not None:
            pull.record.cache_hit = False
        # The fetch belongs to the download, not to this request: when this client
        # goes away (Klein cancels its handler) only this wait is cancelled.
        dl = await cache.download(digest, name, lambda: self._start_download(pull))
        out[b"Content-Type"] = dl.content_type
        rng = _parse_range(pull.range, dl.length)
        if rng is _UNSATISFIABLE:
            raise RegistryError("RANGE_INVALID", headers={b"Content-Range": f"bytes */{dl.length}".encode()})
        if rng is None:
            out[b"Content-Length"] = str(dl.length).encode()
            return DownloadResult(200, out, dl, 0, None)
        start, end = rng
        out[b"Content-Range"] = f"bytes {start}-{end}/{dl.length}".encode()
        out[b"Content-Length"] = str(end - start + 1).encode()
        return DownloadResult(206, out, dl, start, end)

    async def _start_download(self, pull):
        """The upstream's 200 for a cache fill: (response, length or None, raw
        Content-Type); the download checks the Content-Type it replays
        (:func:`~zmirror.cache.blobs.blob_content_type`)."""
        name, digest = pull.path.name, pull.path.reference
        up, resp, _ = await self._fetch(pull, b"GET", f"/v2/{name}/blobs/{digest}", {},
                                        unknown_code="BLOB_UNKNOWN")
        length = None if resp.length is UNKNOWN_LENGTH else int(resp.length)
        ctype = resp.headers.getRawHeaders(b"content-type")
        return resp, length, ctype[0] if ctype else None

    async def _upstream_blob(self, pull, out):
        name, digest = pull.path.name, pull.path.reference
        path = f"/v2/{name}/blobs/{digest}"
        headers: dict = {}
        # only a single bytes range goes upstream, in our own spelling (anything
        # else is answered with the whole blob, as from the cache)
        rng = None if pull.head else _single_range(pull.range)
        if rng is not None:
            headers[b"Range"] = rng.encode("ascii")
        method = b"HEAD" if pull.head else b"GET"

        async def check(up, resp):
            """What the client gets copied from the answer, checked: a bad one
            is the upstream's failure (fail over), never a 500 or a bad header."""
            try:
                return _checked_blob_answer(up.name, resp, head=pull.head, ranged=rng is not None)
            except UpstreamError:
                discard(resp)
                raise

        up, resp, checked = await self._fetch(pull, method, path, headers, unknown_code="BLOB_UNKNOWN",
                                              ok_codes=(200, 206, 416), validate=check)
        out[b"Content-Type"] = blob_content_type(resp.headers.getRawHeaders(b"content-type", [None])[0])
        if pull.record is not None and self.blobs is not None:
            pull.record.cache_hit = False
        if resp.code == 416:
            discard(resp)
            raise RegistryError("RANGE_INVALID", headers={b"Content-Range": checked} if checked else None)
        if pull.head:
            discard(resp)
            return BytesResult(200, out, head=True, content_length=checked)
        length = None if resp.length is UNKNOWN_LENGTH else int(resp.length)
        threads = self.blobs.transfers if self.blobs is not None else None
        if resp.code == 206:
            first, last, size = checked
            out[b"Content-Range"] = f"bytes {first}-{last}/{size}".encode()
            # Part of a blob cannot be checked against its digest: nothing in front of
            # us (a CDN, a shared cache) may keep these bytes as the blob's for a year.
            out[b"Cache-Control"] = b"no-store"
            return StreamResult(206, out, resp, self.clock, None, last - first + 1, self.idle_timeout)
        # The whole blob: always hashed, its last bytes held back until the digest
        # matched (a mismatch aborts the connection), so the public immutable
        # Cache-Control is only ever attached to a body that ends verified.
        return StreamResult(200, out, resp, self.clock, digest, length, self.idle_timeout, threads)

    # -- tags ---------------------------------------------------------------
    async def tags(self, pull) -> BytesResult:
        n = _arg(pull.query, b"n")
        if n is not None and (not n.isdigit() or len(n) > 6):
            raise RegistryError("BAD_REQUEST", "n must be a non-negative integer", status=400)
        last = _arg(pull.query, b"last")
        page = await self.tag_source.list(pull.path.name, n=n, last=parse_tag(last) if last else None,
                                          base_url=pull.base_url, record=pull.record)
        headers = {
            b"Content-Type": b"application/json; charset=utf-8",
            b"Cache-Control": b"no-store",
        }
        if page.link:
            headers[b"Link"] = page.link.encode("ascii")
        return BytesResult(200, headers, body=page.body, head=pull.head)


def _manifest_sources(failover: Failover, clock: Any, idle_timeout: float, cache: Any):
    """The manifest source (the upstreams, behind the cache when there is one)
    and the tag-list source."""
    remote = RemoteManifests(failover, clock, idle_timeout=idle_timeout)
    source = remote if cache is None else PullThroughManifests(cache, remote)
    return source, RemoteTags(failover, clock, idle_timeout=idle_timeout)


def _manifest_result(pull, m: ManifestResult) -> BytesResult:
    # m.media_type and m.digest were checked where they came in (an upstream
    # answer: RemoteManifests; the database: ManifestCache)
    headers = {
        b"Content-Type": m.media_type.encode("ascii"),
        b"Docker-Content-Digest": m.digest.encode(),
        b"Etag": f'"{m.digest}"'.encode(),
        b"Cache-Control": _cache_control(pull, IMMUTABLE if pull.path.by_digest else TAG_TTL),
    }
    if not pull.path.by_digest:
        headers[b"Vary"] = b"Accept"  # a tag answers with different manifests per Accept
    if m.warning:
        headers[b"Warning"] = m.warning.encode()
    length = m.length if m.body is None else len(m.body)
    return BytesResult(200, headers, body=m.body or b"", head=pull.head, content_length=length)


def _arg(query: dict, name: bytes) -> Optional[str]:
    v = query.get(name)
    if not v:
        return None
    try:
        return v[0].decode("ascii")
    except UnicodeDecodeError:
        raise RegistryError("BAD_REQUEST", f"invalid {name.decode()} parameter", status=400) from None


_DIGITS = re.compile(r"^[0-9]{1,18}\Z")


def _single_range(value: Optional[str]) -> Optional[str]:
    """A client's ``Range`` as we send it upstream: one bytes range, respelled;
    None (ask for the whole blob) for anything else."""
    rng = parse_range_header(value) if value else None
    if rng is None or rng.units != "bytes" or len(rng.ranges) != 1:
        return None
    return rng.to_header()


_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})", re.I)
_UNSATISFIED_RANGE = re.compile(r"bytes \*/([0-9]{1,18})", re.I)


def _checked_blob_answer(upstream: str, resp, *, head: bool, ranged: bool):
    """Check what a blob answer (200/206/416) gives the client; raise
    UpstreamError for a bad one.  Returns, by answer: a HEAD's length (its
    ``Content-Length``, required: a HEAD answered without it would tell the
    client a wrong size); a 206's ``(first, last, size)`` from its
    ``Content-Range`` (required, consistent with its length); a 416's
    ``Content-Range`` respelled (or None when it sent none); None for a GET's 200."""
    code = resp.code
    if head:
        if code != 200:
            raise UpstreamError(f"blob HEAD from {upstream} answered {code}")
        length = _header(resp, b"content-length")
        if length is None or not _DIGITS.fullmatch(length.strip(" \t")):
            raise UpstreamError(f"blob HEAD from {upstream} has no valid Content-Length")
        return int(length)
    if code != 200 and not ranged:
        raise UpstreamError(f"blob from {upstream} answered {code} to a request without Range")
    if code == 206:
        m = _CONTENT_RANGE.fullmatch((_header(resp, b"content-range") or "").strip(" \t"))
        first, last, size = (int(g) for g in m.groups()) if m else (0, -1, 0)
        if not m or not first <= last < size:
            raise UpstreamError(f"partial blob from {upstream} has no valid Content-Range")
        if resp.length is not UNKNOWN_LENGTH and resp.length != last - first + 1:
            raise UpstreamError(f"partial blob from {upstream}: Content-Range and length disagree")
        return first, last, size
    if code == 416:
        cr = _header(resp, b"content-range")
        if cr is None:
            return None
        m = _UNSATISFIED_RANGE.fullmatch(cr.strip(" \t"))
        if not m:
            raise UpstreamError(f"416 from {upstream} has an invalid Content-Range")
        return f"bytes */{int(m.group(1))}".encode()
    return None
