"""Prometheus metrics: exposition, the hooks in the pull path, access modes, separate listener."""

import base64
import json
from pathlib import Path

import treq
from prometheus_client import REGISTRY
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests.fixtures.metrics import value
from tests.fixtures.proxyenv import ProxyEnv
from zmirror.accesslog import AccessRecord, MemoryAccessLog
from zmirror.app import ZMirrorApp
from zmirror.config import Config, ConfigError
from zmirror.metrics import MeteredAccessLog, Metrics
from zmirror.metricsendpoint import MetricsEndpoint, metrics_listen_service
from zmirror.testing import DOCKER_V2, FakeRegistry, sha256

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_V2, "layers": []}).encode()


class MetricsUnitTests(unittest.TestCase):
    def test_own_registry_never_the_global_one(self):
        before = set(REGISTRY._names_to_collectors)
        a, b = Metrics(), Metrics()  # two instances would clash on one registry
        a.requests.labels("blob", "200").inc()
        self.assertEqual(set(REGISTRY._names_to_collectors), before)
        self.assertEqual(value(a.exposition(), "zmirror_requests_total", kind="blob", status="200"), 1.0)
        self.assertIsNone(value(b.exposition(), "zmirror_requests_total", kind="blob", status="200"))

    def test_observe_access(self):
        m = Metrics(process=False)
        inner = MemoryAccessLog()
        log = MeteredAccessLog(inner, m)
        log.record(AccessRecord(created_at=0, kind="blob", status=200, bytes=1000, duration_ms=250,
                                cache_hit=True))
        log.record(AccessRecord(created_at=0, kind="blob", status=200, bytes=24, duration_ms=5,
                                cache_hit=False))
        log.record(AccessRecord(created_at=0, kind="denied", status=401, bytes=150, duration_ms=1))
        self.assertEqual(len(inner.records), 3)  # handed on
        t = m.exposition()
        self.assertEqual(value(t, "zmirror_requests_total", kind="blob", status="200"), 2)
        self.assertEqual(value(t, "zmirror_requests_total", kind="denied", status="401"), 1)
        self.assertEqual(value(t, "zmirror_response_bytes_total", kind="blob"), 1024)
        self.assertEqual(value(t, "zmirror_cache_requests_total", kind="blob", result="hit"), 1)
        self.assertEqual(value(t, "zmirror_cache_requests_total", kind="blob", result="miss"), 1)
        self.assertEqual(value(t, "zmirror_request_duration_seconds_count", kind="blob"), 2)
        self.assertAlmostEqual(value(t, "zmirror_request_duration_seconds_sum", kind="blob"), 0.255)

    def test_metered_log_passes_attributes_through(self):
        class Inner:
            queue_depth = 7

            def record(self, rec):
                pass

        self.assertEqual(MeteredAccessLog(Inner(), Metrics(process=False)).queue_depth, 7)

    def test_callable_gauges(self):
        m = Metrics(process=False)

        class Log:
            queue_depth = 0
            dropped = 2

        class Tracker:
            inflight = 3

        class Cache:
            size = 12345

        log = Log()
        m.watch_accesslog(log)
        m.watch_inflight(Tracker())
        m.watch_cache(Cache())
        log.queue_depth = 42
        t = m.exposition()
        self.assertEqual(value(t, "zmirror_accesslog_queue_depth"), 42)
        self.assertEqual(value(t, "zmirror_accesslog_dropped"), 2)
        self.assertEqual(value(t, "zmirror_http_inflight_requests"), 3)
        self.assertEqual(value(t, "zmirror_cache_size_bytes"), 12345)
        m2 = Metrics(process=False)
        m2.watch_cache(None)
        self.assertEqual(value(m2.exposition(), "zmirror_cache_size_bytes"), 0)

    def test_token_and_auth_failure_counters(self):
        m = Metrics(process=False)
        m.token_issued(True, refresh=True)
        m.token_issued(False)
        m.auth_failure("token", "bad_credentials")
        t = m.exposition()
        self.assertEqual(value(t, "zmirror_tokens_issued_total", subject="user", type="access"), 1)
        self.assertEqual(value(t, "zmirror_tokens_issued_total", subject="user", type="refresh"), 1)
        self.assertEqual(value(t, "zmirror_tokens_issued_total", subject="anonymous", type="access"), 1)
        self.assertEqual(value(t, "zmirror_auth_failures_total", endpoint="token",
                               reason="bad_credentials"), 1)


class PullPathMetricsTests(unittest.TestCase):
    """Counters move when real pulls go through the routes, proxy core and upstream pool."""

    def setUp(self):
        self.up1 = FakeRegistry()
        self.up2 = FakeRegistry()
        self.blob = b"x" * 5000
        self.digest = self.up2.add_blob(self.blob)
        self.up2.add_manifest("library/nginx", "latest", MANIFEST)
        self.metrics = Metrics(process=False)
        self.env = ProxyEnv([("up1.fake", self.up1), ("up2.fake", self.up2)], metrics=self.metrics)
        self.metrics.watch_upstreams(self.env.pool)

    def test_pull_counts(self):
        resp, body = self.env.request("GET", f"/v2/library/nginx/blobs/{self.digest}")
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, self.blob)
        resp, _ = self.env.request("GET", "/v2/library/nginx/manifests/latest")
        self.assertEqual(resp.code, 200)
        resp, _ = self.env.request("GET", "/v2/library/nothere/manifests/latest")
        self.assertEqual(resp.code, 404)
        t = self.metrics.exposition()
        self.assertEqual(value(t, "zmirror_requests_total", kind="blob", status="200"), 1)
        self.assertEqual(value(t, "zmirror_requests_total", kind="manifest", status="200"), 1)
        self.assertEqual(value(t, "zmirror_requests_total", kind="manifest", status="404"), 1)
        self.assertEqual(value(t, "zmirror_response_bytes_total", kind="blob"), len(self.blob))
        # up1 answered 404 for everything, up2 had the content
        self.assertEqual(value(t, "zmirror_upstream_requests_total", upstream="up1.fake", status="404"), 3)
        self.assertEqual(value(t, "zmirror_upstream_requests_total", upstream="up2.fake", status="200"), 2)
        self.assertEqual(value(t, "zmirror_upstream_response_seconds_count", upstream="up2.fake"), 3)
        self.assertEqual(value(t, "zmirror_upstream_up", upstream="up1.fake"), 1)

    def test_upstream_failures(self):
        # up1 refuses connections: counted as "error" requests and as health failures
        self.env.agent.agents.pop("up1.fake")
        resp, _ = self.env.request("GET", f"/v2/library/nginx/blobs/{self.digest}")
        self.assertEqual(resp.code, 200)
        t = self.metrics.exposition()
        self.assertEqual(value(t, "zmirror_upstream_requests_total", upstream="up1.fake", status="error"), 1)
        self.assertEqual(value(t, "zmirror_upstream_errors_total", upstream="up1.fake"), 1)
        self.assertEqual(value(t, "zmirror_upstream_consecutive_failures", upstream="up1.fake"), 1)
        self.assertEqual(value(t, "zmirror_upstream_up", upstream="up1.fake"), 0)


def _config(tmp: Path, **admin) -> Config:
    from zmirror.config import AdminConfig

    return Config(data_dir=tmp, config_path=tmp / "config.toml",
                  admin=AdminConfig(username="admin", password=admin.get("password", "Adm1n-pw!")))


class EndpointTests(unittest.TestCase):
    def setUp(self):
        from zmirror.auth.adminaccount import AdminAccount
        from zmirror.auth.lockout import Lockout
        from zmirror.auth.passwords import Passwords, fast_context

        self.clock = Clock()
        self.metrics = Metrics(process=False)
        self.metrics.requests.labels("blob", "200").inc()
        tmp = Path(self.mktemp())
        tmp.mkdir()
        self.tmp = tmp
        config = _config(tmp)
        self.account = AdminAccount(config.admin, config_path=config.config_path,
                                    data_dir=config.data_dir, lockout=Lockout(self.clock),
                                    passwords=Passwords(fast_context(), clock=self.clock))
        self.endpoint = MetricsEndpoint(self.metrics, "admin", account=self.account)
        self.client = StubTreq(ZMirrorApp(None, extra={"metrics": self.endpoint}).resource())

    def get(self, auth=None):
        headers = {}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()

        async def go():
            resp = await self.client.get("http://zm.test/metrics", headers=headers)
            return resp, await treq.content(resp)

        d = ensureDeferred(go())
        self.client.flush()
        return self.successResultOf(d)

    def test_admin_mode(self):
        resp, body = self.get()
        self.assertEqual(resp.code, 401)
        self.assertEqual(resp.headers.getRawHeaders(b"www-authenticate"), [b'Basic realm="zmirror-admin"'])
        self.assertNotIn(b"zmirror_requests_total", body)
        resp, body = self.get("admin:wrong")
        self.assertEqual(resp.code, 401)
        resp, body = self.get("admin:Adm1n-pw!")
        self.assertEqual(resp.code, 200)
        self.assertTrue(resp.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(value(body, "zmirror_requests_total", kind="blob", status="200"), 1)

    def test_admin_mode_refuses_the_default_password(self):
        from zmirror.auth.adminaccount import DefaultPasswordInUse
        from zmirror.auth.passwords import fast_context

        DEFAULT_PASSWORD_ERROR = DefaultPasswordInUse.message
        from zmirror.config import DEFAULT_ADMIN_PASSWORD

        # configured as plain text, and as a hash of the default (known from the request)
        for configured in (DEFAULT_ADMIN_PASSWORD, fast_context().hash(DEFAULT_ADMIN_PASSWORD)):
            self.account.reload(_config(self.tmp, password=configured))
            resp, body = self.get("admin:" + DEFAULT_ADMIN_PASSWORD)
            self.assertEqual(resp.code, 403, configured)
            self.assertEqual(json.loads(body)["error"], DEFAULT_PASSWORD_ERROR)
            self.assertNotIn(b"zmirror_requests_total", body)
            self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        # a wrong password is still 401, not a hint that the default is in use
        resp, body = self.get("admin:wrong")
        self.assertEqual(resp.code, 401)

    def test_admin_mode_uses_the_admin_lockout(self):
        for _ in range(12):
            resp, _ = self.get("admin:wrong")
        self.assertEqual(resp.code, 429)
        self.assertTrue(resp.headers.getRawHeaders(b"retry-after"))

    def test_open_and_off_and_reload(self):
        self.endpoint.reload(_Cfg("open"))
        resp, body = self.get()
        self.assertEqual(resp.code, 200)
        self.assertIn(b"zmirror_requests_total", body)
        self.endpoint.reload(_Cfg("off"))
        resp, body = self.get("admin:Adm1n-pw!")
        self.assertEqual(resp.code, 404)
        self.assertEqual(json.loads(body), {"error": "not found"})


class _Cfg:
    def __init__(self, access):
        self.metrics = type("M", (), {"access": access, "listen": ""})()


class ListenerTests(unittest.TestCase):
    def test_invalid_description(self):
        with self.assertRaises(ConfigError) as cm:
            metrics_listen_service("nonsense:1", Metrics(process=False), reactor)
        self.assertIn("metrics.listen", str(cm.exception))

    @inlineCallbacks
    def test_separate_endpoint(self):
        m = Metrics()
        m.requests.labels("manifest", "200").inc(3)
        svc = metrics_listen_service("tcp:0:interface=127.0.0.1", m, reactor)
        svc.startService()
        self.addCleanup(svc.stopService)
        port = svc._waitingForPort.result  # listening on TCP is synchronous
        base = f"http://127.0.0.1:{port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        resp = yield treq.get(base + "/metrics", pool=pool)
        body = yield treq.content(resp)
        self.assertEqual(resp.code, 200)
        self.assertEqual(value(body, "zmirror_requests_total", kind="manifest", status="200"), 3)
        self.assertIn(b"process_resident_memory_bytes", body)
        resp = yield treq.get(base + "/api/registries", pool=pool)
        yield treq.content(resp)
        self.assertEqual(resp.code, 404)


class ConfigTests(unittest.TestCase):
    def test_metrics_section(self):
        from zmirror.config import DEFAULT_CONFIG, parse_config

        p = Path("/x/config.toml")
        cfg = parse_config(DEFAULT_CONFIG, data_dir=Path("/x"), config_path=p)
        self.assertEqual((cfg.metrics.access, cfg.metrics.listen), ("admin", ""))
        self.assertEqual(cfg.warnings, ())
        cfg = parse_config('[metrics]\naccess = "open"\nlisten = "tcp:9100:interface=127.0.0.1"\n',
                           data_dir=Path("/x"), config_path=p)
        self.assertEqual(cfg.metrics.access, "open")
        with self.assertRaises(ConfigError) as cm:
            parse_config('[metrics]\naccess = "public"\n', data_dir=Path("/x"), config_path=p)
        self.assertIn("metrics.access", str(cm.exception))


_ = sha256
