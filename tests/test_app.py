import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial import unittest

from zmirror.app import ZMirrorApp
from zmirror.registry.routes import RegistryRoutes


class AppTests(unittest.TestCase):
    def setUp(self):
        self.registry = RegistryRoutes(None, clock=Clock())
        self.client = StubTreq(ZMirrorApp(self.registry).resource())

    async def _get(self, url, method="GET"):
        resp = await self.client.request(method, url)
        body = await resp.content()
        return resp, body

    def test_ping(self):
        async def go():
            for url in ("http://x/v2/", "http://x/v2"):
                resp, body = await self._get(url)
                self.assertEqual(resp.code, 200)
                self.assertEqual(json.loads(body), {})
                self.assertEqual(
                    resp.headers.getRawHeaders(b"docker-distribution-api-version"), [b"registry/2.0"]
                )
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(go())

    def test_unknown_path_json_404(self):
        async def go():
            for url in ("http://x/nothing/here", "http://x/api/x", "http://x/token"):
                resp, body = await self._get(url)
                self.assertEqual(resp.code, 404, url)
                self.assertIn("error", json.loads(body))
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(go())

    def test_registry_errors_are_json(self):
        async def go():
            resp, body = await self._get("http://x/v2/a/../b/manifests/latest")
            self.assertEqual(resp.code, 400)
            self.assertEqual(json.loads(body)["errors"][0]["code"], "NAME_INVALID")
            resp, body = await self._get("http://x/v2/_catalog")
            self.assertEqual(json.loads(body)["errors"][0]["code"], "UNSUPPORTED")
            resp, body = await self._get("http://x/v2/a/blobs/uploads/", method="POST")
            self.assertEqual(resp.code, 405)
            self.assertEqual(json.loads(body)["errors"][0]["code"], "UNSUPPORTED")
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(go())
