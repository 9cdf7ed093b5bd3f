"""Streams an upstream response body to the client with backpressure.

The upstream connection's transport (an ``IPushProducer``) is registered, via
a thin wrapper, as the producer of the client's request: when the client's
socket buffer fills, Twisted pauses the upstream read, so memory stays flat
whatever the blob size.

Integrity: when the full blob is sent (no Range) its sha256 is computed on the
fly and the last chunk is held back until the upstream body has ended and the
digest matched.  A mismatch or a truncated upstream body aborts the client
connection, so a client never sees a short or corrupt body end as if complete.

Timeouts: an idle timer (no bytes from upstream for ``idle_timeout`` s while
the client is not the one holding us back) aborts both sides.  The client going
away stops the upstream transfer.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

log = Logger()


class RelayOutcome:
    """How a relay ended: ``complete`` True only if every byte went out verified."""

    def __init__(self, complete: bool, sent: int, reason: str = ""):
        self.complete = complete
        self.sent = sent
        self.reason = reason

    def __repr__(self):
        return f"RelayOutcome(complete={self.complete}, sent={self.sent}, reason={self.reason!r})"


@implementer(IPushProducer)
class _ProducerShim:
    """Forwards the consumer's flow control to the upstream transport and
    remembers whether the client is the one pausing us (for the idle timer)."""

    def __init__(self, relay: "BlobRelay"):
        self.relay = relay
        self.paused = False

    def pauseProducing(self):
        self.paused = True
        self.relay._pause_idle()
        if self.relay.upstream is not None:
            self.relay.upstream.pauseProducing()

    def resumeProducing(self):
        self.paused = False
        self.relay._arm_idle()
        if self.relay.upstream is not None:
            self.relay.upstream.resumeProducing()

    def stopProducing(self):
        self.relay.abort_upstream()


class BlobRelay(Protocol):
    """``response.deliverBody(BlobRelay(request, ...))``; ``done`` fires with a RelayOutcome.

    ``sinks`` are extra callables fed every chunk (e.g. a cache file tee);
    ``on_end(outcome)`` runs before ``done`` fires.
    """

    def __init__(
        self,
        request: Any,
        clock: Any,
        *,
        expected_digest: Optional[str] = None,
        expected_length: Optional[int] = None,
        idle_timeout: float = 60.0,
        sinks: tuple[Callable[[bytes], None], ...] = (),
    ):
        self.request = request
        self.clock = clock
        self.expected_digest = expected_digest
        self.expected_length = expected_length
        self.idle_timeout = idle_timeout
        self.sinks = sinks
        self.hasher = hashlib.sha256() if expected_digest and expected_digest.startswith("sha256:") else None
        if expected_digest and expected_digest.startswith("sha512:"):
            self.hasher = hashlib.sha512()
        self.done: Deferred = Deferred(lambda _d: self.abort_upstream())
        self.outcome: Optional[RelayOutcome] = None
        self.upstream = None
        self.sent = 0
        self.received = 0
        self._held: Optional[bytes] = None
        self._idle = None
        self._client_gone = False
        self._finished = False
        self._shim = _ProducerShim(self)
        self._gone_waiters: list[Callable[[], None]] = []
        request.notifyFinish().addErrback(self._client_lost)

    # -- upstream side ------------------------------------------------------
    def connectionMade(self):
        self.upstream = self.transport
        if self._client_gone:
            self.transport.stopProducing()
            return
        self.request.registerProducer(self._shim, True)
        self._arm_idle()

    def dataReceived(self, data: bytes):
        if self._client_gone:
            return
        self.received += len(data)
        if self.hasher is not None:
            self.hasher.update(data)
        for sink in self.sinks:
            sink(data)
        if self._idle is not None and not self._shim.paused:
            self._idle.reset(self.idle_timeout)
        if self.hasher is not None:
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
            self._end(RelayOutcome(False, self.sent, "client disconnected"))
            return
        ok = reason.check(ResponseDone) is not None or (
            reason.check(PotentialDataLoss) is not None and self.expected_length is None
        )
        why = ""
        if not ok:
            why = f"upstream body broken after {self.received} bytes: {reason.getErrorMessage()}"[:300]
        elif self.expected_length is not None and self.received != self.expected_length:
            ok, why = False, f"upstream sent {self.received} of {self.expected_length} bytes"
        elif self.hasher is not None:
            got = f"{self.expected_digest.split(':')[0]}:{self.hasher.hexdigest()}"
            if got != self.expected_digest:
                ok, why = False, f"digest mismatch: upstream content hashed to {got}"
        if ok:
            if self._held is not None:
                self._write(self._held)
                self._held = None
            self._unregister()
            self._end(RelayOutcome(True, self.sent))
        else:
            log.warn("aborting client transfer: {why}", why=why)
            self._unregister()
            self._abort_client()
            self._end(RelayOutcome(False, self.sent, why))

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
        if self.upstream is not None:
            try:
                self.upstream.stopProducing()
            except Exception:
                pass

    def _abort_client(self):
        transport = getattr(self.request, "channel", None) and self.request.channel.transport
        if transport is None:
            transport = getattr(self.request, "transport", None)
        if transport is not None:
            abort = getattr(transport, "abortConnection", None) or transport.loseConnection
            abort()

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
        if self.idle_timeout and self._idle is None and not self._finished:
            self._idle = self.clock.callLater(self.idle_timeout, self._idle_fired)
        elif self._idle is not None:
            self._idle.reset(self.idle_timeout)

    def _pause_idle(self):
        self._cancel_idle()

    def _cancel_idle(self):
        if self._idle is not None:
            if self._idle.active():
                self._idle.cancel()
            self._idle = None

    def _idle_fired(self):
        self._idle = None
        log.warn("upstream sent nothing for {t}s; aborting transfer", t=self.idle_timeout)
        self.abort_upstream()
