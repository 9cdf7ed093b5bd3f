"""The enabled upstreams in priority order (refreshed from the ``registries``
table when it changes, never queried per request), a request to one of them,
and the admin's "test connection" probe (design: docs/design/upstream.md)."""

from __future__ import annotations

import time
from typing import Any, Optional

from twisted.internet.defer import Deferred

from zmirror.httpbody import DRAIN_TIMEOUT
from zmirror.upstream.auth import parse_headers
from zmirror.upstream.client import UpstreamClient
from zmirror.upstream.health import UpstreamHealth
from zmirror.upstream.models import Upstream, UpstreamError


class UpstreamPool:
    """The registry list; requests go through an :class:`UpstreamClient` on
    ``agent``, what they find goes into ``health``.

    ``metrics``: a :class:`zmirror.metrics.Metrics` timing and counting the
    requests, or None.  The other keywords are the client's."""

    def __init__(self, agent: Any, clock: Any, *, health: UpstreamHealth, header_timeout: float = 10.0,
                 body_timeout: Optional[float] = None, connections: Any = None,
                 drain_timeout: float = DRAIN_TIMEOUT, metrics: Any = None):
        self.clock = clock
        self.health = health
        self.metrics = metrics
        self.client = UpstreamClient(agent, clock, header_timeout=header_timeout, body_timeout=body_timeout,
                                     connections=connections, drain_timeout=drain_timeout)
        self.upstreams: list[Upstream] = []
        self.namespaces: frozenset = frozenset()  # of every registries row (set_registries)

    # -- the registry list -------------------------------------------------------

    def set_registries(self, rows: list[dict]) -> None:
        """Replace the upstream list from ``registries`` rows (keeps health by id)."""
        ups = []
        for r in rows:
            if not r.get("enabled", True):
                continue
            uid = int(r["id"])
            ups.append(Upstream(
                id=uid, name=r.get("name") or r["url"], url=str(r["url"]).rstrip("/"),
                priority=int(r.get("priority", 100)), enabled=True,
                username=r.get("username") or "", password=r.get("password") or "",
                health=self.health.record_of(uid), namespace=r.get("namespace") or "docker.io",
            ))
        ups.sort(key=lambda u: (u.priority, u.id))
        self.upstreams = ups
        # every configured namespace, enabled upstreams or not (the routing table's path prefixes)
        self.namespaces = frozenset(r.get("namespace") or "docker.io" for r in rows)
        self.health.set_upstreams(ups, [int(r["id"]) for r in rows])

    def candidates(self, namespace: Optional[str] = None, *, counted: bool = False) -> list[Upstream]:
        """The upstreams of ``namespace`` (None: all) to try, in order
        (:meth:`UpstreamHealth.candidates`)."""
        return self.health.candidates(self._of(namespace), counted=counted)

    def rate_limited(self, namespace: Optional[str] = None, *,
                     counted: bool = False) -> list[tuple[Upstream, float]]:
        """The upstreams of ``namespace`` :meth:`candidates` leaves out for this
        kind of request, and the seconds left of their rate-limit cool-down."""
        return self.health.rate_limited(self._of(namespace), counted=counted)

    def _of(self, namespace: Optional[str]) -> list[Upstream]:
        if namespace is None:
            return self.upstreams
        return [u for u in self.upstreams if u.namespace == namespace]

    # -- requests ----------------------------------------------------------------

    async def request(self, up: Upstream, method: bytes, path: str, *, headers: Optional[dict] = None,
                      scope: Optional[str] = None):
        """:meth:`UpstreamClient.request`, timed and counted when metrics are configured."""
        d = self.client.request(up, method, path, headers=headers, scope=scope)
        if self.metrics is None:
            return await d
        return await self.metrics.time_upstream(up.name, self.clock, d)

    def discard(self, response) -> "Deferred[bool]":
        """:meth:`UpstreamClient.discard`: an unwanted body read (small) or cut off."""
        return self.client.discard(response)

    async def close(self) -> None:
        """:meth:`UpstreamClient.close` (shutdown, tests)."""
        await self.client.close()

    async def probe(self, row: dict) -> dict:
        """Reachability and auth of ``/v2/`` for the admin's "test connection"."""
        up = Upstream(id=int(row.get("id") or 0), name=row.get("name") or "", url=str(row["url"]).rstrip("/"),
                      username=row.get("username") or "", password=row.get("password") or "")
        client = self.client
        started = time.monotonic()
        out: dict = {"ok": False, "status": None, "latency_ms": None, "auth": "none", "error": None}
        try:
            resp = await client.send(up, b"GET", up.url + "/v2/", {}, None)
            if resp.code == 401:
                challenges = parse_headers(resp.headers.getRawHeaders(b"www-authenticate"))
                schemes = {c.scheme for c in challenges}
                out["auth"] = "bearer" if "bearer" in schemes else "basic" if "basic" in schemes else "unknown"
                auth = await client.answer_challenge(up, challenges, None)
                client.discard(resp)
                if auth is not None:
                    resp = await client.send(up, b"GET", up.url + "/v2/", {}, auth)
            out["status"] = resp.code
            out["ok"] = resp.code == 200
            if not out["ok"]:
                out["error"] = f"/v2/ answered {resp.code}"
            client.discard(resp)
        except UpstreamError as e:
            out["error"] = str(e)
        out["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
        return out


__all__ = ["UpstreamPool"]
