"""Blobs from the upstream registries: :class:`RemoteBlobs`, the remote blob source
(HEAD, a GET relayed to the client, the GET a cache download is filled from), and
:class:`ResumingBody`, which resumes a broken body with ``Range`` from the same
or the next upstream (design: docs/design/upstream.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from zmirror.oci.errors import RegistryError
from zmirror.transfer.connections import enlarge_reads
from zmirror.transfer.interfaces import BlobInfo, IBlobSource, blob_content_type
from zmirror.transfer.ranges import single_range
from zmirror.upstream.relay import RelayBody
from zmirror.upstream.models import Upstream, UpstreamError
from zmirror.httpbody import discard, failure_text
from zmirror.oci.names import namespace_of, remote_of
from zmirror.upstream.failover import Failover, header

log = Logger()

RESUME_ATTEMPTS = 3
RESUME_DEADLINE = 300.0

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


class BodyBroken(Exception):
    """An upstream blob body ended before the blob (and could not be resumed)."""


@dataclass
class ResumeOrder:
    """Which upstreams a resume asks, in order: the one that broke once more,
    then the others by priority; an upstream whose body broke twice is not
    asked again for this blob."""

    breaks: dict = field(default_factory=dict)  # upstream id -> bodies broken

    def broke(self, up: Optional[Upstream]) -> None:
        if up is not None:
            self.breaks[up.id] = self.breaks.get(up.id, 0) + 1

    def candidates(self, current: Optional[Upstream], pool_order: list) -> list:
        out = []
        if current is not None and self.breaks.get(current.id, 0) < 2:
            out.append(current)
        out.extend(u for u in pool_order
                   if (current is None or u.id != current.id) and self.breaks.get(u.id, 0) < 2)
        return out


class _Leg(Protocol):
    """The body of one upstream response, part of a :class:`ResumingBody`."""

    def __init__(self, body: "ResumingBody", upstream: Optional[Upstream], skip: int):
        self.body = body
        self.upstream = upstream
        self.skip = skip  # bytes to drop first (a 200 to a resume: read from the start)
        self.bytes = 0

    def connectionMade(self):
        enlarge_reads(self.transport)
        self.body._leg_made(self)

    def dataReceived(self, data: bytes):
        self.body._leg_data(self, data)

    def connectionLost(self, reason):
        self.body._leg_lost(self, reason)


@implementer(IPushProducer)
class ResumingBody:
    """A whole blob's upstream body of ``total`` bytes as one stream, across
    resumes.  Stands in for the upstream response: ``deliverBody(protocol)``
    once; the protocol's transport is this object (pause, resume, stop), and
    its ``connectionLost`` comes once, with ResponseDone only when ``total``
    bytes were delivered.  Owns the idle timer of the body (the reader must
    not run one of its own: an idle upstream is resumed, not the end).

    ``upstreams``: the names of those that sent bytes of it, in order;
    ``resumes``: how many times it was resumed."""

    idle_managed = True

    def __init__(self, remote: "RemoteBlobs", repo: str, digest: str, first: Any, upstream: Optional[Upstream],
                 total: int):
        self.remote = remote
        self.repo = repo
        self.digest = digest
        self.total = total
        self.clock = remote.clock
        self.idle_timeout = remote.idle_timeout
        self.received = 0
        self.resumes = 0
        self.upstreams: list[str] = []
        self.order = ResumeOrder()
        self.consumer: Any = None
        self._first = first
        self._upstream = upstream
        self._leg: Optional[_Leg] = None
        self._paused = False
        self._stopped = False
        self._ended = False
        self._first_break: Optional[float] = None
        self._idle = None

    # -- what the reader sees ------------------------------------------------------
    def deliverBody(self, protocol) -> None:
        if self.consumer is not None:
            raise RuntimeError("a blob body is delivered once")
        self.consumer = protocol
        self._attach(self._first, self._upstream, 0)
        self._first = None

    @property
    def current(self) -> Any:
        """The transport of the response being read now (None between two)."""
        return self._leg.transport if self._leg is not None else None

    def pauseProducing(self):
        self._paused = True
        self._cancel_idle()
        if self.current is not None:
            self.current.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        if self.current is not None:
            self._arm_idle()
            self.current.resumeProducing()

    def stopProducing(self):
        self._stopped = True
        self._cancel_idle()
        if self.current is not None:
            self.current.stopProducing()

    def detach(self) -> None:
        """The reader takes the socket of the current response over (a kernel
        copy): its end is no longer ours to report or resume."""
        self._cancel_idle()
        self._leg = None

    def restart(self, offset: int, why: str) -> None:
        """The reader's own copy of the current response broke after
        ``offset`` bytes of the blob: resume from there (the ordinary way)."""
        self._leg = None
        self.received = offset
        self._broken(self._upstream, why)

    # -- legs ------------------------------------------------------------------------
    def _attach(self, response, upstream: Optional[Upstream], skip: int) -> None:
        self._upstream = upstream
        if upstream is not None and upstream.name not in self.upstreams:
            self.upstreams.append(upstream.name)
        leg = _Leg(self, upstream, skip)
        self._leg = leg
        response.deliverBody(leg)

    def _leg_made(self, leg: _Leg) -> None:
        if leg is not self._leg:
            leg.transport.stopProducing()
            return
        if self.consumer is not None and getattr(self.consumer, "transport", None) is not self:
            self.consumer.makeConnection(self)  # the first response: the reader starts
        if self._stopped:
            leg.transport.stopProducing()
        elif self._paused:
            leg.transport.pauseProducing()
        else:
            self._arm_idle()

    def _leg_data(self, leg: _Leg, data: bytes) -> None:
        if leg is not self._leg or self._stopped or self._ended:
            return
        if self._idle is not None:
            self._idle.reset(self.idle_timeout)
        if leg.skip:
            cut = min(leg.skip, len(data))
            leg.skip -= cut
            data = data[cut:]
            if not data:
                return
        over = self.received + len(data) > self.total
        if over:
            data = data[: self.total - self.received]
        self.received += len(data)
        leg.bytes += len(data)
        if data:
            self.consumer.dataReceived(data)
        if over and leg is self._leg:
            # more than announced: what it says is the blob ends here (the digest decides)
            log.warn("upstream sent more than the {n} bytes of blob {d}; the rest is dropped",
                     n=self.total, d=self.digest)
            self._leg = None
            leg.transport.stopProducing()
            self._count(leg)
            self._end(Failure(ResponseDone()))

    def _leg_lost(self, leg: _Leg, reason) -> None:
        if leg is not self._leg:
            return  # replaced, detached or cut off on purpose
        self._leg = None
        self._cancel_idle()
        self._count(leg)
        if self._stopped:
            self._end(reason)
        elif self.received == self.total:
            self._end(Failure(ResponseDone()))
        else:
            why = f"after {self.received} of {self.total} bytes: {failure_text(reason)}"[:300]
            self._broken(leg.upstream, why)

    def _count(self, leg: _Leg) -> None:
        metrics = self.remote.metrics
        if metrics is not None and leg.upstream is not None and leg.bytes:
            metrics.upstream_blob_bytes.labels(leg.upstream.name).inc(leg.bytes)

    def _end(self, reason) -> None:
        if self._ended:
            return
        self._ended = True
        self._cancel_idle()
        self.consumer.connectionLost(reason)

    # -- resume ------------------------------------------------------------------------
    def _broken(self, upstream: Optional[Upstream], why: str) -> None:
        now = self.clock.seconds()
        if self._first_break is None:
            self._first_break = now
        self.order.broke(upstream)
        name = upstream.name if upstream is not None else "?"
        if self.resumes >= self.remote.resume_attempts or now - self._first_break > self.remote.resume_deadline:
            log.warn("blob {d} from {up} broke {why}; not resumed ({n} resumes)", d=self.digest, up=name,
                     why=why, n=self.resumes)
            self._end(Failure(BodyBroken(f"upstream body broken {why}")))
            return
        self.resumes += 1
        log.info("blob {d} from {up} broke {why}; resuming at byte {at} (resume {n})", d=self.digest,
                 up=name, why=why, at=self.received, n=self.resumes)
        d = Deferred.fromCoroutine(self._resume(upstream))
        d.addErrback(lambda f: self._end(f))

    async def _resume(self, upstream: Optional[Upstream]) -> None:
        pool_order = self.remote.failover.pool.candidates(namespace_of(self.repo))
        candidates = self.order.candidates(upstream, pool_order)
        metrics = self.remote.metrics
        try:
            if not candidates:
                raise BodyBroken("no upstream left to resume from")
            up, resp, skip = await self.remote.reopen(self.repo, self.digest, self.received, self.total,
                                                      candidates)
        except Exception as e:
            if metrics is not None:
                metrics.blob_resumes.labels(upstream.name if upstream else "", "failed").inc()
            log.warn("blob {d}: resume at byte {at} failed: {e}", d=self.digest, at=self.received,
                     e=getattr(e, "message", None) or str(e))
            self._end(Failure(BodyBroken(f"upstream body broken after {self.received} bytes; "
                                         "resuming failed")))
            return
        if metrics is not None:
            metrics.blob_resumes.labels(up.name, "ok").inc()
        if self._stopped or self._ended:
            discard(resp)
            self._end(Failure(ConnectionAborted()))
            return
        self._attach(resp, up, skip)

    # -- idle timer --------------------------------------------------------------------
    def _arm_idle(self) -> None:
        if not self.idle_timeout or self._ended:
            return
        if self._idle is None or not self._idle.active():
            self._idle = self.clock.callLater(self.idle_timeout, self._idle_fired)
        else:
            self._idle.reset(self.idle_timeout)

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idle_fired(self) -> None:
        self._idle = None
        if self.current is not None:
            log.warn("upstream sent nothing for {t:g} s; aborting that transfer", t=self.idle_timeout)
            self.current.stopProducing()  # its connectionLost resumes


@implementer(IBlobSource)
class RemoteBlobs:
    """The upstreams of the pool as one blob source.

    ``threads``: a :class:`~zmirror.transfer.threads.TransferThreads` the
    relay hashes on (None: inline)."""

    def __init__(self, failover: Failover, clock: Any, *, idle_timeout: float = 60.0, threads: Any = None,
                 resume_attempts: int = RESUME_ATTEMPTS, resume_deadline: float = RESUME_DEADLINE):
        self.failover = failover
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.threads = threads
        self.resume_attempts = resume_attempts
        self.resume_deadline = resume_deadline

    @property
    def metrics(self) -> Any:
        return getattr(self.failover.pool, "metrics", None)

    def _resuming(self, repo: str, digest: str, up: Upstream, resp: Any) -> Any:
        """The body to read: a :class:`ResumingBody` when the length is known."""
        if resp.length is UNKNOWN_LENGTH:
            return resp  # cannot tell where it would end: read as it comes, no resume
        return ResumingBody(self, repo, digest, resp, up, int(resp.length))

    async def reopen(self, repo: str, digest: str, offset: int, total: int, candidates: list):
        """The rest of a blob from ``offset``: ``(upstream, response, bytes to skip)``."""

        async def check(up, resp):
            try:
                return _continues(up.name, resp, offset, total)
            except UpstreamError:
                discard(resp)
                raise

        return await self.failover.fetch(b"GET", f"/v2/{remote_of(repo)}/blobs/{digest}",
                                         {b"Range": f"bytes={offset}-".encode()}, name=repo,
                                         what=("blob", digest), unknown_code="BLOB_UNKNOWN",
                                         ok_codes=(200, 206), validate=check, candidates=candidates)

    async def _fetch(self, repo: str, digest: str, method: bytes, headers: dict, record: Any, **kw):
        return await self.failover.fetch(method, f"/v2/{remote_of(repo)}/blobs/{digest}", headers, name=repo,
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
        up, resp, checked = await self._fetch(repo, digest, b"GET", headers, record,
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
        # the whole blob: always hashed, its last bytes held back until the digest matched;
        # a body that breaks is resumed (the ResumingBody then keeps the idle time)
        body = self._resuming(repo, digest, up, resp)
        idle = 0 if getattr(body, "idle_managed", False) else self.idle_timeout
        return RelayBody(200, out, body, self.clock, digest, length, idle, self.threads, record=record)

    async def fetch(self, repo: str, digest: str, *, record: Any = None) -> UpstreamBlob:
        """The upstream's 200 for a cache fill (its body not read yet)."""
        up, resp, _ = await self._fetch(repo, digest, b"GET", {}, record)
        length = None if resp.length is UNKNOWN_LENGTH else int(resp.length)
        ctype = resp.headers.getRawHeaders(b"content-type")
        return UpstreamBlob(self._resuming(repo, digest, up, resp), length, ctype[0] if ctype else None, up)


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


def _continues(upstream: str, resp, offset: int, total: int) -> int:
    """Check an answer to ``Range: bytes=<offset>-`` of a blob of ``total``
    bytes; the bytes to skip (a 200: from the start) or UpstreamError."""
    if resp.code == 206:
        rng = content_range(resp)
        if rng is None or rng[0] != offset or rng[2] != total:
            raise UpstreamError(f"resumed blob from {upstream} does not continue at byte {offset} of {total}")
        if resp.length is not UNKNOWN_LENGTH and resp.length != rng[1] - rng[0] + 1:
            raise UpstreamError(f"resumed blob from {upstream}: Content-Range and length disagree")
        return 0
    if resp.length is not UNKNOWN_LENGTH and resp.length != total:
        raise UpstreamError(f"blob from {upstream} now has {resp.length} bytes, not {total}")
    return offset  # it ignored the Range: read from the start, skip what we have


def content_range(resp) -> Optional[tuple[int, int, int]]:
    """A 206's ``Content-Range`` as (first, last, size), None when invalid."""
    m = _CONTENT_RANGE.fullmatch((header(resp, b"content-range") or "").strip(" \t"))
    if not m:
        return None
    first, last, size = (int(g) for g in m.groups())
    return (first, last, size) if first <= last < size else None


__all__ = ["BodyBroken", "RemoteBlobs", "ResumeOrder", "ResumingBody", "UpstreamBlob",
           "checked_blob_answer", "content_range"]
