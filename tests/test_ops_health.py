"""/healthz and /readyz through the Klein app, with fake database and upstream pool."""

import json
from types import SimpleNamespace

import treq
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.fakes import FakeBus, FakeDB
from tests.fixtures.upstream import OneAgent
from zmirror.app import ZMirrorApp
from zmirror.health import HealthChecks


class FakePool:
    def __init__(self, states):
        self.upstreams = [SimpleNamespace(id=i, name=f"up{i}") for i in range(1, len(states) + 1)]
        self.states = states
        self.now_checked = 0.0

    @property
    def health(self):  # the pool's health memory: here only its report
        return self

    def report(self):
        out = {}
        for i, st in enumerate(self.states, start=1):
            if st is None:
                continue
            out[i] = {"state": st, "last_error": "boom" if st != "up" else None,
                      "last_latency_ms": 12.0, "last_checked_at": self.now_checked,
                      "consecutive_failures": 0 if st == "up" else 3}
        return out


class HealthTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)

    def client(self, db, pool, **kw):
        self.checks = HealthChecks(db, pool, self.clock, **kw)
        app = ZMirrorApp(None, extra={"healthz": self.checks.healthz, "readyz": self.checks.readyz})
        return StubTreq(app.resource())

    def get(self, client, path, method="GET"):
        async def go():
            resp = await client.request(method, "http://zm.test" + path)
            return resp, await treq.content(resp)

        d = ensureDeferred(go())
        client.flush()
        return self.successResultOf(d)

    def test_healthz(self):
        c = self.client(FakeDB(), FakePool(["up"]))
        resp, body = self.get(c, "/healthz")
        self.assertEqual(resp.code, 200)
        self.assertEqual(json.loads(body), {"status": "ok"})
        self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(resp.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"])

    def test_healthz_head(self):
        c = self.client(FakeDB(), FakePool(["up"]))
        resp, body = self.get(c, "/healthz", "HEAD")
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, b"")

    def test_ready(self):
        db = FakeDB()
        c = self.client(db, FakePool(["up", None]))
        resp, body = self.get(c, "/readyz")
        self.assertEqual(resp.code, 200)
        data = json.loads(body)
        self.assertEqual(data["status"], "ready")
        self.assertEqual(data["checks"]["database"], "ok")
        self.assertEqual(data["checks"]["upstreams"]["enabled"], 2)
        self.assertEqual(data["checks"]["upstreams"]["usable"], 2)
        self.assertNotIn("reasons", data)
        self.assertEqual(db.queries, 1)
        self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_database_error(self):
        c = self.client(FakeDB("error"), FakePool(["up"]))
        resp, body = self.get(c, "/readyz")
        self.assertEqual(resp.code, 503)
        data = json.loads(body)
        self.assertEqual(data["status"], "not ready")
        self.assertEqual(data["checks"]["database"], "error")
        self.assertEqual(data["reasons"], ["database unreachable (OperationalError)"])
        # no file paths or messages leak out
        self.assertNotIn(b"unable to open", body)

    def test_database_timeout(self):
        db = FakeDB("hang")
        c = self.client(db, FakePool(["up"]), db_timeout=2.0)

        async def go():
            resp = await c.get("http://zm.test/readyz")
            return resp, await treq.content(resp)

        d = ensureDeferred(go())
        c.flush()
        self.assertNoResult(d)
        self.clock.advance(2.5)
        c.flush()
        resp, body = self.successResultOf(d)
        self.assertEqual(resp.code, 503)
        self.assertIn("database did not answer within 2s", json.loads(body)["reasons"])

    def test_no_upstream_enabled(self):
        c = self.client(FakeDB(), FakePool([]))
        resp, body = self.get(c, "/readyz")
        self.assertEqual(resp.code, 503)
        self.assertEqual(json.loads(body)["reasons"], ["no upstream registry is enabled"])

    def test_all_upstreams_down_or_cooling(self):
        pool = FakePool(["down", "cooldown"])
        pool.now_checked = self.clock.seconds() - 5
        c = self.client(FakeDB(), pool)
        resp, body = self.get(c, "/readyz")
        self.assertEqual(resp.code, 503)
        data = json.loads(body)
        self.assertEqual(data["checks"]["upstreams"]["usable"], 0)
        self.assertEqual(data["checks"]["upstreams"]["states"], {"down": 1, "cooldown": 1})
        self.assertEqual(data["reasons"], ["every enabled upstream registry is down or cooling down"])

    def test_one_usable_upstream_is_enough(self):
        pool = FakePool(["cooldown", "up"])
        c = self.client(FakeDB(), pool)
        resp, _ = self.get(c, "/readyz")
        self.assertEqual(resp.code, 200)

    def test_old_failure_does_not_keep_it_unready(self):
        # "down" from a failure long ago: the proxy retries it on the next pull
        pool = FakePool(["down"])
        pool.now_checked = self.clock.seconds() - 120
        c = self.client(FakeDB(), pool, down_window=60)
        resp, body = self.get(c, "/readyz")
        self.assertEqual(resp.code, 200, body)
        self.assertEqual(json.loads(body)["checks"]["upstreams"]["states"], {"unknown": 1})

    def test_with_real_upstream_pool(self):
        from zmirror.upstream.health import UpstreamHealth
        from zmirror.upstream.pool import UpstreamPool

        pool = UpstreamPool(OneAgent(None), clock=self.clock, health=UpstreamHealth(self.clock, cooldown=30))
        pool.set_registries([{"id": 1, "name": "hub", "url": "https://hub.test", "priority": 1,
                              "enabled": 1},
                             {"id": 2, "name": "off", "url": "https://off.test", "enabled": 0}])
        c = self.client(FakeDB(), pool)
        resp, body = self.get(c, "/readyz")
        self.assertEqual(resp.code, 200)
        self.assertEqual(json.loads(body)["checks"]["upstreams"]["enabled"], 1)
        for _ in range(3):
            pool.health.mark_failed(pool.upstreams[0], "connection refused")
        resp, body = self.get(c, "/readyz")
        self.assertEqual(resp.code, 503)
        self.assertEqual(json.loads(body)["checks"]["upstreams"]["states"], {"cooldown": 1})
        self.assertNotIn(b"hub.test", body)  # no URLs in an unauthenticated answer


class ClusterBusReadyTests(unittest.TestCase):
    """On PostgreSQL /readyz reports the bus; a disconnected bus is a warning, not unready."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(86400 + 3600)  # 1970-01-02T01:00:00Z

    def readyz(self, bus, db=None):
        checks = HealthChecks(db or FakeDB(), FakePool(["up"]), self.clock, bus=bus)
        app = ZMirrorApp(None, extra={"readyz": checks.readyz})
        client = StubTreq(app.resource())

        async def go():
            resp = await client.get("http://zm.test/readyz")
            return resp, await treq.content(resp)

        d = ensureDeferred(go())
        client.flush()
        resp, body = self.successResultOf(d)
        return resp.code, json.loads(body)

    def test_connected(self):
        code, data = self.readyz(FakeBus())
        self.assertEqual(code, 200)
        self.assertEqual(data["checks"]["bus"], "connected")
        self.assertNotIn("warnings", data)

    def test_disconnected_for_long_stays_ready_and_says_since_when(self):
        bus = FakeBus(connected=False, since=self.clock.seconds())
        self.clock.advance(3600 + 0.7)
        code, data = self.readyz(bus)
        self.assertEqual(code, 200)  # pulls are still answered correctly from the database
        self.assertEqual(data["status"], "ready")
        self.assertEqual(data["checks"]["bus"], "disconnected since 1970-01-02T01:00:00Z")
        self.assertEqual(data["checks"]["bus_disconnected_seconds"], 3600)
        self.assertNotIn("reasons", data)
        self.assertEqual(len(data["warnings"]), 1)
        self.assertIn("cluster bus disconnected for 3600s", data["warnings"][0])

    def test_a_database_down_is_still_unready_with_the_bus_down(self):
        bus = FakeBus(connected=False, since=self.clock.seconds() - 5)
        code, data = self.readyz(bus, FakeDB("error"))
        self.assertEqual(code, 503)
        self.assertEqual(data["reasons"], ["database unreachable (OperationalError)"])
        self.assertEqual(data["checks"]["bus_disconnected_seconds"], 5)

    def test_a_node_alone_reports_no_bus(self):
        code, data = self.readyz(None)
        self.assertEqual(code, 200)
        self.assertNotIn("bus", data["checks"])
        self.assertNotIn("warnings", data)
