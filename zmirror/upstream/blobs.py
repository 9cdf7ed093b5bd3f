"""Blobs from the upstream registries: :class:`RemoteBlobs`, the remote blob source.

Every request goes through :class:`~zmirror.upstream.failover.Failover`
(priority order, health memory, one generic client error).  ``stat`` is a HEAD,
``open`` a GET relayed to the client as it arrives
(:class:`~zmirror.transfer.RelayBody`: the whole blob verified against its
digest, a client's single range passed on as an unverifiable partial answer),
``fetch`` the GET a cache download is filled from (:class:`UpstreamBlob`).
What an upstream sends that the client would get copied (length,
Content-Range, Content-Type) is checked first: a bad value is that upstream's
failure (fail over), never a 500 or a bad header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from zmirror.registry.errors import RegistryError
from zmirror.transfer import BlobInfo, IBlobSource, RelayBody, blob_content_type, single_range
from zmirror.upstream.client import Upstream, UpstreamError, discard
from zmirror.upstream.failover import Failover, header

_DIGITS = re.compile(r"^[0-9]{1,18}\Z")
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})", re.I)
_UNSATISFIED_RANGE = re.compile(r"bytes \*/([0-9]{1,18})", re.I)


@dataclass
class UpstreamBlob:
    """An upstream's 200 to a blob GET, not read yet: what a cache download
    starts from."""

    response: Any
    length: Optional[int]  # None: the upstream sent no Content-Length
    content_type: Optional[bytes]  # raw; checked where replayed (blob_content_type)
    upstream: Optional[Upstream] = None


@implementer(IBlobSource)
class RemoteBlobs:
    """The upstreams of the pool as one blob source.

    ``threads``: a :class:`~zmirror.upstream.digestworker.TransferThreads` the
    relay hashes on (None: inline)."""

    def __init__(self, failover: Failover, clock: Any, *, idle_timeout: float = 60.0, threads: Any = None):
        self.failover = failover
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.threads = threads

    async def _fetch(self, repo: str, digest: str, method: bytes, headers: dict, record: Any, **kw):
        return await self.failover.fetch(method, f"/v2/{repo}/blobs/{digest}", headers, name=repo,
                                         what=("blob", digest), record=record,
                                         unknown_code="BLOB_UNKNOWN", **kw)

    async def exists(self, repo: str, digest: str, *, record: Any = None) -> None:
        """Confirm that ``digest`` is in ``repo`` (a HEAD); RegistryError if not."""
        _up, resp, _ = await self._fetch(repo, digest, b"HEAD", {}, record)
        discard(resp)

    async def stat(self, repo: str, digest: str, *, record: Any = None) -> BlobInfo:
        """A HEAD: the blob's length (required) and Content-Type."""
        # a 206 or 416 to a HEAD is a bad answer (that upstream failed), not "unexpected"
        _up, resp, length = await self._fetch(repo, digest, b"HEAD", {}, record, ok_codes=(200, 206, 416),
                                              validate=_validator(head=True, ranged=False))
        ctype = blob_content_type(resp.headers.getRawHeaders(b"content-type", [None])[0])
        discard(resp)
        return BlobInfo(length, ctype)

    async def open(self, repo: str, digest: str, byte_range: Optional[str], *,
                   record: Any = None) -> RelayBody:
        """A GET relayed as it arrives.  Only a single bytes range goes upstream,
        in our own spelling (anything else is answered with the whole blob)."""
        rng = single_range(byte_range)
        headers = {b"Range": rng.encode("ascii")} if rng is not None else {}
        _up, resp, checked = await self._fetch(repo, digest, b"GET", headers, record,
                                               ok_codes=(200, 206, 416),
                                               validate=_validator(head=False, ranged=rng is not None))
        out = {b"Content-Type": blob_content_type(resp.headers.getRawHeaders(b"content-type", [None])[0])}
        if resp.code == 416:
            discard(resp)
            raise RegistryError("RANGE_INVALID", headers={b"Content-Range": checked} if checked else None)
        length = None if resp.length is UNKNOWN_LENGTH else int(resp.length)
        if resp.code == 206:
            first, last, size = checked
            out[b"Content-Range"] = f"bytes {first}-{last}/{size}".encode()
            # part of a blob cannot be checked against its digest (verified False)
            return RelayBody(206, out, resp, self.clock, None, last - first + 1, self.idle_timeout)
        # the whole blob: always hashed, its last bytes held back until the digest matched
        return RelayBody(200, out, resp, self.clock, digest, length, self.idle_timeout, self.threads)

    async def fetch(self, repo: str, digest: str, *, record: Any = None) -> UpstreamBlob:
        """The upstream's 200 for a cache fill (its body not read yet)."""
        up, resp, _ = await self._fetch(repo, digest, b"GET", {}, record)
        length = None if resp.length is UNKNOWN_LENGTH else int(resp.length)
        ctype = resp.headers.getRawHeaders(b"content-type")
        return UpstreamBlob(resp, length, ctype[0] if ctype else None, up)


def _validator(*, head: bool, ranged: bool):
    async def check(up, resp):
        try:
            return checked_blob_answer(up.name, resp, head=head, ranged=ranged)
        except UpstreamError:
            discard(resp)
            raise

    return check


def checked_blob_answer(upstream: str, resp, *, head: bool, ranged: bool):
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
        length = header(resp, b"content-length")
        if length is None or not _DIGITS.fullmatch(length.strip(" \t")):
            raise UpstreamError(f"blob HEAD from {upstream} has no valid Content-Length")
        return int(length)
    if code != 200 and not ranged:
        raise UpstreamError(f"blob from {upstream} answered {code} to a request without Range")
    if code == 206:
        rng = content_range(resp)
        if rng is None:
            raise UpstreamError(f"partial blob from {upstream} has no valid Content-Range")
        first, last, _size = rng
        if resp.length is not UNKNOWN_LENGTH and resp.length != last - first + 1:
            raise UpstreamError(f"partial blob from {upstream}: Content-Range and length disagree")
        return rng
    if code == 416:
        cr = header(resp, b"content-range")
        if cr is None:
            return None
        m = _UNSATISFIED_RANGE.fullmatch(cr.strip(" \t"))
        if not m:
            raise UpstreamError(f"416 from {upstream} has an invalid Content-Range")
        return f"bytes */{int(m.group(1))}".encode()
    return None


def content_range(resp) -> Optional[tuple[int, int, int]]:
    """A 206's ``Content-Range`` as (first, last, size), None when invalid."""
    m = _CONTENT_RANGE.fullmatch((header(resp, b"content-range") or "").strip(" \t"))
    if not m:
        return None
    first, last, size = (int(g) for g in m.groups())
    return (first, last, size) if first <= last < size else None


__all__ = ["RemoteBlobs", "UpstreamBlob", "checked_blob_answer", "content_range"]
