"""Property-based fuzzing of the whole HTTP surface.

The application is built by ``zmirror.wiring.build`` (the same object graph as in
production) and listens on 127.0.0.1; its one upstream is a :class:`FakeRegistry`
on another loopback port, and the upstream agent refuses every other address, so
nothing leaves the machine whatever the admin API is told.  Requests are written as
raw bytes (any method, path, query, header), so the HTTP parser is fuzzed as well.

For every request: no 5xx, no traceback text in the answer, and nothing logged at
error level.  Hypothesis runs in a worker thread and waits for each answer with
``blockingCallFromThread`` while the reactor runs the server, so failures shrink
to a minimal request.  The runs are derandomized, database-less and bounded
(``max_examples``) so they belong in the normal test run.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.server import Site

from tests.fixtures.helpers import admin_password_line, start_services, write_default_config
from zmirror.config import load_config
from zmirror.db.sqlite import migrate
from zmirror.testing import DOCKER_V2, FakeRegistry
from zmirror.ui import WebUI
from zmirror.wiring import build

# not the default password: while it is, the admin API answers only /api/me and the change
ADMIN = ("admin", "Fuzz-admin-pw-1")
REPO = "library/alpine"
CONFIG_BLOB = b'{"architecture":"amd64","os":"linux"}'
LAYER = b"layer-bytes " * 100

# ZMIRROR_FUZZ_EXAMPLES=5000 ZMIRROR_FUZZ_RANDOM=1 for a longer, randomized hunt by hand
FUZZ = settings(
    max_examples=int(os.environ.get("ZMIRROR_FUZZ_EXAMPLES") or 300),
    deadline=None,
    derandomize=not os.environ.get("ZMIRROR_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)

# --- strategies -------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_SPECIAL_SEGMENTS = [
    "", ".", "..", "%00", "%2F", "%2f", "%ff", "%", "%zz", "%e9", "%c3%a9", "%C0%AE", "a" * 256,
    "b" * 300, "x" * 5000, "é", "%E2%80%AE", "manifests", "blobs", "uploads", "tags", "list", "_catalog",
    "library", "alpine", "latest", "sha256:" + "0" * 64, "sha256:" + "f" * 63, "sha512:" + "a" * 128,
    "index.html", "assets", "favicon.svg", ".hidden", "~", "registries", "users", "whitelists",
    "logs", "stats", "cache", "me", "version", "1", "0", "-1", "99999999999999999999999", "test",
    "match",
]


def _percent(data: bytes) -> str:
    return quote_from_bytes(data, safe="")


def _raw_segment(data: bytes) -> str:
    # raw bytes in the request line, except what would end the line or the path
    return data.translate(None, b" \r\n?#").decode("latin-1")


def weighted(*pairs):
    """Pick a strategy with the given weights, then draw from it (shrinks to the first)."""
    choices = [i for i, (weight, _) in enumerate(pairs) for _ in range(weight)]
    return st.sampled_from(choices).flatmap(lambda i: pairs[i][1])


segment = weighted(
    (3, st.sampled_from(_SPECIAL_SEGMENTS)),
    (3, st.from_regex(r"\A[a-z0-9]{1,10}([._-][a-z0-9]{1,6})?\Z")),
    (1, _TEXT.map(lambda t: _percent(t.encode("utf-8")))),
    (1, st.binary(max_size=12).map(_percent)),
    (1, st.binary(max_size=12).map(_raw_segment)),
)


def _join(prefix: str):
    return st.lists(segment, max_size=5).map(lambda parts: prefix + "/".join(parts))


def _digest(blobs: list[str]):
    return weighted((3, st.sampled_from(blobs)),
                    (1, st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())),
                    (1, segment))


def v2_paths(known: dict):
    name = weighted((3, st.sampled_from([REPO, "alpine", "docker.io/library/alpine", "library/nginx"])),
                    (2, st.lists(segment, min_size=1, max_size=4).map("/".join)))
    ref = weighted((3, st.sampled_from(["latest", known["manifest"]])), (1, _digest(known["blobs"])), (1, segment))
    return weighted(
        (4, st.builds(lambda n, r: f"/v2/{n}/manifests/{r}", name, ref)),
        (4, st.builds(lambda n, d: f"/v2/{n}/blobs/{d}", name, _digest(known["blobs"]))),
        (1, st.builds(lambda n: f"/v2/{n}/tags/list", name)),
        (1, st.builds(lambda n, u: f"/v2/{n}/blobs/uploads/{u}", name, segment)),
        (1, st.sampled_from(["/v2", "/v2/", "/v2/_catalog", "/v2//", "/v2/%2e%2e/"])),
        (1, _join("/v2/")),
    )


API_ENDPOINTS = ["/api", "/api/", "/api/me", "/api/version", "/api/registries", "/api/registries/1",
                 "/api/registries/1/test", "/api/registries/2", "/api/registries/2/test", "/api/whitelists",
                 "/api/whitelists/1", "/api/whitelists/2", "/api/whitelists/match", "/api/users",
                 "/api/users/1", "/api/users/2", "/api/logs", "/api/stats", "/api/cache"]
api_paths = weighted((4, st.sampled_from(API_ENDPOINTS)), (1, _join("/api/")),
                     (1, st.builds(lambda p, s: p + "/" + s, st.sampled_from(API_ENDPOINTS), segment)))
other_paths = weighted(
    (3, st.sampled_from(["/", "/token", "/healthz", "/readyz", "/metrics", "/favicon.svg", "/index.html",
                     "/assets/", "/registries", "/login", "//", "/%2e%2e/%2e%2e/etc/passwd",
                         "/assets/../../setup.py", "*"])),
    (1, _join("/assets/")), (2, _join("/")),
    (1, st.binary(max_size=40).map(lambda b: "/" + _raw_segment(b))),
)

_QUERY_ITEMS = weighted(
    (3, st.sampled_from(["ns=docker.io", "ns=ghcr.io", "ns=", "n=-1", "n=0", "n=1", "n=10000000000000000000000",
                     "last=", "last=%ff", "scope=repository:library/alpine:pull", "scope=garbage",
                     "scope=repository:a:push,pull", "service=zmirror", "offline_token=true",
                     "account=admin", "client_id=docker", "limit=-5", "limit=abc", "offset=9e99",
                     "page=0", "q=%00", "since=-1", "until=x", "status=abc", "kind=x", "sort=;drop"])),
    (1, st.builds(lambda k, v: f"{k}={v}", _TEXT.map(lambda t: _percent(t.encode())),
                  _TEXT.map(lambda t: _percent(t.encode())))),
    (1, st.binary(max_size=10).map(_raw_segment)),
)
queries = weighted((2, st.just("")), (1, st.lists(_QUERY_ITEMS, max_size=4).map(lambda q: "?" + "&".join(q))))


def _basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8"))


# mostly well-formed values (so requests get past the HTTP parser), some raw bytes
_header_value = weighted(
    (4, st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40).map(lambda t: t.strip().encode())),
    (1, st.binary(max_size=40).map(lambda b: b.translate(None, b"\r\n").strip())),
)
_admin = st.just(_basic(*ADMIN))
authorization = weighted(
    (6, st.none()),
    (1, _admin),
    (2, st.builds(_basic, st.sampled_from(["admin", "alice", ""]) | _TEXT.filter(lambda t: ":" not in t),
                  st.sampled_from(["admin123", "", "x" * 2000]) | _TEXT)),
    (1, st.binary(max_size=30).map(lambda b: b"Basic " + base64.b64encode(b))),
    (1, _header_value.map(lambda v: b"Basic " + v)),
    (1, st.sampled_from([b"Bearer ", b"Bearer a.b.c", b"Bearer eyJhbGciOiJub25lIn0.e30.", b"bearer x",
                         b"Basic", b"Basic =", b"Negotiate abc"])),
    (1, _header_value.map(lambda v: b"Bearer " + v)),
    (1, _header_value),
)
admin_mostly = weighted((3, _admin), (1, authorization))
ranges = weighted((4, st.none()), (2, st.sampled_from([b"bytes=0-0", b"bytes=0-", b"bytes=10-5", b"bytes=-1", b"bytes=-0",
                                               b"bytes=5-10,20-30", b"bytes=99999999999999999999999-",
                                               b"items=0-1", b"bytes=a-b", b"bytes="])), (1, _header_value))
accepts = st.lists(st.one_of(st.sampled_from([
    b"application/vnd.docker.distribution.manifest.v2+json",
    b"application/vnd.oci.image.index.v1+json", b"application/vnd.oci.image.manifest.v1+json",
    b"application/vnd.docker.distribution.manifest.list.v2+json", b"*/*", b"text/html",
    b"application/json;q=0", b"application/json;q=abc"]), _header_value), max_size=3)
content_types = st.sampled_from([b"application/json", b"application/json", b"application/json; charset=utf-8",
                                 b"application/x-www-form-urlencoded", b"application/x-www-form-urlencoded",
                                 b"text/plain", b"", b"multipart/form-data"])

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=12,
)
_field_value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT, st.lists(_TEXT, max_size=2),
                         st.sampled_from(["http://127.0.0.1:1/", "https://example.invalid", "ftp://x", "http://",
                                          "http://[::1", "x" * 300, "docker.io/library/*", "**", "a:b",
                                          "alice", "Sup3r-secret-pw"]))
_shaped = st.dictionaries(st.sampled_from(["name", "url", "priority", "enabled", "username", "password",
                                           "id", "pattern", "prefix", "description", "repository", "users",
                                           "extra"]), _field_value, max_size=6)
_junk = st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.integers(), max_size=2), _TEXT)
_registry_body = st.fixed_dictionaries(
    {"name": _TEXT | st.sampled_from(["Local", "x" * 101]),
     "url": st.sampled_from(["http://127.0.0.1:1/", "http://127.0.0.1:9", "https://127.0.0.1:1/v2/", "http://",
                             "ftp://127.0.0.1/", "127.0.0.1", "http://127.0.0.1:99999/", "http://[::1]:1/"]) | _TEXT},
    optional={"priority": st.integers(-5, 2_000_000) | _junk, "enabled": st.booleans() | _junk,
              "username": _TEXT | _junk, "password": _TEXT | _junk, "id": st.integers(-1, 5) | _junk})
_user_body = st.fixed_dictionaries(
    {"username": st.from_regex(r"\A[A-Za-z0-9._-]{1,12}\Z") | st.sampled_from(["admin", "x" * 65]) | _junk,
     "password": _TEXT | st.sampled_from(["Sup3r-secret-pw", "x" * 1025]) | _junk},
    optional={"enabled": st.booleans() | _junk, "id": st.integers(-1, 5) | _junk})
_whitelist_body = st.fixed_dictionaries(
    {"prefix": st.sampled_from(["library/*", "library/alpine", "docker.io/library/alpine", "ghcr.io/**", "a/b",
                                "", "*", "**", "/", "a//b", "A/B", "x" * 300]) | _TEXT | _junk},
    optional={"note": _TEXT | _junk, "enabled": st.booleans() | _junk, "id": st.integers(-1, 5) | _junk})
_structured = st.one_of(_registry_body, _user_body, _whitelist_body)
json_bodies = weighted((3, _structured), (1, st.lists(_structured, max_size=3)), (1, _json),
                       (1, _shaped)).map(lambda v: json.dumps(v).encode())
form_bodies = st.one_of(
    st.dictionaries(st.sampled_from(["grant_type", "username", "password", "refresh_token", "scope",
                                     "service", "client_id", "access_type"]),
                    st.one_of(st.sampled_from(["password", "refresh_token", "admin", "admin123", "offline",
                                               "repository:library/alpine:pull", "x" * 5000]), _TEXT),
                    max_size=6).map(lambda d: "&".join(f"{_percent(k.encode())}={_percent(v.encode())}"
                                                       for k, v in d.items()).encode()),
    st.binary(max_size=64),
)
_ODD_METHODS = weighted((3, st.sampled_from([b"OPTIONS", b"TRACE", b"CONNECT", b"get", b"Head", b"PROPFIND"])),
                        (1, st.from_regex(rb"\A[A-Z]{1,8}\Z")))
read_methods = weighted((6, st.just(b"GET")), (2, st.just(b"HEAD")),
                        (1, st.sampled_from([b"POST", b"PUT", b"DELETE", b"PATCH"])), (1, _ODD_METHODS))
write_methods = weighted((2, st.just(b"GET")), (2, st.just(b"POST")),
                         (2, st.sampled_from([b"PUT", b"PATCH", b"DELETE", b"HEAD"])), (1, _ODD_METHODS))


def requests(paths, bodies=None, methods=read_methods, auth=authorization, targets=None, ctypes=content_types):
    """(method, target, headers, body) tuples.  ``targets``, if given, draws (path, body)
    pairs instead of independent ``paths`` and ``bodies``."""
    if targets is None:
        body = st.none() if bodies is None else weighted((1, st.none()), (2, bodies))
        targets = st.tuples(paths, body)

    def make(method, target, query, auth, rng, accept, ctype, extra, chunked):
        path, data = target
        headers = []
        if auth is not None:
            headers.append((b"Authorization", auth))
        if rng is not None:
            headers.append((b"Range", rng))
        headers += [(b"Accept", a) for a in accept]
        if data is not None:
            headers.append((b"Content-Type", ctype))
        headers += extra
        target = (path + query).encode("latin-1") if path != "*" else b"*"
        return method, target, headers, data, chunked and data is not None

    extra_headers = st.lists(st.tuples(st.sampled_from([b"X-Forwarded-For", b"Accept-Encoding", b"If-None-Match",
                                                        b"User-Agent", b"Cookie", b"Origin", b"Referer"]),
                                       _header_value), max_size=2)
    chunked = weighted((3, st.just(False)), (1, st.just(True)))
    return st.builds(make, methods, targets, queries, auth, ranges, accepts, ctypes, extra_headers, chunked)


def _as_json(strategy):
    return strategy.map(lambda v: json.dumps(v).encode())


# admin requests whose body fits the endpoint, so the handlers behind validation run too
_ids = st.sampled_from(["1", "2", "3", "0", "-1", "x", "99999999999999999999"])
api_targets = weighted(
    (2, st.tuples(api_paths, weighted((1, st.none()), (2, json_bodies), (1, form_bodies)))),
    (1, st.tuples(st.just("/api/registries"), _as_json(_registry_body))),
    (1, st.tuples(_ids.map(lambda i: f"/api/registries/{i}"), _as_json(_registry_body))),
    (1, st.tuples(st.just("/api/users"), _as_json(_user_body))),
    (1, st.tuples(_ids.map(lambda i: f"/api/users/{i}"), _as_json(_user_body))),
    (1, st.tuples(st.just("/api/whitelists"), _as_json(_whitelist_body))),
    (1, st.tuples(_ids.map(lambda i: f"/api/whitelists/{i}"), _as_json(_whitelist_body))),
)
api_methods = weighted((2, st.just(b"GET")), (3, st.just(b"POST")), (2, st.just(b"PUT")),
                       (1, st.sampled_from([b"DELETE", b"PATCH", b"HEAD"])), (1, _ODD_METHODS))
json_mostly = weighted((4, st.sampled_from([b"application/json", b"application/json; charset=utf-8"])),
                       (1, content_types))


# --- the raw HTTP client ---------------------------------------------------------------


class OneShot(Protocol):
    def __init__(self, data: bytes):
        self.data = data
        self.received = b""
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(self.received)


def _raw_request(method: bytes, target: bytes, headers, body, chunked: bool = False) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body is not None and chunked:
        lines.append(b"Transfer-Encoding: chunked")
        pieces = [body[i:i + 7] for i in range(0, len(body), 7)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    elif body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def _status(raw: bytes) -> int:
    line = raw.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise AssertionError(f"not an HTTP response: {raw[:200]!r}")
    return int(parts[1])


class LoopbackOnlyAgent:
    """An upstream agent, refusing every address but the fake upstream's."""

    def __init__(self, agent, allowed: bytes, refused: list):
        self.agent = agent
        self.allowed = allowed
        self.refused = refused

    def request(self, method, uri, headers=None, bodyProducer=None):
        if not uri.startswith(self.allowed):
            self.refused.append(uri)
            return fail(error.ConnectionRefusedError("fuzz test: only the fake upstream is reachable"))
        return self.agent.request(method, uri, headers, bodyProducer)


class LoopbackOnlyAgents:
    """The upstream agents (``UpstreamAgents``), each refusing every address but
    the fake upstream's."""

    def __init__(self, agents, allowed: bytes):
        self.agents = agents
        self.allowed = allowed
        self.refused: list[bytes] = []

    def agent_for(self, up):
        return LoopbackOnlyAgent(self.agents.agent_for(up), self.allowed, self.refused)

    def retain(self, upstreams):
        self.agents.retain(upstreams)

    def close(self):
        return self.agents.close()


def loopback_only_tracer(tracer, allowed: str):
    """The probe's connection test (``UpstreamPool.tracer``), failing at once for every
    upstream but the fake one (a fuzzed registry URL is never resolved or connected to)."""

    async def trace(up):
        if up.url.rstrip("/") != allowed:
            return [{"step": "dns", "ok": False, "ms": None,
                     "detail": "fuzz test: only the fake upstream is reachable"}]
        return await tracer(up)

    return trace


# --- the tests --------------------------------------------------------------------------


class SurfaceFuzz(unittest.TestCase):
    timeout = 600

    def setUp(self):
        self.fake = FakeRegistry()
        config_digest = self.fake.add_blob(CONFIG_BLOB)
        layer_digest = self.fake.add_blob(LAYER)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": DOCKER_V2,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "size": len(CONFIG_BLOB), "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(LAYER), "digest": layer_digest}],
        }).encode()
        self.known = {"manifest": self.fake.add_manifest(REPO, "latest", manifest),
                      "blobs": [config_digest, layer_digest]}
        self.upstream_port = reactor.listenTCP(0, Site(self.fake.resource()), interface="127.0.0.1")
        upstream = f"http://127.0.0.1:{self.upstream_port.getHost().port}"

        data = Path(self.mktemp()).resolve() / "data"
        write_default_config(data, {'anonymous = "whitelist"': 'anonymous = "all"',
                                    "max_account_failures = 10": "max_account_failures = 1000000",
                                    "max_ip_failures = 30": "max_ip_failures = 1000000",
                                    **admin_password_line(ADMIN[1])})
        config = load_config(data)
        migrate(config.database_path)
        conn = sqlite3.connect(str(config.database_path))
        conn.execute("UPDATE registries SET url = ?", (upstream,))
        conn.commit()
        conn.close()

        # the built UI is not in git: serve a small one so its file lookups are fuzzed too
        ui = Path(self.mktemp())
        (ui / "assets").mkdir(parents=True)
        (ui / "index.html").write_text("<!doctype html><title>zmirror</title>")
        (ui / "assets" / "index-abc123.js").write_text("console.log(1)")
        (ui / "assets" / "index-abc123.js.gz").write_bytes(b"\x1f\x8b not really gzip")
        (ui / "favicon.svg").write_text("<svg/>")
        self.components = build(config, reactor, ui=WebUI(ui))
        upstreams = self.components.upstreams
        upstreams.client.agents = LoopbackOnlyAgents(upstreams.client.agents, upstream.encode() + b"/")
        upstreams.tracer = loopback_only_tracer(upstreams.tracer, upstream)
        self.top = start_services(self.components)
        self.port = reactor.listenTCP(0, self.components.site, interface="127.0.0.1")

        self.errors: list[dict] = []
        self.answered: list[bytes] = []

        def observe(event):
            if event.get("log_failure") is not None or event.get("log_level") in (LogLevel.error,
                                                                                  LogLevel.critical):
                self.errors.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def tearDown(self):
        async def stop():
            await self.port.stopListening()
            await self.top.stopService()
            # the upstream agents' persistent connections to the fake upstream
            await self.components.upstreams.client.agents.close()
            await self.upstream_port.stopListening()

        return Deferred.fromCoroutine(stop())

    # -- one request, from the hypothesis thread ------------------------------------

    def _send(self, data: bytes) -> Deferred:
        client = OneShot(data)
        reactor.connectTCP("127.0.0.1", self.port.getHost().port, ClientFactory.forProtocol(lambda: client))
        client.done.addTimeout(30, reactor)
        return client.done

    def check(self, method: bytes, target: bytes, headers, body, chunked: bool = False) -> None:
        raw_request = _raw_request(method, target, headers, body, chunked)
        before = len(self.errors)
        raw = blockingCallFromThread(reactor, self._send, raw_request)
        self.answered.append(raw[:12])
        what = f"{raw_request[:600]!r}\n-> {raw[:600]!r}"
        status = _status(raw)
        self.assertLess(status, 500, what)
        for needle in (b"Traceback", b'File "'):
            self.assertNotIn(needle, raw, what)
        logged = self.errors[before:]
        self.assertEqual([formatEvent(e) + repr(e.get("log_failure")) for e in logged], [], what)

    def run_property(self, strategy, *, some_succeed: bool = False) -> Deferred:
        @FUZZ
        @given(strategy)
        def prop(case):
            self.check(*case)

        def ran(_):
            # the property really ran, on many different requests
            self.assertGreaterEqual(len(self.answered), FUZZ.max_examples)
            if some_succeed:  # and got past authentication into the handlers
                self.assertTrue(any(a[9:10] == b"2" for a in self.answered), self.answered[:20])

        return deferToThread(prop).addCallback(ran)

    def test_registry_api(self):
        return self.run_property(requests(v2_paths(self.known)))

    def test_token_endpoint(self):
        paths = st.one_of(st.just("/token"), st.sampled_from(["/token/", "/%74oken", "/token%00"]))
        return self.run_property(requests(paths, st.one_of(form_bodies, form_bodies, json_bodies),
                                          write_methods))

    def test_admin_api(self):
        return self.run_property(requests(None, methods=api_methods, auth=admin_mostly, targets=api_targets,
                                          ctypes=json_mostly), some_succeed=True)

    def test_ui_health_and_everything_else(self):
        return self.run_property(requests(other_paths, st.binary(max_size=32)))
