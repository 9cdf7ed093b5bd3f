import json

from twisted.trial import unittest

from tests.fixtures.proxyenv import ProxyEnv
from zmirror.testing import DOCKER_V2, FakeRegistry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_V2, "layers": []}).encode()


def err_code(body):
    return json.loads(body)["errors"][0]["code"]


class ManifestTests(unittest.TestCase):
    def setUp(self):
        self.up = FakeRegistry()
        self.digest = self.up.add_manifest("library/nginx", "latest", MANIFEST)
        self.env = ProxyEnv([("up1.fake", self.up)])

    def test_get_by_tag(self):
        resp, body = self.env.request("GET", "/v2/nginx/manifests/latest")
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, MANIFEST)
        h = resp.headers
        self.assertEqual(h.getRawHeaders(b"content-type"), [DOCKER_V2.encode()])
        self.assertEqual(h.getRawHeaders(b"docker-content-digest"), [self.digest.encode()])
        self.assertEqual(resp.length, len(MANIFEST))
        self.assertEqual(h.getRawHeaders(b"cache-control"), [b"public, max-age=300"])
        self.assertEqual(h.getRawHeaders(b"vary"), [b"Accept"])
        self.assertEqual(h.getRawHeaders(b"docker-distribution-api-version"), [b"registry/2.0"])
        # one-component name normalized to library/
        self.assertIn("GET /v2/library/nginx/manifests/latest", self.env.upstream_paths(self.up))
        rec = self.env.log.records[-1]
        self.assertEqual((rec.kind, rec.repository, rec.reference, rec.status, rec.upstream),
                         ("manifest", "library/nginx", "latest", 200, "up1.fake"))
        self.assertEqual(rec.bytes, len(MANIFEST))

    def test_get_by_digest_immutable(self):
        resp, body = self.env.request("GET", f"/v2/library/nginx/manifests/{self.digest}")
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders(b"cache-control"),
                         [b"public, max-age=31536000, immutable"])

    def test_head(self):
        resp, body = self.env.request("HEAD", "/v2/library/nginx/manifests/latest")
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(resp.headers.getRawHeaders(b"docker-content-digest"), [self.digest.encode()])
        self.assertEqual(resp.headers.getRawHeaders(b"content-length"), [str(len(MANIFEST)).encode()])
        self.assertEqual(self.env.upstream_paths(self.up)[-1], "HEAD /v2/library/nginx/manifests/latest")

    def test_head_without_upstream_digest_computes_it(self):
        self.up.omit_digest = True
        resp, _ = self.env.request("HEAD", "/v2/library/nginx/manifests/latest")
        self.assertEqual(resp.headers.getRawHeaders(b"docker-content-digest"), [self.digest.encode()])
        resp, _ = self.env.request("GET", "/v2/library/nginx/manifests/latest")
        self.assertEqual(resp.headers.getRawHeaders(b"docker-content-digest"), [self.digest.encode()])

    def test_accept_lines_merged(self):
        self.env.request("GET", "/v2/library/nginx/manifests/latest",
                         headers={"Accept": ["application/vnd.oci.image.manifest.v1+json", DOCKER_V2, OCI_INDEX]})
        accept = self.up.requests[-1][3]["accept"]
        self.assertEqual(len(accept), 1)
        for t in ("application/vnd.oci.image.manifest.v1+json", DOCKER_V2, OCI_INDEX):
            self.assertIn(t, accept[0])

    def test_no_accept_sends_modern_types(self):
        resp, _ = self.env.request("GET", "/v2/library/nginx/manifests/latest")
        accept = self.up.requests[-1][3]["accept"][0]
        for t in (DOCKER_V2, OCI_INDEX, "application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json"):
            self.assertIn(t, accept)

    def test_digest_mismatch_is_upstream_failure(self):
        self.up.faults["/v2/library/nginx/manifests/" + self.digest] = ["corrupt"]
        resp, body = self.env.request("GET", f"/v2/library/nginx/manifests/{self.digest}")
        self.assertEqual(resp.code, 502)
        self.assertEqual(err_code(body), "UPSTREAM_ERROR")
        # the reason is for the log and the admin's health view, not for the client
        self.assertNotIn("digest mismatch", body.decode())
        self.assertIn("digest mismatch", self.env.pool.health.report()[1]["last_error"])

    def test_unknown_manifest(self):
        resp, body = self.env.request("GET", "/v2/library/nginx/manifests/nope")
        self.assertEqual(resp.code, 404)
        self.assertEqual(err_code(body), "MANIFEST_UNKNOWN")

    def test_bad_names(self):
        for path, code in [
            ("/v2/a/../b/manifests/latest", "NAME_INVALID"),
            ("/v2/a%2fb/manifests/latest", "NAME_INVALID"),
            ("/v2/a%2e%2e/manifests/latest", "NAME_INVALID"),
            ("/v2/A/manifests/latest", "NAME_INVALID"),
            ("/v2/a//b/manifests/latest", "NAME_INVALID"),
            ("/v2/a/manifests/sha256:abc", "DIGEST_INVALID"),
            ("/v2/a/blobs/latest", "DIGEST_INVALID"),
        ]:
            resp, body = self.env.request("GET", path)
            self.assertEqual(resp.code, 400, path)
            self.assertEqual(err_code(body), code, path)
        # an off-grammar manifest reference names no manifest (distribution spec conformance)
        for method in ("GET", "HEAD"):
            resp, body = self.env.request(method, "/v2/a/manifests/.INVALID_MANIFEST_NAME")
            self.assertEqual(resp.code, 404, method)
            if method == "GET":
                self.assertEqual(err_code(body), "MANIFEST_UNKNOWN")
        self.assertEqual(self.up.requests, [])

    def test_push_unsupported(self):
        for method, path in [("PUT", "/v2/a/manifests/latest"), ("POST", "/v2/a/blobs/uploads/"),
                             ("DELETE", "/v2/a/manifests/latest"), ("PATCH", "/v2/a/blobs/uploads/x")]:
            resp, body = self.env.request(method, path)
            self.assertEqual(resp.code, 405, path)
            self.assertEqual(err_code(body), "UNSUPPORTED")

    def test_containerd_ns_query_accepted(self):
        resp, body = self.env.request("HEAD", "/v2/library/nginx/manifests/latest?ns=docker.io")
        self.assertEqual(resp.code, 200)


class TokenAuthTests(unittest.TestCase):
    def setUp(self):
        self.up = FakeRegistry(auth="token", realm="http://auth.fake/token")
        self.auth = FakeRegistry()
        self.digest = self.up.add_manifest("library/nginx", "latest", MANIFEST)
        self.env = ProxyEnv([("up1.fake", self.up)], extra_hosts={"auth.fake": self.up.resource()})

    def test_token_fetched_and_cached(self):
        for _ in range(3):
            resp, body = self.env.request("GET", "/v2/library/nginx/manifests/latest")
            self.assertEqual(resp.code, 200)
            self.assertEqual(body, MANIFEST)
        self.assertEqual(len(self.up.token_requests), 1)
        tr = self.up.token_requests[0]
        self.assertEqual(tr["scope"], "repository:library/nginx:pull")
        self.assertEqual(tr["service"], "fake-registry")
        self.assertEqual(tr["authorization"], "")  # anonymous

    def test_token_expiry(self):
        self.env.request("GET", "/v2/library/nginx/manifests/latest")
        self.env.clock.advance(301)
        resp, _ = self.env.request("GET", "/v2/library/nginx/manifests/latest")
        self.assertEqual(resp.code, 200)
        self.assertEqual(len(self.up.token_requests), 2)


class CredentialTests(unittest.TestCase):
    def test_token_with_credentials_never_sent_to_cdn(self):
        up = FakeRegistry(auth="token", realm="http://up1.fake/token", credentials=("u", "p"),
                          cdn="http://cdn.fake")
        data = b"x" * 100_000
        digest = up.add_blob(data)
        env = ProxyEnv([("up1.fake", up)], extra_hosts={"cdn.fake": up.resource()},
                       credentials={"up1.fake": ("u", "p")})
        resp, body = env.request("GET", f"/v2/library/nginx/blobs/{digest}")
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, data)
        self.assertTrue(up.token_requests[0]["authorization"].startswith("Basic "))
        self.assertEqual(up.token_requests[0]["account"], "u")
        cdn = [r for r in up.requests if r[1] == "cdn.fake"]
        self.assertEqual(len(cdn), 1)
        self.assertNotIn("authorization", cdn[0][3])
        registry_hits = [r for r in up.requests if r[1] == "up1.fake" and "/blobs/" in r[2]]
        self.assertTrue(registry_hits[-1][3]["authorization"][0].startswith("Bearer "))

    def test_basic_upstream(self):
        up = FakeRegistry(auth="basic", credentials=("u", "p"))
        up.add_manifest("library/x", "1", MANIFEST)
        env = ProxyEnv([("up1.fake", up)], credentials={"up1.fake": ("u", "p")})
        resp, body = env.request("GET", "/v2/x/manifests/1")
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, MANIFEST)

    def test_basic_upstream_wrong_credentials_not_leaked(self):
        up = FakeRegistry(auth="basic", credentials=("u", "p"))
        up.add_manifest("library/x", "1", MANIFEST)
        env = ProxyEnv([("up1.fake", up)], credentials={"up1.fake": ("u", "s3cret-wrong")})
        resp, body = env.request("GET", "/v2/x/manifests/1")
        self.assertEqual(resp.code, 404)  # denied everywhere looks like unknown
        self.assertNotIn(b"s3cret", body)


class FailoverTests(unittest.TestCase):
    def setUp(self):
        self.a, self.b = FakeRegistry(), FakeRegistry()
        self.digest = self.b.add_manifest("library/nginx", "latest", MANIFEST)

    def test_first_404_second_serves(self):
        env = ProxyEnv([("a.fake", self.a), ("b.fake", self.b)])
        resp, body = env.request("GET", "/v2/library/nginx/manifests/latest")
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, MANIFEST)
        self.assertEqual(env.log.records[-1].upstream, "b.fake")
        self.assertEqual(len(self.a.requests), 1)

    def test_first_down_second_serves(self):
        env = ProxyEnv([("down.fake", self.a), ("b.fake", self.b)])
        del env.agent.agents["down.fake"]  # connection refused
        resp, body = env.request("GET", "/v2/library/nginx/manifests/latest")
        self.assertEqual(resp.code, 200)
        h = env.pool.health.report()
        self.assertEqual(h[1]["state"], "down")
        self.assertIn("cannot connect", h[1]["last_error"])
        self.assertEqual(h[2]["state"], "up")

    def test_5xx_and_429_fail_over(self):
        self.a.add_manifest("library/nginx", "latest", MANIFEST)
        env = ProxyEnv([("a.fake", self.a), ("b.fake", self.b)])
        for fault in (500, 503, 429):
            self.a.faults["/v2/library/nginx/manifests/latest"] = [fault]
            resp, body = env.request("GET", "/v2/library/nginx/manifests/latest")
            self.assertEqual(resp.code, 200, fault)
            self.assertEqual(env.log.records[-1].upstream, "b.fake")

    def test_all_404(self):
        env = ProxyEnv([("a.fake", self.a), ("b.fake", FakeRegistry())])
        resp, body = env.request("GET", "/v2/library/nginx/manifests/latest")
        self.assertEqual(resp.code, 404)
        self.assertEqual(err_code(body), "MANIFEST_UNKNOWN")
        resp, body = env.request("GET", "/v2/library/nginx/blobs/sha256:" + "0" * 64)
        self.assertEqual(err_code(body), "BLOB_UNKNOWN")
        resp, body = env.request("GET", "/v2/library/nginx/tags/list")
        self.assertEqual(err_code(body), "NAME_UNKNOWN")

    def test_all_429(self):
        env = ProxyEnv([("a.fake", self.a), ("b.fake", self.b)])
        path = "/v2/library/nginx/manifests/latest"
        self.a.faults[path] = [429]
        self.b.faults[path] = [429]
        resp, body = env.request("GET", path)
        self.assertEqual(resp.code, 429)
        self.assertEqual(err_code(body), "TOOMANYREQUESTS")
        self.assertEqual(resp.headers.getRawHeaders(b"retry-after"), [b"7"])

    def test_all_broken_is_502_without_secrets(self):
        env = ProxyEnv([("a.fake", self.a), ("b.fake", self.b)], credentials={"a.fake": ("user", "pa55word")})
        path = "/v2/library/nginx/manifests/latest"
        self.a.faults[path] = [500]
        self.b.faults[path] = [502]
        resp, body = env.request("GET", path)
        self.assertEqual(resp.code, 502)
        self.assertEqual(err_code(body), "UPSTREAM_ERROR")
        self.assertNotIn(b"pa55word", body)

    def test_no_upstreams(self):
        env = ProxyEnv([])
        resp, body = env.request("GET", "/v2/library/nginx/manifests/latest")
        # a namespace with no enabled upstream: 404 NAME_UNKNOWN, saying so
        self.assertEqual(resp.code, 404)
        err = json.loads(body)["errors"][0]
        self.assertEqual(err["code"], "NAME_UNKNOWN")
        self.assertIn("no upstream registry is enabled for namespace docker.io", err["message"])

    def test_dead_upstream_cools_down(self):
        env = ProxyEnv([("down.fake", self.a), ("b.fake", self.b)], cooldown=30)
        del env.agent.agents["down.fake"]
        for _ in range(5):
            env.request("GET", "/v2/library/nginx/manifests/latest")
        tried = [u for _m, u, _h in env.agent.sent if b"down.fake" in u]
        self.assertEqual(len(tried), 3)  # skipped after 3 consecutive failures
        self.assertEqual(env.pool.health.report()[1]["state"], "cooldown")
        env.clock.advance(31)
        env.request("GET", "/v2/library/nginx/manifests/latest")
        tried = [u for _m, u, _h in env.agent.sent if b"down.fake" in u]
        self.assertEqual(len(tried), 4)  # tried again after the cool-down

    def test_header_timeout_fails_over(self):
        self.a.add_manifest("library/nginx", "latest", MANIFEST)
        env = ProxyEnv([("a.fake", self.a), ("b.fake", self.b)])
        path = "/v2/library/nginx/manifests/latest"
        self.a.faults[path] = ["hang"]
        from twisted.internet.defer import ensureDeferred
        import treq

        async def go():
            resp = await env.client.get("http://proxy.test" + path)
            return resp, await treq.content(resp)

        d = ensureDeferred(go())
        env.agent.flush(); env.client.flush()
        self.assertFalse(d.called)
        env.clock.advance(11)
        resp, body = env.pump(d)
        self.assertEqual(resp.code, 200)
        self.assertIn("within", env.pool.health.report()[1]["last_error"])


class BlobTests(unittest.TestCase):
    def setUp(self):
        self.up = FakeRegistry()
        self.data = bytes(range(256)) * 4096  # 1 MiB
        self.digest = self.up.add_blob(self.data)
        self.env = ProxyEnv([("up1.fake", self.up)])
        self.path = f"/v2/library/x/blobs/{self.digest}"

    def test_get(self):
        resp, body = self.env.request("GET", self.path)
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, self.data)
        h = resp.headers
        self.assertEqual(h.getRawHeaders(b"docker-content-digest"), [self.digest.encode()])
        self.assertEqual(resp.length, len(self.data))
        self.assertEqual(h.getRawHeaders(b"accept-ranges"), [b"bytes"])
        self.assertEqual(h.getRawHeaders(b"cache-control"), [b"public, max-age=31536000, immutable"])
        rec = self.env.log.records[-1]
        self.assertEqual((rec.kind, rec.status, rec.bytes), ("blob", 200, len(self.data)))

    def test_head(self):
        resp, body = self.env.request("HEAD", self.path)
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(resp.headers.getRawHeaders(b"content-length"), [str(len(self.data)).encode()])

    def test_range(self):
        resp, body = self.env.request("GET", self.path, headers={"Range": "bytes=100-199"})
        self.assertEqual(resp.code, 206)
        self.assertEqual(body, self.data[100:200])
        self.assertEqual(resp.headers.getRawHeaders(b"content-range"),
                         [f"bytes 100-199/{len(self.data)}".encode()])
        resp, body = self.env.request("GET", self.path, headers={"Range": "bytes=99999999-"})
        self.assertEqual(resp.code, 416)
        self.assertEqual(err_code(body), "RANGE_INVALID")

    def test_redirect_followed(self):
        up = FakeRegistry(cdn="http://cdn.fake")
        digest = up.add_blob(self.data)
        env = ProxyEnv([("up1.fake", up)], extra_hosts={"cdn.fake": up.resource()})
        resp, body = env.request("GET", f"/v2/library/x/blobs/{digest}")
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, self.data)
        self.assertEqual([r[1] for r in up.requests], ["up1.fake", "cdn.fake"])

    def _expect_aborted(self, fault):
        # a broken body is resumed (tests/test_resume.py): this one breaks every time
        self.up.faults[self.path] = [fault] * 4
        from twisted.web._newclient import ResponseFailed

        with self.assertRaises(ResponseFailed):
            self.env.request("GET", self.path)
        self.assertEqual(self.env.log.records[-1].status, 200)
        self.assertLess(self.env.log.records[-1].bytes, len(self.data))

    def test_corrupt_upstream_aborts_client(self):
        self._expect_aborted("corrupt")

    def test_truncated_upstream_aborts_client(self):
        self._expect_aborted("truncate")


class TagsTests(unittest.TestCase):
    def test_tags_and_link_rewrite(self):
        up = FakeRegistry()
        for t in ("a", "b", "c"):
            up.add_manifest("library/x", t, MANIFEST + t.encode())
        env = ProxyEnv([("up1.fake", up)])
        resp, body = env.request("GET", "/v2/x/tags/list?n=2")
        self.assertEqual(resp.code, 200)
        self.assertEqual(json.loads(body)["tags"], ["a", "b"])
        self.assertEqual(resp.headers.getRawHeaders(b"link"),
                         [b'<http://proxy.test/v2/library/x/tags/list?n=2&last=b>; rel="next"'])
        self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        resp, body = env.request("GET", "/v2/x/tags/list?n=2&last=b")
        self.assertEqual(json.loads(body)["tags"], ["c"])
        resp, body = env.request("GET", "/v2/x/tags/list?n=abc")
        self.assertEqual(resp.code, 400)
        resp, body = env.request("GET", "/v2/x/tags/list?last=-x")
        self.assertEqual(resp.code, 400)
        self.assertEqual(err_code(body), "TAG_INVALID")


class ClientGoneTests(unittest.TestCase):
    def test_cancelled_request_is_not_an_upstream_failure(self):
        from twisted.internet.defer import CancelledError, Deferred

        up = FakeRegistry()
        path = "/v2/library/x/manifests/1"
        up.faults[path] = ["hang"]
        env = ProxyEnv([("a.fake", up)])
        d = Deferred.fromCoroutine(env.pool.request(env.pool.upstreams[0], b"GET", path))
        env.agent.flush()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(env.pool.health.report()[1]["consecutive_failures"], 0)
        self.assertNotEqual(env.pool.health.report()[1]["state"], "down")


class ProbeTests(unittest.TestCase):
    def test_probe_result_recorded_in_health(self):
        up = FakeRegistry()
        env = ProxyEnv([("a.fake", up), ("down.fake", FakeRegistry())])
        del env.agent.agents["down.fake"]
        for row_id, host in ((1, "a.fake"), (2, "down.fake")):
            d = ensure(env.pool.probe({"id": row_id, "url": f"http://{host}"}))
            env.agent.flush()
            result = self.successResultOf(d)
            env.pool.health.record_probe(row_id, result)
        h = env.pool.health.report()
        self.assertEqual(h[1]["state"], "up")
        self.assertEqual(h[2]["state"], "down")
        self.assertIn("cannot connect", h[2]["last_error"])


def ensure(coro):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)
