"""A 429 that says nothing (no Retry-After, no ratelimit-*) to a request that does not
count against a pull limit (a blob, a HEAD): a brief backoff (2 s, doubling while 429s
continue, at most 60 s) instead of a flat minute; when every upstream rests, one request
goes as the probe once the shortest rest has run out; shared with other nodes and stored
capped at the backoff's length (zmirror.upstream.health, .shared, .failover)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from tests.fixtures.proxyenv import ProxyEnv
from tests.fixtures.upstream import BLOB, BPATH, FakeResponse, World, blob_answer, pull_blob
from tests.fixtures.sharing import START, Nodes, up
from zmirror.oci.errors import RegistryError
from zmirror.testing import FakeRegistry
from zmirror.upstream.health import DEFAULT_RATELIMIT_COOLDOWN, backoff_rest
from zmirror.upstream.models import BACKOFF_MEMORY, PROBE_TIMEOUT
from zmirror.upstream.shared import MIN_INTERVAL, snapshot

A, B = "http://a.fake" + BPATH, "http://b.fake" + BPATH


def bare_429():
    return FakeResponse(429, {}, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}')


class Script:
    """Answers of one upstream's blob GETs, one per request (the last one repeats)."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def __call__(self):
        a = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return a()


def world(a, b=None):
    w = World(("a.fake", "b.fake"))
    w.agent.on("GET", A, a)
    w.agent.on("GET", B, b or blob_answer)
    return w


def asked(w, url=A):
    return w.agent.sent.count(("GET", url))


class BackoffTests(unittest.TestCase):
    def pull(self, w):
        return self.successResultOf(pull_blob(w))

    def refused(self, w):
        err = self.failureResultOf(pull_blob(w), RegistryError).value
        self.assertEqual((err.status, err.code), (429, "TOOMANYREQUESTS"))
        return err

    def test_one_429_rests_two_seconds_then_the_next_pull_goes_there(self):
        w = world(Script(bare_429, blob_answer))
        self.pull(w)  # a.fake 429 → b.fake
        self.assertEqual((asked(w), asked(w, B)), (1, 1))
        h = w.health(1)
        self.assertEqual((h["state"], h["rate_limit"]["reset_at"], h["consecutive_failures"]),
                         ("ratelimited", 2, 0))
        w.clock.advance(1.9)
        self.pull(w)
        self.assertEqual((asked(w), asked(w, B)), (1, 2))  # still resting
        w.clock.advance(0.1)
        self.pull(w)
        self.assertEqual((asked(w), asked(w, B)), (2, 2))  # back to the first upstream
        self.assertEqual(w.health(1)["state"], "up")
        self.assertIsNone(w.health(1)["rate_limit"])

    def test_429s_in_a_row_double_the_rest_up_to_the_cap_and_an_answer_resets(self):
        self.assertEqual([backoff_rest(n) for n in range(1, 9)], [2, 4, 8, 16, 32, 60, 60, 60])
        w = world(bare_429)
        rests = []
        for _ in range(8):
            self.pull(w)  # a.fake asked (429, after the rest: the probe), b.fake answers
            h = w.pool.upstreams[0].health
            rests.append(h.backoff_until - w.clock.seconds())
            w.clock.advance(rests[-1])
        self.assertEqual(rests, [2, 4, 8, 16, 32, 60, 60, 60])
        self.assertEqual(asked(w), 8)
        self.assertEqual(w.pool.upstreams[0].health.consecutive_failures, 0)  # never a failure
        w.agent.on("GET", A, Script(blob_answer, bare_429))
        self.pull(w)  # a 200: the row is over
        self.assertEqual(w.pool.upstreams[0].health.backoff, 0)
        self.pull(w)  # a new 429 starts again at 2 s
        self.assertEqual(w.health(1)["rate_limit"]["reset_at"], w.clock.seconds() + 2)

    def test_a_burst_of_429s_rests_as_one(self):
        # ten blob GETs in flight when a.fake starts answering 429: the rest is 2 s, not 2**10
        w = world(bare_429)
        held = [Deferred() for _ in range(10)]
        answers = iter(held)
        w.agent.on("GET", A, lambda: next(answers))
        pulls = [pull_blob(w) for _ in held]
        for d in held:
            d.callback(bare_429())
        for p in pulls:
            self.successResultOf(p)
        self.assertEqual(w.health(1)["rate_limit"]["reset_at"], 2)
        self.assertEqual(w.pool.upstreams[0].health.backoff, 1)
        # a straggler of the burst (sent before the rest: no probe) answered after the rest:
        # the same 2 s again, not doubled
        w.clock.advance(3)
        a1 = w.pool.upstreams[0]
        self.assertEqual(w.pool.health.note_rate_limit(a1, 429, Headers(), counted=False), 2)
        self.assertEqual((a1.health.backoff, w.health(1)["rate_limit"]["reset_at"]), (1, 5))

    def test_the_row_is_forgotten_a_while_after_the_rest(self):
        w = world(bare_429)
        self.pull(w)
        w.clock.advance(2)
        self.pull(w)  # the probe: 429 again, 4 s
        self.assertEqual(w.health(1)["rate_limit"]["reset_at"], 6)
        w.clock.advance(4 + BACKOFF_MEMORY)
        self.pull(w)  # long after: a new row, 2 s
        self.assertEqual(w.health(1)["rate_limit"]["reset_at"], w.clock.seconds() + 2)

    def test_every_upstream_resting_one_probe_after_the_shortest_rest(self):
        w = world(bare_429, bare_429)
        self.refused(w)  # both 429: a.fake rests 2 s, b.fake 2 s
        w.clock.advance(1)
        self.pull_b_longer(w)
        err = self.refused(w)
        self.assertEqual(err.headers[b"Retry-After"], b"1")
        self.assertEqual((asked(w), asked(w, B)), (1, 1))
        w.clock.advance(1)  # a.fake's rest ran out (b.fake rests until 5)
        probe = Deferred()
        w.agent.on("GET", A, lambda: probe)
        first = pull_blob(w)  # the probe
        self.assertEqual(asked(w), 2)
        for _ in range(3):  # the others are refused meanwhile; nobody is asked
            err = self.refused(w)
            self.assertEqual(err.headers[b"Retry-After"], b"1")
        self.assertEqual((asked(w), asked(w, B)), (2, 1))
        probe.callback(blob_answer())  # the probe answered: a.fake is open to everyone again
        self.successResultOf(first)
        self.assertEqual(w.health(1)["state"], "up")
        w.agent.on("GET", A, blob_answer)
        for _ in range(3):
            self.pull(w)
        self.assertEqual((asked(w), asked(w, B)), (5, 1))
        # b.fake's rest ran out too: the next request it gets is its probe, and its 200
        # opens it as well
        w.clock.advance(3)
        w.agent.on("GET", A, bare_429)
        w.agent.on("GET", B, blob_answer)
        self.pull(w)
        self.assertEqual(w.health(2)["state"], "up")
        self.assertEqual(w.pool.upstreams[1].health.backoff, 0)

    def pull_b_longer(self, w):
        """b.fake's rest is made longer (a second 429 of its row): it rests until t=5."""
        h = w.pool.upstreams[1].health
        h.backoff, h.backoff_until = 2, w.clock.seconds() + 4

    def test_a_probe_answered_429_doubles_and_the_next_goes_after_that(self):
        w = world(bare_429, bare_429)
        self.refused(w)
        w.clock.advance(2)
        self.refused(w)  # both probes: 429, 4 s
        self.assertEqual(w.health(1)["rate_limit"]["reset_at"], 6)
        self.assertEqual((asked(w), asked(w, B)), (2, 2))
        w.clock.advance(3)
        self.assertEqual(self.refused(w).headers[b"Retry-After"], b"1")
        self.assertEqual((asked(w), asked(w, B)), (2, 2))

    def test_a_probe_that_fails_or_never_answers_does_not_hold_the_upstream(self):
        w = world(bare_429, bare_429)
        self.refused(w)
        w.clock.advance(2)
        # a.fake's probe cannot connect (b.fake's is a 429): the next request probes again
        w.agent.routes.pop(("GET", A))
        self.failureResultOf(pull_blob(w))
        self.assertEqual(w.pool.upstreams[0].health.probe, 0)
        hung = Deferred()
        w.agent.on("GET", A, lambda: hung)
        cancelled = pull_blob(w)  # the probe; its client goes away
        self.assertNotEqual(w.pool.upstreams[0].health.probe, 0)
        cancelled.cancel()
        self.failureResultOf(cancelled)
        self.assertEqual(w.pool.upstreams[0].health.probe, 0)
        # a probe that neither answers nor is cancelled: overdue after PROBE_TIMEOUT
        h = w.pool.upstreams[0].health
        h.probe, h.probe_at = 999, w.clock.seconds()
        self.refused(w)
        w.clock.advance(PROBE_TIMEOUT)
        w.agent.on("GET", A, blob_answer)
        self.pull(w)
        self.assertEqual(w.health(1)["state"], "up")

    def test_a_head_says_nothing_too(self):
        w = world(bare_429)
        w.agent.on("HEAD", A, bare_429)
        w.agent.on("HEAD", B, lambda: FakeResponse(200, {b"Content-Length": str(len(BLOB)).encode()}))
        self.successResultOf(pull_blob(w, method=b"HEAD"))
        self.assertEqual(w.health(1)["rate_limit"]["reset_at"], 2)


class KeptTests(unittest.TestCase):
    """What the 429 says, or a pull's 429, still decides as before."""

    def test_retry_after_rests_in_full(self):
        w = world(lambda: FakeResponse(429, {b"Retry-After": b"120"}))
        self.successResultOf(pull_blob(w))
        self.assertEqual(w.health(1)["rate_limit"]["reset_at"], 120)
        self.assertEqual(w.pool.upstreams[0].health.backoff, 0)
        w.clock.advance(119)
        self.successResultOf(pull_blob(w))
        self.assertEqual(asked(w), 1)

    def test_ratelimit_numbers_keep_the_window(self):
        w = world(lambda: FakeResponse(429, {b"ratelimit-remaining": b"0;w=300"}))
        self.successResultOf(pull_blob(w))
        self.assertEqual(w.health(1)["rate_limit"]["reset_at"], 300)
        # numbers without a window: the default minute, as before
        w = world(lambda: FakeResponse(429, {b"ratelimit-remaining": b"0"}))
        self.successResultOf(pull_blob(w))
        self.assertEqual(w.health(1)["rate_limit"]["reset_at"], DEFAULT_RATELIMIT_COOLDOWN)

    def test_a_pulls_429_that_says_nothing_keeps_the_minute(self):
        from tests.fixtures.upstream import TAG_PATH, manifest_response

        w = World(("a.fake", "b.fake"))
        w.agent.on("GET", "http://a.fake" + TAG_PATH, bare_429)
        w.agent.on("GET", "http://b.fake" + TAG_PATH, manifest_response)
        self.successResultOf(w.pull(TAG_PATH))
        h = w.pool.upstreams[0].health
        self.assertEqual((h.ratelimited_until, h.ratelimit_scope, h.backoff), (60, "pulls", 0))


class HttpTests(unittest.TestCase):
    """Through the routes, FakeRegistry upstreams answering '429-bare' to blob GETs."""

    def setUp(self):
        self.up1, self.up2 = FakeRegistry(), FakeRegistry()
        self.digest = self.up1.add_blob(BLOB)
        self.up2.add_blob(BLOB)
        self.env = ProxyEnv([("up1.fake", self.up1), ("up2.fake", self.up2)])
        self.path = f"/v2/library/x/blobs/{self.digest}"

    def gets(self, reg):
        return len([r for r in reg.requests if r[0] == "GET" and r[2] == self.path])

    def test_a_burst_of_429s_on_both_then_a_cold_pull_after_two_seconds(self):
        self.up1.faults[self.path] = ["429-bare"] * 3
        self.up2.faults[self.path] = ["429-bare"] * 3
        resp, _ = self.env.request("GET", self.path)
        self.assertEqual(resp.code, 429)
        self.assertEqual(resp.headers.getRawHeaders(b"retry-after"), [b"2"])
        self.env.clock.advance(2)
        self.up1.faults[self.path] = []
        self.up2.faults[self.path] = []
        resp, body = self.env.request("GET", self.path)
        self.assertEqual((resp.code, body), (200, BLOB))
        self.assertEqual((self.gets(self.up1), self.gets(self.up2)), (2, 1))


class SharedTests(unittest.TestCase):
    def setUp(self):
        self.n = Nodes()
        self.a, self.b = self.n.pools
        self.clock = self.n.clock

    def test_the_brief_rest_reaches_the_other_node_and_its_end_too(self):
        a1, b1 = up(self.a), up(self.b)
        self.assertEqual(self.a.health.note_rate_limit(a1, 429, Headers(), counted=False), 2)
        self.assertEqual(b1.health.backoff_until, START + 2)
        self.assertEqual(b1.health.backoff, 1)
        self.assertEqual([u.id for u in self.b.pool.candidates("docker.io")], [2])
        self.assertEqual([(u.id, s) for u, s in self.b.pool.rate_limited("docker.io")], [(1, 2)])
        self.clock.advance(2)
        self.assertEqual([u.id for u in self.b.pool.candidates("docker.io")], [1, 2])
        # a's probe: 429 again, 4 s (after the publication interval) on both
        token = self.a.health.sending(a1)
        self.assertTrue(token)
        self.a.health.note_rate_limit(a1, 429, Headers(), counted=False, probe=True)
        self.a.health.sent(a1, token)
        self.clock.advance(MIN_INTERVAL)
        self.assertEqual((b1.health.backoff_until, b1.health.backoff), (START + 6, 2))
        # a's next answer is no 429: b's rest ends too
        self.clock.advance(1)
        self.a.health.answered(a1, 200)
        self.clock.advance(MIN_INTERVAL)
        self.assertEqual((b1.health.backoff_until, b1.health.backoff), (0.0, 0))
        self.assertEqual(self.b.health.report()[1]["state"], "unknown")

    def test_a_peer_cannot_stretch_a_backoff(self):
        now = self.clock.seconds()
        snap = dict(snapshot(up(self.a), now), backoff=40, backoff_until=now + 10 ** 6)
        self.b.sharing.received(snap)
        hb = up(self.b).health
        self.assertEqual(hb.backoff_until, now + DEFAULT_RATELIMIT_COOLDOWN)
        self.assertEqual(hb.backoff, 16)
        for bad in ("x", None, float("inf"), True, [1], -5):
            self.b.sharing.received(dict(snap, backoff=bad, backoff_until=bad, backoff_cleared_at=bad))
        self.assertEqual(hb.backoff_until, now + DEFAULT_RATELIMIT_COOLDOWN)


class StoredTests(unittest.TestCase):
    def setUp(self):
        from tests.fixtures.pgserver import temp_database

        self.db = temp_database(self)
        self.n = Nodes(1, db=self.db)
        self.a = self.n.pools[0]
        self.clock = self.n.clock

    def test_a_restart_does_not_rest_longer_than_the_backoff(self):
        return Deferred.fromCoroutine(self._restart())

    async def _restart(self):
        self.a.health.note_rate_limit(up(self.a), 429, Headers(), counted=False)
        await self.a.sharing.flush()
        self.clock.advance(1)
        c = Nodes(0, clock=self.clock).add(self.db)
        self.assertEqual(await c.sharing.load(), 1)
        self.assertEqual(up(c).health.backoff_until, START + 2)  # what is left of the 2 s
        self.assertEqual(c.health.report()[1]["rate_limit"]["reset_at"], START + 2)
        self.clock.advance(1)
        late = Nodes(0, clock=self.clock).add(self.db)
        self.assertEqual(await late.sharing.load(), 0)
        self.assertEqual([u.id for u in late.pool.candidates("docker.io")], [1, 2])
        # a stored row claiming a long backoff (hostile, or written by hand) is cut to the cap
        from zmirror.upstream.shared import UPSERT
        import json

        row = dict(snapshot(up(self.a), self.clock.seconds()), backoff=1,
                   backoff_until=self.clock.seconds() + 3600)
        await self.db.execute(UPSERT, ("1", json.dumps(row), "x", self.clock.seconds()))
        c2 = Nodes(0, clock=self.clock).add(self.db)
        await c2.sharing.load()
        self.assertEqual(up(c2).health.backoff_until, self.clock.seconds() + DEFAULT_RATELIMIT_COOLDOWN)
