"""The admin API and the access log as wired by zmirror.wiring.build, over a real socket."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.trial import unittest

from tests.fixtures.helpers import (
    admin_password_line,
    coro,
    free_port,
    start_services,
    start_twistd,
    stop,
    wait_port,
    write_default_config,
)
from tests.fixtures.admin import basic, comments
from zmirror.auth.passwords import is_hash, verify_admin_sync
from zmirror.config import DEFAULT_ADMIN_PASSWORD, load_config
from zmirror.wiring import build

ADMIN_PW = "Wiring-admin-pw-1"
GATED = {"error": "change the default admin password first", "fields": {}}


def write_config(data: Path, password: str = DEFAULT_ADMIN_PASSWORD) -> Path:
    """The generated default config.toml, with ``password`` for the admin."""
    return write_default_config(data, admin_password_line(password))


async def call(base, method, path, body=None, auth=None):
    headers = dict(auth or {})
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    resp = await treq.request(method, base + path, data=data, headers=headers, persistent=False)
    text = await resp.content()
    return resp.code, (json.loads(text) if text else None)


class WiringTests(unittest.TestCase):
    def setUp(self):
        data = Path(self.mktemp()).resolve()
        write_config(data, ADMIN_PW)  # the generated config, the admin password changed
        if getattr(self, "backend", "sqlite") == "postgresql":
            from tests.fixtures.pgserver import fresh_database

            url = fresh_database(self)
            cfg = data / "config.toml"
            line = '# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"'
            cfg.write_text(cfg.read_text().replace(line, f'url = "{url}"'))
        self.config = load_config(data)
        self.components = build(self.config, reactor)
        self.top = start_services(self.components)
        self.port = reactor.listenTCP(0, self.components.site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.auth = basic("admin", ADMIN_PW)
        self.stopped = False
        # cleanups run before tearDown: stop the service before a test database is dropped
        self.addCleanup(lambda: Deferred.fromCoroutine(self._stop()))

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
            self.assertIsNotNone(getattr(c, key))
        recorder = c.app.registry.accesslog
        # the ops layer may wrap it (metrics); the batched writer is underneath
        self.assertIs(getattr(recorder, "inner", recorder), c.accesslog)
        self.assertIs(c.admin.cache, c.blob_cache)

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
        upstreams = self.components.upstreams
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
        from zmirror.db.engine import connect_config

        conn = connect_config(self.config)
        rows = [tuple(r) for r in conn.execute(
            "SELECT repository, reference, status, method FROM access_logs").fetchall()]
        conn.close()
        self.assertEqual(rows, [("library/nginx", "latest", status, "GET")])


class DefaultPasswordServiceTests(unittest.TestCase):
    """The whole service (zmirror.tap.makeService: password thread pool, SIGHUP reloader)
    on the generated config, over a real socket."""

    def setUp(self):
        from zmirror.tap import Options, makeService

        self.data = Path(self.mktemp()).resolve() / "data"
        self.path = write_config(self.data)
        self.before = self.path.read_text()
        opts = Options()
        opts.parseOptions(["--data", str(self.data), "--listen", "tcp:0:interface=127.0.0.1"])
        self.top = makeService(opts, reactor)
        self.c = self.top.components
        self.top.startService()
        self.port = reactor.listenTCP(0, self.c.site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def _stop(self):
        await self.port.stopListening()
        await self.top.stopService()

    def tearDown(self):
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self._stop())

    def change(self, current, new, auth_password=DEFAULT_ADMIN_PASSWORD):
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(call(self.base, "PUT", "/api/me/password",
                                           {"current_password": current, "new_password": new},
                                           basic("admin", auth_password)))

    @coro
    async def test_change_applies_at_once_and_survives_sighup(self):
        old, new = basic("admin", DEFAULT_ADMIN_PASSWORD), basic("admin", "Brand-new-pass-7")
        self.assertEqual(await call(self.base, "GET", "/api/registries", auth=old), (403, GATED))
        code, obj = await call(self.base, "GET", "/api/me", auth=old)
        self.assertEqual((code, obj["default_password"]), (200, True))
        code, obj = await self.change(DEFAULT_ADMIN_PASSWORD, "Brand-new-pass-7")
        self.assertEqual((code, obj), (200, {"username": "admin", "default_password": False}))
        self.assertEqual((await call(self.base, "GET", "/api/registries", auth=old))[0], 401)
        code, obj = await call(self.base, "GET", "/api/registries", auth=new)
        self.assertEqual(code, 200, obj)
        code, obj = await call(self.base, "GET", "/api/me", auth=new)
        self.assertEqual(obj, {"username": "admin", "default_password": False})
        after = self.path.read_text()
        self.assertEqual(comments(after), comments(self.before))
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertTrue(is_hash(load_config(self.data).admin.password))
        # SIGHUP re-reads the file: the new password stays, the old one stays refused
        reloader, admin = self.c.reloader, self.c.admin
        self.assertEqual(reloader.config.admin.password, admin.account.settings.password)
        self.assertTrue(reloader.reload())
        self.assertTrue(verify_admin_sync("Brand-new-pass-7", admin.account.settings.password))
        self.assertEqual(reloader.config.admin.password, admin.account.settings.password)
        self.assertEqual((await call(self.base, "GET", "/api/registries", auth=new))[0], 200)
        self.assertEqual((await call(self.base, "GET", "/api/registries", auth=old))[0], 401)
        # /metrics ([metrics] access = "admin") uses the same check
        resp = await treq.get(self.base + "/metrics", headers=new, persistent=False)
        await resp.content()
        self.assertEqual(resp.code, 200)

    @coro
    async def test_concurrent_changes_one_wins(self):
        results = await DeferredList([self.change(DEFAULT_ADMIN_PASSWORD, f"Concurrent-pass-{i}")
                                      for i in range(4)], consumeErrors=True)
        answers = [r for ok, r in results]
        self.assertTrue(all(ok for ok, _r in results), answers)
        winners = [i for i, (code, _o) in enumerate(answers) if code == 200]
        self.assertEqual(len(winners), 1, answers)
        for i, (code, obj) in enumerate(answers):
            if i not in winners:
                self.assertEqual(code, 400, obj)
                self.assertIn("current_password", obj["fields"])
        on_disk = load_config(self.data).admin.password  # still a valid file
        self.assertTrue(verify_admin_sync(f"Concurrent-pass-{winners[0]}", on_disk))
        self.assertEqual(self.c.admin.account.settings.password, on_disk)
        self.assertEqual(comments(self.path.read_text()), comments(self.before))
        self.assertEqual(sorted(p.name for p in self.data.iterdir() if p.name.startswith(".")), [])


class SighupProcessTests(unittest.TestCase):
    """`twistd -n zmirror`: the password changed through the API, then a real SIGHUP."""

    def test_sighup_after_change(self):
        import base64
        import urllib.error
        import urllib.request

        work = Path(self.mktemp()).resolve()
        work.mkdir()
        data = work / "data"
        path = write_config(data)
        port = free_port()
        proc = start_twistd(work, "zmirror", "--data", str(data), "--listen",
                            f"tcp:{port}:interface=127.0.0.1")
        self.addCleanup(stop, proc)
        wait_port(port, timeout=60, proc=proc)

        def req(method, p, password, body=None):
            h = {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}
            raw = None
            if body is not None:
                raw = json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            r = urllib.request.Request(f"http://127.0.0.1:{port}{p}", data=raw, method=method, headers=h)
            try:
                with urllib.request.urlopen(r, timeout=30) as resp:
                    return resp.status, json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read() or b"null")

        new = "Process-pass-42"
        self.assertEqual(req("GET", "/api/users", DEFAULT_ADMIN_PASSWORD), (403, GATED))
        code, obj = req("PUT", "/api/me/password", DEFAULT_ADMIN_PASSWORD,
                        {"current_password": DEFAULT_ADMIN_PASSWORD, "new_password": new})
        self.assertEqual(code, 200, obj)
        self.assertEqual(req("GET", "/api/users", new)[0], 200)
        # an operator edit applied by the reload shows when the reload has happened
        path.write_text(path.read_text().replace('anonymous = "whitelist"', 'anonymous = "all"'))
        os.kill(proc.pid, signal.SIGHUP)
        match = "/api/whitelists/match?repository=nginx"
        deadline = time.monotonic() + 30
        while req("GET", match, new)[1].get("mode") != "all":
            self.assertLess(time.monotonic(), deadline, "SIGHUP not applied")
            time.sleep(0.1)
        self.assertEqual(req("GET", "/api/users", new)[0], 200)
        self.assertEqual(req("GET", "/api/users", DEFAULT_ADMIN_PASSWORD)[0], 401)
        output = stop(proc).decode("utf-8", "replace")
        line = [ln for ln in output.splitlines() if "reload: configuration re-read" in ln]
        self.assertEqual(len(line), 1, output[-3000:])
        self.assertIn("applied access.anonymous", line[0])
        self.assertNotIn("admin.password", line[0])  # already applied by the API
        self.assertNotIn(new, output)
        self.assertTrue(verify_admin_sync(new, load_config(data).admin.password))


# the whole service on a real PostgreSQL ([database] url; tests/fixtures/pgserver.py)
from tests.fixtures.pgserver import on_postgresql  # noqa: E402

WiringPostgresTests = on_postgresql(WiringTests)
