"""One pooled connection opened to each enabled upstream once the service runs
(and to each upstream added later), so the first pull's blob does not also pay
for a new connection: its TLS context, handshake and a fresh process's first
request (design: docs/design/upstream.md, "TLS and egress").  The request is a
``GET /v2/`` (Docker Hub does not count it); its answer, whatever it is, is
read and the connection goes back to the pool.  Failures are left to the real
requests to find and report: this changes no health."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

log = Logger()


class UpstreamWarmup:
    """``pool``: the :class:`~zmirror.upstream.pool.UpstreamPool` whose
    upstreams are warmed; :meth:`registries_changed` is subscribed to the
    registries store (it acts only between :meth:`start` and :meth:`stop`)."""

    def __init__(self, pool: Any):
        self.pool = pool
        self.running = False
        self._done: set = set()  # (id, url) of the upstreams a connection was opened to
        self._pending: set = set()

    def start(self) -> None:
        self.running = True
        self.registries_changed()

    def stop(self) -> None:
        self.running = False
        for d in list(self._pending):
            d.cancel()

    def registries_changed(self, _rows: Any = None) -> None:
        if not self.running:
            return
        for up in list(self.pool.upstreams):
            key = (up.id, up.url)
            if key in self._done:
                continue
            self._done.add(key)
            d = Deferred.fromCoroutine(self._open(up))
            self._pending.add(d)
            d.addBoth(lambda _r, d=d: self._pending.discard(d))

    async def _open(self, up: Any) -> None:
        try:
            resp = await self.pool.client.send(up, b"GET", up.url + "/v2/", {}, None)
        except CancelledError:
            return
        except Exception as e:  # the real requests meet it again and report it
            log.debug("warm-up of {name} failed: {e}", name=up.name, e=e)
            return
        await self.pool.discard(resp)


__all__ = ["UpstreamWarmup"]
