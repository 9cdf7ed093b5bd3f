"""An in-memory world for proxy tests: fake upstreams, the proxy, a client."""

from __future__ import annotations

import treq
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from zmirror.accesslog import MemoryAccessLog
from zmirror.app import ZMirrorApp
from zmirror.registry.routing import RoutingTable
from zmirror.registry.proxy import Proxy
from zmirror.registry.routes import RegistryRoutes
from zmirror.testing import FakeRegistry, HostAgent


class ProxyEnv:
    def __init__(self, upstreams: list[tuple[str, FakeRegistry]], *, extra_hosts=None, policy=None,
                 cooldown: float = 30.0, credentials=None,
                 blobs=None, manifests=None, namespaces=None, hosts=None, extra_rows=None):
        """``namespaces``: upstream host → the namespace it mirrors (default docker.io);
        ``hosts``: the ``[routing] hosts`` table; ``extra_rows``: more registries rows."""
        self.clock = Clock()
        agents = {host: reg.resource() for host, reg in upstreams}
        agents.update(extra_hosts or {})
        self.agent = HostAgent(agents)
        from zmirror.upstream.client import UpstreamPool

        self.pool = UpstreamPool(self.agent, self.clock, header_timeout=10, cooldown=cooldown)
        rows = []
        for i, (host, _reg) in enumerate(upstreams, start=1):
            user, pw = (credentials or {}).get(host, ("", ""))
            rows.append({"id": i, "name": host, "url": f"http://{host}", "priority": i, "enabled": 1,
                         "username": user, "password": pw,
                         "namespace": (namespaces or {}).get(host, "docker.io")})
        self.pool.set_registries(rows + list(extra_rows or []))
        self.proxy = Proxy(self.pool, self.clock, idle_timeout=30, blobs=blobs, manifests=manifests)
        self.log = MemoryAccessLog()
        self.routing = RoutingTable(lambda: self.pool.namespaces, hosts or {})
        self.routes = RegistryRoutes(self.proxy, clock=self.clock, accesslog=self.log, policy=policy,
                                     base_url=lambda request: "http://proxy.test", routing=self.routing)
        self.client = StubTreq(ZMirrorApp(self.routes).resource())

    def pump(self, d: Deferred, rounds: int = 500):
        for _ in range(rounds):
            self.agent.flush()
            self.client.flush()
            if d.called:
                break
        if not d.called:
            raise AssertionError("request did not complete")
        out = []
        d.addBoth(out.append)
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def request(self, method: str, path: str, headers=None, host: str = "proxy.test"):
        """Returns (response, body bytes)."""

        async def go():
            resp = await self.client.request(method, f"http://{host}" + path, headers=headers or {})
            body = await treq.content(resp)
            return resp, body

        return self.pump(ensureDeferred(go()))

    def upstream_paths(self, reg: FakeRegistry) -> list[str]:
        return [f"{m} {p}" for m, _h, p, _hd in reg.requests]

    async def arequest(self, method: str, path: str, headers=None, timeout: float = 20.0):
        """Like request(), but lets the real reactor run (DB and worker threads)."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        async def go():
            resp = await self.client.request(method, "http://proxy.test" + path, headers=headers or {})
            body = await treq.content(resp)
            return resp, body

        d = ensureDeferred(go())
        deadline = reactor.seconds() + timeout
        while not d.called:
            self.agent.flush()
            self.client.flush()
            if reactor.seconds() > deadline:
                d.cancel()
                break
            await deferLater(reactor, 0.001, lambda: None)
        return await d
