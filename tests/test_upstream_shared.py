"""Upstream health and rate-limit state shared between nodes (zmirror.upstream.shared):
upstream layers on one Clock talking through a LoopbackHub, and through the upstream_state table."""

from __future__ import annotations

import json

from twisted.trial import unittest
from twisted.web.http_headers import Headers

from tests.fixtures.helpers import coro
from tests.fixtures.sharing import CONFIG, ROWS, START, Nodes, up
from zmirror.upstream.build import build_upstreams
from zmirror.upstream.health import FAILURES_BEFORE_COOLDOWN, MAX_RATELIMIT_COOLDOWN
from zmirror.upstream.shared import KIND, MIN_INTERVAL, snapshot

def hdrs(**values) -> Headers:
    h = Headers()
    for k, v in values.items():
        h.setRawHeaders(k.replace("_", "-"), [v])
    return h



class SharedHealthTests(unittest.TestCase):
    def setUp(self):
        self.n = Nodes()
        self.a, self.b = self.n.pools
        self.clock = self.n.clock

    def fail(self, node, times, uid=1):
        for _ in range(times):
            node.health.mark_failed(up(node, uid), "cannot connect to hub.test: ConnectionRefusedError")

    def test_a_failure_cooldown_reaches_the_other_node(self):
        self.fail(self.a, FAILURES_BEFORE_COOLDOWN)
        # "down" went out at the first failure; the cool-down is due after the interval
        self.assertEqual([d["state"] for d in self.n.sent()], ["down"])
        self.assertEqual(up(self.b).health.cooldown_until, 0.0)
        self.assertEqual(self.b.health.report()[1]["state"], "down")
        self.clock.advance(MIN_INTERVAL)
        ha, hb = up(self.a).health, up(self.b).health
        self.assertEqual(len(self.n.sent()), 2)
        self.assertGreater(ha.cooldown_until, self.clock.seconds())
        self.assertEqual(hb.cooldown_until, ha.cooldown_until)
        self.assertEqual(self.b.health.report()[1]["state"], "cooldown")
        self.assertEqual(self.b.health.report()[1]["last_error"], ha.last_error)
        self.assertEqual([u.id for u in self.b.pool.candidates("docker.io")], [2])
        self.assertEqual(hb.consecutive_failures, 0)  # b's own count is b's

    def test_recovery_reaches_the_other_node(self):
        self.fail(self.a, FAILURES_BEFORE_COOLDOWN)
        self.clock.advance(MIN_INTERVAL)
        self.assertEqual(self.b.health.report()[1]["state"], "cooldown")
        self.clock.advance(30)
        self.a.health.mark_ok(up(self.a), 0.05)
        self.assertEqual(self.b.health.report()[1]["state"], "up")
        self.assertEqual(up(self.b).health.cooldown_until, 0.0)
        self.assertEqual([u.id for u in self.b.pool.candidates("docker.io")], [1, 2])

    def test_requests_do_not_publish_transitions_do_and_at_a_bounded_rate(self):
        a1 = up(self.a)
        for _ in range(50):  # a healthy upstream answering, with its rate-limit headers
            self.a.health.mark_ok(a1, 0.01)
            self.a.health.note_rate_limit(a1, 200, hdrs(ratelimit_limit=b"100;w=21600",
                                                        ratelimit_remaining=b"60;w=21600"))
        self.assertEqual(self.n.sent(), [])
        for i in range(100):  # a flapping upstream: a transition every request
            if i % 2:
                self.a.health.mark_ok(a1, 0.01)
            else:
                self.a.health.mark_failed(a1, "HTTP 502")
        self.assertEqual(len(self.n.sent()), 1)
        self.clock.advance(MIN_INTERVAL)
        self.assertEqual(len(self.n.sent()), 2)
        self.assertEqual(self.n.sent()[-1]["state"], "up")  # the latest state, once
        self.assertEqual(self.b.health.report()[1]["state"], "up")
        self.clock.advance(10 * MIN_INTERVAL)
        self.assertEqual(len(self.n.sent()), 2)

    def test_a_rate_limit_and_its_scope_reach_the_other_node(self):
        a1 = up(self.a)
        left = self.a.health.note_rate_limit(a1, 429, hdrs(retry_after=b"600"), counted=False)  # a HEAD
        self.assertEqual(left, 600)
        hb = up(self.b).health
        self.assertEqual(hb.ratelimited_until, self.clock.seconds() + 600)
        self.assertEqual((hb.ratelimit_scope, hb.ratelimit_reason), ("all", "retry-after"))
        self.assertEqual([u.id for u in self.b.pool.candidates("docker.io")], [2])  # not even a HEAD
        self.assertEqual([(u.id, s) for u, s in self.b.pool.rate_limited("docker.io")], [(1, 600)])
        self.assertEqual(self.b.health.report()[1]["state"], "ratelimited")
        self.assertEqual(self.b.health.report()[1]["rate_limit"]["reset_at"], self.clock.seconds() + 600)
        self.clock.advance(600)
        self.assertEqual([u.id for u in self.b.pool.candidates("docker.io", counted=True)], [1, 2])

    def test_a_window_cooldown_ended_early_ends_on_the_other_node(self):
        a1 = up(self.a)
        self.a.health.note_rate_limit(a1, 200, hdrs(ratelimit_limit=b"100;w=21600",
                                                    ratelimit_remaining=b"0;w=21600"))
        hb = up(self.b).health
        self.assertEqual(hb.ratelimited_until, self.clock.seconds() + 21600)
        self.assertEqual((hb.ratelimit_scope, hb.ratelimit_reason), ("pulls", "window"))
        self.assertEqual(hb.rate_limit.remaining, 0)
        self.assertEqual([u.id for u in self.b.pool.candidates("docker.io", counted=True)], [2])
        self.assertEqual([u.id for u in self.b.pool.candidates("docker.io")], [1, 2])  # HEADs still go
        self.clock.advance(120)
        self.a.health.note_rate_limit(a1, 200, hdrs(ratelimit_limit=b"100;w=21600",
                                                    ratelimit_remaining=b"3;w=21600"))
        self.assertEqual(hb.ratelimited_until, 0.0)
        self.assertEqual(hb.rate_limit.remaining, 3)
        self.assertEqual([u.id for u in self.b.pool.candidates("docker.io", counted=True)], [1, 2])

    def test_retry_after_is_kept_when_a_peer_only_guessed(self):
        self.b.health.note_rate_limit(up(self.b), 429, hdrs(retry_after=b"900"))
        hb = up(self.b).health
        # a's own copy (from b) says "retry-after": a later answer with pulls left on a
        # does not end it, so nothing goes out and b keeps it
        sent = len(self.n.sent())
        self.clock.advance(60)
        self.a.health.note_rate_limit(up(self.a), 200, hdrs(ratelimit_remaining=b"5"))
        self.assertEqual(len(self.n.sent()), sent)
        self.assertEqual(hb.ratelimited_until, START + 900)

    def test_the_later_deadline_wins_and_no_deadline_goes_past_the_event(self):
        hb = up(self.b).health
        now = self.clock.seconds()
        self.b.health.note_rate_limit(up(self.b), 429, hdrs(retry_after=b"1000"))
        a_snap = snapshot(up(self.a), now)
        sharing = self.b.sharing
        sharing.received(dict(a_snap, ratelimited_until=now + 100, reason="window"))
        self.assertEqual(hb.ratelimited_until, now + 1000)  # b's own, later, stays
        self.assertEqual(hb.ratelimit_reason, "retry-after")
        sharing.received(dict(a_snap, ratelimited_until=now + 2000, scope="pulls"))
        self.assertEqual(hb.ratelimited_until, now + 2000)  # exactly the event's
        sharing.received(dict(a_snap, ratelimited_until=now + 10 ** 9, state="down",
                              cooldown_until=now + 10 ** 9))
        self.assertEqual(hb.ratelimited_until, now + MAX_RATELIMIT_COOLDOWN)  # a lie is capped
        self.assertEqual(hb.cooldown_until, now + MAX_RATELIMIT_COOLDOWN)
        for bad in ("x", None, float("inf"), True, [1]):
            sharing.received(dict(a_snap, ratelimited_until=bad, cooldown_until=bad, at=bad))
        self.assertEqual(hb.ratelimited_until, now + MAX_RATELIMIT_COOLDOWN)

    def test_an_older_failure_does_not_override_a_newer_success(self):
        now = self.clock.seconds()
        self.b.health.mark_ok(up(self.b), 0.02)
        old = dict(snapshot(up(self.a), now - 5), state="down", error="HTTP 502",
                   cooldown_until=now + 25)
        self.b.sharing.received(old)
        self.assertEqual(self.b.health.report()[1]["state"], "up")
        self.b.sharing.received(dict(old, at=now))
        self.assertEqual(self.b.health.report()[1]["state"], "cooldown")

    def test_unknown_registries_and_edited_urls_are_ignored(self):
        now = self.clock.seconds()
        snap = dict(snapshot(up(self.a), now), state="down", cooldown_until=now + 30,
                    ratelimited_until=now + 30)
        for event in (dict(snap, id=99), dict(snap, url="https://elsewhere.test"), dict(snap, id=True),
                      dict(snap, id="1"), {}):
            self.b.sharing.received(event)
        self.assertEqual(self.b.health.report()[1]["state"], "unknown")
        self.assertEqual(self.b.sharing.applied, 0)
        self.b.sharing.received(snap)
        self.assertEqual(self.b.health.report()[1]["state"], "cooldown")

    def test_applying_an_event_publishes_nothing(self):
        self.fail(self.a, FAILURES_BEFORE_COOLDOWN)
        self.clock.advance(MIN_INTERVAL)
        origins = {o for o, kind, _d in self.n.hub.sent if kind == KIND}
        self.assertEqual(origins, {self.a.sharing.bus.origin})

    def test_alone_nothing_is_shared(self):
        node = build_upstreams(CONFIG, self.clock)
        node.pool.set_registries(ROWS)
        self.assertIsNone(node.sharing)
        node.health.mark_failed(up(node), "x")
        self.assertEqual(node.health.report()[1]["state"], "down")

    def test_a_number_beyond_any_float_in_an_event_is_ignored(self):
        now = self.clock.seconds()
        self.b.sharing.received({"id": 1, "url": "https://hub.test", "state": "down", "at": now,
                                 "error": "HTTP 503", "cooldown_until": 10 ** 400,
                                 "ratelimited_until": -10 ** 400,
                                 "rate_limit": [1, 1, 1, 10 ** 400]})
        hb = up(self.b).health
        self.assertEqual(hb.state, "down")  # what is readable applies
        self.assertEqual(hb.cooldown_until, 0.0)
        self.assertEqual(hb.ratelimited_until, 0.0)


class StoredStateTests(unittest.TestCase):
    """upstream_state: a node that starts later (or resyncs) loads what is in force."""

    @coro
    async def setUp(self):
        from tests.fixtures.pgserver import temp_database

        self.db = temp_database(self)
        self.n = Nodes(1, db=self.db)
        self.a = self.n.pools[0]
        self.clock = self.n.clock

    async def rows(self):
        await self.a.sharing.flush()
        rows = await self.db.query("SELECT upstream, state, node FROM upstream_state ORDER BY upstream")
        return [(r["upstream"], json.loads(r["state"]), r["node"]) for r in rows]

    @coro
    async def test_transitions_are_stored_and_loaded_at_start(self):
        self.a.health.note_rate_limit(up(self.a, 2), 429, hdrs(retry_after=b"300"))
        for _ in range(FAILURES_BEFORE_COOLDOWN):
            self.a.health.mark_failed(up(self.a), "HTTP 503")
        self.clock.advance(MIN_INTERVAL)
        rows = await self.rows()
        self.assertEqual([(k, s["url"], node) for k, s, node in rows],
                         [("1", "https://hub.test", self.a.sharing.bus.origin),
                          ("2", "https://mirror.test", self.a.sharing.bus.origin)])
        self.assertEqual(rows[0][1]["cooldown_until"], up(self.a).health.cooldown_until)
        # a node starting now: alone on its bus, it reads the table
        c = Nodes(0, clock=self.clock).add(self.db)
        self.assertEqual(await c.sharing.load(), 2)
        self.assertEqual(c.health.report()[1]["state"], "cooldown")
        self.assertEqual(up(c).health.cooldown_until, up(self.a).health.cooldown_until)
        self.assertEqual(c.health.report()[2]["state"], "ratelimited")
        self.assertEqual(up(c, 2).health.ratelimited_until, START + 300)
        # what is no longer in force is not loaded
        self.clock.advance(300)
        late = Nodes(0, clock=self.clock).add(self.db)
        self.assertEqual(await late.sharing.load(), 0)
        self.assertEqual(late.health.report()[1]["state"], "unknown")

    @coro
    async def test_resync_loads_the_table(self):
        for _ in range(FAILURES_BEFORE_COOLDOWN):
            self.a.health.mark_failed(up(self.a), "HTTP 503")
        self.clock.advance(MIN_INTERVAL)
        await self.rows()
        nodes = Nodes(0, clock=self.clock)
        c = nodes.add(self.db)
        bus = c.sharing.bus
        loads = []
        real = c.sharing.load
        c.sharing.load = lambda: loads.append(real()) or loads[-1]
        c.sharing.bus.hub.buses.remove(bus)  # c was not listening when a sent
        bus.resync({"users"})  # the bus (re)connected
        self.assertEqual(len(loads), 1)
        await loads[0]
        self.assertEqual(c.health.report()[1]["state"], "cooldown")

    @coro
    async def test_a_registry_row_of_another_url_is_not_loaded(self):
        for _ in range(FAILURES_BEFORE_COOLDOWN):
            self.a.health.mark_failed(up(self.a), "HTTP 503")
        self.clock.advance(MIN_INTERVAL)
        await self.rows()
        rows = [dict(ROWS[0], url="https://edited.test"), ROWS[1]]
        c = Nodes(0, clock=self.clock).add(self.db, rows=rows)
        self.assertEqual(await c.sharing.load(), 0)
        self.assertEqual(c.health.report()[1]["state"], "unknown")

    @coro
    async def test_stop_sends_what_is_due_and_waits_for_the_write(self):
        self.a.health.mark_failed(up(self.a), "HTTP 503")
        self.a.health.mark_ok(up(self.a), 0.01)  # due after the interval
        await self.a.sharing.stop()
        [(_k, state, _node)] = await self.rows()
        self.assertEqual(state["state"], "up")
        self.assertEqual(len(self.n.sent()), 2)

    @coro
    async def test_hostile_rows_do_not_stop_the_others_from_loading(self):
        from zmirror.upstream.shared import UPSERT

        # written by hand (or by a hostile node) before the good row: a number beyond any
        # float, and JSON nested deeper than the parser's recursion limit
        huge = json.dumps({"id": 2, "url": "https://mirror.test", "state": "down", "at": START,
                           "cooldown_until": 10 ** 400})
        await self.db.execute(UPSERT, ("0a", huge, "x", START))
        await self.db.execute(UPSERT, ("0b", "[" * 100_000 + "]" * 100_000, "x", START))
        for _ in range(FAILURES_BEFORE_COOLDOWN):
            self.a.health.mark_failed(up(self.a), "HTTP 503")
        self.clock.advance(MIN_INTERVAL)
        await self.a.sharing.flush()
        c = Nodes(0, clock=self.clock).add(self.db)
        self.assertEqual(await c.sharing.load(), 1)
        self.assertEqual(c.health.report()[1]["state"], "cooldown")
        self.assertEqual(up(c, 2).health.cooldown_until, 0.0)


from tests.fixtures.pgserver import on_postgresql  # noqa: E402

StoredStatePostgresTests = on_postgresql(StoredStateTests)
