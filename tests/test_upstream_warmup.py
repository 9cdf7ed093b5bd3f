"""UpstreamWarmup: one pooled connection to each enabled upstream once the
service runs, and to each upstream added later; no health changes."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.fixtures.upstream import FakeResponse, World
from zmirror.upstream.warmup import UpstreamWarmup


def rows(*hosts):
    return [{"id": i, "name": h, "url": f"http://{h}", "priority": i, "enabled": 1}
            for i, h in enumerate(hosts, start=1)]


class WarmupTests(unittest.TestCase):
    def setUp(self):
        self.w = World(hosts=("a.fake", "b.fake"))
        for h in ("a.fake", "b.fake", "c.fake"):
            self.w.agent.on("GET", f"http://{h}/v2/", lambda: FakeResponse(401, body=b"{}"))
        self.warm = UpstreamWarmup(self.w.pool)

    def test_nothing_before_start_then_one_v2_per_upstream(self):
        self.warm.registries_changed()
        self.assertEqual(self.w.agent.sent, [])
        self.warm.start()
        self.assertEqual(self.w.agent.sent, [("GET", "http://a.fake/v2/"), ("GET", "http://b.fake/v2/")])
        # the answers were read to their end (their connections go back to the pool)
        self.assertTrue(all(r.finished and r.protocol is not None for r in self.w.agent.responses))

    def test_only_new_upstreams_later(self):
        self.warm.start()
        self.w.pool.set_registries(rows("a.fake", "b.fake", "c.fake"))
        self.warm.registries_changed()
        self.assertEqual([u for _m, u in self.w.agent.sent],
                         ["http://a.fake/v2/", "http://b.fake/v2/", "http://c.fake/v2/"])

    def test_a_failure_changes_no_health_and_stop_cancels(self):
        self.w.pool.set_registries(rows("down.fake", "slow.fake"))
        hanging = Deferred()
        self.w.agent.on("GET", "http://slow.fake/v2/", lambda: hanging)  # never answers
        before = (self.w.health(1), self.w.health(2))
        self.warm.start()  # down.fake: connection refused by the script agent
        self.assertEqual((self.w.health(1), self.w.health(2)), before)
        self.assertEqual(len(self.warm._pending), 1)
        self.warm.stop()
        self.assertEqual(self.warm._pending, set())
        self.assertEqual(self.w.agent.sent, [("GET", "http://down.fake/v2/"), ("GET", "http://slow.fake/v2/")])
