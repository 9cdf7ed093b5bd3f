"""Response bodies we do not stream: drain an unwanted one so its connection is
reused, read a small one within a size and a deadline, and name a failure in
one readable line for logs."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH

# An unwanted body (a 401 before the token retry, a 404, a 5xx, a redirect) is
# read to its end when it is small, so its connection goes back to the pool
# instead of costing the next request a new connection (and TLS handshake).
DRAIN_LIMIT = 64 * 1024  # bytes: a larger (or unannounced) body is cut off
DRAIN_TIMEOUT = 5.0  # seconds to finish reading it; then it is cut off


class _BodyReader(Protocol):
    """Reads a response body of at most ``limit`` bytes and fires ``finished``
    (the Deferred :func:`_read_body` returns) when it is done or cut off.
    Subclasses say what a timeout (``timed_out``) and a ``deliverBody`` that
    raises (``not_delivered``) mean."""

    def __init__(self, limit: int, finished: Deferred):
        self.limit = limit
        self.finished = finished
        self.size = 0

    def close(self) -> None:
        """Stop reading and close the connection (a no-op once the response is
        complete: the pool owns the connection then)."""
        transport = self.transport
        if transport is not None:
            try:
                transport.stopProducing()
            except Exception:
                pass


def _read_body(response, reader_class: type[_BodyReader], limit: int, clock: Any,
               timeout: float) -> Deferred:
    """Deliver ``response``'s body to a ``reader_class(limit, finished)`` and
    return ``finished``.  Cancelling it errbacks CancelledError and closes the
    connection; after ``timeout`` seconds the reader's ``timed_out(timeout)``
    decides, and a ``deliverBody`` that raises goes to its ``not_delivered``."""

    def cancel(d: Deferred) -> None:
        d.errback(CancelledError())  # first: closing may report a lost connection at once
        reader.close()

    finished: Deferred = Deferred(cancel)
    reader = reader_class(limit, finished)
    timer = clock.callLater(timeout, reader.timed_out, timeout)

    def done(result):
        if timer.active():
            timer.cancel()
        return result

    finished.addBoth(done)
    try:
        response.deliverBody(reader)
    except Exception as e:
        if not finished.called:
            reader.not_delivered(e)
    return finished


class _Drain(_BodyReader):
    """Reads an unwanted body to its end (bounded); fires ``finished`` with
    True when it ended cleanly (the connection went back to the pool), False
    when it was cut off.  Never errbacks except when cancelled."""

    def abort(self) -> None:
        if not self.finished.called:
            self.finished.callback(False)
        self.close()

    def timed_out(self, timeout: float) -> None:
        self.abort()

    def not_delivered(self, error: Exception) -> None:
        self.finished.callback(False)

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.abort()

    def connectionLost(self, reason) -> None:
        from twisted.web.client import ResponseDone

        if not self.finished.called:
            self.finished.callback(reason.check(ResponseDone) is not None)


class _Abort(Protocol):
    """Cuts off a response body we do not want (closes that connection)."""

    def connectionMade(self):
        self.transport.stopProducing()


def discard(response, clock: Any = None, *, limit: int = DRAIN_LIMIT,
            timeout: float = DRAIN_TIMEOUT) -> "Deferred[bool]":
    """Get rid of a response body we do not want.

    With a ``clock``, a body whose announced Content-Length is at most
    ``limit`` is read to its end within ``timeout`` seconds so that the
    connection is reused; a larger body, one of unknown length (a blob), or
    one that is not complete in time is cut off (its connection closed).
    Without a clock it is always cut off.  HEAD answers and 204/304 have no
    body: Twisted already gave their connection back to the pool.

    The returned Deferred fires with True when the body was read to its end,
    False when it was cut off; callers may ignore it.
    """
    length = getattr(response, "length", UNKNOWN_LENGTH)
    if clock is None or length is UNKNOWN_LENGTH or not isinstance(length, int) or length > limit:
        try:
            response.deliverBody(_Abort())
        except Exception:
            pass
        return succeed(False)
    return _read_body(response, _Drain, limit, clock, timeout)


class BodyError(Exception):
    """A small body that could not be read: too large, broken off or not
    complete in time (:func:`read_limited`)."""


class _LimitedReader(_BodyReader):
    def __init__(self, limit: int, finished: Deferred):
        super().__init__(limit, finished)
        self.chunks: list[bytes] = []

    def timed_out(self, timeout: float) -> None:
        if not self.finished.called:
            self.finished.errback(BodyError(f"body not complete within {timeout:g}s"))
            self.close()

    def not_delivered(self, error: Exception) -> None:
        self.finished.errback(BodyError(f"body read failed: {error.__class__.__name__}"))

    def dataReceived(self, data: bytes):
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.finished.errback(BodyError(f"response larger than {self.limit} bytes"))
            self.close()
            return
        self.chunks.append(data)

    def connectionLost(self, reason):
        if self.finished.called:
            return
        from twisted.web.client import PotentialDataLoss, ResponseDone
        from twisted.web.http import PotentialDataLoss as PDL2

        if reason.check(ResponseDone, PotentialDataLoss, PDL2):
            self.finished.callback(b"".join(self.chunks))
        else:
            self.finished.errback(BodyError(f"body read failed: {reason.value}"[:300]))


def read_limited(response, limit: int, timeout: float, clock: Any) -> "Deferred[bytes]":
    """Read a small body (manifest, token, tags list) with a size cap and a deadline.

    Errbacks with :class:`BodyError` when the body is too large, breaks off or
    is not complete within ``timeout`` seconds; then (and when the returned
    Deferred is cancelled: our client went away, CancelledError) the connection
    is closed, so a stalled upstream holds nothing.
    """
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        discard(response)
        return fail(BodyError(f"response of {response.length} bytes is over the {limit} byte limit"))
    return _read_body(response, _LimitedReader, limit, clock, timeout)


def failure_text(reason: Any) -> str:
    """A readable one-line reason for a Failure or exception, for logs.

    Twisted's ``ResponseFailed`` / ``RequestTransmissionFailed`` carry a list
    of Failures whose ``str`` is ``[<twisted.python.failure.Failure ...>]``;
    this names each wrapped error instead (``ConnectionLost: ...; _DataLoss``).
    """
    value = reason.value if isinstance(reason, Failure) else reason
    reasons = getattr(value, "reasons", None)
    if isinstance(reasons, (list, tuple)) and reasons:
        return "; ".join(failure_text(r) for r in reasons)
    name = type(value).__name__
    message = str(value).strip()
    return f"{name}: {message}" if message else name


__all__ = ["BodyError", "DRAIN_LIMIT", "DRAIN_TIMEOUT", "discard", "failure_text", "read_limited"]
