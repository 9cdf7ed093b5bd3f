"""Small services used by the wiring: DB lifecycle, graceful drain, the HTTP channel
(TLS probe answer, request body limits, request read deadline, header limits, absolute-form
targets, reason phrases) and the site (connection cap)."""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Any, Optional
from urllib.parse import unquote_to_bytes

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import RESPONSES, HTTPChannel, datetimeToString
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site, version as server_version
from zope.interface import implementer

from zmirror.admin import validate as admin_validate
from zmirror.auth import tokenservice
from zmirror.oci.errors import API_VERSION_HEADER, RegistryError

log = Logger()


class SequentialMultiService(MultiService):
    """Stops its children one after another, in reverse order, each waiting
    for the previous one: the port stops accepting, in-flight requests drain,
    the access-log queue and cache index are written, and only then does the
    database close.  (``MultiService`` stops them all at once.)"""

    def stopService(self):
        Service.stopService(self)
        children = list(self)[::-1]

        async def stop_all():
            for child in children:
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    log.failure("stopping {child} failed", child=child)

        return Deferred.fromCoroutine(stop_all())


# --- request bodies --------------------------------------------------------------
#
# The pull API takes no request bodies; only /token (a form) and /api (JSON) do, and
# those are small.  The channel decides from the request head alone, before a byte of
# the body is read (and before ``100 Continue`` is sent): a body where none is taken is
# refused, an announced Content-Length over the cap is refused, and a chunked body is
# counted as it arrives and refused the moment it passes the cap.  A refused request's
# connection is closed; the rest of its body is never stored.

TOKEN_MAX_BODY = tokenservice.MAX_BODY  # 8 KiB: one constant, also checked by the service
API_MAX_BODY = admin_validate.MAX_BODY  # 64 KiB
# After a refusal, up to this much of the unread body is read and dropped (for at most
# LINGER_SECONDS) after the answer is sent, so that a client still sending sees the
# answer instead of a connection reset -- the same idea as Go's net/http.
LINGER_BYTES = 256 * 1024
LINGER_SECONDS = 2.0

_READ_METHODS = (b"GET", b"HEAD")

# Reason phrases Twisted's ``http.RESPONSES`` lacks (it would send "Unknown Status").
_MORE_REASONS = {
    421: b"Misdirected Request",
    422: b"Unprocessable Content",
    425: b"Too Early",
    426: b"Upgrade Required",
    428: b"Precondition Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    451: b"Unavailable For Legal Reasons",
}


def reason_phrase(code: int) -> bytes:
    """The reason phrase sent with status ``code`` (one table for every answer)."""
    return _MORE_REASONS.get(code) or RESPONSES.get(code) or b"Unknown Status"


# registry error code of an answer the channel gives on /v2 without routing
_V2_CODES = {405: "UNSUPPORTED", 413: "SIZE_INVALID", 429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}


def body_cap(path: bytes) -> tuple[str, int]:
    """``(area, cap)`` for a request target: the area decides the error format
    (``"v2"``, ``"token"``, ``"api"``, ``"other"``), cap is the largest body taken.

    Decided on the percent-decoded path, the way the router sees it; any spelling
    that is not exactly /token or /api gets the strictest cap (no body)."""
    decoded = unquote_to_bytes(path.split(b"?", 1)[0])
    if decoded == b"/v2" or decoded.startswith(b"/v2/"):
        return "v2", 0
    if decoded == b"/token":
        return "token", TOKEN_MAX_BODY
    if decoded == b"/api" or decoded.startswith(b"/api/"):
        return "api", API_MAX_BODY
    return "other", 0


def _refusal(area: str, status: int, message: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    headers = [(b"Content-Type", b"application/json; charset=utf-8"),
               (b"Cache-Control", b"no-store")]
    if status == 405:
        headers.append((b"Allow", b"GET, HEAD"))
    if area == "v2":
        err = RegistryError(_V2_CODES.get(status, "BAD_REQUEST"), message, status=status)
        headers.append(API_VERSION_HEADER)
        return status, err.body(), headers
    if area == "token":
        body = {"error": "invalid_request", "error_description": message, "details": message}
    elif area == "api":
        body = {"error": message, "fields": {}}
    else:  # also before the request line is read: no path, no area
        body = {"error": message}
    return status, json.dumps(body).encode(), headers


def refusal_for(method: bytes, path: bytes, length: Optional[int]):
    """The answer to a request head whose body must not be read, or None.

    ``length`` is the announced Content-Length (0 for no body, None for chunked)."""
    area, cap = body_cap(path)
    if length == 0 or (length is not None and length <= cap) or (length is None and cap):
        return None
    if cap == 0:
        if method not in _READ_METHODS:
            return _refusal(area, 405, "this is a pull-only proxy" if area == "v2"
                            else "method not allowed")
        return _refusal(area, 413, "this endpoint takes no request body")
    return _refusal(area, 413, f"request body larger than {cap} bytes")


# --- request heads and connections ---------------------------------------------------
#
# Twisted's own idle timeout (60 s) is reset by every byte, so a client sending one header
# line every 45 s would hold its connection for ever (slowloris).  The channel gives every
# request a deadline instead: its head and body (bodies are at most 64 KiB) must arrive
# within ``read_timeout`` seconds of its first byte, on each request of a keep-alive
# connection; past it the answer is 408 and the connection is closed.  The site caps the
# open connections; one over the cap is answered 503 and closed at once.

READ_TIMEOUT = 20.0  # default of [server] read_timeout
MAX_CONNECTIONS = 1000  # default of [server] max_connections

# An absolute-form request target (RFC 9112 3.2.2): routed by its path; its authority
# replaces the Host header (as the RFC asks), it is never connected to.
_ABSOLUTE_FORM = re.compile(rb"\A(?i:https?)://([^/?#\s@]+)([/?][^#\s]*)?\Z")


def origin_form(target: bytes) -> tuple[bytes, Optional[bytes]]:
    """``(path-and-query, authority)`` of an absolute-form target, or ``(target, None)``."""
    m = _ABSOLUTE_FORM.match(target)
    if m is None:
        return target, None
    rest = m.group(2) or b""
    return (rest if rest.startswith(b"/") else b"/" + rest), m.group(1)


def raw_answer(status: int, body: bytes, headers) -> bytes:
    """A complete ``Connection: close`` response, for answers given without a Request."""
    lines = [b"HTTP/1.1 %d %s" % (status, reason_phrase(status)),
             b"Server: " + server_version, b"Date: " + datetimeToString()]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class LimitedRequest(Request):
    """A :class:`Request` that answers a refusal decided by :class:`PlainHTTPChannel`
    instead of routing, and keeps a body the channel has bounded in memory."""

    zmirror_refusal = None

    def setResponseCode(self, code, message=None):
        super().setResponseCode(code, message if message is not None else reason_phrase(code))

    def gotLength(self, length):
        if getattr(self.channel, "_body_cap", None) is not None:
            # a chunked body on a capped path: the channel stops it at the cap (<= 64 KiB)
            self.content = BytesIO()
            return
        super().gotLength(length)

    def process(self):
        if self.zmirror_refusal is None:
            return super().process()
        self.site = self.channel.site
        status, body, headers = self.zmirror_refusal
        self.setHeader(b"Server", server_version)
        self.setHeader(b"Date", datetimeToString())
        self.setResponseCode(status)
        for name, value in headers:
            self.setHeader(name, value)
        self.setHeader(b"Connection", b"close")
        self.setHeader(b"Content-Length", str(len(body)).encode())
        self.write(body)
        self.finish()


class PlainHTTPChannel(HTTPChannel):
    """HTTP/1.1 that answers a TLS ClientHello at once with a 400, as Go's
    server does: skopeo and podman probe TLS first on an "insecure" registry
    and fall back to plain HTTP only when the probe is refused promptly.

    It also enforces the request body limits (see :func:`refusal_for`); use it
    with :class:`LimitedRequest` as the site's request factory."""

    _checked = False
    bytes_received = 0  # everything read from the connection, for tests and limits
    _body_cap: Optional[int] = None  # set while a chunked body on a capped path arrives
    _body_seen = 0
    _discarding = False  # a refusal was answered: drop what still comes
    _lingered = 0
    _linger_call = None
    read_timeout: Optional[float] = READ_TIMEOUT  # set by LimitedSite
    _read_call = None  # the deadline of the request being read
    _counted = False  # counted in the site's open connections

    def connectionMade(self):
        site = getattr(self, "site", None)
        if isinstance(site, LimitedSite):
            site.open_connections += 1
            self._counted = True
        return super().connectionMade()

    def dataReceived(self, data):
        self.bytes_received += len(data)
        if self._discarding:
            return self._discard(data)
        if not self._checked and data:
            self._checked = True
            if data[:1] == b"\x16":
                self.transport.write(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n"
                                     b"Connection: close\r\n\r\n"
                                     b"Client sent an HTTPS request to an HTTP server.\n")
                self.transport.loseConnection()
                return
        if data:
            self._start_read_deadline()
        return super().dataReceived(data)

    # --- the read deadline --------------------------------------------------------

    def _start_read_deadline(self) -> None:
        if (self._read_call is None and self.read_timeout and not self._handlingRequest
                and not self._discarding and self.transport is not None):
            self._read_call = self.callLater(self.read_timeout, self._read_timed_out)

    def _cancel_read_deadline(self) -> None:
        call, self._read_call = self._read_call, None
        if call is not None and call.active():
            call.cancel()

    def _read_timed_out(self) -> None:
        self._read_call = None
        if self._handlingRequest or self._discarding or self.transport is None:
            return
        self._answer_and_close(408, "request not received in time")

    def allContentReceived(self):
        self._cancel_read_deadline()
        return super().allContentReceived()

    def requestDone(self, request):
        super().requestDone(request)
        # the next pipelined request, already buffered, starts its own deadline
        if self.persistent and not self._handlingRequest and self._buffer:
            self._start_read_deadline()

    # --- answers without a request -------------------------------------------------

    def _area(self) -> str:
        path = getattr(self, "_path", None)  # set from the request line until it is handed over
        return body_cap(path)[0] if path is not None else "other"

    def _answer_and_close(self, status: int, message: str) -> None:
        """Answer ``status`` (JSON in the area's format) while no response is being sent,
        and close the connection (lingering as after a body refusal)."""
        _, body, headers = _refusal(self._area(), status, message)
        self.transport.write(raw_answer(status, body, headers))
        self._cancel_read_deadline()
        self.persistent = False
        self._discarding = True
        self._body_cap = None
        self.loseConnection()

    def lineReceived(self, line):
        if self._discarding:  # answered: the rest of the buffer is not parsed
            return None
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._header_too_large()
            return None
        return super().lineReceived(line)

    def lineLengthExceeded(self, line):
        if self._discarding:
            return None
        self._header_too_large()
        return None

    def _header_too_large(self) -> None:
        if getattr(self, "_path", None) is None:
            self._answer_and_close(414, f"request line longer than {self.MAX_LENGTH} bytes")
        else:
            self._answer_and_close(431, f"request header fields larger than {self.totalHeadersSize} bytes")

    def headerReceived(self, line):
        if self._receivedHeaderCount >= self.maxHeaders:
            self._answer_and_close(431, f"more than {self.maxHeaders} header fields")
            return False
        return super().headerReceived(line)

    def rawDataReceived(self, data):
        # LineReceiver hands the rest of a buffer here after a refusal switched modes
        if self._discarding:
            return self._discard(data)
        return super().rawDataReceived(data)

    def allHeadersReceived(self):
        req = self.requests[-1]
        path, authority = origin_form(self._path)
        if authority is not None:
            self._path = path
            req.requestHeaders.setRawHeaders(b"Host", [authority])
        refusal = None
        if isinstance(req, LimitedRequest):
            refusal = refusal_for(self._command, self._path, self.length)
        if refusal is None:
            self._body_cap = None
            if self.length is None and isinstance(req, LimitedRequest):
                self._count_chunks(req, body_cap(self._path)[1])
            return super().allHeadersReceived()
        # Refused from the head alone: no 100 Continue, no body read.  lineReceived
        # sees length 0 and hands the request over at once.
        self.length = 0
        self._transferDecoder = None
        self._start_refusal(req, refusal)
        req.gotLength(0)
        return None

    def _count_chunks(self, req, cap: int) -> None:
        """Wrap the chunked decoder's callbacks: count decoded bytes, refuse past the cap."""
        self._body_cap = cap
        self._body_seen = 0
        decoder = self._transferDecoder

        def data(chunk):
            if self._discarding:
                return
            self._body_seen += len(chunk)
            if self._body_seen > cap:
                area, _ = body_cap(self._path)
                self._start_refusal(req, _refusal(area, 413, f"request body larger than {cap} bytes"))
                content, req.content = req.content, BytesIO()
                content.close()
                self.allContentReceived()
                return
            req.handleContentChunk(chunk)

        def finished(rest):
            if self._discarding:
                return
            self._body_cap = None
            self._finishRequestBody(rest)

        decoder.dataCallback = data
        decoder.finishCallback = finished

    def _start_refusal(self, req, refusal) -> None:
        req.zmirror_refusal = refusal
        self.persistent = False
        self._discarding = True
        self._body_cap = None

    def _respondToBadRequestAndDisconnect(self):
        # garbage after a refusal (the chunked decoder still parsing the rest of a buffer)
        # must not add a 400 behind the answer already written
        if self._discarding:
            return
        if self.transport is None:
            return None
        # Twisted's answer has no body and no length; a JSON one instead
        self._answer_and_close(400, "malformed request")

    def _discard(self, data) -> None:
        self._lingered += len(data)
        if self._lingered > LINGER_BYTES:
            self._end_linger()

    def loseConnection(self):
        if not self._discarding or self.transport is None:
            return super().loseConnection()
        # The refusal is written: send it, half-close, and drop a little more of the
        # body so the client can read the answer before the connection goes.
        self._networkProducer.unregisterProducer()
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            return self.transport.loseConnection()
        half_close()
        resume = getattr(self.transport, "resumeProducing", None)
        if resume is not None:
            resume()
        if self._linger_call is None:
            self._linger_call = self.callLater(LINGER_SECONDS, self._end_linger)
        return None

    def _end_linger(self):
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        if self.transport is not None:
            self.transport.abortConnection() if self._lingered > LINGER_BYTES \
                else self.transport.loseConnection()

    def connectionLost(self, reason):
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._cancel_read_deadline()
        if self._counted:
            self._counted = False
            self.site.open_connections -= 1
        return super().connectionLost(reason)


class _Busy(Protocol):
    """A connection over the site's cap: answered 503 at once and closed."""

    def connectionMade(self):
        body = json.dumps({"error": "too many connections"}).encode()
        self.transport.write(raw_answer(503, body, [
            (b"Content-Type", b"application/json; charset=utf-8"),
            (b"Cache-Control", b"no-store"), (b"Retry-After", b"1")]))
        self.transport.loseConnection()


class LimitedSite(Site):
    """The :class:`Site` of the wired app: :class:`PlainHTTPChannel` with its read
    deadline, :class:`LimitedRequest`, and at most ``max_connections`` open connections
    (a connection over the cap gets a 503 and is closed; ``refused_connections`` counts
    them).  The channel's ``callLater`` is the site's reactor's."""

    protocol = PlainHTTPChannel

    def __init__(self, resource, *, max_connections: int = MAX_CONNECTIONS,
                 read_timeout: Optional[float] = READ_TIMEOUT, **kwargs):
        kwargs.setdefault("requestFactory", LimitedRequest)
        super().__init__(resource, **kwargs)
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.open_connections = 0
        self.refused_connections = 0

    def buildProtocol(self, addr):
        if self.open_connections >= self.max_connections:
            self.refused_connections += 1
            busy = _Busy()
            busy.factory = self
            return busy
        channel = super().buildProtocol(addr)
        channel.read_timeout = self.read_timeout
        return channel


class DatabaseService(Service):
    """Starts the adbapi pools with the service and closes them on stop."""

    def __init__(self, db):
        self.db = db

    def startService(self):
        super().startService()
        self.db.start()

    def stopService(self):
        super().stopService()
        self.db.close()


class CallbackService(Service):
    """Runs ``start()`` / ``stop()`` callables (stop may return a Deferred)."""

    def __init__(self, start=None, stop=None):
        self._start, self._stop = start, stop

    def startService(self):
        super().startService()
        if self._start:
            self._start()

    def stopService(self):
        super().stopService()
        if self._stop:
            return self._stop()


@implementer(IResource)
class InflightTracker:
    """Wraps the root resource and counts requests that have not finished."""

    isLeaf = True  # the wrapped Klein resource is a leaf too and routes on the whole path

    def __init__(self, wrapped: Resource):
        self.wrapped = wrapped
        self.inflight = 0
        self._waiters: list[Deferred] = []

    def getChildWithDefault(self, name, request):
        return self.wrapped.getChildWithDefault(name, request)

    def render(self, request):
        self._begin(request)
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            # Klein would answer this with a plain-text 400 and a logged traceback
            body = b'{"error": "request path is not valid UTF-8"}'
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
            request.setHeader(b"Content-Length", str(len(body)).encode())
            return body
        return self.wrapped.render(request)

    def putChild(self, path, child):
        self.wrapped.putChild(path, child)

    def _begin(self, request):
        if getattr(request, "_zmirror_tracked", False):
            return
        request._zmirror_tracked = True
        self.inflight += 1
        request.notifyFinish().addBoth(self._end)

    def _end(self, _):
        self.inflight -= 1
        if self.inflight == 0:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def drained(self) -> Deferred:
        if self.inflight == 0:
            from twisted.internet.defer import succeed

            return succeed(None)
        d = Deferred()
        self._waiters.append(d)
        return d


class DrainService(Service):
    """On stop, waits (at most ``timeout`` s) for in-flight requests to finish.

    Added to the MultiService *before* the listening port, so on shutdown the
    port stops accepting first, then this waits, then the database closes.
    """

    def __init__(self, tracker: InflightTracker, clock: Any, timeout: float = 10.0):
        self.tracker = tracker
        self.clock = clock
        self.timeout = timeout

    def stopService(self):
        super().stopService()
        if self.tracker.inflight == 0:
            return None
        log.info("waiting up to {t}s for {n} in-flight requests", t=self.timeout, n=self.tracker.inflight)
        d = self.tracker.drained()
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=lambda *_: log.warn(
            "shutdown: {n} requests still in flight, closing", n=self.tracker.inflight))
        return d
