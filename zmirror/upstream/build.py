"""Builds the upstream layer from the configuration: the HTTP agents (one per
upstream connection setting, each with its pool of connections), the health
memory, the pool, and (with a cluster bus) the sharing of health between the
nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from zmirror.upstream.agents import UpstreamAgents
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

    The agents (:class:`~zmirror.upstream.agents.UpstreamAgents`) keep
    persistent connections and have the connect timeout; every request for an
    upstream goes through the agent of its settings.  ``bus`` (a :class:`zmirror.cluster.IBus`):
    the health memory is shared with the other nodes over it and kept in
    ``db``'s ``upstream_state``.  ``metrics``: a :class:`zmirror.metrics.Metrics`
    or None."""
    agents = UpstreamAgents(reactor, connect_timeout=config.upstream.connect_timeout)
    health = UpstreamHealth(reactor, cooldown=config.upstream.cooldown, metrics=metrics)
    pool = UpstreamPool(agents, reactor, health=health, header_timeout=config.upstream.connect_timeout,
                        metrics=metrics)
    sharing = HealthSharing(health, bus, db, reactor) if bus is not None else None
    return Upstreams(pool=pool, health=health, sharing=sharing)


__all__ = ["Upstreams", "build_upstreams"]
