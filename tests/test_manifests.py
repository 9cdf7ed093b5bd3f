"""The manifest sources: PullThroughManifests over fake local and remote stores,
RemoteManifests and RemoteTags over scripted upstream answers (the values an upstream
sends checked where they come in), the proxy choosing between them, and the manifest
cache (zmirror.cache.manifests: nothing invalid cached, bounded memory backed by the
database)."""

from __future__ import annotations

import hashlib
import json

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.helpers import coro, temp_dir
from tests.fixtures.pgserver import temp_database
from tests.fixtures.proxyenv import ProxyEnv
from tests.fixtures.upstream import (MANIFEST, MDIGEST, TAGS_PATH, TAG_PATH, FakeResponse, World,
                                     manifest_response, token_challenge)
from zmirror.cache.manifests import Manifest, ManifestCache
from zmirror.oci.errors import RegistryError
from zmirror.registry.manifests import STALE_WARNING, PullThroughManifests
from zmirror.oci.mediatypes import DOCKER_V2, OCI_INDEX, OCI_MANIFEST
from zmirror.testing import FakeManifestSource, FakeRegistry, MemoryManifests, sha256
from zmirror.upstream.failover import Failover
from zmirror.upstream.manifests import RemoteManifests, RemoteTags

REPO = "library/nginx"
BODY = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_V2, "layers": []}).encode()
NEW = BODY.replace(b"[]", b"[ ]")


class PullThroughTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.local = MemoryManifests(self.clock, ttl=300)
        self.remote = FakeManifestSource()
        self.source = PullThroughManifests(self.local, self.remote)
        self.digest = self.remote.add(REPO, "latest", BODY)

    def get(self, reference, repo=REPO, accept=(), head=False):
        return Deferred.fromCoroutine(self.source.get(repo, reference, list(accept), head=head))

    def result(self, reference, **kw):
        return self.successResultOf(self.get(reference, **kw))

    def stats(self, *names):
        return tuple(self.local.stats[n] for n in names)

    def test_miss_fetches_with_get_and_stores(self):
        m = self.result("latest")
        self.assertEqual((m.digest, m.media_type, m.body, m.cache_hit, m.warning),
                         (self.digest, DOCKER_V2, BODY, False, None))
        self.assertEqual(self.remote.calls, [(REPO, "latest", "GET")])
        self.assertEqual(self.local.bodies[self.digest].body, BODY)
        self.assertEqual(self.local.tags[(REPO, "latest")][DOCKER_V2].digest, self.digest)
        self.assertEqual(self.stats("hits", "misses"), (0, 1))

    def test_client_head_on_a_miss_fills_with_get(self):
        m = self.result("latest", head=True)
        self.assertEqual(m.body, BODY)  # the caller drops it; the cache keeps it
        self.assertEqual(self.remote.calls, [(REPO, "latest", "GET")])

    def test_fresh_tag_is_a_hit_without_upstream(self):
        self.result("latest")
        self.clock.advance(299)
        m = self.result("latest")
        self.assertEqual((m.body, m.cache_hit, m.warning), (BODY, True, None))
        self.assertEqual(len(self.remote.calls), 1)
        self.assertEqual(self.stats("hits", "misses"), (1, 1))

    def test_by_digest_is_kept_for_good(self):
        self.result(self.digest)
        self.clock.advance(10 ** 7)
        m = self.result(self.digest)
        self.assertEqual((m.body, m.cache_hit), (BODY, True))
        self.assertEqual(self.remote.calls, [(REPO, self.digest, "GET")])

    def test_stale_tag_revalidated_by_head(self):
        self.result("latest")
        self.clock.advance(301)
        m = self.result("latest")
        self.assertEqual((m.body, m.cache_hit), (BODY, True))
        self.assertEqual([c[2] for c in self.remote.calls], ["GET", "HEAD"])
        self.assertEqual(self.stats("hits", "revalidated"), (1, 1))
        self.assertTrue(self.local.fresh(self.local.tags[(REPO, "latest")][DOCKER_V2]))
        self.result("latest")  # fresh again: local
        self.assertEqual(len(self.remote.calls), 2)

    def test_stale_tag_moved_upstream_is_fetched_again(self):
        self.result("latest")
        self.clock.advance(301)
        new = self.remote.add(REPO, "latest", NEW)
        m = self.result("latest")
        self.assertEqual((m.digest, m.body, m.cache_hit), (new, NEW, False))
        self.assertEqual([c[2] for c in self.remote.calls], ["GET", "HEAD", "GET"])
        self.assertEqual(self.local.tags[(REPO, "latest")][DOCKER_V2].digest, new)

    def test_stale_served_with_warning_when_upstreams_fail(self):
        self.result("latest")
        for i, code in enumerate(("UNAVAILABLE", "UPSTREAM_ERROR", "TOOMANYREQUESTS"), start=1):
            self.clock.advance(301)
            self.remote.fail(REPO, "latest", RegistryError(code))
            m = self.result("latest")
            self.assertEqual((m.body, m.cache_hit, m.warning), (BODY, True, STALE_WARNING))
            self.assertEqual(self.stats("hits", "stale_served", "revalidated"), (i, i, 0))
        # the HEAD answered but the GET after it failed: stale too
        self.clock.advance(301)
        self.remote.add(REPO, "latest", NEW)
        self.remote.errors[(REPO, "latest")] = []
        real = self.remote.get

        async def head_ok_get_down(repository, reference, accept, *, head=False, record=None):
            if not head:
                self.remote.calls.append((repository, reference, "GET"))
                raise RegistryError("UNAVAILABLE")
            return await real(repository, reference, accept, head=head, record=record)

        self.remote.get = head_ok_get_down
        m = self.result("latest")
        self.assertEqual((m.body, m.warning), (BODY, STALE_WARNING))
        self.assertEqual([c[2] for c in self.remote.calls[-2:]], ["HEAD", "GET"])

    def test_stale_not_served_for_other_errors(self):
        self.result("latest")
        self.clock.advance(301)
        self.remote.fail(REPO, "latest", RegistryError("DENIED"))
        err = self.failureResultOf(self.get("latest"), RegistryError).value
        self.assertEqual(err.code, "DENIED")
        self.assertIn((REPO, "latest"), self.local.tags)  # kept: the tag may well exist
        self.assertEqual(self.stats("stale_served"), (0,))

    def test_tag_gone_upstream_is_dropped(self):
        self.result("latest")
        self.clock.advance(301)
        del self.remote.manifests[(REPO, "latest")]
        err = self.failureResultOf(self.get("latest"), RegistryError).value
        self.assertEqual((err.status, err.code), (404, "MANIFEST_UNKNOWN"))
        self.assertNotIn((REPO, "latest"), self.local.tags)
        self.assertIn(self.digest, self.local.bodies)  # the body stays, by digest
        self.failureResultOf(self.get("latest"), RegistryError)  # no stale copy any more
        self.assertEqual([c[2] for c in self.remote.calls], ["GET", "HEAD", "GET"])

    def test_miss_with_upstreams_failing_raises(self):
        self.remote.fail(REPO, "latest", RegistryError("UNAVAILABLE"))
        err = self.failureResultOf(self.get("latest"), RegistryError).value
        self.assertEqual(err.code, "UNAVAILABLE")
        self.assertEqual(self.local.tags, {})
        self.assertEqual(self.stats("hits", "misses"), (0, 0))

    def test_digest_known_from_another_repository_confirmed_by_head(self):
        self.result(self.digest)  # cached through library/nginx
        err = self.failureResultOf(self.get(self.digest, repo="library/other"), RegistryError).value
        self.assertEqual(err.code, "MANIFEST_UNKNOWN")  # not in library/other upstream
        self.assertEqual(self.remote.calls[-1], ("library/other", self.digest, "HEAD"))
        self.assertNotIn((self.digest, "library/other"), self.local.repos)
        self.remote.add("library/other", None, BODY)
        m = self.result(self.digest, repo="library/other")
        self.assertEqual((m.body, m.cache_hit), (BODY, True))
        self.assertEqual(self.remote.calls[-1], ("library/other", self.digest, "HEAD"))  # no GET
        self.assertIn((self.digest, "library/other"), self.local.repos)
        calls = len(self.remote.calls)
        self.result(self.digest, repo="library/other")  # known there now: no upstream
        self.assertEqual(len(self.remote.calls), calls)

    def test_cached_type_the_client_does_not_accept_goes_upstream(self):
        self.result("latest")
        self.remote.add(REPO, "latest", NEW, media_type=OCI_INDEX)
        m = self.result("latest", accept=[OCI_INDEX])
        self.assertEqual((m.media_type, m.body, m.cache_hit), (OCI_INDEX, NEW, False))
        # both forms of the tag are kept, each served to the client that accepts it
        self.assertEqual(self.result("latest", accept=[DOCKER_V2]).body, BODY)
        self.assertEqual(self.result("latest", accept=[OCI_INDEX]).body, NEW)
        self.assertEqual(len(self.remote.calls), 2)

    def test_by_digest_of_a_type_the_client_does_not_accept_goes_upstream(self):
        self.result(self.digest)
        err = self.failureResultOf(self.get(self.digest, accept=[OCI_INDEX]), RegistryError).value
        self.assertEqual(err.code, "MANIFEST_UNKNOWN")
        self.assertEqual(self.remote.calls[-1], (REPO, self.digest, "GET"))
        self.assertEqual(self.result(self.digest, accept=["*/*"]).cache_hit, True)

    def test_waits_until_the_local_store_is_loaded(self):
        self.local.loading.close()
        d = self.get("latest")
        self.assertNoResult(d)
        self.assertEqual(self.remote.calls, [])
        self.local.loading.open()
        self.assertEqual(self.successResultOf(d).body, BODY)


class RemoteManifestTests(unittest.TestCase):
    """RemoteManifests on its own (the proxy's tests cover it through HTTP)."""

    def remote(self, *hosts):
        w = World(hosts or ("a.fake",))
        return w, RemoteManifests(Failover(w.pool, w.clock), w.clock, idle_timeout=30)

    def test_head_answered_from_the_upstreams_headers(self):
        w, remote = self.remote()
        w.agent.on("HEAD", "http://a.fake" + TAG_PATH, lambda: FakeResponse(
            200, {b"Docker-Content-Digest": MDIGEST.encode(), b"Content-Type": DOCKER_V2.encode(),
                  b"Content-Length": str(len(MANIFEST)).encode()}))
        m = self.successResultOf(Deferred.fromCoroutine(remote.get("library/x", "latest", [], head=True)))
        self.assertEqual((m.digest, m.media_type, m.body, m.length, m.cache_hit),
                         (MDIGEST, DOCKER_V2, None, len(MANIFEST), None))
        self.assertEqual([s[0] for s in w.agent.sent], ["HEAD"])

    def test_head_naming_another_digest_is_checked_with_get(self):
        w, remote = self.remote()
        path = f"/v2/library/x/manifests/{MDIGEST}"
        w.agent.on("HEAD", "http://a.fake" + path, lambda: FakeResponse(
            200, {b"Docker-Content-Digest": sha256(b"other").encode(), b"Content-Type": DOCKER_V2.encode(),
                  b"Content-Length": b"5"}))
        w.agent.on("GET", "http://a.fake" + path, lambda: manifest_response())
        m = self.successResultOf(Deferred.fromCoroutine(remote.get("library/x", MDIGEST, [], head=True)))
        self.assertEqual((m.digest, m.body), (MDIGEST, MANIFEST))
        self.assertEqual([s[0] for s in w.agent.sent], ["HEAD", "GET"])

    def test_body_not_matching_its_digest_fails_over(self):
        w, remote = self.remote("a.fake", "b.fake")
        path = f"/v2/library/x/manifests/{MDIGEST}"
        w.agent.on("GET", "http://a.fake" + path, lambda: manifest_response(MANIFEST + b" "))
        w.agent.on("GET", "http://b.fake" + path, lambda: manifest_response())
        m = self.successResultOf(Deferred.fromCoroutine(remote.get("library/x", MDIGEST, [OCI_MANIFEST])))
        self.assertEqual(m.body, MANIFEST)
        self.assertIn("digest mismatch", w.health(1)["last_error"])

    def test_accept_sent_upstream_defaults_to_modern_types(self):
        w, remote = self.remote()
        seen = []
        real = w.agent.request

        def spy(method, uri, headers=None, bodyProducer=None):
            seen.append(headers.getRawHeaders(b"accept"))
            return real(method, uri, headers, bodyProducer)

        w.agent.request = spy
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response())
        self.successResultOf(Deferred.fromCoroutine(remote.get("library/x", "latest", [])))
        for t in (DOCKER_V2, OCI_INDEX, OCI_MANIFEST):
            self.assertIn(t, seen[0][0].decode())


class RemoteTagsTests(unittest.TestCase):
    def test_page_and_next_link_under_our_base_url(self):
        w = World()
        body = b'{"name":"library/x","tags":["a","b"]}'
        w.agent.on("GET", "http://a.fake" + TAGS_PATH + "?n=2&last=0",
                   lambda: FakeResponse(200, {b"Link": b'</v2/library/x/tags/list?last=b&n=2>; rel="next"'}, body))
        tags = RemoteTags(Failover(w.pool, w.clock), w.clock, idle_timeout=30)
        page = self.successResultOf(Deferred.fromCoroutine(
            tags.list("library/x", n="2", last="0", base_url="http://proxy.test")))
        self.assertEqual(page.body, body)
        self.assertEqual(page.link, '<http://proxy.test/v2/library/x/tags/list?n=2&last=b>; rel="next"')


class ProxySourceTests(unittest.TestCase):
    """The proxy picks the source and only shapes headers."""

    def test_cache_off_uses_the_remote_source(self):
        w = World()
        self.assertIsInstance(w.proxy.manifest_source, RemoteManifests)

    def test_cache_on_uses_the_pull_through_source_and_records_hits(self):
        from zmirror.oci.reference import parse_path
        from zmirror.registry.routes import PullRequest

        clock = Clock()
        local = MemoryManifests(clock)
        local.store("library/x", "latest", Manifest(MDIGEST, DOCKER_V2, MANIFEST))
        w = World(manifests=local, clock=clock)
        self.assertIsInstance(w.proxy.manifest_source, PullThroughManifests)

        class Record:
            cache_hit = None
            upstream = None

        rec = Record()
        p = PullRequest(path=parse_path(TAG_PATH), method=b"HEAD", record=rec)
        result = self.successResultOf(Deferred.fromCoroutine(w.proxy.pull(p)))
        self.assertEqual((result.status, result.head, result.content_length), (200, True, len(MANIFEST)))
        self.assertEqual(result.headers[b"Docker-Content-Digest"], MDIGEST.encode())
        self.assertEqual(result.headers[b"Vary"], b"Accept")
        self.assertNotIn(b"Warning", result.headers)
        self.assertEqual((rec.cache_hit, rec.upstream), (True, None))
        self.assertEqual(w.agent.sent, [])
        # stale and every upstream refusing: served with the Warning header
        clock.advance(301)
        result = self.successResultOf(Deferred.fromCoroutine(w.proxy.pull(p)))
        self.assertEqual(result.headers[b"Warning"], STALE_WARNING.encode())
        self.assertEqual(local.stats["stale_served"], 1)


class ManifestCacheTests(unittest.TestCase):
    """The whole flow over HTTP: ManifestCache on a real database, FakeRegistry upstream."""

    def setUp(self):
        self.base, self.db = temp_dir(self), temp_database(self, reactor)
        self.up = FakeRegistry()
        self.make_env()
        self.mdigest = self.up.add_manifest("library/nginx", "latest", MANIFEST)
        self.tag_path = "/v2/library/nginx/manifests/latest"

    def make_env(self):
        self.manifests = ManifestCache(self.db, reactor, ttl=300)
        self.env = ProxyEnv([("up1.fake", self.up)], manifests=self.manifests)
        self.manifests.clock = self.env.clock  # TTLs follow the test clock

    async def start(self):
        await self.manifests.start()

    def manifest_requests(self, method=None):
        return [r for r in self.up.requests if "/manifests/" in r[2] and (method is None or r[0] == method)]

    @coro
    async def test_by_digest_cached_for_good(self):
        await self.start()
        path = f"/v2/library/nginx/manifests/{self.mdigest}"
        for _ in range(3):
            resp, body = await self.env.arequest("GET", path)
            self.assertEqual(body, MANIFEST)
        self.env.clock.advance(10 ** 6)
        resp, body = await self.env.arequest("HEAD", path)
        self.assertEqual(resp.headers.getRawHeaders(b"docker-content-digest"), [self.mdigest.encode()])
        self.assertEqual(len(self.manifest_requests()), 1)

    @coro
    async def test_tag_ttl_and_revalidation(self):
        await self.start()
        await self.env.arequest("GET", self.tag_path)
        await self.env.arequest("GET", self.tag_path)
        self.assertEqual(len(self.manifest_requests()), 1)  # fresh: local
        self.env.clock.advance(301)
        resp, body = await self.env.arequest("GET", self.tag_path)
        self.assertEqual(body, MANIFEST)
        self.assertEqual([r[0] for r in self.manifest_requests()], ["GET", "HEAD"])  # revalidated by HEAD
        # the tag moves upstream: the next revalidation fetches the new manifest
        new = MANIFEST.replace(b"[]", b"[ ]")
        self.up.add_manifest("library/nginx", "latest", new)
        self.env.clock.advance(301)
        resp, body = await self.env.arequest("GET", self.tag_path)
        self.assertEqual(body, new)

    @coro
    async def test_stale_served_when_upstream_down(self):
        await self.start()
        await self.env.arequest("GET", self.tag_path)
        self.env.clock.advance(301)
        self.up.faults[self.tag_path] = [503, 503]
        resp, body = await self.env.arequest("GET", self.tag_path)
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, MANIFEST)
        self.assertEqual(resp.headers.getRawHeaders(b"warning"), [b'110 - "Response is Stale"'])
        # rate-limited everywhere: stale too
        self.up.faults[self.tag_path] = [429, 429]
        resp, body = await self.env.arequest("GET", self.tag_path)
        self.assertEqual((resp.code, body), (200, MANIFEST))
        # all upstreams gone (connection refused)
        del self.env.agent.agents["up1.fake"]
        resp, body = await self.env.arequest("HEAD", self.tag_path)
        self.assertEqual(resp.code, 200)

    @coro
    async def test_not_served_to_client_that_does_not_accept_it(self):
        await self.start()
        await self.env.arequest("GET", self.tag_path)
        oci_only = {"Accept": ["application/vnd.oci.image.manifest.v1+json"]}
        resp, body = await self.env.arequest("GET", self.tag_path, headers=oci_only)
        self.assertEqual(resp.code, 404)  # the fake (like distribution) has no OCI form of it
        self.assertEqual(len(self.manifest_requests()), 2)
        resp, body = await self.env.arequest("GET", self.tag_path, headers={"Accept": ["*/*"]})
        self.assertEqual((resp.code, body), (200, MANIFEST))
        self.assertEqual(len(self.manifest_requests()), 2)

    @coro
    async def test_persisted_across_restart(self):
        await self.start()
        await self.env.arequest("GET", self.tag_path)
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.1, lambda: None)  # let the async writes land
        self.make_env()
        await self.start()
        del self.env.agent.agents["up1.fake"]  # upstream gone: served from the restored cache
        resp, body = await self.env.arequest("GET", self.tag_path)
        self.assertEqual((resp.code, body), (200, MANIFEST))

    @coro
    async def test_cached_manifest_checked_per_repository(self):
        await self.start()
        digest = self.up.add_manifest("library/a", "1", MANIFEST)
        await self.env.arequest("GET", f"/v2/library/a/manifests/{digest}")
        resp, body = await self.env.arequest("GET", f"/v2/library/b/manifests/{digest}")
        self.assertEqual(resp.code, 404)
        self.up.add_manifest("library/b", None, MANIFEST)
        resp, body = await self.env.arequest("GET", f"/v2/library/b/manifests/{digest}")
        self.assertEqual((resp.code, body), (200, MANIFEST))


# the manifest cache's whole flow over HTTP on a shared PostgreSQL
class ManifestCachePostgresTests(ManifestCacheTests):
    def setUp(self):
        from tests.fixtures.pgserver import temp_database

        self.backend = "postgresql"
        self.base, self.db = None, temp_database(self, reactor)
        self.up = FakeRegistry()
        self.make_env()
        self.assertTrue(self.manifests.shared)
        self.mdigest = self.up.add_manifest("library/nginx", "latest", MANIFEST)
        self.tag_path = "/v2/library/nginx/manifests/latest"


class UpstreamValueTests(unittest.TestCase):
    def two(self, bad, path=TAG_PATH, good=None):
        """Upstream a.fake answers ``bad()``, b.fake ``good()``."""
        w = World(("a.fake", "b.fake"))
        w.agent.on("GET", "http://a.fake" + path, bad)
        w.agent.on("GET", "http://b.fake" + path, good or (lambda: manifest_response()))
        return w

    def assertFailsOver(self, w, d):
        result = self.successResultOf(d)
        self.assertEqual(result.status, 200)
        self.assertEqual(w.health(1)["state"], "down")
        self.assertEqual(w.health(2)["state"], "up")
        return result

    def assertUpstreamError(self, d):
        err = self.failureResultOf(d, RegistryError).value
        self.assertEqual((err.status, err.code), (502, "UPSTREAM_ERROR"))

    def test_sniffed_media_type_not_latin1(self):
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.\u4e2d\u6587+json"}).encode()
        w = self.two(lambda: manifest_response(body, ctype=None))
        result = self.assertFailsOver(w, w.pull(TAG_PATH))
        self.assertEqual(result.headers[b"Content-Type"], DOCKER_V2.encode())
        w1 = World()
        w1.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response(body, ctype=None))
        self.assertUpstreamError(w1.pull(TAG_PATH))

    def test_sniffed_media_type_not_a_media_type(self):
        for mt in ("application/json\r\nX-Evil: 1", "notatype", "a/b c", 7):
            body = json.dumps({"schemaVersion": 2, "mediaType": mt}).encode()
            w = self.two(lambda: manifest_response(body, ctype=None))
            self.assertFailsOver(w, w.pull(TAG_PATH))

    def test_content_type_header_invalid(self):
        for ctype in (b"application/\xe4json", b"\x01", b"/json", b"application/json; x=\x7f"):
            w = self.two(lambda: manifest_response(ctype=ctype))
            result = self.assertFailsOver(w, w.pull(TAG_PATH))
            self.assertEqual(result.headers[b"Content-Type"], DOCKER_V2.encode())

    def test_content_type_parameters_dropped(self):
        w = World()
        w.agent.on("GET", "http://a.fake" + TAG_PATH,
                   lambda: manifest_response(ctype=DOCKER_V2.encode() + b"; charset=utf-8"))
        self.assertEqual(self.successResultOf(w.pull(TAG_PATH)).headers[b"Content-Type"], DOCKER_V2.encode())

    def test_redirect_location_not_ascii(self):
        for loc in ("http://cdn.fake/m/\u00e4".encode("latin-1"), b"http://cdn.fake/a b", b"http://cdn.fake/\x00"):
            w = self.two(lambda: FakeResponse(307, {b"Location": loc}))
            self.assertFailsOver(w, w.pull(TAG_PATH))
            self.assertIn("Location", w.health(1)["last_error"])

    def test_redirect_location_bad_port_or_host(self):
        for loc in (b"http://cdn.fake:99999/m", b"http://cdn.fake:abc/m", b"http://[::1/m", b"http:///m"):
            w = self.two(lambda: FakeResponse(307, {b"Location": loc}))
            self.assertFailsOver(w, w.pull(TAG_PATH))
        w = World()
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: FakeResponse(307, {b"Location": b"http://x:99999/"}))
        self.assertUpstreamError(w.pull(TAG_PATH))

    def test_token_realm_invalid(self):
        for realm in ("http://auth.f\u00e4ke/token", "http://[::1/token", "http://auth.fake:99999/token"):
            w = self.two(token_challenge(realm))
            self.assertFailsOver(w, w.pull(TAG_PATH))
            self.assertIn("realm", w.health(1)["last_error"])

    def test_head_digest_and_length_not_trusted_blindly(self):
        w = World()
        w.agent.on("HEAD", "http://a.fake" + TAG_PATH, lambda: FakeResponse(
            200, {b"Docker-Content-Digest": b"sha256:\xe4", b"Content-Type": DOCKER_V2.encode(),
                  b"Content-Length": b"\xb2"}))  # "²": str.isdigit() says yes, int() says no
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response())
        result = self.successResultOf(w.pull(TAG_PATH, b"HEAD"))
        self.assertEqual(result.headers[b"Docker-Content-Digest"], MDIGEST.encode())
        self.assertEqual(result.content_length, len(MANIFEST))
        self.assertEqual([m for m, _ in w.agent.sent], ["HEAD", "GET"])  # GET to compute it

    def test_tags_link_next_rebuilt_from_checked_values(self):
        w = World()
        w.agent.on("GET", "http://a.fake" + TAGS_PATH, lambda: FakeResponse(
            200, {b"Link": b'</v2/library/x/tags/list?last=b&n=2&evil=1>; rel="next", <http://evil.example/>; '
                           b'rel="prev"'}, b'{"name":"library/x","tags":["a","b"]}'))
        result = self.successResultOf(w.pull(TAGS_PATH))
        self.assertEqual(result.headers[b"Link"],
                         b'<http://proxy.test/v2/library/x/tags/list?n=2&last=b>; rel="next"')

    def test_tags_link_with_bad_values_fails_over(self):
        for link in ('</v2/library/x/tags/list?last=\u00e4&n=2>; rel="next"'.encode("latin-1"),
                     b'</v2/library/x/tags/list?last=-x>; rel="next"',
                     b'</v2/library/x/tags/list?n=2>; rel="next"',
                     b'</v2/library/x/tags/list?last=b&n=x>; rel="next"',
                     b'garbage'):
            body = b'{"name":"library/x","tags":["a"]}'
            w = self.two(lambda: FakeResponse(200, {b"Link": link}, body), TAGS_PATH,
                         lambda: FakeResponse(200, {}, body))
            result = self.assertFailsOver(w, w.pull(TAGS_PATH))
            self.assertNotIn(b"Link", result.headers)


class NothingInvalidCachedTests(unittest.TestCase):
    @coro
    async def test_bad_media_type_is_not_cached(self):
        db = temp_database(self, reactor)
        cache = ManifestCache(db, Clock())
        await cache.start()
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/\u00ff\u4e2d"}).encode()
        w = World(manifests=cache, clock=cache.clock)
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response(body, ctype=None))
        for _ in range(2):  # the second pull meets no poisoned cache entry either
            with self.assertRaises(RegistryError) as caught:
                await w.pull(TAG_PATH)
            self.assertEqual(caught.exception.code, "UPSTREAM_ERROR")
        self.assertIsNone(await cache.tag("library/x", "latest", ["*/*"]))
        self.assertEqual(await db.query("SELECT digest FROM cache_manifests"), [])

    @coro
    async def test_rows_with_invalid_media_types_are_ignored(self):
        db = temp_database(self, reactor)
        await db.execute("INSERT INTO cache_manifests VALUES (?, ?, ?, 0, 0)", (MDIGEST, "bad\u00e4type", MANIFEST))
        await db.execute("INSERT INTO cache_tags (repository, tag, media_type, digest, fetched_at) VALUES ('library/x', 'latest', ?, ?, 0)",
                         ("bad\u00e4type", MDIGEST))
        cache = ManifestCache(db, Clock())
        await cache.start()
        self.assertIsNone(await cache.tag("library/x", "latest", ["*/*"]))
        self.assertIsNone(await cache.get(MDIGEST))


class ManifestCacheBoundsTests(unittest.TestCase):
    def setUp(self):
        self.db = temp_database(self, reactor)

    async def settle(self):
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.1, lambda: None)  # let the async writes land

    def manifest(self, i):
        body = MANIFEST + str(i).encode()
        return Manifest("sha256:" + hashlib.sha256(body).hexdigest(), DOCKER_V2, body)

    @coro
    async def test_tags_and_repositories_bounded_database_backs_them(self):
        cache = ManifestCache(self.db, Clock(), tag_limit=3, repo_limit=3)
        await cache.start()
        ms = [self.manifest(i) for i in range(10)]
        for i, m in enumerate(ms):
            cache.store(f"r{i}", f"t{i}", m)
        self.assertLessEqual(sum(len(v) for v in cache.tags.values()), 3)
        self.assertLessEqual(len(cache._repos), 3)
        self.assertEqual(cache.summary()["tags"], 3)
        await self.settle()
        for i, m in enumerate(ms):  # evicted from memory, found in the database
            entry = await cache.tag(f"r{i}", f"t{i}", [DOCKER_V2])
            self.assertEqual(entry.digest, m.digest)
            self.assertTrue(await cache.has_repo(m.digest, f"r{i}"))
            self.assertFalse(await cache.has_repo(m.digest, "elsewhere"))
        self.assertLessEqual(sum(len(v) for v in cache.tags.values()), 3)
        self.assertLessEqual(len(cache._repos), 3)
        # a restart loads at most the limit, the most recently fetched ones
        again = ManifestCache(self.db, Clock(), tag_limit=3)
        await again.start()
        self.assertEqual(again.summary()["tags"], 3)

    @coro
    async def test_other_media_type_of_a_tag_not_in_memory_is_found(self):
        cache = ManifestCache(self.db, Clock(), tag_limit=1)
        await cache.start()
        a, b = self.manifest(1), Manifest(self.manifest(2).digest, "application/vnd.oci.image.index.v1+json",
                                          self.manifest(2).body)
        cache.store("r", "t", a)
        cache.store("other", "t", self.manifest(3))  # evicts r:t
        await self.settle()
        cache.store("r", "t", b)  # r:t back in memory with one media type only
        entry = await cache.tag("r", "t", [DOCKER_V2])
        self.assertEqual(entry.digest, a.digest)

    @coro
    async def test_dropped_tag_not_brought_back_from_the_database(self):
        cache = ManifestCache(self.db, Clock(), tag_limit=1)
        await cache.start()
        cache.store("r", "t", self.manifest(1))
        await self.settle()
        cache.store("other", "t", self.manifest(2))  # evicts r:t from memory
        cache.drop_tag("r", "t")
        self.assertIsNone(await cache.tag("r", "t", [DOCKER_V2]))
        await self.settle()
        self.assertIsNone(await cache.tag("r", "t", [DOCKER_V2]))

    @coro
    async def test_pull_served_from_the_database_when_evicted_and_upstream_gone(self):
        clock = Clock()
        cache = ManifestCache(self.db, clock, tag_limit=1, repo_limit=1)
        await cache.start()
        w = World(manifests=cache, clock=clock)
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response())
        other = "/v2/library/y/manifests/latest"
        w.agent.on("GET", "http://a.fake" + other, lambda: manifest_response(MANIFEST + b" "))
        self.assertEqual((await w.pull(TAG_PATH)).body, MANIFEST)
        await w.pull(other)  # pushes library/x out of memory
        self.assertNotIn(("library/x", "latest"), cache.tags)
        await self.settle()
        w.agent.routes.clear()  # upstream gone
        sent = len(w.agent.sent)
        result = await w.pull(TAG_PATH)
        self.assertEqual((result.status, result.body), (200, MANIFEST))
        result = await w.pull(f"/v2/library/x/manifests/{MDIGEST}")
        self.assertEqual((result.status, result.body), (200, MANIFEST))
        self.assertEqual(len(w.agent.sent), sent)
