"""The enabled upstreams in priority order (refreshed from the ``registries``
table when it changes, never queried per request), a request to one of them,
and the admin's "test connection" probe (design: docs/design/upstream.md)."""

from __future__ import annotations

import time
from typing import Any, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from zmirror.httpbody import DRAIN_TIMEOUT
from zmirror.upstream.auth import parse_headers
from zmirror.upstream.client import UpstreamClient
from zmirror.upstream.health import UpstreamHealth
from zmirror.upstream.models import Upstream, UpstreamError
from zmirror.upstream.tlsconfig import TLSSettings

log = Logger()


def upstream_of(row: dict) -> Upstream:
    """The :class:`Upstream` of a ``registries`` row (or an unsaved registry
    body of the same shape): its credentials, proxy and TLS settings."""
    proxy = row.get("proxy")
    return Upstream(
        id=int(row.get("id") or 0), name=row.get("name") or str(row.get("url") or ""),
        url=str(row["url"]).rstrip("/"), priority=int(row.get("priority", 100)),
        enabled=bool(row.get("enabled", True)),
        username=row.get("username") or "", password=row.get("password") or "",
        namespace=row.get("namespace") or "docker.io",
        proxy=None if proxy is None else str(proxy),
        tls=TLSSettings(ca=row.get("ca") or "", client_cert=row.get("client_cert") or "",
                        client_key=row.get("client_key") or "",
                        verify=bool(row.get("tls_verify", True)),
                        server_name=row.get("server_name") or ""),
    )


class UpstreamPool:
    """The registry list; requests go through an :class:`UpstreamClient` on
    ``agents`` (a :class:`zmirror.upstream.agents.UpstreamAgents`: each
    upstream's requests through the agent of its proxy and TLS settings),
    what they find goes into ``health``.

    ``metrics``: a :class:`zmirror.metrics.Metrics` timing and counting the
    requests, or None.  ``tracer``: the connection steps of the admin's
    probe before ``/v2/`` — an async callable ``(up) -> [{"step", "ok",
    "ms", "detail"}, ...]`` (dns, tcp, proxy, tls; ending at the first failed
    one), or None (the probe has the ``v2`` step alone).  The other keywords
    are the client's."""

    def __init__(self, agents: Any, clock: Any, *, health: UpstreamHealth, header_timeout: float = 10.0,
                 body_timeout: Optional[float] = None, drain_timeout: float = DRAIN_TIMEOUT,
                 metrics: Any = None, tracer: Any = None):
        self.clock = clock
        self.health = health
        self.metrics = metrics
        self.tracer = tracer
        self.agents = agents
        self.client = UpstreamClient(agents, clock, header_timeout=header_timeout, body_timeout=body_timeout,
                                     drain_timeout=drain_timeout)
        self.upstreams: list[Upstream] = []
        self.namespaces: frozenset = frozenset()  # of every registries row (set_registries)
        self._unverified: set = set()  # ids of the upstreams with tls_verify off (warned once)
        self._probing: list[Upstream] = []  # the upstreams of the probes running (their agents kept)

    # -- the registry list -------------------------------------------------------

    def set_registries(self, rows: list[dict]) -> None:
        """Replace the upstream list from ``registries`` rows (keeps health by
        id); the agents of settings no upstream uses any more are dropped."""
        ups = []
        for r in rows:
            if not r.get("enabled", True):
                continue
            up = upstream_of(r)
            up.health = self.health.record_of(up.id)
            ups.append(up)
        ups.sort(key=lambda u: (u.priority, u.id))
        self._warn_unverified(ups)
        self.upstreams = ups
        self._retain()
        # every configured namespace, enabled upstreams or not (the routing table's path prefixes)
        self.namespaces = frozenset(r.get("namespace") or "docker.io" for r in rows)
        self.health.set_upstreams(ups, [int(r["id"]) for r in rows])

    def _retain(self) -> None:
        """Drop the agents neither an upstream nor a running probe uses."""
        self.agents.retain(self.upstreams + self._probing)

    def _warn_unverified(self, ups: list[Upstream]) -> None:
        """One warning for each upstream whose certificate is not checked (when
        it is first seen so, at start or after a change)."""
        off = {u.id: u for u in ups if not u.tls.verify}
        for uid in sorted(set(off) - self._unverified):
            up = off[uid]
            log.warn("upstream {name} ({url}): TLS verification is off (tls_verify = false):"
                     " its certificate and host name are not checked",
                     name=up.name, url=up.url, upstream_tls_verify=False)
        self._unverified = set(off)

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
        """Reachability and auth of ``/v2/`` for the admin's "test connection"
        (``row``: a registries row or an unsaved registry of the same shape; its
        proxy and TLS settings apply)."""
        up = upstream_of(row)
        self._probing.append(up)
        try:
            return await self._probe(up)
        finally:
            self._probing.remove(up)
            # an unsaved registry's settings got an agent of their own: dropped (its
            # idle connection closed) the turn after, when the connection is back in its pool
            self.clock.callLater(0, self._retain)

    async def _probe(self, up: Upstream) -> dict:
        started = time.monotonic()
        out: dict = {"ok": False, "status": None, "latency_ms": None, "auth": "none", "error": None,
                     "steps": []}
        steps = await self._connection_steps(up)
        out["steps"] = steps
        failed = next((s for s in steps if not s.get("ok")), None)
        if failed is not None:
            out["error"] = failed.get("detail") or f"{failed.get('step')} failed"
            out["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
            return out
        v2_started = time.monotonic()
        await self._probe_v2(up, out)
        ms = round((time.monotonic() - v2_started) * 1000, 1)
        detail = out["error"] or f"/v2/ answered {out['status']}" + (
            f" ({out['auth']} auth)" if out["auth"] != "none" else "")
        steps.append({"step": "v2", "ok": bool(out["ok"]), "ms": ms, "detail": detail})
        out["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
        return out

    async def _connection_steps(self, up: Upstream) -> list[dict]:
        """The steps before ``/v2/`` (dns, tcp, proxy, tls) from ``tracer``,
        each ``{"step", "ok", "ms", "detail"}``, ending at the first failed
        one ([] without a tracer)."""
        if self.tracer is None:
            return []
        try:
            steps = await self.tracer(up)
        except CancelledError:
            raise
        except Exception:
            log.failure("connection test of {url} failed", url=up.url)
            return []
        return [dict(s) for s in steps or [] if isinstance(s, dict)]

    async def _probe_v2(self, up: Upstream, out: dict) -> None:
        """GET ``/v2/`` with the challenge answered: status, auth, error in ``out``."""
        client = self.client
        try:
            resp = await client.send(up, b"GET", up.url + "/v2/", {}, None)
            if resp.code == 401:
                challenges = parse_headers(resp.headers.getRawHeaders(b"www-authenticate"))
                schemes = {c.scheme for c in challenges}
                out["auth"] = "bearer" if "bearer" in schemes else "basic" if "basic" in schemes else "unknown"
                try:
                    auth = await client.answer_challenge(up, challenges, None)
                except UpstreamError:
                    client.discard(resp)
                    raise
                if auth is not None:
                    await client.discard(resp)  # read: its connection goes back to its pool
                    resp = await client.send(up, b"GET", up.url + "/v2/", {}, auth)
            out["status"] = resp.code
            out["ok"] = resp.code == 200
            if not out["ok"]:
                out["error"] = f"/v2/ answered {resp.code}"
            await client.discard(resp)  # read: its connection goes back to its pool
        except UpstreamError as e:
            out["error"] = str(e)


__all__ = ["UpstreamPool", "upstream_of"]
