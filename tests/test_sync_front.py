"""zmirror.sync.front.FrontBlobs: blobs fetched through the cluster's external URL with a
short-lived pull token; refusals fall back to this node's cache; 429 → rate limit."""

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource

from zmirror.auth.tokens import TokenIssuer
from zmirror.oci.errors import RegistryError
from zmirror.sync.front import FrontBlobs
from zmirror.sync.spec import repo_of

DIGEST = "sha256:" + "cd" * 32


class Front(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.answers = []  # (status, body, headers)

    def render_GET(self, request):
        self.requests.append((request.path.decode(), request.getHeader(b"authorization")))
        status, body, headers = self.answers.pop(0) if self.answers else (200, b"x" * 10, {})
        request.setResponseCode(status)
        for k, v in headers.items():
            request.setHeader(k, v)
        return body


class Local:
    def __init__(self):
        self.calls = []

    async def fetch(self, repo, digest, size, record):
        self.calls.append((repo, digest))
        return True


class FrontBlobsTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tokens = TokenIssuer(b"k" * 32, self.clock, service="zmirror")
        self.front = Front()
        self.http = StubTreq(self.front)
        self.local = Local()
        self.blobs = FrontBlobs(self.http, "http://front.test/", self.tokens, self.local,
                                collect=self.http.collect)

    def fetch(self, repo="library/app", size=10):
        d = Deferred.fromCoroutine(self.blobs.fetch(repo_of(repo), DIGEST, size, None))
        self.http.flush()
        return d

    def test_through_the_front_with_a_pull_token(self):
        self.assertTrue(self.successResultOf(self.fetch("ghcr.io/o/img")))
        path, auth = self.front.requests[0]
        self.assertEqual(path, f"/v2/ghcr.io/o/img/blobs/{DIGEST}")
        claims = self.tokens.verify_access(auth.decode().split(" ", 1)[1])
        self.assertTrue(claims.allows("ghcr.io/o/img", "pull"))
        self.assertFalse(claims.allows("library/other", "pull"))
        self.assertEqual(self.local.calls, [])

    def test_refused_token_falls_back_to_the_local_cache(self):
        self.front.answers = [(401, b"{}", {})]
        self.assertTrue(self.successResultOf(self.fetch()))
        self.assertEqual(self.local.calls, [("library/app", DIGEST)])

    def test_rate_limited_and_errors(self):
        self.front.answers = [(429, b"{}", {b"Retry-After": b"7"}), (404, b"{}", {}), (502, b"", {}),
                              (200, b"short", {})]
        e = self.failureResultOf(self.fetch(), RegistryError).value
        self.assertEqual((e.code, e.headers[b"Retry-After"]), ("TOOMANYREQUESTS", b"7"))
        self.assertEqual(self.failureResultOf(self.fetch(), RegistryError).value.code, "BLOB_UNKNOWN")
        self.assertEqual(self.failureResultOf(self.fetch(), RegistryError).value.code, "UPSTREAM_ERROR")
        self.assertEqual(self.failureResultOf(self.fetch(), RegistryError).value.code, "UPSTREAM_ERROR")
