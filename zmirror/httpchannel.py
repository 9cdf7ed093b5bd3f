"""The HTTP channel and site of the wired app: TLS probe answer, request body limits
(:mod:`zmirror.bodylimits`), request read deadline, header limits, absolute-form
targets, reason phrases and the connection cap."""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Iterable, Optional

from twisted.internet.protocol import Protocol
from twisted.web.http import RESPONSES, HTTPChannel, datetimeToString
from twisted.web.server import Request, Site, version as server_version

from zmirror.bodylimits import Area, BodyLimits

# --- request bodies --------------------------------------------------------------
#
# The pull API takes no request bodies; only /token (a form) and /api (JSON) do, and
# those are small (zmirror.bodylimits: the caps and error formats per path, given by
# the wiring).  A refused request's connection is closed; the rest of its body is
# never stored.
#
# After a refusal, up to this much of the unread body is read and dropped (for at most
# LINGER_SECONDS) after the answer is sent, so that a client still sending sees the
# answer instead of a connection reset -- the same idea as Go's net/http.
LINGER_BYTES = 256 * 1024
LINGER_SECONDS = 2.0

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

    It also enforces the request body limits of its site
    (:class:`~zmirror.bodylimits.BodyLimits`); use it with :class:`LimitedRequest`
    as the site's request factory."""

    _checked = False
    bytes_received = 0  # everything read from the connection, for tests and limits
    _body_cap: Optional[int] = None  # set while a chunked body on a capped path arrives
    _body_seen = 0
    _discarding = False  # a refusal was answered: drop what still comes
    _lingered = 0
    _linger_call = None
    read_timeout: Optional[float] = READ_TIMEOUT  # set by LimitedSite
    limits: BodyLimits = BodyLimits()  # set by LimitedSite
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

    def _area(self) -> Area:
        # _path is set from the request line until it is handed over
        return self.limits.area(getattr(self, "_path", None))

    def _answer_and_close(self, status: int, message: str) -> None:
        """Answer ``status`` (JSON in the area's format) while no response is being sent,
        and close the connection (lingering as after a body refusal)."""
        _, body, headers = self.limits.answer(self._area(), status, message)
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
            refusal = self.limits.refusal_for(self._command, self._path, self.length)
        if refusal is None:
            self._body_cap = None
            if self.length is None and isinstance(req, LimitedRequest):
                self._count_chunks(req, self.limits.body_cap(self._path)[1])
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
                area = self.limits.area(self._path)
                self._start_refusal(req, self.limits.answer(area, 413,
                                                            f"request body larger than {cap} bytes"))
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
    deadline and body ``limits``, :class:`LimitedRequest`, and at most
    ``max_connections`` open connections (a connection over the cap gets a 503 and is
    closed; ``refused_connections`` counts them).  The channel's ``callLater`` is the
    site's reactor's.  Successful requests to ``quiet_paths`` get no access-log line
    (health checks and scrapes come every few seconds)."""

    protocol = PlainHTTPChannel
    displayTracebacks = False

    def __init__(self, resource, *, limits: Optional[BodyLimits] = None,
                 max_connections: int = MAX_CONNECTIONS,
                 read_timeout: Optional[float] = READ_TIMEOUT,
                 quiet_paths: Iterable[bytes] = (), **kwargs):
        kwargs.setdefault("requestFactory", LimitedRequest)
        super().__init__(resource, **kwargs)
        self.limits = limits if limits is not None else BodyLimits()
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.quiet_paths = frozenset(quiet_paths)
        self.open_connections = 0
        self.refused_connections = 0

    def log(self, request):
        if request.path in self.quiet_paths and request.code < 400:
            return None
        return super().log(request)

    def buildProtocol(self, addr):
        if self.open_connections >= self.max_connections:
            self.refused_connections += 1
            busy = _Busy()
            busy.factory = self
            return busy
        channel = super().buildProtocol(addr)
        channel.read_timeout = self.read_timeout
        channel.limits = self.limits
        return channel


__all__ = ["LimitedRequest", "LimitedSite", "PlainHTTPChannel", "origin_form", "raw_answer",
           "reason_phrase", "LINGER_BYTES", "LINGER_SECONDS", "MAX_CONNECTIONS", "READ_TIMEOUT"]
