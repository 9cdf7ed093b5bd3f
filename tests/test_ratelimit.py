"""Docker Hub's rate limits: ``ratelimit-*`` headers recorded per upstream and shown
(registries API, /metrics); a 429 or no pulls left cools that upstream down until
its window resets, pulls go to the next one, and the manifest cache serves stale
copies meanwhile; HEADs (which Docker Hub does not count) still go everywhere;
being rate-limited is no failure; hostile header values are ignored."""

from __future__ import annotations

import json
from email.utils import formatdate

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from tests.fixtures.proxyenv import ProxyEnv
from tests.fixtures.admin import AdminTestMixin
from tests.fixtures.metrics import value
from tests.fixtures.upstream import (MANIFEST, MDIGEST, TAG_PATH, FakeResponse, OneAgent, World,
                                     manifest_response)
from zmirror.cache.manifests import Manifest
from zmirror.metrics import Metrics
from zmirror.oci.errors import RegistryError
from zmirror.registry.manifests import STALE_WARNING
from zmirror.testing import FakeRegistry, MemoryManifests
from zmirror.upstream.headers import parse_rate_limit, parse_retry_after
from zmirror.upstream.health import DEFAULT_RATELIMIT_COOLDOWN, MAX_RATELIMIT_COOLDOWN, UpstreamHealth
from zmirror.upstream.pool import UpstreamPool

HUB_HEADERS = {b"ratelimit-limit": b"100;w=21600", b"ratelimit-remaining": b"76;w=21600",
               b"docker-ratelimit-source": b"203.0.113.9"}
NEW = MANIFEST.replace(b"[]", b"[ ]")


def limited(code=429, **headers):
    return lambda: FakeResponse(code, {k.replace("_", "-").encode(): v for k, v in headers.items()},
                                b'{"errors":[{"code":"TOOMANYREQUESTS"}]}')


def hdrs(**values) -> Headers:
    h = Headers()
    for k, v in values.items():
        h.setRawHeaders(k.replace("_", "-"), v if isinstance(v, list) else [v])
    return h


class DockerHubLike:
    """One upstream that counts manifest GETs (never HEADs) against a limit and
    says so in ``ratelimit-*`` headers; past the limit a GET is a 429 without
    Retry-After, a HEAD still answers."""

    def __init__(self, world: World, host: str, *, limit: int, window: int = 21600, body: bytes = MANIFEST):
        self.limit, self.remaining, self.window, self.body = limit, limit, window, body
        url = f"http://{host}{TAG_PATH}"
        world.agent.on("GET", url, self.get)
        world.agent.on("HEAD", url, self.head)
        self.gets = self.heads = 0

    def headers(self):
        return {b"ratelimit-limit": f"{self.limit};w={self.window}".encode(),
                b"ratelimit-remaining": f"{self.remaining};w={self.window}".encode()}

    def get(self):
        self.gets += 1
        if self.remaining == 0:
            return FakeResponse(429, self.headers(), b'{"errors":[{"code":"TOOMANYREQUESTS"}]}')
        self.remaining -= 1
        return manifest_response(self.body, headers=self.headers())

    def head(self):
        self.heads += 1
        r = manifest_response(self.body, headers=self.headers())
        r.body = b""  # a HEAD: headers only (Content-Length of the manifest)
        r.headers.setRawHeaders(b"content-length", [str(len(self.body)).encode()])
        return r


class ParseTests(unittest.TestCase):
    def test_docker_hub_headers(self):
        self.assertEqual(parse_rate_limit(hdrs(ratelimit_limit=b"100;w=21600",
                                               ratelimit_remaining=b"76;w=21600")), (100, 76, 21600))
        self.assertEqual(parse_rate_limit(hdrs(ratelimit_limit=b"200", ratelimit_remaining=b"0")),
                         (200, 0, None))
        # the IETF draft's form: the current limit, then its policies
        self.assertEqual(parse_rate_limit(hdrs(ratelimit_limit=b"100, 100;w=21600;comment=\"x\"",
                                               ratelimit_remaining=b"9")), (100, 9, 21600))
        self.assertEqual(parse_rate_limit(Headers()), (None, None, None))
        # several lines: the first counts
        self.assertEqual(parse_rate_limit(hdrs(ratelimit_remaining=[b"5;w=60", b"7;w=60"])), (None, 5, 60))

    def test_hostile_values_ignored(self):
        for bad in (b"", b"abc", b"-1", b"1e3", b"1.5", b"12345678901", b"0x10", b"\xff\xfe",
                    b"100" + b" " * 300, b"1," * 20, b"; w=5", b"\x00", b"100\r\nX-Evil: 1"):
            self.assertEqual(parse_rate_limit(hdrs(ratelimit_limit=bad, ratelimit_remaining=bad)),
                             (None, None, None), bad)
        # a count with a window that is no number of seconds we believe: count kept, window dropped
        for window in (b"w=abc", b"w=0", b"w=-5", b"w=99999999", b"w=", b"w=1e9"):
            self.assertEqual(parse_rate_limit(hdrs(ratelimit_remaining=b"3;" + window)), (None, 3, None))
        # more left than allowed: neither is believed
        self.assertEqual(parse_rate_limit(hdrs(ratelimit_limit=b"10", ratelimit_remaining=b"11")),
                         (None, None, None))

    def test_retry_after(self):
        self.assertEqual(parse_retry_after([b"120"], 0), 120.0)
        self.assertEqual(parse_retry_after([b" 7 "], 0), 7.0)
        now = 1_700_000_000.0
        self.assertAlmostEqual(parse_retry_after([formatdate(now + 90, usegmt=True).encode()], now), 90, 0)
        self.assertEqual(parse_retry_after([formatdate(now - 90, usegmt=True).encode()], now), 0.0)
        for bad in (None, [], [b""], [b"-5"], [b"1.5"], [b"soon"], [b"9" * 13], [b"\xff"], [b"1" * 100],
                    [b"Mon, 99 Foo 2024 99:99:99 GMT"], [b"Wed, 21 Oct 2015 07:28:00"]):
            self.assertIsNone(parse_retry_after(bad, now), bad)


def two(**kw) -> World:
    return World(("a.fake", "b.fake"), **kw)


def pull(w: World, path: str = TAG_PATH, method: bytes = b"GET"):
    """The proxy's answer to a pull (a BytesResult), or the RegistryError it raised."""
    out = []
    w.pull(path, method=method).addBoth(out.append)
    assert out, "the pull did not complete"
    if isinstance(out[0], Exception) or hasattr(out[0], "value"):
        return getattr(out[0], "value", out[0])
    return out[0]


def sent(w: World, host: str, method: str = "GET") -> int:
    return w.agent.sent.count((method, f"http://{host}{TAG_PATH}"))


class RecordTests(unittest.TestCase):
    def test_headers_recorded_from_get_and_head(self):
        w = World()
        w.clock.advance(1000)
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response(headers=HUB_HEADERS))
        self.assertEqual(pull(w).status, 200)
        h = w.health()
        self.assertEqual(h["rate_limit"], {"limit": 100, "remaining": 76, "window": 21600, "reset_at": None,
                                           "updated_at": 1000})
        self.assertEqual(h["state"], "up")
        # a HEAD answer (Docker Hub sends them there too) updates it
        w.clock.advance(5)
        w.agent.on("HEAD", "http://a.fake" + TAG_PATH,
                   lambda: manifest_response(headers={b"ratelimit-remaining": b"75;w=21600",
                                                      b"content-length": str(len(MANIFEST)).encode()}))
        self.assertEqual(pull(w, method=b"HEAD").status, 200)
        self.assertEqual(w.health()["rate_limit"], {"limit": 100, "remaining": 75, "window": 21600,
                                                    "reset_at": None, "updated_at": 1005})
        self.assertEqual(w.agent.sent[-1], ("HEAD", "http://a.fake" + TAG_PATH))

    def test_no_headers_nothing_recorded(self):
        w = World()
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response())
        pull(w)
        self.assertIsNone(w.health()["rate_limit"])

    def test_hostile_values_leave_the_upstream_alone(self):
        w = two()
        bad = {b"ratelimit-limit": b"-1;w=21600", b"ratelimit-remaining": b"0;w=abc, \xff"}
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response(headers=bad))
        for _ in range(3):
            self.assertEqual(pull(w).status, 200)
        self.assertEqual(sent(w, "a.fake"), 3)  # never cooled down
        self.assertIsNone(w.health()["rate_limit"])
        # remaining above the limit: a lie, ignored
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response(
            headers={b"ratelimit-limit": b"10", b"ratelimit-remaining": b"11"}))
        pull(w)
        self.assertIsNone(w.health()["rate_limit"])

    def test_absurd_waits_are_capped(self):
        w = two()
        w.agent.on("GET", "http://a.fake" + TAG_PATH, limited(retry_after=b"999999999999"))
        w.agent.on("GET", "http://b.fake" + TAG_PATH, lambda: manifest_response())
        pull(w)
        self.assertEqual(w.health()["rate_limit"]["reset_at"], MAX_RATELIMIT_COOLDOWN)
        # a hostile Retry-After and window: the default wait
        w = two()
        w.agent.on("GET", "http://a.fake" + TAG_PATH,
                   limited(retry_after=b"-3", ratelimit_remaining=b"0;w=999999999"))
        w.agent.on("GET", "http://b.fake" + TAG_PATH, lambda: manifest_response())
        pull(w)
        self.assertEqual(w.health()["rate_limit"]["reset_at"], DEFAULT_RATELIMIT_COOLDOWN)

    def test_tags_and_blob_answers_are_not_read_for_limits(self):
        w = World()
        w.agent.on("GET", "http://a.fake/v2/library/x/tags/list",
                   lambda: FakeResponse(200, {b"ratelimit-remaining": b"0;w=60"}, b'{"tags":[]}'))
        pull(w, "/v2/library/x/tags/list")
        self.assertIsNone(w.health()["rate_limit"])
        self.assertEqual(w.health()["state"], "up")


class CoolDownTests(unittest.TestCase):
    def test_429_with_retry_after_goes_to_the_next_until_the_reset(self):
        metrics = Metrics(process=False)
        w = two(metrics=metrics)
        w.agent.on("GET", "http://a.fake" + TAG_PATH,
                   limited(retry_after=b"120", ratelimit_limit=b"100;w=21600", ratelimit_remaining=b"0;w=21600"))
        w.agent.on("GET", "http://b.fake" + TAG_PATH, lambda: manifest_response())
        self.assertEqual(pull(w).status, 200)
        h = w.health(1)
        self.assertEqual((h["state"], h["consecutive_failures"]), ("ratelimited", 0))
        self.assertEqual(h["rate_limit"]["reset_at"], 120)  # Retry-After wins over the window
        self.assertEqual(h["rate_limit"]["remaining"], 0)
        for step in (0, 60, 59):
            w.clock.advance(step)
            self.assertEqual(pull(w).status, 200)
            self.assertEqual(sent(w, "a.fake"), 1)  # skipped while cooling down
        self.assertEqual(sent(w, "b.fake"), 4)
        w.clock.advance(1)  # the window reset
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response())
        self.assertEqual(pull(w).status, 200)
        self.assertEqual((sent(w, "a.fake"), sent(w, "b.fake")), (2, 4))
        self.assertEqual(w.health(1)["state"], "up")
        self.assertIsNone(w.health(1)["rate_limit"]["reset_at"])
        # never a failure: no failures-in-a-row cool-down, no error counted
        self.assertEqual(value(metrics.exposition(), "zmirror_upstream_errors_total", upstream="a.fake"), None)

    def test_429s_never_add_up_to_the_failure_cool_down(self):
        w = two()
        w.agent.on("GET", "http://a.fake" + TAG_PATH, limited(retry_after=b"1"))
        w.agent.on("GET", "http://b.fake" + TAG_PATH, lambda: manifest_response())
        for _ in range(5):
            pull(w)
            w.clock.advance(1)
        self.assertEqual(sent(w, "a.fake"), 5)
        h = w.pool.upstreams[0].health
        self.assertEqual((h.consecutive_failures, h.cooldown_until, h.last_error), (0, 0.0, None))

    def test_remaining_zero_goes_to_the_next_for_the_window(self):
        w = two()
        hub = DockerHubLike(w, "a.fake", limit=2, window=3600)
        w.agent.on("GET", "http://b.fake" + TAG_PATH, lambda: manifest_response())
        pull(w)
        pull(w)  # the last pull a.fake allows: it says remaining 0
        self.assertEqual(hub.gets, 2)
        h = w.health(1)
        self.assertEqual((h["state"], h["rate_limit"]["remaining"], h["rate_limit"]["reset_at"]),
                         ("ratelimited", 0, 3600))
        w.clock.advance(3599)
        self.assertEqual(pull(w).status, 200)
        self.assertEqual((hub.gets, sent(w, "b.fake")), (2, 1))  # no 429 asked for
        w.clock.advance(1)
        hub.remaining = 2  # its window reset
        pull(w)
        self.assertEqual((hub.gets, sent(w, "b.fake")), (3, 1))
        self.assertEqual(w.health(1)["state"], "up")

    def test_answer_with_pulls_left_ends_a_no_pulls_left_cool_down_early(self):
        w = two()
        hub = DockerHubLike(w, "a.fake", limit=1, window=21600)
        w.agent.on("GET", "http://b.fake" + TAG_PATH, lambda: manifest_response())
        pull(w)
        self.assertEqual(w.health(1)["state"], "ratelimited")
        w.clock.advance(600)
        hub.remaining = 1  # Docker Hub's window slides: a pull is free again
        self.assertEqual(pull(w, method=b"HEAD").status, 200)  # a HEAD goes there still, and tells
        self.assertEqual(hub.heads, 1)
        self.assertEqual(w.health(1)["state"], "up")
        pull(w)
        self.assertEqual((hub.gets, sent(w, "b.fake")), (2, 0))

    def test_pulls_left_end_a_429_without_retry_after_early_not_one_with(self):
        w = two()
        hub = DockerHubLike(w, "a.fake", limit=0, window=21600)  # its GETs are 429s, window only
        w.agent.on("GET", "http://b.fake" + TAG_PATH, lambda: manifest_response())
        pull(w)
        self.assertEqual(w.health(1)["rate_limit"]["reset_at"], 21600)
        hub.limit = hub.remaining = 3
        pull(w, method=b"HEAD")
        self.assertEqual(w.health(1)["state"], "up")
        # with Retry-After the upstream said how long: a HEAD with pulls left does not shorten it
        w.agent.on("GET", "http://a.fake" + TAG_PATH, limited(retry_after=b"900"))
        pull(w)
        pull(w, method=b"HEAD")
        self.assertEqual((w.health(1)["state"], w.health(1)["rate_limit"]["reset_at"]), ("ratelimited", 900))

    def test_every_upstream_limited_uncached_is_429_with_the_shortest_wait(self):
        w = two()
        w.agent.on("GET", "http://a.fake" + TAG_PATH, limited(retry_after=b"300"))
        w.agent.on("GET", "http://b.fake" + TAG_PATH, limited(ratelimit_remaining=b"0;w=90"))
        err = pull(w)
        self.assertIsInstance(err, RegistryError)
        self.assertEqual((err.status, err.code, err.headers[b"Retry-After"]), (429, "TOOMANYREQUESTS", b"90"))
        w.clock.advance(30)
        before = len(w.agent.sent)
        err = pull(w)
        self.assertEqual((err.status, err.code, err.headers[b"Retry-After"]), (429, "TOOMANYREQUESTS", b"60"))
        self.assertEqual(len(w.agent.sent), before)  # nobody was asked
        self.assertNotIn("fake", err.body().decode())

    def test_limited_and_not_found_elsewhere_is_429(self):
        w = two()
        w.agent.on("GET", "http://a.fake" + TAG_PATH, limited(retry_after=b"50"))
        w.agent.on("GET", "http://b.fake" + TAG_PATH, lambda: FakeResponse(404))
        for _ in range(2):  # asked, then skipped
            err = pull(w)
            self.assertEqual((err.status, err.code, err.headers[b"Retry-After"]),
                             (429, "TOOMANYREQUESTS", b"50"))
        self.assertEqual(sent(w, "a.fake"), 1)


class StaleTests(unittest.TestCase):
    def world(self, **kw):
        clock = Clock()
        local = MemoryManifests(clock, ttl=300)
        w = two(manifests=local, clock=clock)
        return w, local

    def test_every_upstream_limited_cached_tag_served_stale(self):
        w, local = self.world()
        local.store("library/x", "latest", Manifest(MDIGEST, "application/vnd.docker.distribution.manifest.v2+json",
                                                    MANIFEST))
        for host in ("a.fake", "b.fake"):
            for method in ("GET", "HEAD"):
                w.agent.on(method, f"http://{host}{TAG_PATH}", limited(retry_after=b"600"))
        w.clock.advance(301)
        result = pull(w)
        self.assertEqual((result.status, result.headers[b"Warning"]), (200, STALE_WARNING.encode()))
        self.assertEqual(result.body, MANIFEST)
        self.assertEqual([w.health(i)["state"] for i in (1, 2)], ["ratelimited", "ratelimited"])
        # still limited, later: stale again; they 429 even HEADs, so nobody is asked at all now
        w.clock.advance(301)
        result = pull(w)
        self.assertEqual(result.headers[b"Warning"], STALE_WARNING.encode())
        self.assertEqual(sorted(w.agent.sent), [("HEAD", "http://a.fake" + TAG_PATH),
                                                ("HEAD", "http://b.fake" + TAG_PATH)])
        self.assertEqual(local.stats["stale_served"], 2)
        # an uncached tag: 429 with the time left as Retry-After
        err = pull(w, "/v2/library/x/manifests/other")
        self.assertEqual((err.status, err.code), (429, "TOOMANYREQUESTS"))
        self.assertEqual(err.headers[b"Retry-After"], b"299")
        w.clock.advance(100)
        err = pull(w, "/v2/library/x/manifests/other")
        self.assertEqual(err.headers[b"Retry-After"], b"199")
        self.assertEqual(len(w.agent.sent), 2)
        # the window over: asked again
        w.clock.advance(199)
        pull(w)
        self.assertEqual(len(w.agent.sent), 4)

    def test_head_revalidation_does_not_count_and_still_works_when_limited(self):
        w, local = self.world()
        a = DockerHubLike(w, "a.fake", limit=1)
        b = DockerHubLike(w, "b.fake", limit=0)
        self.assertEqual(pull(w).status, 200)  # a.fake's last pull: a miss, GET
        self.assertEqual((a.gets, a.remaining), (1, 0))
        for _ in range(3):  # stale each time: revalidated with HEADs, served fresh, nothing counted
            w.clock.advance(301)
            result = pull(w)
            self.assertEqual(result.status, 200)
            self.assertNotIn(b"Warning", result.headers)
        self.assertEqual((a.gets, a.heads, a.remaining, b.gets, b.heads), (1, 3, 0, 0, 0))
        self.assertEqual(local.stats["revalidated"], 3)
        # the tag moves upstream: the GET that would follow is a pull nobody has left → stale
        a.body = NEW
        w.clock.advance(301)
        result = pull(w)
        self.assertEqual(result.headers[b"Warning"], STALE_WARNING.encode())
        self.assertEqual((a.gets, b.gets), (1, 1))  # b.fake (remaining 0 unseen yet) answered 429
        self.assertEqual(w.health(2)["state"], "ratelimited")


class HttpTests(unittest.TestCase):
    """Through the routes with FakeRegistry upstreams (their 429 carries Retry-After: 7)."""

    def setUp(self):
        self.up1, self.up2 = FakeRegistry(), FakeRegistry()
        for up in (self.up1, self.up2):
            up.add_manifest("library/nginx", "latest", MANIFEST)
        self.env = ProxyEnv([("up1.fake", self.up1), ("up2.fake", self.up2)])
        self.path = "/v2/library/nginx/manifests/latest"

    def gets(self, up):
        return [r for r in up.requests if r[0] == "GET" and r[2] == self.path]

    def test_first_upstream_429_pulls_go_to_the_second_until_retry_after(self):
        self.up1.faults[self.path] = [429]
        for _ in range(3):
            resp, body = self.env.request("GET", self.path)
            self.assertEqual((resp.code, body), (200, MANIFEST))
        self.assertEqual((len(self.gets(self.up1)), len(self.gets(self.up2))), (1, 3))
        self.env.clock.advance(7)
        resp, body = self.env.request("GET", self.path)
        self.assertEqual((resp.code, len(self.gets(self.up1)), len(self.gets(self.up2))), (200, 2, 3))

    def test_every_upstream_429_cached_tag_served_stale(self):
        local = MemoryManifests(self.env.clock, ttl=300)
        self.env.proxy.manifest_source, local = self._pull_through(local)
        resp, body = self.env.request("GET", self.path)
        self.assertEqual((resp.code, resp.headers.getRawHeaders(b"warning")), (200, None))
        self.env.clock.advance(301)
        self.up1.faults[self.path] = [429, 429]
        self.up2.faults[self.path] = [429, 429]
        for _ in range(2):
            resp, body = self.env.request("GET", self.path)
            self.assertEqual((resp.code, body), (200, MANIFEST))
            self.assertEqual(resp.headers.getRawHeaders(b"warning"), [STALE_WARNING.encode()])
        # revalidated with HEADs only; both 429'd them, so the second pull asked nobody
        self.assertEqual([r[0] for r in self.up1.requests if r[2] == self.path], ["GET", "HEAD"])
        self.assertEqual([r[0] for r in self.up2.requests if r[2] == self.path], ["HEAD"])
        self.assertEqual([h["state"] for h in self.env.pool.health.report().values()], ["ratelimited"] * 2)

    def _pull_through(self, local):
        from zmirror.registry.manifests import PullThroughManifests
        from zmirror.upstream.failover import Failover
        from zmirror.upstream.manifests import RemoteManifests

        return PullThroughManifests(local, RemoteManifests(Failover(self.env.pool, self.env.clock), self.env.clock)), local

    def test_every_upstream_429_uncached(self):
        self.up1.faults[self.path] = [429]
        self.up2.faults[self.path] = [429]
        resp, body = self.env.request("GET", self.path)
        self.assertEqual(resp.code, 429)
        self.assertEqual(resp.headers.getRawHeaders(b"retry-after"), [b"7"])
        self.assertEqual(json.loads(body)["errors"][0]["code"], "TOOMANYREQUESTS")
        self.env.clock.advance(3)
        resp, body = self.env.request("GET", self.path)
        self.assertEqual((resp.code, resp.headers.getRawHeaders(b"retry-after")), (429, [b"4"]))
        self.assertEqual(len(self.gets(self.up1)) + len(self.gets(self.up2)), 2)


class ShownTests(AdminTestMixin, unittest.TestCase):
    """The registries API and /metrics show what the pool knows."""

    def pool(self, hub_id):
        clock = Clock()
        clock.advance(5000)
        pool = UpstreamPool(OneAgent(None), clock, health=UpstreamHealth(clock))
        pool.set_registries([{"id": hub_id, "name": "Docker Hub", "url": "https://registry-1.docker.io"},
                             {"id": hub_id + 1, "name": "other", "url": "https://other.test"}])
        up, other = pool.upstreams
        pool.health.note_rate_limit(up, 429, hdrs(retry_after=b"600", ratelimit_limit=b"100;w=21600",
                                                  ratelimit_remaining=b"0;w=21600"))
        pool.health.note_rate_limit(other, 200, hdrs(ratelimit_limit=b"200;w=3600", ratelimit_remaining=b"150"))
        return pool

    def test_registries_api(self):
        return Deferred.fromCoroutine(self._registries_api())

    async def _registries_api(self):
        _c, _h, obj = await self.call("GET", "/api/registries")
        [hub] = obj["items"]
        self.assertIsNone(hub["rate_limit"])
        self.upstreams.healths = self.pool(hub["id"]).health.report()
        _c, _h, obj = await self.call("GET", "/api/registries")
        [hub] = obj["items"]
        self.assertEqual(hub["health"]["state"], "ratelimited")
        self.assertEqual(hub["health"]["consecutive_failures"], 0)
        self.assertEqual(hub["rate_limit"], {"limit": 100, "remaining": 0, "window": 21600,
                                             "reset_at": 5600, "updated_at": 5000})
        self.assertNotIn("rate_limit", hub["health"])

    def test_metrics(self):
        pool = self.pool(1)
        metrics = Metrics(process=False)
        metrics.watch_upstreams(pool)
        t = metrics.exposition()
        self.assertEqual(value(t, "zmirror_upstream_ratelimit_limit", upstream="Docker Hub"), 100)
        self.assertEqual(value(t, "zmirror_upstream_ratelimit_remaining", upstream="Docker Hub"), 0)
        self.assertEqual(value(t, "zmirror_upstream_ratelimit_window_seconds", upstream="Docker Hub"), 21600)
        self.assertEqual(value(t, "zmirror_upstream_ratelimited", upstream="Docker Hub"), 1)
        self.assertEqual(value(t, "zmirror_upstream_ratelimit_reset_timestamp_seconds", upstream="Docker Hub"),
                         5600)
        self.assertEqual(value(t, "zmirror_upstream_up", upstream="Docker Hub"), 1)  # not broken
        self.assertEqual(value(t, "zmirror_upstream_ratelimit_remaining", upstream="other"), 150)
        self.assertEqual(value(t, "zmirror_upstream_ratelimit_window_seconds", upstream="other"), 3600)
        self.assertEqual(value(t, "zmirror_upstream_ratelimited", upstream="other"), 0)
        self.assertIsNone(value(t, "zmirror_upstream_ratelimit_reset_timestamp_seconds", upstream="other"))
        pool.clock.advance(600)
        t = metrics.exposition()
        self.assertEqual(value(t, "zmirror_upstream_ratelimited", upstream="Docker Hub"), 0)


class NamespaceTests(unittest.TestCase):
    """A rate limit is per upstream, and an upstream serves one namespace: a
    limited upstream of another namespace is neither skipped for nor reported
    in the answers of this one."""

    def test_limited_upstream_of_another_namespace_is_not_reported(self):
        clock = Clock()
        pool = UpstreamPool(OneAgent(None), clock=clock, health=UpstreamHealth(clock))
        pool.set_registries([
            {"id": 1, "name": "hub", "url": "http://a.fake", "priority": 1, "enabled": 1},
            {"id": 2, "name": "ghcr", "url": "http://g.fake", "priority": 1, "enabled": 1,
             "namespace": "ghcr.io"}])
        hub, ghcr = sorted(pool.upstreams, key=lambda u: u.id)
        pool.health.note_rate_limit(ghcr, 429, hdrs(retry_after=b"300"))
        self.assertEqual([u.id for u in pool.candidates("docker.io", counted=True)], [hub.id])
        self.assertEqual(pool.rate_limited("docker.io", counted=True), [])
        self.assertEqual([u.id for u, _ in pool.rate_limited("ghcr.io", counted=True)], [ghcr.id])
        self.assertEqual(pool.candidates("ghcr.io", counted=True), [])
