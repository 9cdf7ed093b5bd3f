"""Small services used by the wiring: DB lifecycle, graceful drain, the HTTP channel
(TLS probe answer, request body limits)."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any, Optional
from urllib.parse import unquote_to_bytes

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, version as server_version
from zope.interface import implementer

from zmirror.admin import validate as admin_validate
from zmirror.auth import tokenservice
from zmirror.registry.errors import API_VERSION_HEADER, RegistryError

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
        code = "UNSUPPORTED" if status == 405 else "SIZE_INVALID"
        err = RegistryError(code, message, status=status)
        headers.append(API_VERSION_HEADER)
        return status, err.body(), headers
    if area == "token":
        body = {"error": "invalid_request", "error_description": message, "details": message}
    elif area == "api":
        body = {"error": message, "fields": {}}
    else:
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


class LimitedRequest(Request):
    """A :class:`Request` that answers a refusal decided by :class:`PlainHTTPChannel`
    instead of routing, and keeps a body the channel has bounded in memory."""

    zmirror_refusal = None

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
        return super().dataReceived(data)

    def rawDataReceived(self, data):
        # LineReceiver hands the rest of a buffer here after a refusal switched modes
        if self._discarding:
            return self._discard(data)
        return super().rawDataReceived(data)

    def allHeadersReceived(self):
        req = self.requests[-1]
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
        return super()._respondToBadRequestAndDisconnect()

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
        return super().connectionLost(reason)


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
