"""Builds the upstream layer from the configuration: the HTTP agent and its
connection pool, the health memory, the pool, and (with a cluster bus) the
sharing of health between the nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from twisted.web.client import Agent

from zmirror.upstream.agents import QuietConnectionPool
from zmirror.upstream.health import UpstreamHealth
from zmirror.upstream.pool import UpstreamPool
from zmirror.upstream.shared import HealthSharing


@dataclass
class Upstreams:
    pool: UpstreamPool  # the registry list and requests to it
    health: UpstreamHealth  # the health memory the pool and the sharing share
    sharing: Optional[HealthSharing] = None  # None: no bus (a node alone, or tests)


def build_upstreams(config: Any, reactor: Any, *, bus: Any = None, db: Any = None,
                    metrics: Any = None) -> Upstreams:
    """The upstream layer for ``config`` (its ``[upstream]`` section).

    The HTTP agent keeps persistent connections (16 per host, idle ones closed
    after 120 s) and has the connect timeout; it is a plain ``Agent`` (not treq's
    HTTPClient, which adds gzip decoding): the bytes relayed must be exactly the
    upstream's, digests included.  ``bus`` (a :class:`zmirror.cluster.IBus`):
    the health memory is shared with the other nodes over it and kept in
    ``db``'s ``upstream_state``.  ``metrics``: a :class:`zmirror.metrics.Metrics`
    or None."""
    connections = QuietConnectionPool(reactor, persistent=True)  # no log lines per connection
    connections.maxPersistentPerHost = 16
    connections.cachedConnectionTimeout = 120
    agent = Agent(reactor, pool=connections, connectTimeout=config.upstream.connect_timeout)
    health = UpstreamHealth(reactor, cooldown=config.upstream.cooldown, metrics=metrics)
    pool = UpstreamPool(agent, reactor, health=health, header_timeout=config.upstream.connect_timeout,
                        connections=connections, metrics=metrics)
    sharing = HealthSharing(health, bus, db, reactor) if bus is not None else None
    return Upstreams(pool=pool, health=health, sharing=sharing)


__all__ = ["Upstreams", "build_upstreams"]
