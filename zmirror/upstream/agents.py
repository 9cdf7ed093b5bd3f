"""The HTTP agents requests to the upstreams go through: one per distinct
connection setting (the upstream's host, TLS settings and egress route), each
with its own pool of persistent connections, so connections made for one
upstream's settings are never reused for another's (design: docs/design/upstream.md,
"TLS and egress")."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from twisted.internet.defer import DeferredList
from twisted.web.client import HTTPConnectionPool

from zmirror.upstream.egress import EgressAgent, Route, default_route, upstream_route
from zmirror.upstream.models import Upstream, origin_of
from zmirror.upstream.tlsconfig import TLSPolicy

MAX_PERSISTENT_PER_HOST = 16
IDLE_CONNECTION_TIMEOUT = 120  # seconds an idle pooled connection is kept


class QuietConnectionPool(HTTPConnectionPool):
    """An HTTPConnectionPool whose connection factories do not log.

    Twisted's pool builds one ``_HTTP11ClientFactory`` per new connection, and
    each logs "Starting factory" / "Stopping factory" at info level: two lines
    per upstream connection.  ``_factory`` is the pool's documented hook for
    the factory it connects with; this one is the same, with ``noisy`` off.
    """

    def _factory(self, quiescentCallback, metadata):
        factory = HTTPConnectionPool._factory(quiescentCallback, metadata)
        factory.noisy = False
        return factory


class UpstreamAgents:
    """``agent_for(up)``: the ``IAgent`` for requests made for ``up`` (to
    its registry, its token realm, the hosts it redirects to).  Plain
    ``Agent`` s (not treq's HTTPClient, which adds gzip decoding): the bytes
    relayed must be exactly the upstream's, digests included.

    ``proxy`` / ``no_proxy``: the ``[upstream]`` settings, the default route
    of every upstream whose own ``proxy`` is None; when both are empty,
    ``environ`` (read once, here) gives it: ``HTTPS_PROXY`` and the others
    (:func:`zmirror.upstream.egress.default_route`).  The caller passes the
    environment only when the configuration file sets neither.  ValueError
    for a proxy URL that cannot be used."""

    def __init__(self, reactor: Any, *, connect_timeout: float, proxy: str = "", no_proxy: str = "",
                 environ: Optional[Mapping] = None):
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.default_route = default_route(proxy, no_proxy, environ)
        self._agents: dict = {}  # settings key -> (agent, pool)

    def route_for(self, up: Upstream) -> Route:
        """The route of ``up``'s requests (ValueError for an unusable ``proxy``)."""
        return upstream_route(self.default_route, up.proxy)

    def _key(self, up: Upstream) -> tuple:
        return (origin_of(up.url)[1], up.tls, self.route_for(up))

    def agent_for(self, up: Upstream) -> Any:
        """The agent for ``up``'s settings (made on first use; raises
        ValueError when the settings cannot be used)."""
        key = self._key(up)
        got = self._agents.get(key)
        if got is None:
            pool = QuietConnectionPool(self.reactor, persistent=True)  # no log lines per connection
            pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
            pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
            policy = TLSPolicy(up.tls, key[0])
            agent = EgressAgent(self.reactor, key[2], policy, pool=pool, connect_timeout=self.connect_timeout)
            got = self._agents[key] = (agent, pool)
        return got[0]

    def retain(self, upstreams: list) -> None:
        """Forget the agents no upstream of ``upstreams`` uses any more (their
        idle connections are closed)."""
        keep = set()
        for u in upstreams:
            try:
                keep.add(self._key(u))
            except ValueError:  # an unusable proxy URL: that upstream has no agent
                pass
        for key in [k for k in self._agents if k not in keep]:
            _agent, pool = self._agents.pop(key)
            pool.closeCachedConnections()

    def close(self):
        """Close every pooled idle connection (shutdown, tests)."""
        return DeferredList([pool.closeCachedConnections() for _a, pool in self._agents.values()])


__all__ = ["QuietConnectionPool", "UpstreamAgents"]
