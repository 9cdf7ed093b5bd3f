"""A registry row's proxy and TLS settings reach every request of its upstream:
the pool builds them into the Upstream, its agents are kept while an upstream
uses them, the probe reports its steps, and — with real agents against a Twisted
TLS server using a test CA — the row's ``ca``, ``tls_verify`` and
``server_name`` decide the handshake, a failure's reason landing in health."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor, ssl
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.server import Site

from tests.fixtures.helpers import coro
from tests.fixtures.tlsregistry import TestPKI
from tests.fixtures.upstream import MANIFEST, TAG_PATH, FakeResponse, World, manifest_response, token_challenge
from zmirror.config import Config, UpstreamConfig
from zmirror.oci.errors import RegistryError
from zmirror.oci.reference import parse_path
from zmirror.registry.build import build_proxy
from zmirror.registry.routes import PullRequest
from zmirror.testing import FakeRegistry
from zmirror.upstream.build import build_upstreams
from zmirror.upstream.tlsconfig import TLSSettings

_PKI: dict = {}


def pki(case: unittest.TestCase) -> TestPKI:
    if "pki" not in _PKI:
        _PKI["pki"] = TestPKI(Path(case.mktemp()) / "pki")
    return _PKI["pki"]


class RecordingAgents:
    """UpstreamAgents' interface over one fake agent, recording for which
    upstream each agent was asked."""

    def __init__(self, agent, fail_for=()):
        self.agent = agent
        self.asked: list = []
        self.retained: list = []
        self.fail_for = set(fail_for)

    def agent_for(self, up):
        self.asked.append((up.id, up.proxy, up.tls))
        if up.id in self.fail_for:
            raise ValueError("client_key: does not match client_cert (the first certificate)")
        return self.agent

    def retain(self, upstreams):
        self.retained.append([u.id for u in upstreams])

    def close(self):
        return None


class PoolSettingsTests(unittest.TestCase):
    def world(self, rows, fail_for=()):
        w = World(hosts=())
        w.agents = RecordingAgents(w.agent, fail_for)
        w.pool.agents = w.agents
        w.pool.client.agents = w.agents
        w.pool.set_registries(rows)
        return w

    def test_rows_become_upstreams_with_proxy_and_tls(self):
        w = self.world([
            {"id": 1, "name": "a", "url": "https://a.fake", "priority": 1, "enabled": 1, "proxy": None,
             "tls_verify": 1, "ca": "", "client_cert": "", "client_key": "", "server_name": ""},
            {"id": 2, "name": "b", "url": "https://b.fake", "priority": 2, "enabled": 1,
             "proxy": "socks5h://u:p@127.0.0.1:1080", "tls_verify": 0, "ca": "CA", "client_cert": "C",
             "client_key": "K", "server_name": "b.internal"},
            {"id": 3, "name": "off", "url": "https://c.fake", "priority": 3, "enabled": 0},
        ])
        a, b = w.pool.upstreams
        self.assertIsNone(a.proxy)
        self.assertEqual(a.tls, TLSSettings())
        self.assertEqual(b.proxy, "socks5h://u:p@127.0.0.1:1080")
        self.assertEqual(b.tls, TLSSettings(ca="CA", client_cert="C", client_key="K", verify=False,
                                            server_name="b.internal"))
        self.assertEqual(w.agents.retained[-1], [1, 2])  # the agents of the enabled ones are kept
        self.assertNotIn("u:p", repr(b))  # no secrets in a repr (logs)
        self.assertNotIn("'K'", repr(b))

    def test_a_warning_per_upstream_with_verification_off_once(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        row = {"id": 7, "name": "lab", "url": "https://lab.fake", "priority": 1, "enabled": 1, "tls_verify": False,
               "password": "upw", "proxy": "http://u:proxypw@p:3128", "client_key": "KEYDATA"}
        w = self.world([row])
        w.pool.set_registries([row])  # refreshed: no second warning
        warned = [e for e in events if e.get("upstream_tls_verify") is False]
        self.assertEqual(len(warned), 1)
        from twisted.logger import formatEvent

        text = formatEvent(warned[0])
        self.assertIn("lab", text)
        self.assertIn("verification is off", text)
        for secret in ("upw", "proxypw", "KEYDATA"):
            self.assertNotIn(secret, repr(warned[0]))
        w.pool.set_registries([{**row, "tls_verify": True}])
        w.pool.set_registries([row])  # off again: warned again
        self.assertEqual(len([e for e in events if e.get("upstream_tls_verify") is False]), 2)

    @coro
    async def test_registry_token_realm_and_redirects_use_the_upstreams_agent(self):
        w = self.world([{"id": 1, "name": "a", "url": "http://a.fake", "priority": 1, "enabled": 1,
                         "proxy": "http://p:3128"}])
        w.agent.on("GET", "http://a.fake" + TAG_PATH, token_challenge())
        w.agent.on("GET", "http://auth.fake/token?service=s&scope=repository%3Alibrary%2Fx%3Apull",
                   lambda: FakeResponse(200, {}, b'{"token": "t"}'))
        w.agent.on("GET", "http://a.fake/v2/library/x/manifests/other",
                   lambda: FakeResponse(307, {b"Location": b"http://cdn.fake/m"}))
        w.agent.on("GET", "http://cdn.fake/m", lambda: manifest_response())
        with self.assertRaises(RegistryError):
            await w.pull(TAG_PATH)  # 401 -> token -> 401 again (same script)
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response())
        await w.pull(TAG_PATH)
        await w.pull("/v2/library/x/manifests/other")
        hosts = [u for _m, u in w.agent.sent]
        self.assertIn("http://auth.fake/token?service=s&scope=repository%3Alibrary%2Fx%3Apull", hosts)
        self.assertIn("http://cdn.fake/m", hosts)
        self.assertEqual(len(w.agents.asked), len(w.agent.sent))  # every request asked for the agent
        self.assertEqual({a[:2] for a in w.agents.asked}, {(1, "http://p:3128")})

    @coro
    async def test_unusable_settings_are_an_upstream_failure_with_the_reason(self):
        w = self.world([{"id": 1, "name": "a", "url": "https://a.fake", "priority": 1, "enabled": 1}],
                       fail_for={1})
        with self.assertRaises(RegistryError):
            await w.pull(TAG_PATH)
        self.assertEqual(w.agent.sent, [])
        self.assertIn("client_key: does not match client_cert", w.health(1)["last_error"])

    @coro
    async def test_probe_steps_end_with_v2(self):
        w = self.world([])
        w.agent.on("GET", "http://new.fake/v2/", lambda: FakeResponse(200, {}, b"{}"))
        out = await w.pool.probe({"url": "http://new.fake", "proxy": "", "tls_verify": False})
        self.assertIs(out["ok"], True)
        [step] = out["steps"]
        self.assertEqual((step["step"], step["ok"], step["detail"]), ("v2", True, "/v2/ answered 200"))
        self.assertIsInstance(step["ms"], float)
        self.assertEqual(w.agents.asked[-1][:2], (0, ""))
        w.clock.advance(0)
        self.assertEqual(w.agents.retained[-1], [])  # the unsaved registry's agent is not kept
        out = await w.pool.probe({"url": "http://gone.fake"})
        self.assertIs(out["ok"], False)
        self.assertEqual([s["step"] for s in out["steps"]], ["v2"])
        self.assertIs(out["steps"][0]["ok"], False)
        self.assertIn("gone.fake", out["steps"][0]["detail"])

    @coro
    async def test_probe_steps_of_the_tracer_come_first_and_a_failed_one_ends_them(self):
        w = self.world([])
        traced = []

        async def tracer(up):
            traced.append((up.url, up.proxy))
            return [{"step": "dns", "ok": True, "ms": 0.1, "detail": "127.0.0.1"},
                    {"step": "tcp", "ok": True, "ms": 0.2, "detail": "connected"}]

        w.pool.tracer = tracer
        w.agent.on("GET", "http://new.fake/v2/", lambda: FakeResponse(401, {b"WWW-Authenticate": b'Basic realm="r"'}))
        out = await w.pool.probe({"url": "http://new.fake", "proxy": "", "username": "u", "password": "p"})
        self.assertEqual(traced, [("http://new.fake", "")])
        self.assertEqual([s["step"] for s in out["steps"]], ["dns", "tcp", "v2"])
        self.assertEqual((out["status"], out["auth"]), (401, "basic"))
        self.assertIn("answered 401", out["steps"][-1]["detail"])

        async def failing(up):
            return [{"step": "dns", "ok": True, "ms": 0.1, "detail": "127.0.0.1"},
                    {"step": "tls", "ok": False, "ms": 1.0, "detail": "certificate verify failed: self-signed"}]

        w.pool.tracer = failing
        sent = len(w.agent.sent)
        out = await w.pool.probe({"url": "https://new.fake"})
        self.assertEqual([s["step"] for s in out["steps"]], ["dns", "tls"])
        self.assertEqual(out["error"], "certificate verify failed: self-signed")
        self.assertIs(out["ok"], False)
        self.assertEqual(len(w.agent.sent), sent)  # no /v2/ after a failed step

        async def broken(up):
            raise RuntimeError("bug")

        w.pool.tracer = broken
        out = await w.pool.probe({"url": "http://new.fake"})
        self.assertEqual([s["step"] for s in out["steps"]], ["v2"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RealTLSTests(unittest.TestCase):
    """Real agents (build_upstreams) against a Twisted TLS server whose certificate a
    test CA signed: the registry row's TLS settings decide the handshake."""

    timeout = 60

    def setUp(self):
        self.pki = pki(self)
        self.fake = FakeRegistry()
        self.fake.add_manifest("library/x", "latest", MANIFEST)
        self.port = None
        config = Config(data_dir=Path(self.mktemp()), config_path=Path("/nonexistent"),
                        upstream=UpstreamConfig(connect_timeout=5.0, cooldown=0.0))
        self.ups = build_upstreams(config, reactor, environ={})
        self.addCleanup(self.ups.pool.close)

    def serve(self, kc):
        cert = ssl.PrivateCertificate.loadPEM(kc.cert_pem + kc.key_pem)
        port = reactor.listenSSL(0, Site(self.fake.resource()), cert.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"https://127.0.0.1:{port.getHost().port}"

    async def pull(self, url, **settings):
        pool = self.ups.pool
        pool.set_registries([{"id": 1, "name": "tls", "url": url, "priority": 1, "enabled": 1, **settings}])
        proxy = build_proxy(pool, reactor, idle_timeout=10)
        return await proxy.pull(PullRequest(path=parse_path(TAG_PATH), method=b"GET"))

    @coro
    async def test_without_the_ca_the_handshake_fails_with_the_reason_in_health(self):
        url = self.serve(self.pki.server)
        with self.assertRaises(RegistryError) as cm:
            await self.pull(url)
        error = self.ups.pool.health.report()[1]["last_error"]
        self.assertIn("certificate verify failed", error)
        self.assertNotIn("certificate verify failed", str(cm.exception))  # not for the client

    @coro
    async def test_verify_off_and_the_ca_each_let_it_through(self):
        url = self.serve(self.pki.server)
        for settings in ({"tls_verify": False}, {"ca": self.pki.ca.cert_pem}):
            result = await self.pull(url, **settings)
            self.assertIsNotNone(result, settings)
            self.assertEqual(self.ups.pool.health.report()[1]["state"], "up", settings)

    @coro
    async def test_server_name_override(self):
        url = self.serve(self.pki.named)  # a certificate for registry.test only
        with self.assertRaises(RegistryError):
            await self.pull(url, ca=self.pki.ca.cert_pem)
        self.assertIn("name mismatch", self.ups.pool.health.report()[1]["last_error"])
        await self.pull(url, ca=self.pki.ca.cert_pem, server_name="registry.test")
        self.assertEqual(self.ups.pool.health.report()[1]["state"], "up")

    @coro
    async def test_probe_of_an_unsaved_registry_uses_its_settings(self):
        url = self.serve(self.pki.server)
        out = await self.ups.pool.probe({"url": url})
        self.assertIs(out["ok"], False)
        self.assertIn("certificate verify failed", out["error"])
        self.assertEqual([(s["step"], s["ok"]) for s in out["steps"]], [("dns", True), ("tcp", True), ("tls", False)])
        self.assertIn("certificate verify failed", out["steps"][-1]["detail"])
        out = await self.ups.pool.probe({"url": url, "ca": self.pki.ca.cert_pem})
        self.assertIs(out["ok"], True, out)
        self.assertEqual([(s["step"], s["ok"]) for s in out["steps"]],
                         [("dns", True), ("tcp", True), ("tls", True), ("v2", True)])


class BuildEgressTests(unittest.TestCase):
    """build_upstreams: [upstream] proxy / no_proxy, else the environment's."""

    def agents(self, environ, **upstream):
        config = Config(data_dir=Path(self.mktemp()), config_path=Path("/nonexistent"),
                        upstream=UpstreamConfig(**upstream))
        ups = build_upstreams(config, reactor, environ=environ)
        self.addCleanup(ups.pool.close)
        return ups.pool.agents

    def test_the_environment_applies_only_when_the_file_sets_neither_key(self):
        env = {"HTTPS_PROXY": "http://envuser:envpw@env-proxy:3128", "NO_PROXY": ".internal"}
        route = self.agents(env).default_route
        self.assertEqual((route.https.host, route.https.port, route.https.password), ("env-proxy", 3128, "envpw"))
        self.assertIsNone(route.proxy_for("https", "registry.internal", 443))
        self.assertTrue(self.agents(env, proxy="").default_route.direct)  # "" in the file: direct
        self.assertTrue(self.agents(env, no_proxy="x.example").default_route.direct)
        route = self.agents(env, proxy="socks5h://file-proxy:1080").default_route
        self.assertEqual((route.https.scheme, route.https.host), ("socks5h", "file-proxy"))
        self.assertEqual(route.http, route.https)
        self.assertTrue(self.agents({}).default_route.direct)

    def test_a_row_proxy_overrides_the_default(self):
        from zmirror.upstream.models import Upstream

        agents = self.agents({}, proxy="http://file-proxy:3128")
        self.assertEqual(agents.route_for(Upstream(1, "a", "https://a.example")).https.host, "file-proxy")
        self.assertTrue(agents.route_for(Upstream(1, "a", "https://a.example", proxy="")).direct)
        self.assertEqual(agents.route_for(Upstream(1, "a", "https://a.example",
                                                   proxy="socks5://s:1080")).https.scheme, "socks5")

    def test_an_unusable_proxy_is_a_config_error_without_its_value(self):
        from zmirror.config import ConfigError

        with self.assertRaises(ConfigError) as cm:
            self.agents({"https_proxy": "ftp://u:envSECRET@h:21"})
        self.assertIn("https_proxy", str(cm.exception))
        self.assertNotIn("envSECRET", str(cm.exception))
