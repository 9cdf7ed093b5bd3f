"""The HTTP agents requests to the upstreams go through: one per distinct
connection setting (the upstream's host and TLS settings), each with its own
pool of persistent connections, so connections made for one upstream's
settings are never reused for another's (design: docs/design/upstream.md,
"TLS and egress")."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import DeferredList
from twisted.web.client import Agent, HTTPConnectionPool

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
    relayed must be exactly the upstream's, digests included."""

    def __init__(self, reactor: Any, *, connect_timeout: float):
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self._agents: dict = {}  # settings key -> (Agent, pool)

    def _key(self, up: Upstream) -> tuple:
        return (origin_of(up.url)[1], up.tls)

    def agent_for(self, up: Upstream) -> Any:
        """The agent for ``up``'s settings (made on first use; raises
        ValueError when the settings cannot be used)."""
        key = self._key(up)
        got = self._agents.get(key)
        if got is None:
            pool = QuietConnectionPool(self.reactor, persistent=True)  # no log lines per connection
            pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
            pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
            kw = {} if up.tls.default else {"contextFactory": TLSPolicy(up.tls, key[0])}
            agent = Agent(self.reactor, pool=pool, connectTimeout=self.connect_timeout, **kw)
            got = self._agents[key] = (agent, pool)
        return got[0]

    def retain(self, upstreams: list) -> None:
        """Forget the agents no upstream of ``upstreams`` uses any more (their
        idle connections are closed)."""
        keep = {self._key(u) for u in upstreams}
        for key in [k for k in self._agents if k not in keep]:
            _agent, pool = self._agents.pop(key)
            pool.closeCachedConnections()

    def close(self):
        """Close every pooled idle connection (shutdown, tests)."""
        return DeferredList([pool.closeCachedConnections() for _a, pool in self._agents.values()])


__all__ = ["QuietConnectionPool", "UpstreamAgents"]
