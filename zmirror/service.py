"""Small services used by the wiring: the top service, DB lifecycle, callbacks, and the
graceful drain of in-flight requests."""

from __future__ import annotations

from typing import Any, Iterable, Optional
from urllib.parse import unquote_to_bytes

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

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


class ZMirrorService(SequentialMultiService):
    """The top service: ``services`` in the order they start (they stop in reverse),
    the built ``components`` (:class:`zmirror.wiring.Components`) they come from, and
    the log observer it gives the twistd application (:mod:`zmirror.logsetup`)."""

    def __init__(self, components: Any, services: Iterable[IService], *,
                 log_observer: Optional[Any] = None):
        super().__init__()
        self.components = components
        self.log_observer = log_observer
        for svc in services:
            svc.setServiceParent(self)

    def setServiceParent(self, parent):
        if (self.log_observer is not None and isinstance(parent, Componentized)
                and parent.getComponent(ILogObserver, None) is None):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)


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
