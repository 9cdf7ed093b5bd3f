"""Builds the upstream layer from the configuration: the HTTP agents (one per
upstream connection setting, each with its pool of connections), the health
memory, the pool, and (with a cluster bus) the sharing of health between the
nodes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from zmirror.config import ConfigError
from zmirror.upstream.agents import UpstreamAgents
from zmirror.upstream.connectiontest import trace
from zmirror.upstream.health import UpstreamHealth
from zmirror.upstream.pool import UpstreamPool
from zmirror.upstream.shared import HealthSharing


@dataclass
class Upstreams:
    pool: UpstreamPool  # the registry list and requests to it
    health: UpstreamHealth  # the health memory the pool and the sharing share
    sharing: Optional[HealthSharing] = None  # None: no bus (a node alone, or tests)


def build_upstreams(config: Any, reactor: Any, *, bus: Any = None, db: Any = None,
                    metrics: Any = None, environ: Optional[Mapping] = None) -> Upstreams:
    """The upstream layer for ``config`` (its ``[upstream]`` section).

    The agents (:class:`~zmirror.upstream.agents.UpstreamAgents`) keep
    persistent connections, have the connect timeout and the egress route:
    ``[upstream] proxy`` / ``no_proxy``, or — when the file sets neither —
    the proxy variables of ``environ`` (default: this process's environment);
    every request for an upstream goes through the agent of its settings, and
    the admin's probe traces its connection the same way
    (:func:`zmirror.upstream.connectiontest.trace`).  ``bus`` (a
    :class:`zmirror.cluster.IBus`): the health memory is shared with the
    other nodes over it and kept in ``db``'s ``upstream_state``.
    ``metrics``: a :class:`zmirror.metrics.Metrics` or None.  ConfigError
    for a proxy URL the agents cannot use."""
    u = config.upstream
    try:
        agents = UpstreamAgents(reactor, connect_timeout=u.connect_timeout, proxy=u.proxy or "",
                                no_proxy=u.no_proxy or "",
                                environ=(os.environ if environ is None else environ)
                                if u.proxy_from_environment else None)
    except ValueError as e:  # names the setting (or the variable), never its value
        raise ConfigError(f"egress proxy: {e}") from None
    health = UpstreamHealth(reactor, cooldown=u.cooldown, metrics=metrics)

    def tracer(up):
        return trace(reactor, agents, up)

    pool = UpstreamPool(agents, reactor, health=health, header_timeout=u.connect_timeout,
                        metrics=metrics, tracer=tracer)
    sharing = HealthSharing(health, bus, db, reactor) if bus is not None else None
    return Upstreams(pool=pool, health=health, sharing=sharing)


__all__ = ["Upstreams", "build_upstreams"]
