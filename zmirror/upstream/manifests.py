"""Manifests and tag lists from the upstream registries: :class:`RemoteManifests`
(the remote manifest store) and :class:`RemoteTags`; what an upstream says is
checked where it comes in, and a bad answer is that upstream's failure
(design: docs/design/upstream.md)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.logger import Logger

from zmirror.oci.errors import RegistryError
from zmirror.oci.mediatypes import DEFAULT_ACCEPT, content_media_type, sniff_media_type
from zmirror.oci.reference import MANIFEST, TAGS, is_digest, parse_digest, parse_tag
from zmirror.httpbody import BodyError, discard, read_limited
from zmirror.upstream.models import UpstreamError
from zmirror.oci.names import remote_of
from zmirror.upstream.failover import Failover, header

log = Logger()

MAX_MANIFEST = 8 << 20
MAX_TAGS = 16 << 20


@dataclass
class ManifestResult:
    """A manifest as a source answers it.

    ``body`` is None when an upstream's HEAD said enough (``length`` is then
    its ``Content-Length``).  ``media_type`` and ``digest`` were checked where
    they came in.  ``cache_hit``: None when no cache took part, else whether the
    answer came from it; ``warning``: a ``Warning`` header value for the client
    (a stale answer).
    """

    digest: str
    media_type: str
    body: Optional[bytes]
    length: int
    cache_hit: Optional[bool] = None
    warning: Optional[str] = None


class RemoteManifests:
    def __init__(self, failover: Failover, clock: Any, *, idle_timeout: float = 60.0):
        self.failover = failover
        self.clock = clock
        self.idle_timeout = idle_timeout

    async def get(self, repository: str, reference: str, accept: list[str], *, head: bool = False,
                  record: Any = None) -> ManifestResult:
        """Fetch a manifest (HEAD when ``head`` and the upstream's HEAD says
        enough, else GET with digest checks) with failover.  ``record``: the
        access-log record whose ``upstream`` is set to the one that answered."""
        accept = accept or DEFAULT_ACCEPT
        headers = {b"Accept": ", ".join(accept).encode("latin-1")}
        path = f"/v2/{remote_of(repository)}/manifests/{reference}"
        by_digest = is_digest(reference)

        async def fetch(method: bytes, **kw):
            # every manifest answer carries the upstream's rate-limit headers; only GETs
            # count against Docker Hub's pull limit (a HEAD still goes to a limited upstream)
            return await self.failover.fetch(method, path, headers, name=repository, what=(MANIFEST, reference),
                                             record=record, unknown_code="MANIFEST_UNKNOWN", limits=True,
                                             counted=method != b"HEAD", **kw)

        if head:
            up, resp, _ = await fetch(b"HEAD")
            digest = _valid_digest(header(resp, b"docker-content-digest"))
            length = header(resp, b"content-length")
            ctype = content_media_type(header(resp, b"content-type"))
            discard(resp)
            if by_digest and digest and digest != reference:
                digest = None  # do not trust it; fall through to GET and verify
            if digest and length and _DIGITS.match(length) and int(length) <= MAX_MANIFEST and ctype:
                return ManifestResult(digest, ctype, None, int(length))
            # the upstream's HEAD lacks what clients need (or says it in a form we do
            # not pass on): GET and compute

        async def read_manifest(up, resp):
            raw_ctype = header(resp, b"content-type")
            body = await _read(resp, MAX_MANIFEST, self.idle_timeout, self.clock)
            algo = reference.split(":")[0] if by_digest else "sha256"
            computed = f"{algo}:{hashlib.new(algo, body).hexdigest()}"
            if by_digest and computed != reference:
                raise UpstreamError(f"manifest digest mismatch from {up.name}: got {computed}")
            claimed = header(resp, b"docker-content-digest")
            if claimed and claimed.startswith("sha256:") and claimed != computed and algo == "sha256":
                log.warn("upstream {name} claimed digest {c} but content hashes to {d}",
                         name=up.name, c=claimed, d=computed)
            # a bad media type is a bad answer: fail over, and never cache it
            if raw_ctype:
                media_type = content_media_type(raw_ctype)
                if media_type is None:
                    raise UpstreamError(f"manifest from {up.name} has an invalid Content-Type")
            else:
                media_type = sniff_media_type(body)
                if media_type is None:
                    raise UpstreamError(f"manifest from {up.name} has an invalid mediaType")
            return body, computed, media_type

        up, resp, (body, digest, ctype) = await fetch(b"GET", validate=read_manifest)
        return ManifestResult(digest, ctype, body, len(body))


@dataclass
class TagsPage:
    body: bytes  # the upstream's JSON, as it sent it (within MAX_TAGS)
    link: Optional[str]  # our own Link to the next page, or None


class RemoteTags:
    def __init__(self, failover: Failover, clock: Any, *, idle_timeout: float = 60.0):
        self.failover = failover
        self.clock = clock
        self.idle_timeout = idle_timeout

    async def list(self, repository: str, *, n: Optional[str] = None, last: Optional[str] = None,
                   base_url: str = "", record: Any = None, link_name: str = "",
                   link_ns: Optional[str] = None) -> TagsPage:
        """One page of ``repository``'s tags (``n``: digits, ``last``: a tag,
        both checked by the caller).  ``link_name``/``link_ns``: the name (and
        ``?ns=``) the client used, for the next-page link (default: the
        canonical name)."""
        query = {}
        if n is not None:
            query["n"] = n
        if last:
            query["last"] = last
        path = f"/v2/{remote_of(repository)}/tags/list" + ("?" + urlencode(query) if query else "")

        async def read_tags(up, resp):
            body = await _read(resp, MAX_TAGS, self.idle_timeout, self.clock)
            link = header(resp, b"link")
            return body, (_rewrite_link(link, link_name or repository, base_url, link_ns) if link else None)

        up, resp, (body, link) = await self.failover.fetch(
            b"GET", path, {b"Accept": b"application/json"}, name=repository, what=(TAGS, ""), record=record,
            unknown_code="NAME_UNKNOWN", validate=read_tags)
        return TagsPage(body, link)


_DIGITS = re.compile(r"^[0-9]{1,18}\Z")
_LINK = re.compile(r"^\s*<([^<>]*)>(.*)$", re.S)
_REL = re.compile(r";\s*rel\s*=\s*(?:\"([^\"]*)\"|([^\s;,]+))", re.I)


async def _read(resp, limit: int, timeout: float, clock: Any) -> bytes:
    """:func:`zmirror.httpbody.read_limited`; a body that cannot be read is the
    upstream's failure (UpstreamError: the next one is tried)."""
    try:
        return await read_limited(resp, limit, timeout, clock)
    except BodyError as e:
        raise UpstreamError(str(e)) from None


def _valid_digest(value: Optional[str]) -> Optional[str]:
    """An upstream's ``Docker-Content-Digest`` if it is a digest we support, else None."""
    if not value:
        return None
    try:
        return parse_digest(value.strip())
    except RegistryError:
        return None


def _rewrite_link(link: str, name: str, base_url: str, ns: Optional[str] = None) -> Optional[str]:
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
    if ns is not None:
        keep["ns"] = ns
    return f'<{base_url}/v2/{name}/tags/list?{urlencode(keep)}>; rel="next"'


__all__ = ["ManifestResult", "RemoteManifests", "RemoteTags", "TagsPage", "MAX_MANIFEST", "MAX_TAGS"]
