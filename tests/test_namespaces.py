"""Namespaces: the routing table (path prefix, ?ns=, host names), canonical names,
and that an upstream is only ever asked for its own namespace's content."""

import json

from twisted.trial import unittest

from tests.fixtures.proxyenv import ProxyEnv
from zmirror.oci.errors import RegistryError
from zmirror.oci.names import Repo, canonical_name, namespace_of, normalize_namespace, remote_of
from zmirror.registry.routing import RoutingTable
from zmirror.oci.reference import parse_path
from zmirror.testing import FakeRegistry


def table(*namespaces, hosts=None):
    return RoutingTable(lambda: namespaces, hosts or {})


class RoutingTableTests(unittest.TestCase):
    def assertRoute(self, repo, namespace, remote, canonical):
        self.assertIsInstance(repo, Repo)
        self.assertEqual((repo.namespace, repo.remote, str(repo)), (namespace, remote, canonical))

    def assertRefused(self, code, f, *a, **kw):
        with self.assertRaises(RegistryError) as cm:
            f(*a, **kw)
        self.assertEqual(cm.exception.code, code)
        return cm.exception

    def test_path_prefix_selects_a_configured_namespace(self):
        t = table("ghcr.io", "quay.io")
        self.assertRoute(t.resolve("ghcr.io/owner/img"), "ghcr.io", "owner/img", "ghcr.io/owner/img")
        self.assertRoute(t.resolve("quay.io/a/b/c"), "quay.io", "a/b/c", "quay.io/a/b/c")
        # not configured: an ordinary docker.io name whose first component holds a dot
        self.assertRoute(t.resolve("gcr.io/owner/img"), "docker.io", "gcr.io/owner/img", "gcr.io/owner/img")
        self.assertRoute(t.resolve("my.org/img"), "docker.io", "my.org/img", "my.org/img")
        # a lone component is a repository, never a namespace
        self.assertRoute(t.resolve("ghcr.io"), "docker.io", "library/ghcr.io", "library/ghcr.io")

    def test_docker_hub_and_its_aliases(self):
        t = table()
        for alias in ("docker.io", "index.docker.io", "registry-1.docker.io"):
            self.assertRoute(t.resolve(f"{alias}/nginx"), "docker.io", "library/nginx", "library/nginx")
            self.assertRoute(t.resolve(f"{alias}/library/nginx"), "docker.io", "library/nginx",
                             "library/nginx")
            self.assertRoute(t.resolve(f"{alias}/owner/img"), "docker.io", "owner/img", "owner/img")
            self.assertRoute(t.resolve("owner/img", ns=alias), "docker.io", "owner/img", "owner/img")

    def test_library_only_on_docker_hub(self):
        t = table("ghcr.io")
        self.assertRoute(t.resolve("nginx"), "docker.io", "library/nginx", "library/nginx")
        self.assertRoute(t.resolve("ghcr.io/nginx"), "ghcr.io", "nginx", "ghcr.io/nginx")
        self.assertRoute(t.resolve("nginx", ns="ghcr.io"), "ghcr.io", "nginx", "ghcr.io/nginx")
        self.assertRoute(t.resolve("library/nginx", ns="ghcr.io"), "ghcr.io", "library/nginx",
                         "ghcr.io/library/nginx")

    def test_ns_query_parameter(self):
        t = table("ghcr.io")
        self.assertRoute(t.resolve("owner/img", ns="ghcr.io"), "ghcr.io", "owner/img", "ghcr.io/owner/img")
        self.assertRoute(t.resolve("owner/img", ns="GHCR.IO"), "ghcr.io", "owner/img", "ghcr.io/owner/img")
        # with ?ns= the whole path is the repository: no prefix is read from it
        self.assertRoute(t.resolve("ghcr.io/x", ns="ghcr.io"), "ghcr.io", "ghcr.io/x", "ghcr.io/ghcr.io/x")
        # a namespace nobody configured still routes there (and its pull answers 404)
        self.assertRoute(t.resolve("a/b", ns="quay.io"), "quay.io", "a/b", "quay.io/a/b")
        for bad in ("", "not a host", "x/y", "nodot", "ghcr.io:99999", "-x.io", "a..b"):
            self.assertRefused("NAME_INVALID", t.resolve, "a/b", ns=bad)

    def test_host_names(self):
        t = table(hosts={"ghcr.mirror.example.com": "ghcr.io", "hub.mirror.example.com": "index.docker.io"})
        self.assertRoute(t.resolve("owner/img", host="ghcr.mirror.example.com"), "ghcr.io", "owner/img",
                         "ghcr.io/owner/img")
        self.assertRoute(t.resolve("owner/img", host="GHCR.Mirror.Example.com:8443"), "ghcr.io",
                         "owner/img", "ghcr.io/owner/img")
        self.assertRoute(t.resolve("nginx", host="hub.mirror.example.com"), "docker.io", "library/nginx",
                         "library/nginx")
        # the host table's namespaces count as configured for path prefixes elsewhere
        self.assertRoute(t.resolve("ghcr.io/owner/img", host="mirror.example.com"), "ghcr.io",
                         "owner/img", "ghcr.io/owner/img")
        # an unlisted host: path prefix rules
        self.assertRoute(t.resolve("owner/img", host="other.example.com"), "docker.io", "owner/img",
                         "owner/img")
        # ?ns= agreeing with the host is fine; disagreeing names nothing
        self.assertRoute(t.resolve("owner/img", host="ghcr.mirror.example.com", ns="ghcr.io"), "ghcr.io",
                         "owner/img", "ghcr.io/owner/img")
        self.assertRefused("NAME_UNKNOWN", t.resolve, "owner/img", host="ghcr.mirror.example.com",
                           ns="quay.io")
        t.set_hosts({})
        self.assertRoute(t.resolve("owner/img", host="ghcr.mirror.example.com"), "docker.io", "owner/img",
                         "owner/img")

    def test_docker_hub_name_that_would_collide_with_a_namespace_is_refused(self):
        t = table("ghcr.io")
        self.assertRefused("NAME_UNKNOWN", t.resolve, "ghcr.io/owner/img", ns="docker.io")
        self.assertRefused("NAME_UNKNOWN", t.resolve, "docker.io/ghcr.io/owner/img")
        self.assertRefused("NAME_UNKNOWN", t.resolve, "docker.io/docker.io/x")

    def test_namespace_with_port(self):
        t = table("localhost:5000", "registry.local:8443")
        self.assertRoute(t.resolve("localhost:5000/img"), "localhost:5000", "img", "localhost:5000/img")
        self.assertRoute(t.resolve("registry.local:8443/a/b"), "registry.local:8443", "a/b",
                         "registry.local:8443/a/b")
        self.assertRefused("NAME_INVALID", t.resolve, "other.local:5000/img")  # no such namespace
        self.assertRefused("NAME_INVALID", t.resolve, "localhost:5000")
        self.assertRefused("NAME_INVALID", t.resolve, "img/localhost:5000")

    def test_names_stay_on_the_grammar(self):
        t = table("ghcr.io")
        for bad in ("ghcr.io/", "ghcr.io//x", "ghcr.io/A", "ghcr.io/..", "ghcr.io/x:1", "GHCR.IO/x",
                    "ghcr.io/" + "a" * 300):
            self.assertRefused("NAME_INVALID", t.resolve, bad)

    def test_parse_path_uses_the_table(self):
        t = table("ghcr.io")
        p = parse_path("/v2/ghcr.io/owner/img/manifests/1", t.resolve)
        self.assertEqual((p.kind, p.name, p.reference), ("manifest", "ghcr.io/owner/img", "1"))
        self.assertEqual((namespace_of(p.name), remote_of(p.name)), ("ghcr.io", "owner/img"))
        p = parse_path("/v2/ghcr.io/img/tags/list", t.resolve)
        self.assertEqual((p.kind, p.name.remote), ("tags", "img"))
        # without a table: docker.io names, as before
        self.assertEqual(parse_path("/v2/nginx/manifests/1").name, "library/nginx")
        self.assertEqual((namespace_of("library/nginx"), remote_of("library/nginx")),
                         ("docker.io", "library/nginx"))

    def test_repo_is_its_canonical_string(self):
        r = Repo("ghcr.io", "owner/img")
        self.assertEqual(r, "ghcr.io/owner/img")
        self.assertEqual(hash(r), hash("ghcr.io/owner/img"))
        self.assertEqual({r: 1}["ghcr.io/owner/img"], 1)
        self.assertNotEqual(Repo("docker.io", "owner/img"), r)
        self.assertEqual(Repo("docker.io", "nginx"), "library/nginx")

    def test_normalize_namespace(self):
        self.assertEqual(normalize_namespace(" GHCR.io "), "ghcr.io")
        self.assertEqual(normalize_namespace("index.docker.io"), "docker.io")
        self.assertEqual(normalize_namespace("registry-1.docker.io"), "docker.io")
        self.assertEqual(normalize_namespace("registry:5000"), "registry:5000")
        self.assertEqual(normalize_namespace("localhost"), "localhost")
        for bad in (None, 5, "", "nodot", "http://ghcr.io", "ghcr.io/x", "a b.io", "x.io:0", "x.io:70000",
                    "é.io", "-a.io", "a.io\nb", "a" * 300 + ".io"):
            with self.assertRaises(ValueError, msg=repr(bad)):
                normalize_namespace(bad)

    def test_canonical_name(self):
        self.assertEqual(canonical_name("nginx"), "library/nginx")
        self.assertEqual(canonical_name("docker.io/nginx"), "library/nginx")
        self.assertEqual(canonical_name("index.docker.io/owner/img"), "owner/img")
        self.assertEqual(canonical_name("ghcr.io/owner/img"), "ghcr.io/owner/img")
        self.assertEqual(canonical_name("localhost:5000/img"), "localhost:5000/img")
        for bad in ("", "A/b", "a//b", "docker.io/ghcr.io/x", "x:1", "a/b:1/c"):
            with self.assertRaises(RegistryError, msg=bad):
                canonical_name(bad)


MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {}, "layers": []}).encode()


class NamespaceProxyTests(unittest.TestCase):
    """Two upstreams, two namespaces: each is asked only for its own repositories."""

    def setUp(self):
        self.hub = FakeRegistry()
        self.ghcr = FakeRegistry()
        self.hub_digest = self.hub.add_manifest("owner/img", "1", MANIFEST + b" ")
        self.ghcr_digest = self.ghcr.add_manifest("owner/img", "1", MANIFEST)
        self.ghcr.add_manifest("img", "2", MANIFEST)
        self.blob = self.ghcr.add_blob(b"ghcr layer")
        self.env = ProxyEnv([("hub.fake", self.hub), ("ghcr.fake", self.ghcr)],
                            namespaces={"ghcr.fake": "ghcr.io"},
                            hosts={"ghcr.mirror.test": "ghcr.io"},
                            extra_rows=[{"id": 9, "name": "quay", "url": "http://quay.fake", "priority": 1,
                                         "enabled": 0, "namespace": "quay.io"}])

    def paths(self, reg):
        return self.env.upstream_paths(reg)

    def digest(self, resp):
        return resp.headers.getRawHeaders(b"docker-content-digest")[0].decode()

    def test_path_prefix(self):
        resp, _ = self.env.request("GET", "/v2/ghcr.io/owner/img/manifests/1")
        self.assertEqual(resp.code, 200)
        self.assertEqual(self.digest(resp), self.ghcr_digest)
        self.assertEqual(self.paths(self.ghcr), ["GET /v2/owner/img/manifests/1"])
        self.assertEqual(self.paths(self.hub), [])
        rec = self.env.log.records[-1]
        self.assertEqual((rec.namespace, rec.repository, rec.upstream), ("ghcr.io", "ghcr.io/owner/img",
                                                                          "ghcr.fake"))

    def test_docker_hub_name_goes_to_docker_hub_only(self):
        resp, _ = self.env.request("GET", "/v2/owner/img/manifests/1")
        self.assertEqual(resp.code, 200)
        self.assertEqual(self.digest(resp), self.hub_digest)
        self.assertEqual(self.paths(self.ghcr), [])
        self.assertEqual(self.env.log.records[-1].namespace, "docker.io")

    def test_ns_query(self):
        resp, _ = self.env.request("GET", "/v2/owner/img/manifests/1?ns=ghcr.io")
        self.assertEqual(resp.code, 200)
        self.assertEqual(self.digest(resp), self.ghcr_digest)
        self.assertEqual(self.paths(self.ghcr), ["GET /v2/owner/img/manifests/1"])
        self.assertEqual(self.paths(self.hub), [])
        # one-component names get no library/ outside Docker Hub
        resp, _ = self.env.request("GET", "/v2/img/manifests/2?ns=ghcr.io")
        self.assertEqual(resp.code, 200)
        self.assertEqual(self.paths(self.ghcr)[-1], "GET /v2/img/manifests/2")

    def test_host_name(self):
        resp, _ = self.env.request("GET", "/v2/owner/img/manifests/1", host="ghcr.mirror.test")
        self.assertEqual(resp.code, 200)
        self.assertEqual(self.digest(resp), self.ghcr_digest)
        self.assertEqual(self.paths(self.hub), [])

    def test_blob_from_its_namespace(self):
        resp, body = self.env.request("GET", f"/v2/ghcr.io/owner/img/blobs/{self.blob}")
        self.assertEqual((resp.code, body), (200, b"ghcr layer"))
        self.assertEqual(self.paths(self.ghcr), [f"GET /v2/owner/img/blobs/{self.blob}"])
        # the same digest under the Docker Hub name is Docker Hub's business
        resp, _ = self.env.request("GET", f"/v2/owner/img/blobs/{self.blob}")
        self.assertEqual(resp.code, 404)
        self.assertEqual(self.paths(self.ghcr), [f"GET /v2/owner/img/blobs/{self.blob}"])
        self.assertEqual(self.paths(self.hub), [f"GET /v2/owner/img/blobs/{self.blob}"])

    def test_unknown_in_one_namespace_never_asks_another(self):
        resp, body = self.env.request("GET", "/v2/ghcr.io/other/img/manifests/1")
        self.assertEqual(resp.code, 404)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "MANIFEST_UNKNOWN")
        self.assertEqual(self.paths(self.hub), [])

    def test_namespace_without_enabled_upstream(self):
        for path in ("/v2/quay.io/a/b/manifests/1", "/v2/a/b/manifests/1?ns=quay.io",
                     "/v2/a/b/tags/list?ns=quay.io", f"/v2/quay.io/a/b/blobs/{self.blob}"):
            resp, body = self.env.request("GET", path)
            self.assertEqual(resp.code, 404, path)
            err = json.loads(body)["errors"][0]
            self.assertEqual(err["code"], "NAME_UNKNOWN", path)
            self.assertIn("no upstream registry is enabled for namespace quay.io", err["message"])
        self.assertEqual(self.paths(self.hub) + self.paths(self.ghcr), [])

    def test_bad_ns_is_a_registry_error(self):
        resp, body = self.env.request("GET", "/v2/a/b/manifests/1?ns=not%20a%20host")
        self.assertEqual(resp.code, 400)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "NAME_INVALID")

    def test_tags_link_keeps_the_clients_form(self):
        for t in ("3", "4"):
            self.ghcr.add_manifest("owner/img", t, MANIFEST + t.encode())
        resp, body = self.env.request("GET", "/v2/owner/img/tags/list?ns=ghcr.io&n=2")
        self.assertEqual((resp.code, json.loads(body)["tags"]), (200, ["1", "3"]))
        self.assertEqual(resp.headers.getRawHeaders(b"link"),
                         [b'<http://proxy.test/v2/owner/img/tags/list?n=2&last=3&ns=ghcr.io>; rel="next"'])
        resp, body = self.env.request("GET", "/v2/ghcr.io/owner/img/tags/list?n=2")
        self.assertEqual(resp.headers.getRawHeaders(b"link"),
                         [b'<http://proxy.test/v2/ghcr.io/owner/img/tags/list?n=2&last=3>; rel="next"'])
        resp, body = self.env.request("GET", "/v2/owner/img/tags/list?n=2", host="ghcr.mirror.test")
        self.assertEqual(resp.headers.getRawHeaders(b"link"),
                         [b'<http://proxy.test/v2/owner/img/tags/list?n=2&last=3>; rel="next"'])
        self.assertEqual(self.paths(self.hub), [])


from tests.fixtures.auth import basic, make_env, www  # noqa: E402
from tests.fixtures.helpers import coro
from zmirror.auth.whitelist import Entry, Matcher, normalize_prefix  # noqa: E402


class WhitelistNamespaceTests(unittest.TestCase):
    def test_entries_are_canonical_names(self):
        m = Matcher([Entry(1, "ghcr.io/owner"), Entry(2, "helloz"), Entry(3, "quay.io")])
        self.assertTrue(m.allows("ghcr.io/owner/img"))
        self.assertFalse(m.allows("owner/img"))  # Docker Hub's owner is someone else
        self.assertTrue(m.allows("helloz/x"))
        self.assertTrue(m.allows("library/helloz"))
        self.assertFalse(m.allows("ghcr.io/helloz/x"))
        self.assertFalse(m.allows("ghcr.io/library/helloz"))
        self.assertTrue(m.allows("quay.io/any/thing"))

    def test_star_without_slash_stays_on_docker_hub(self):
        m = Matcher([Entry(1, "g*")])
        self.assertTrue(m.allows("gitlab/x"))
        self.assertTrue(m.allows("library/golang"))
        self.assertFalse(m.allows("ghcr.io/owner/img"))
        self.assertFalse(m.allows("gcr.io/owner/img"))
        m = Matcher([Entry(1, "ghcr.io/own*")])
        self.assertTrue(m.allows("ghcr.io/owner/img"))
        self.assertFalse(m.allows("owner/img"))

    def test_prefix_input(self):
        self.assertEqual(normalize_prefix("docker.io/helloz"), "helloz")
        self.assertEqual(normalize_prefix("index.docker.io/library/nginx"), "library/nginx")
        self.assertEqual(normalize_prefix("ghcr.io/owner"), "ghcr.io/owner")
        self.assertEqual(normalize_prefix("localhost:5000/team"), "localhost:5000/team")
        self.assertEqual(normalize_prefix("localhost:5000/te*"), "localhost:5000/te*")


class AccessPerNamespaceTests(unittest.TestCase):
    """Whitelist, challenges and tokens through the real routes and policy."""

    @coro
    async def setUp(self):
        self.env = make_env(self, namespaces=("ghcr.io",))
        await self.env.whitelists.create("ghcr.io/owner")
        self.alice = await self.env.accounts.create("alice", "alicepw-1")

    async def token(self, scope, user=None):
        headers = {b"Authorization": [basic(user, user + "pw-1")]} if user else None
        resp, body = await self.env.json("GET", f"http://mirror/token?scope={scope}", headers=headers)
        self.assertEqual(resp.code, 200, body)
        return b"Bearer " + body["token"].encode()

    @coro
    async def test_whitelist_entry_opens_one_namespace_only(self):
        for url in ("http://mirror/v2/ghcr.io/owner/img/manifests/1",
                    "http://mirror/v2/owner/img/manifests/1?ns=ghcr.io"):
            resp, body = await self.env.call("GET", url)
            self.assertEqual(resp.code, 200, url)
            self.assertEqual(json.loads(body)["fetched"], "ghcr.io/owner/img")
        resp, _ = await self.env.call("GET", "http://mirror/v2/owner/img/manifests/1")
        self.assertEqual(resp.code, 401)
        self.assertEqual(len(self.env.proxy.pulls), 2)

    @coro
    async def test_challenge_carries_the_canonical_scope(self):
        resp, _ = await self.env.call("GET", "http://mirror/v2/other/img/manifests/1?ns=ghcr.io")
        self.assertEqual(resp.code, 401)
        self.assertIn('scope="repository:ghcr.io/other/img:pull"', www(resp))
        resp, _ = await self.env.call("GET", "http://mirror/v2/docker.io/other/img/manifests/1")
        self.assertIn('scope="repository:other/img:pull"', www(resp))

    @coro
    async def test_token_for_one_namespace_is_none_for_another(self):
        tok = await self.token("repository:ghcr.io/secret/img:pull", user="alice")
        resp, body = await self.env.call("GET", "http://mirror/v2/ghcr.io/secret/img/manifests/1",
                                         headers={b"Authorization": [tok]})
        self.assertEqual(resp.code, 200, body)
        resp, _ = await self.env.call("GET", "http://mirror/v2/secret/img/manifests/1",
                                      headers={b"Authorization": [tok]})
        self.assertEqual(resp.code, 401)
        self.assertIn('error="insufficient_scope"', www(resp))
        # and a Docker Hub token does not open ghcr.io
        tok = await self.token("repository:docker.io/secret/img:pull", user="alice")
        resp, _ = await self.env.call("GET", "http://mirror/v2/secret/img/manifests/1",
                                      headers={b"Authorization": [tok]})
        self.assertEqual(resp.code, 200)
        resp, _ = await self.env.call("GET", "http://mirror/v2/secret/img/manifests/1?ns=ghcr.io",
                                      headers={b"Authorization": [tok]})
        self.assertEqual(resp.code, 401)

    @coro
    async def test_anonymous_token_grant_per_namespace(self):
        resp, body = await self.env.json(
            "GET", "http://mirror/token?scope=repository:ghcr.io/owner/img:pull"
                   "&scope=repository:owner/img:pull")
        self.assertEqual(resp.code, 200)
        claims = self.env.tokens.verify_access(body["token"])
        self.assertTrue(claims.allows("ghcr.io/owner/img", "pull"))
        self.assertFalse(claims.allows("owner/img", "pull"))

    @coro
    async def test_access_log_namespace(self):
        await self.env.call("GET", "http://mirror/v2/owner/img/manifests/1?ns=ghcr.io")
        await self.env.call("GET", "http://mirror/v2/nginx/manifests/1")
        recs = [r for r in self.env.log.records if r.kind != "token"]
        self.assertEqual([(r.namespace, r.repository) for r in recs],
                         [("ghcr.io", "ghcr.io/owner/img"), ("docker.io", "library/nginx")])


from twisted.internet import reactor  # noqa: E402

from tests.fixtures.cache import CacheTestBase  # noqa: E402
from zmirror.cache.blobs import CacheBlobs  # noqa: E402
from zmirror.cache.manifests import ManifestCache  # noqa: E402
from tests.fixtures.cache import stop_transfers  # noqa: E402


class CachePerNamespaceTests(CacheTestBase):
    """Blobs and manifests are cached by canonical name: a copy fetched for Docker
    Hub's owner/img is not ghcr.io/owner/img's until ghcr.io's upstream says so."""

    def make_env(self, upstreams=None):
        self.ghcr = FakeRegistry()
        self.blobs = CacheBlobs(self.base / "cache", self.db, reactor, max_size=self.max_size, idle_timeout=30)
        self.addCleanup(stop_transfers, self.blobs)
        self.manifests = ManifestCache(self.db, reactor, ttl=300)
        self.env = ProxyEnv([("up1.fake", self.up), ("ghcr.fake", self.ghcr)], blobs=self.blobs,
                            manifests=self.manifests, namespaces={"ghcr.fake": "ghcr.io"})
        self.manifests.clock = self.env.clock

    @coro
    async def test_blob_membership_by_canonical_name(self):
        await self.start()
        resp, body = await self.env.arequest("GET", f"/v2/owner/img/blobs/{self.digest}")
        self.assertEqual((resp.code, body == self.data), (200, True))
        self.assertTrue(self.blobs.knows(self.digest, "owner/img"))
        # ghcr.io does not have it: the cached copy is not served for ghcr.io/owner/img
        resp, _ = await self.env.arequest("GET", f"/v2/ghcr.io/owner/img/blobs/{self.digest}")
        self.assertEqual(resp.code, 404)
        self.assertEqual([r[2] for r in self.ghcr.requests], [f"/v2/owner/img/blobs/{self.digest}"])
        self.assertFalse(self.blobs.knows(self.digest, "ghcr.io/owner/img"))
        # once ghcr.io has it, its HEAD confirms membership and the local copy is served
        self.ghcr.add_blob(self.data)
        resp, body = await self.env.arequest("GET", f"/v2/ghcr.io/owner/img/blobs/{self.digest}")
        self.assertEqual((resp.code, body == self.data), (200, True))
        self.assertEqual(self.ghcr.requests[-1][:3:2], ("HEAD", f"/v2/owner/img/blobs/{self.digest}"))
        self.assertTrue(self.blobs.knows(self.digest, "ghcr.io/owner/img"))
        self.assertEqual(len(self.blob_gets()), 1)
        self.assertEqual(len(self.blob_gets(self.ghcr)), 0)

    @coro
    async def test_tags_cached_per_namespace(self):
        await self.start()
        hub = self.up.add_manifest("owner/img", "1", MANIFEST + b" ")
        ghcr = self.ghcr.add_manifest("owner/img", "1", MANIFEST)
        for _ in range(2):
            for path, digest in (("/v2/owner/img/manifests/1", hub),
                                 ("/v2/ghcr.io/owner/img/manifests/1", ghcr),
                                 ("/v2/owner/img/manifests/1?ns=ghcr.io", ghcr)):
                resp, _ = await self.env.arequest("GET", path)
                self.assertEqual(resp.headers.getRawHeaders(b"docker-content-digest"), [digest.encode()], path)
        # one GET per namespace, the rest from the cache
        gets = lambda reg: [r[2] for r in reg.requests if r[0] == "GET"]  # noqa: E731
        self.assertEqual(gets(self.up), ["/v2/owner/img/manifests/1"])
        self.assertEqual(gets(self.ghcr), ["/v2/owner/img/manifests/1"])


class UpstreamScopeTests(unittest.TestCase):
    def test_upstream_token_scope_names_the_repository_within_its_namespace(self):
        ghcr = FakeRegistry(auth="token", realm="http://auth.fake/token")
        ghcr.add_manifest("owner/img", "1", MANIFEST)
        env = ProxyEnv([("ghcr.fake", ghcr)], namespaces={"ghcr.fake": "ghcr.io"},
                       extra_hosts={"auth.fake": ghcr.resource()})
        resp, _ = env.request("GET", "/v2/ghcr.io/owner/img/manifests/1")
        self.assertEqual(resp.code, 200)
        self.assertEqual([t.get("scope") for t in ghcr.token_requests], ["repository:owner/img:pull"])


class NamespaceMetricsTests(unittest.TestCase):
    def test_namespace_label_is_bounded(self):
        from zmirror.accesslog import AccessRecord
        from zmirror.metrics import Metrics

        env = ProxyEnv([("ghcr.fake", FakeRegistry())], namespaces={"ghcr.fake": "ghcr.io"})
        m = Metrics(process=False)
        m.watch_namespaces(env.pool)
        for ns in ("ghcr.io", "docker.io", "random.example", "other.example", ""):
            m.observe_access(AccessRecord(created_at=0, kind="manifest", status=200, namespace=ns))
        text = m.exposition().decode()
        self.assertIn('zmirror_namespace_requests_total{kind="manifest",namespace="ghcr.io"} 1.0', text)
        self.assertIn('zmirror_namespace_requests_total{kind="manifest",namespace="docker.io"} 1.0', text)
        self.assertIn('zmirror_namespace_requests_total{kind="manifest",namespace="other"} 2.0', text)
        self.assertNotIn("random.example", text)
        self.assertIn('zmirror_upstream_namespace{namespace="ghcr.io",upstream="ghcr.fake"} 1.0', text)
