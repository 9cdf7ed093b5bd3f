"""The relay: an upstream's blob response sent on to a client as it arrives,
with backpressure, an idle timeout, the digest checked and the last byte held
back until it matched (see docs/design/transfer.md)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from zmirror.httpbody import failure_text
from zmirror.transfer.bodies import note_sources, start_response
from zmirror.transfer.connections import abort_client, enlarge_reads
from zmirror.transfer.interfaces import IBlobBody
from zmirror.transfer.threads import DigestWorker

log = Logger()

# Below this size hashing inline is cheaper than starting a thread.
THREADED_HASH_MIN = 4 << 20


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
        start_response(request, self.status, self.headers)
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
