"""The proxy core: decides where an answer comes from and shapes it.

``Proxy.pull(pull_request)`` returns a result object with ``send(request)``:
:class:`BytesResult` for manifests, tag lists and HEADs (small bodies held in
memory) or, for blob bodies, an :class:`~zmirror.transfer.IBlobBody` (sent with
backpressure, never buffered).  Upstreams are tried in priority order with
failover (:class:`zmirror.upstream.failover.Failover`); the pull-through cache
plugs in before that.  Blobs come from one :class:`~zmirror.transfer.IBlobSource`
(:class:`~zmirror.registry.blobs.PullThroughBlobs`: the cache in front of the
upstreams); :meth:`Proxy.blob` only asks it and shapes the headers.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.logger import Logger

from zmirror.cache.manifests import Manifest, acceptable, content_media_type, valid_media_type
from zmirror.registry.errors import RegistryError
from zmirror.registry.reference import BLOB, MANIFEST, TAGS, parse_digest, parse_tag
from zmirror.upstream.client import UpstreamError, UpstreamPool, discard, read_limited
from zmirror.registry.blobs import PullThroughBlobs
from zmirror.upstream.blobs import RemoteBlobs
from zmirror.upstream.failover import Failover, header as _header

log = Logger()

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DEFAULT_ACCEPT = [DOCKER_V2, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX]

MAX_MANIFEST = 8 << 20
MAX_TAGS = 16 << 20
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
class _ManifestData:
    digest: str
    media_type: str
    body: Optional[bytes]
    length: int


def _cache_control(pull, max_age: str) -> bytes:
    scope = "private" if pull.identity.private else "public"
    return f"{scope}, {max_age}".encode()


class Proxy:
    def __init__(self, pool: UpstreamPool, clock: Any, *, idle_timeout: float = 60.0,
                 blobs: Any = None, manifests: Any = None, blob_source: Any = None,
                 resume_attempts: int = 3, resume_deadline: float = 300.0):
        self.pool = pool
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.blobs = blobs  # zmirror.cache.CacheBlobs or None
        self.manifests = manifests  # zmirror.cache.ManifestCache or None
        self.failover = Failover(pool, clock)
        if blob_source is None:
            remote = RemoteBlobs(self.failover, clock, idle_timeout=idle_timeout,
                                 threads=blobs.transfers if blobs is not None else None,
                                 resume_attempts=resume_attempts, resume_deadline=resume_deadline)
            blob_source = PullThroughBlobs(blobs, remote)
        self.blob_source = blob_source  # an IBlobSource

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
        if self.manifests is None:
            return self._manifest_result(pull, await self._upstream_manifest(pull, pull.head))
        return await self._cached_manifest(pull)

    def _manifest_result(self, pull, m: "_ManifestData", *, warning: Optional[str] = None) -> BytesResult:
        # m.media_type and m.digest were checked where they came in (an upstream
        # answer: _upstream_manifest; the database: ManifestCache)
        cache_control = _cache_control(pull, IMMUTABLE if pull.path.by_digest else TAG_TTL)
        headers = {
            b"Content-Type": m.media_type.encode("ascii"),
            b"Docker-Content-Digest": m.digest.encode(),
            b"Etag": f'"{m.digest}"'.encode(),
            b"Cache-Control": cache_control,
        }
        if not pull.path.by_digest:
            headers[b"Vary"] = b"Accept"  # a tag answers with different manifests per Accept
        if warning:
            headers[b"Warning"] = warning.encode()
        length = m.length if m.body is None else len(m.body)
        return BytesResult(200, headers, body=m.body or b"", head=pull.head, content_length=length)

    async def _upstream_manifest(self, pull, head: bool) -> "_ManifestData":
        """Fetch a manifest (HEAD when ``head`` and the upstream's HEAD says
        enough, else GET with digest checks) with failover."""
        name, ref = pull.path.name, pull.path.reference
        accept = pull.accept or DEFAULT_ACCEPT
        headers = {b"Accept": ", ".join(accept).encode("latin-1")}
        path = f"/v2/{name}/manifests/{ref}"
        by_digest = pull.path.by_digest
        if head:
            up, resp, _ = await self._fetch(pull, b"HEAD", path, headers, unknown_code="MANIFEST_UNKNOWN")
            digest = _valid_digest(_header(resp, b"docker-content-digest"))
            length = _header(resp, b"content-length")
            ctype = content_media_type(_header(resp, b"content-type"))
            discard(resp)
            if by_digest and digest and digest != ref:
                digest = None  # do not trust it; fall through to GET and verify
            if digest and length and _DIGITS.match(length) and int(length) <= MAX_MANIFEST and ctype:
                return _ManifestData(digest, ctype, None, int(length))
            # the upstream's HEAD lacks what clients need (or says it in a form we do
            # not pass on): GET and compute

        async def read_manifest(up, resp):
            raw_ctype = _header(resp, b"content-type")
            body = await read_limited(resp, MAX_MANIFEST, self.idle_timeout, self.clock)
            algo = ref.split(":")[0] if by_digest else "sha256"
            computed = f"{algo}:{hashlib.new(algo, body).hexdigest()}"
            if by_digest and computed != ref:
                raise UpstreamError(f"manifest digest mismatch from {up.name}: got {computed}")
            claimed = _header(resp, b"docker-content-digest")
            if claimed and claimed.startswith("sha256:") and claimed != computed and algo == "sha256":
                log.warn("upstream {name} claimed digest {c} but content hashes to {d}",
                         name=up.name, c=claimed, d=computed)
            # a bad media type is a bad answer: fail over, and never cache it
            if raw_ctype:
                media_type = content_media_type(raw_ctype)
                if media_type is None:
                    raise UpstreamError(f"manifest from {up.name} has an invalid Content-Type")
            else:
                media_type = _sniff_media_type(body)
                if media_type is None:
                    raise UpstreamError(f"manifest from {up.name} has an invalid mediaType")
            return body, computed, media_type

        up, resp, (body, digest, ctype) = await self._fetch(
            pull, b"GET", path, headers, unknown_code="MANIFEST_UNKNOWN", validate=read_manifest)
        return _ManifestData(digest, ctype, body, len(body))

    async def _cached_manifest(self, pull) -> BytesResult:
        cache = self.manifests
        if cache.loading.closed:
            await cache.loading.wait()  # the tags are being loaded at start
        name, ref = pull.path.name, pull.path.reference
        accept = pull.accept or DEFAULT_ACCEPT
        if pull.path.by_digest:
            m = await cache.get(ref)
            if m is not None and acceptable(m.media_type, accept):
                if not await cache.has_repo(ref, name):
                    # known from another repository only: confirm it exists in this one
                    await self._upstream_manifest(pull, True)
                    cache.add_repo(ref, name)
                return self._hit(pull, cache, m)
            return self._manifest_result(pull, await self._fill_manifest(pull, None))

        entry = await cache.tag(name, ref, accept)
        cached = await cache.get(entry.digest) if entry is not None else None
        if cached is not None and cache.fresh(entry):
            return self._hit(pull, cache, cached)
        if cached is not None:
            # stale: revalidate with a HEAD (it does not count as a pull on Docker Hub)
            try:
                head = await self._upstream_manifest(pull, True)
            except RegistryError as e:
                return self._stale_or_raise(pull, cache, cached, e)
            if head.digest == cached.digest:
                cache.refresh(entry)
                return self._hit(pull, cache, cached)
        try:
            return self._manifest_result(pull, await self._fill_manifest(pull, ref))
        except RegistryError as e:
            if cached is None:
                raise
            return self._stale_or_raise(pull, cache, cached, e)

    async def _fill_manifest(self, pull, tag: Optional[str]) -> "_ManifestData":
        m = await self._upstream_manifest(pull, False)
        self.manifests.stats["misses"] += 1
        if pull.record is not None:
            pull.record.cache_hit = False
        self.manifests.store(pull.path.name, tag, Manifest(m.digest, m.media_type, m.body))
        return m

    def _hit(self, pull, cache, m: Manifest, warning: Optional[str] = None) -> BytesResult:
        cache.stats["hits"] += 1
        if pull.record is not None:
            pull.record.cache_hit = True
        return self._manifest_result(pull, _ManifestData(m.digest, m.media_type, m.body, len(m.body)),
                                     warning=warning)

    def _stale_or_raise(self, pull, cache, m: Manifest, err: RegistryError) -> BytesResult:
        if err.status == 404 and err.code == "MANIFEST_UNKNOWN":
            cache.drop_tag(pull.path.name, pull.path.reference)  # the tag is gone upstream
            raise err
        if err.status in (429, 502, 503):
            cache.stats["stale_served"] += 1
            log.info("serving stale manifest {name}:{ref}: {err}", name=pull.path.name,
                     ref=pull.path.reference, err=err.message)
            return self._hit(pull, cache, m, warning='110 - "Response is Stale"')
        raise err

    # -- blobs --------------------------------------------------------------
    async def blob(self, pull):
        """Ask the blob source; add the headers every blob answer carries."""
        name, digest = pull.path.name, pull.path.reference
        if pull.head:
            info = await self.blob_source.stat(name, digest, record=pull.record)
            headers = self._blob_headers(pull, {b"Content-Type": info.content_type}, verified=True)
            return BytesResult(200, headers, head=True, content_length=info.size)
        body = await self.blob_source.open(name, digest, pull.range, record=pull.record)
        body.headers = self._blob_headers(pull, body.headers, verified=body.verified)
        return body

    @staticmethod
    def _blob_headers(pull, own: dict, *, verified: bool) -> dict:
        digest = pull.path.reference
        # Part of a blob an upstream sent cannot be checked against its digest:
        # nothing in front of us (a CDN, a shared cache) may keep these bytes as
        # the blob's for a year.  Everything else ends verified or not at all.
        out = {
            b"Content-Type": own.get(b"Content-Type", b"application/octet-stream"),
            b"Docker-Content-Digest": digest.encode(),
            b"Etag": f'"{digest}"'.encode(),
            b"Accept-Ranges": b"bytes",
            b"Cache-Control": _cache_control(pull, IMMUTABLE) if verified else b"no-store",
        }
        out.update((k, v) for k, v in own.items() if k != b"Content-Type")
        return out

    # -- tags ---------------------------------------------------------------
    async def tags(self, pull) -> BytesResult:
        name = pull.path.name
        query = {}
        n = _arg(pull.query, b"n")
        if n is not None:
            if not n.isdigit() or len(n) > 6:
                raise RegistryError("BAD_REQUEST", "n must be a non-negative integer", status=400)
            query["n"] = n
        last = _arg(pull.query, b"last")
        if last is not None and last != "":
            query["last"] = parse_tag(last)
        path = f"/v2/{name}/tags/list" + ("?" + urlencode(query) if query else "")

        async def read_tags(up, resp):
            body = await read_limited(resp, MAX_TAGS, self.idle_timeout, self.clock)
            link = _header(resp, b"link")
            return body, (_rewrite_link(link, name, pull.base_url) if link else None)

        up, resp, (body, link) = await self._fetch(pull, b"GET", path, {b"Accept": b"application/json"},
                                                   unknown_code="NAME_UNKNOWN", validate=read_tags)
        headers = {
            b"Content-Type": b"application/json; charset=utf-8",
            b"Cache-Control": b"no-store",
        }
        if link:
            headers[b"Link"] = link.encode("ascii")
        return BytesResult(200, headers, body=body, head=pull.head)


def _arg(query: dict, name: bytes) -> Optional[str]:
    v = query.get(name)
    if not v:
        return None
    try:
        return v[0].decode("ascii")
    except UnicodeDecodeError:
        raise RegistryError("BAD_REQUEST", f"invalid {name.decode()} parameter", status=400) from None


_DIGITS = re.compile(r"^[0-9]{1,18}\Z")
_LINK = re.compile(r"^\s*<([^<>]*)>(.*)$", re.S)
_REL = re.compile(r";\s*rel\s*=\s*(?:\"([^\"]*)\"|([^\s;,]+))", re.I)


def _valid_digest(value: Optional[str]) -> Optional[str]:
    """An upstream's ``Docker-Content-Digest`` if it is a digest we support, else None."""
    if not value:
        return None
    try:
        return parse_digest(value.strip())
    except RegistryError:
        return None


def _rewrite_link(link: str, name: str, base_url: str) -> Optional[str]:
    """Our own ``Link: <...?n=y&last=x>; rel="next"`` for an upstream's next-page link.

    Only ``n`` and ``last`` are taken from the upstream's link, both checked
    (``last`` must be a tag); a link with another ``rel`` is dropped.  A next
    link we cannot follow is a bad answer (UpstreamError): passing on a list
    without it would make the client believe it has every tag.
    """
    m = _LINK.match(link)
    if not m:
        raise UpstreamError("tags list with an invalid Link header")
    target, params = m.groups()
    rel = _REL.search(params)
    rels = (rel.group(1) or rel.group(2) or "").lower().split() if rel else []
    if "next" not in rels:
        return None
    try:
        q = parse_qs(urlsplit(target).query)
    except ValueError:
        raise UpstreamError("tags list with an invalid Link header") from None
    keep = {}
    n = q.get("n", [None])[0]
    if n is not None:
        if not _DIGITS.match(n) or len(n) > 6:
            raise UpstreamError("tags list with an invalid n in its Link header")
        keep["n"] = n
    last = q.get("last", [None])[0]
    try:
        keep["last"] = parse_tag(last or "")
    except RegistryError:
        raise UpstreamError("tags list with an invalid last in its Link header") from None
    return f'<{base_url}/v2/{name}/tags/list?{urlencode(keep)}>; rel="next"'


def _sniff_media_type(body: bytes) -> Optional[str]:
    """The media type a manifest body declares; None if it declares one that is
    not a valid media type."""
    try:
        doc = json.loads(body)
        mt = doc.get("mediaType")
        if isinstance(mt, str) and mt:
            return mt if valid_media_type(mt) else None
        if mt is not None and not isinstance(mt, str):
            return None
        if doc.get("schemaVersion") == 1:
            return "application/vnd.docker.distribution.manifest.v1+prettyjws"
    except (ValueError, AttributeError, RecursionError):
        pass
    return OCI_MANIFEST
