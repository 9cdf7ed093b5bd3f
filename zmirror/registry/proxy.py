"""The proxy core: decides where an answer comes from and shapes it.

``Proxy.pull(pull_request)`` returns a result object with ``send(request)``:
:class:`BytesResult` for manifests, tag lists and HEADs (small bodies held in
memory) or, for blob bodies, an :class:`~zmirror.transfer.interfaces.IBlobBody`.  The
sources it asks are built by :func:`zmirror.registry.build.build_proxy`
(docs/design/wiring.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from twisted.logger import Logger
from zope.interface import implementer

from zmirror.oci.errors import RegistryError
from zmirror.oci.reference import BLOB, MANIFEST, TAGS, parse_tag
from zmirror.registry.interfaces import IPullService
from zmirror.upstream.manifests import ManifestResult

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


def _cache_control(pull, max_age: str) -> bytes:
    scope = "private" if pull.identity.private else "public"
    return f"{scope}, {max_age}".encode()


@implementer(IPullService)
class Proxy:
    """Answers pulls from its sources: blobs from an
    :class:`~zmirror.transfer.interfaces.IBlobSource`, manifests from a
    :class:`~zmirror.registry.manifests.ManifestSource` and tag lists from a
    :class:`~zmirror.upstream.manifests.RemoteTags`."""

    def __init__(self, *, blob_source: Any, manifest_source: Any, tag_source: Any,
                 image_policy: Any = None):
        self.blob_source = blob_source
        # zmirror.auth.imagepolicy.ImagePolicy: a tag's digest is checked once known
        self.image_policy = image_policy
        self.manifest_source = manifest_source
        self.tag_source = tag_source

    async def pull(self, pull):
        kind = pull.path.kind
        if kind == MANIFEST:
            return await self.manifest(pull)
        if kind == BLOB:
            return await self.blob(pull)
        if kind == TAGS:
            return await self.tags(pull)
        raise RegistryError("NOT_FOUND", status=404)

    # -- manifests --------------------------------------------------------
    async def manifest(self, pull) -> BytesResult:
        m = await self.manifest_source.get(pull.path.name, pull.path.reference, pull.accept,
                                           head=pull.head, record=pull.record)
        if self.image_policy is not None:
            self.image_policy.check_resolved(pull.path, m.digest)  # before the body is sent
        if pull.record is not None and m.cache_hit is not None:
            pull.record.cache_hit = m.cache_hit
        return _manifest_result(pull, m)

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
        n = _arg(pull.query, b"n")
        if n is not None and (not n.isdigit() or len(n) > 6):
            raise RegistryError("BAD_REQUEST", "n must be a non-negative integer", status=400)
        last = _arg(pull.query, b"last")
        page = await self.tag_source.list(pull.path.name, n=n, last=parse_tag(last) if last else None,
                                          base_url=pull.base_url, record=pull.record,
                                          link_name=getattr(pull, "link_name", ""),
                                          link_ns=getattr(pull, "link_ns", None))
        headers = {
            b"Content-Type": b"application/json; charset=utf-8",
            b"Cache-Control": b"no-store",
        }
        if page.link:
            headers[b"Link"] = page.link.encode("ascii")
        return BytesResult(200, headers, body=page.body, head=pull.head)


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
