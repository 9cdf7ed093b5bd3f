"""The admin API and the access log as wired by zmirror.wiring.build, over a real socket."""

from __future__ import annotations

import json
import sqlite3

import treq
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.trial import unittest

from tests.test_admin_registries import coro
from tests.test_admin_support import basic
from zmirror.config import load_config
from zmirror.wiring import build


class WiringTests(unittest.TestCase):
    def setUp(self):
        data = self.mktemp()
        self.config = load_config(data)  # default config: admin / admin123
        self.components = build(self.config, reactor)
        self.top = MultiService()
        for svc in self.components["services"]:
            svc.setServiceParent(self.top)
        self.top.startService()
        self.port = reactor.listenTCP(0, self.components["site"], interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.auth = basic("admin", "admin123")
        self.stopped = False

    async def _stop(self):
        if not self.stopped:
            self.stopped = True
            await self.port.stopListening()
            await self.top.stopService()

    def tearDown(self):
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self._stop())

    async def api(self, method, path, body=None, auth=True):
        headers = dict(self.auth if auth else {})
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        resp = await treq.request(method, self.base + path, data=data, headers=headers,
                                  persistent=False)
        text = await resp.content()
        return resp.code, (json.loads(text) if text else None)

    @coro
    async def test_components(self):
        c = self.components
        for key in ("registries", "accesslog", "accesslogs", "admin"):
            self.assertIn(key, c)
        recorder = c["app"].registry.accesslog
        # the ops layer may wrap it (metrics); the batched writer is underneath
        self.assertIs(getattr(recorder, "inner", recorder), c["accesslog"])
        self.assertIs(c["admin"].cache, c["blob_cache"])

    @coro
    async def test_list_with_health(self):
        code, obj = await self.api("GET", "/api/registries")
        self.assertEqual(code, 200)
        self.assertEqual(obj["items"][0]["name"], "Docker Hub")
        self.assertIn(obj["items"][0]["health"]["state"], ("unknown", "up", "down", "cooldown"))

    @coro
    async def test_registry_change_reaches_the_proxy_core(self):
        code, obj = await self.api("POST", "/api/registries",
                                   {"name": "Local", "url": "http://127.0.0.1:9/", "priority": 0,
                                    "username": "u", "password": "p"})
        self.assertEqual(code, 201, obj)
        upstreams = self.components["upstreams"]
        self.assertEqual([(u.id, u.username, u.password) for u in upstreams.upstreams][0],
                         (obj["id"], "u", "p"))
        code, _ = await self.api("DELETE", f"/api/registries/{obj['id']}")
        self.assertEqual(code, 204)
        self.assertNotIn(obj["id"], [u.id for u in upstreams.upstreams])
        code, _ = await self.api("GET", "/api/registries", auth=False)
        self.assertEqual(code, 401)

    @coro
    async def test_pull_is_logged_and_flushed_on_shutdown(self):
        # a denied/failed pull is still a row; the default mode is "whitelist" (empty)
        resp = await treq.get(self.base + "/v2/library/nginx/manifests/latest", persistent=False)
        await resp.content()
        status = resp.code
        await self._stop()  # flushes the queue before the database closes
        conn = sqlite3.connect(str(self.config.database_path))
        rows = conn.execute("SELECT repository, reference, status, method FROM access_logs").fetchall()
        conn.close()
        self.assertEqual(rows, [("library/nginx", "latest", status, "GET")])
