"""The transfer of blob bodies to clients, shared by the cache and the upstreams.

A blob source (:class:`IBlobSource`: the cache, the upstreams, the pull-through
pair of both) answers ``open(repo, digest, byte_range)`` with a body
(:class:`IBlobBody`) that writes itself to a client's request with
backpressure and never buffers the blob:

- :class:`FileBody`: a cached blob, read from its file;
- :class:`DownloadBody`: a blob a cache download is still fetching — the
  client follows the growing temp file (:class:`FollowerProducer`);
- :class:`RelayBody`: an upstream's response relayed as it arrives
  (:class:`BlobRelay`), for misses the cache cannot store.

How bytes go out: a follower sends with sendfile(2) when the client is on
plain TCP (:class:`_SendfileWriter`), else in 64 KiB reads while the client's
transport is not paused.  The relay registers a producer with the request so a
stalled client pauses the upstream read (memory stays flat whatever the blob
size).

Integrity: the whole blob is always checked against its digest and its last
byte is held back until it matched; a body that cannot end verified (digest
mismatch, truncated, aborted download) ends by dropping the client's
connection (:func:`abort_client`), never by finishing the response, so a
client (or a CDN in front of us) never takes a short or corrupt body for a
complete one.  Relay timeouts: an idle timer (no bytes from upstream for
``idle_timeout`` s while nobody on our side holds the upstream back) aborts the
transfer; the client going away stops the upstream transfer.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IWriteDescriptor
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from werkzeug.http import parse_range_header
from zope.interface import Attribute, Interface, implementer

from zmirror.oci.errors import RegistryError
from zmirror.httpbody import failure_text
from zmirror.transfer.threads import DigestWorker

log = Logger()

CHUNK = 64 << 10  # file reads: 64 KiB measured best here (1 MiB reads were ~3x slower)


# -- the protocols ------------------------------------------------------------------

class IBlobBody(Interface):
    """A blob answer that writes itself to a client's request."""

    status = Attribute("HTTP status: 200, or 206 for a range")
    headers = Attribute("dict of the body's own headers (Content-Type, Content-Length, "
                        "Content-Range); the caller adds its own before send()")
    verified = Attribute("True when what is sent is checked against the digest (the whole "
                         "blob, or a range of a verified one); False for an upstream's range")

    def send(request):
        """Write status, headers and body to ``request`` (a coroutine); ends
        when every byte went out, or after the client connection was dropped."""


class IBlobSource(Interface):
    """Where blobs come from: the cache, the upstreams, or both (pull-through)."""

    def stat(repo, digest, *, record=None):
        """(async) :class:`BlobInfo` of ``digest`` in ``repo``; raises
        RegistryError (BLOB_UNKNOWN, ...) or, for a local store, returns None
        when it does not hold it.  ``record``: the access-log record to fill."""

    def open(repo, digest, byte_range, *, record=None):
        """(async) An :class:`IBlobBody` for ``digest`` of ``repo``;
        ``byte_range`` is the client's ``Range`` header value (None: the whole
        blob).  A local store returns None when it does not hold it."""


@dataclass
class BlobInfo:
    size: int
    content_type: bytes = b"application/octet-stream"


# -- ranges ------------------------------------------------------------------------

UNSATISFIABLE = object()


def resolve_range(value: Optional[str], size: int):
    """A single ``bytes=`` range → (start, end) inclusive; None to send it all
    (no header, several ranges, another unit, or a form werkzeug rejects as
    malformed — ``bytes=5-3``, ``bytes=-0`` — which RFC 9110 lets us ignore);
    UNSATISFIABLE for 416."""
    rng = parse_range_header(value) if value else None
    if rng is None or rng.units != "bytes" or len(rng.ranges) != 1:
        return None
    first, stop = rng.ranges[0]  # stop is exclusive, None for "to the end"
    if first < 0:  # suffix: the last -first bytes
        return (max(size + first, 0), size - 1) if size else UNSATISFIABLE
    if first >= size:
        return UNSATISFIABLE
    return first, size - 1 if stop is None else min(stop - 1, size - 1)


def range_headers(value: Optional[str], size: int) -> tuple[int, int, Optional[int], dict]:
    """``(status, start, end or None, headers)`` to answer ``value`` (a
    client's Range) for a blob of ``size`` bytes; RegistryError RANGE_INVALID
    (416) when it cannot be satisfied."""
    rng = resolve_range(value, size)
    if rng is UNSATISFIABLE:
        raise RegistryError("RANGE_INVALID", headers={b"Content-Range": f"bytes */{size}".encode()})
    if rng is None:
        return 200, 0, None, {b"Content-Length": str(size).encode()}
    start, end = rng
    return 206, start, end, {b"Content-Range": f"bytes {start}-{end}/{size}".encode(),
                             b"Content-Length": str(end - start + 1).encode()}


def single_range(value: Optional[str]) -> Optional[str]:
    """A client's ``Range`` as we send it upstream: one bytes range, respelled;
    None (ask for the whole blob) for anything else."""
    rng = parse_range_header(value) if value else None
    if rng is None or rng.units != "bytes" or len(rng.ranges) != 1:
        return None
    return rng.to_header()


# Below this size hashing inline is cheaper than starting a thread.
THREADED_HASH_MIN = 4 << 20
# Socket read size for upstream blob bodies: Twisted reads 64 KiB per call by
# default; 256 KiB-1 MiB cut the per-byte overhead of a relay by ~25 % here.
READ_SIZE = 1 << 20


def abort_client(request) -> None:
    """Drop a client's connection without ending the response: a client must
    never take a truncated or unverified body for a complete one."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None) or getattr(request, "transport", None)
    if transport is not None:
        abort = getattr(transport, "abortConnection", None) or transport.loseConnection
        abort()


def enlarge_reads(transport) -> None:
    """Raise the read size of the TCP connection under a response's transport
    (``TransportProxyProducer`` → the connection, possibly under TLS)."""
    t = getattr(transport, "_producer", None)
    for _ in range(3):
        if t is None:
            return
        if hasattr(t, "bufferSize") and hasattr(t, "doRead"):
            if t.bufferSize < READ_SIZE:
                t.bufferSize = READ_SIZE
            return
        t = getattr(t, "transport", None)


class RelayOutcome:
    """How a relay ended: ``complete`` True only if every byte went out verified."""

    def __init__(self, complete: bool, sent: int, reason: str = "", digest: Optional[str] = None):
        self.complete = complete
        self.sent = sent
        self.reason = reason
        self.digest = digest

    def __repr__(self):
        return f"RelayOutcome(complete={self.complete}, sent={self.sent}, reason={self.reason!r})"


@implementer(IPushProducer)
class _ProducerShim:
    """What the client's request sees as its producer."""

    def __init__(self, relay: "BlobRelay"):
        self.relay = relay

    def pauseProducing(self):
        self.relay.pause("client")

    def resumeProducing(self):
        self.relay.resume("client")

    def stopProducing(self):
        self.relay.abort_upstream()


class BlobRelay(Protocol):
    """``response.deliverBody(BlobRelay(request, ...))``; ``done`` fires with a RelayOutcome.

    ``threads``: a :class:`~zmirror.transfer.threads.TransferThreads` to
    hash on; without one, with none free, or for small bodies hashing is inline.
    """

    def __init__(
        self,
        request: Any,
        clock: Any,
        *,
        expected_digest: Optional[str] = None,
        expected_length: Optional[int] = None,
        idle_timeout: float = 60.0,
        threads: Any = None,
    ):
        self.request = request
        self.clock = clock
        self.expected_digest = expected_digest
        self.expected_length = expected_length
        self.idle_timeout = idle_timeout
        self.done: Deferred = Deferred(lambda _d: self.abort_upstream())
        self.outcome: Optional[RelayOutcome] = None
        self.upstream = None
        self.sent = 0
        self.received = 0
        self._held: Optional[bytes] = None
        self._idle = None
        self._client_gone = False
        self._finished = False
        self._pausers: set[str] = set()
        self._gone_waiters: list[Callable[[], None]] = []
        self._shim = _ProducerShim(self)
        self.hasher = None
        self.worker: Optional[DigestWorker] = None
        algo = expected_digest.split(":", 1)[0] if expected_digest else None
        if algo in ("sha256", "sha512"):
            big = expected_length is None or expected_length >= THREADED_HASH_MIN
            lease = threads.lease(1) if threads is not None and big else None
            if lease is not None:
                self.worker = DigestWorker(algo, lease, on_drained=lambda: self.resume("worker"))
            else:
                self.hasher = hashlib.new(algo)
        request.notifyFinish().addErrback(self._client_lost)

    @property
    def verifying(self) -> bool:
        return self.worker is not None or self.hasher is not None

    # -- flow control -----------------------------------------------------------
    def pause(self, who: str):
        first = not self._pausers
        self._pausers.add(who)
        if first:
            self._cancel_idle()
            if self.upstream is not None:
                self.upstream.pauseProducing()

    def resume(self, who: str):
        if who not in self._pausers:
            return
        self._pausers.discard(who)
        if not self._pausers and not self._finished:
            self._arm_idle()
            if self.upstream is not None:
                self.upstream.resumeProducing()

    # -- upstream side ------------------------------------------------------
    def connectionMade(self):
        self.upstream = self.transport
        enlarge_reads(self.transport)
        if self._client_gone:
            self.transport.stopProducing()
            return
        self.request.registerProducer(self._shim, True)
        self._arm_idle()

    def dataReceived(self, data: bytes):
        if self._client_gone or self._finished:
            return
        self.received += len(data)
        if self._idle is not None:
            self._idle.reset(self.idle_timeout)
        if self.worker is not None:
            if not self.worker.update(data):
                self.pause("worker")
        elif self.hasher is not None:
            self.hasher.update(data)
        if self.verifying:
            held, self._held = self._held, data
            if held is not None:
                self._write(held)
        else:
            self._write(data)

    def _write(self, data: bytes):
        self.sent += len(data)
        self.request.write(data)

    def connectionLost(self, reason):
        self._cancel_idle()
        if self._finished:
            return
        if self._client_gone:
            self._stop_worker()
            self._end(RelayOutcome(False, self.sent, "client disconnected"))
            return
        ok = reason.check(ResponseDone) is not None or (
            reason.check(PotentialDataLoss) is not None and self.expected_length is None
        )
        if not ok:
            self._fail(f"upstream body broken after {self.received} bytes: {failure_text(reason)}"[:300])
        elif self.expected_length is not None and self.received != self.expected_length:
            self._fail(f"upstream sent {self.received} of {self.expected_length} bytes")
        elif self.worker is not None:
            self._finished = True  # no more upstream data; wait for the worker
            self.worker.finish().addCallback(self._verify)
        elif self.hasher is not None:
            self._verify(f"{self.expected_digest.split(':')[0]}:{self.hasher.hexdigest()}")
        else:
            self._succeed(None)

    def _verify(self, digest: str):
        if self._client_gone:
            self._end(RelayOutcome(False, self.sent, "client disconnected"))
        elif self.worker is not None and self.worker.error is not None:
            # the tee failed (e.g. disk full): the client may still get its bytes
            log.warn("blob tee failed: {e}", e=self.worker.error)
            self._succeed(digest)
        elif digest != self.expected_digest:
            self._fail(f"digest mismatch: upstream content hashed to {digest}", digest)
        else:
            self._succeed(digest)

    def _succeed(self, digest: Optional[str]):
        if self._held is not None:
            self._write(self._held)
            self._held = None
        self._unregister()
        self._end(RelayOutcome(True, self.sent, digest=digest))

    def _fail(self, why: str, digest: Optional[str] = None):
        log.warn("aborting client transfer: {why}", why=why)
        self._stop_worker()
        self._unregister()
        self._abort_client()
        self._end(RelayOutcome(False, self.sent, why, digest))

    def _stop_worker(self):
        if self.worker is not None:
            self.worker.abort()

    # -- client side ----------------------------------------------------------
    def _client_lost(self, _failure):
        self._client_gone = True
        self.abort_upstream()
        waiters, self._gone_waiters = self._gone_waiters, []
        for w in waiters:
            w()
        return None

    def abort_upstream(self):
        self._cancel_idle()
        if self.upstream is not None and not self._finished:
            try:
                self.upstream.stopProducing()
            except Exception:
                pass

    def _abort_client(self):
        abort_client(self.request)

    def _unregister(self):
        if self._client_gone:
            return
        try:
            self.request.unregisterProducer()
        except Exception:
            pass

    def _end(self, outcome: RelayOutcome):
        self._finished = True
        if outcome.complete or self._client_gone:
            self._fire(outcome)
        else:
            # Fire once the client connection is really gone, so the web layer
            # never finishes the response as if it were complete.
            self._gone_waiters.append(lambda: self._fire(outcome))

    def _fire(self, outcome: RelayOutcome):
        self.outcome = outcome
        if not self.done.called:  # it may have been cancelled by the web layer
            self.done.callback(outcome)

    # -- idle timer -----------------------------------------------------------
    def _arm_idle(self):
        if not self.idle_timeout or self._finished:
            return
        if self._idle is None:
            self._idle = self.clock.callLater(self.idle_timeout, self._idle_fired)
        else:
            self._idle.reset(self.idle_timeout)

    def _cancel_idle(self):
        if self._idle is not None:
            if self._idle.active():
                self._idle.cancel()
            self._idle = None

    def _idle_fired(self):
        self._idle = None
        log.warn("upstream sent nothing for {t}s; aborting transfer", t=self.idle_timeout)
        self.abort_upstream()


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

    def __init__(self, request, download: Any = None, *, path: Optional[Path] = None,
                 file=None, size: Optional[int] = None, start: int = 0, end: Optional[int] = None,
                 on_close: Optional[Callable[[], None]] = None,
                 on_sent: Optional[Callable[[int], None]] = None, reactor: Any = None):
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
        self.on_sent = on_sent  # on_sent(n): n more bytes went out (the cache counts them)
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
            if self.on_sent is not None:
                self.on_sent(n)
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
                    if self.on_sent is not None:
                        self.on_sent(len(data))
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


# -- bodies ------------------------------------------------------------------------

def _start_response(request, status: int, headers: dict) -> None:
    request.setResponseCode(status)
    for k, v in headers.items():
        request.setHeader(k, v)


@implementer(IBlobBody)
@dataclass
class FileBody:
    """A cached blob served from its open file (``file`` None: a HEAD, no body)."""

    status: int
    headers: dict
    file: Any
    size: int
    start: int = 0
    end: Optional[int] = None
    on_close: Optional[Callable[[], None]] = None
    on_sent: Optional[Callable[[int], None]] = None
    reactor: Any = None
    verified: bool = True

    async def send(self, request):
        _start_response(request, self.status, self.headers)
        if self.file is None:
            return b""
        producer = FollowerProducer(request, file=self.file, size=self.size, start=self.start,
                                    end=self.end, on_close=self.on_close, on_sent=self.on_sent,
                                    reactor=self.reactor)
        await producer.begin()
        return None


@implementer(IBlobBody)
@dataclass
class DownloadBody:
    """A blob read from a (possibly still running) cache download: the
    follower comes from ``download.follow`` (the cache counts its bytes)."""

    status: int
    headers: dict
    download: Any
    start: int
    end: Optional[int]
    verified: bool = True
    record: Any = None  # access-log record: told which upstreams sent the blob

    async def send(self, request):
        _start_response(request, self.status, self.headers)
        try:
            await self.download.follow(request, self.start, self.end).begin()
        finally:
            note_sources(self.record, self.download)
        return None


def note_sources(record: Any, body: Any) -> None:
    """Tell an access-log record which upstreams sent a blob (``upstreams``
    of a resumed body or download, comma-separated) and how often it was resumed."""
    if record is None:
        return
    names = getattr(body, "upstreams", None)
    if names:
        record.upstream = ",".join(names)
    resumes = getattr(body, "resumes", 0)
    if resumes:
        record.resumes = resumes


@implementer(IBlobBody)
@dataclass
class RelayBody:
    """An upstream's blob response relayed as it arrives (:class:`BlobRelay`).
    ``expected_digest`` None: a range, which cannot be checked (``verified``
    False)."""

    status: int
    headers: dict
    response: Any
    clock: Any
    expected_digest: Optional[str]
    expected_length: Optional[int]
    idle_timeout: float
    threads: Any = None  # TransferThreads to hash on (else inline)
    record: Any = None  # access-log record: told which upstreams sent the body

    @property
    def verified(self) -> bool:
        return self.expected_digest is not None

    async def send(self, request):
        _start_response(request, self.status, self.headers)
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
        try:
            await relay.done  # cancelling this aborts the upstream transfer
        finally:
            note_sources(self.record, self.response)
        return None


__all__ = ["IBlobBody", "IBlobSource", "BlobInfo", "FileBody", "DownloadBody", "RelayBody",
           "BlobRelay", "RelayOutcome", "FollowerProducer", "abort_client", "enlarge_reads",
           "blob_content_type", "resolve_range", "range_headers", "single_range", "UNSATISFIABLE"]
