"""zmirror.upstream.failover: what a client is told when no upstream could answer (nothing
of the upstreams), and what the log says."""

import json

from twisted.logger import Logger
from twisted.trial import unittest

from tests.fixtures.upstream import TAG_PATH, FakeResponse, World
from zmirror.oci.errors import RegistryError


class ClientErrorTests(unittest.TestCase):
    def test_final_error_generic_for_client_detailed_in_one_log_event(self):
        events = []
        from zmirror.upstream import failover

        self.patch(failover, "log", Logger(observer=events.append))
        w = World(("a.fake:5000", "b.fake"))
        w.pool.set_registries([
            {"id": 1, "name": "a.fake:5000", "url": "http://a.fake:5000", "priority": 1, "enabled": 1,
             "username": "user", "password": "pa55word"},
            {"id": 2, "name": "secret-mirror", "url": "http://b.fake", "priority": 2, "enabled": 1}])
        w.agent.on("GET", "http://a.fake:5000" + TAG_PATH, lambda: FakeResponse(500))
        err = self.failureResultOf(w.pull(TAG_PATH), RegistryError).value  # b.fake refuses
        self.assertEqual((err.status, err.code), (502, "UPSTREAM_ERROR"))
        body = err.body().decode()
        for leak in ("a.fake", "5000", "b.fake", "secret-mirror", "pa55word", "detail", "refused"):
            self.assertNotIn(leak, body)
        self.assertEqual(json.loads(body)["errors"][0]["message"], "no upstream registry could answer")
        self.assertEqual([a["upstream"] for a in err.internal], ["a.fake:5000", "secret-mirror"])
        from twisted.logger import formatEvent

        logged = [formatEvent(e) for e in events]
        self.assertEqual(len(logged), 1, logged)
        self.assertIn("a.fake:5000", logged[0])
        self.assertIn("secret-mirror", logged[0])
        self.assertNotIn("pa55word", logged[0])

    def test_not_found_and_rate_limited_carry_no_upstream_names(self):
        w = World(("a.fake", "b.fake"))
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: FakeResponse(404))
        w.agent.on("GET", "http://b.fake" + TAG_PATH, lambda: FakeResponse(429, {b"Retry-After": b"-5"}))
        err = self.failureResultOf(w.pull(TAG_PATH), RegistryError).value
        self.assertNotIn("fake", err.body().decode())
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: FakeResponse(429, {b"Retry-After": b"10"}))
        err = self.failureResultOf(w.pull(TAG_PATH), RegistryError).value
        self.assertEqual(err.code, "TOOMANYREQUESTS")
        # b.fake's negative wait was ignored (it cools down for the default minute and is
        # not asked again): the client gets a.fake's 10 s
        self.assertEqual(err.headers[b"Retry-After"], b"10")
        self.assertEqual(w.agent.sent.count(("GET", "http://b.fake" + TAG_PATH)), 1)
        self.assertNotIn("fake", err.body().decode())
