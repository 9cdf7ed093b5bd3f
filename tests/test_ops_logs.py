"""Log output: JSON lines, level filter, redaction — and no secret in any log event
while real clients log in and pull with credentials through the running app."""

import base64
import io
import json
import sqlite3
import sys
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger, eventAsJSON, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests.fixtures.helpers import first_start, set_in_config, write_default_config
from zmirror import cli
from zmirror.cli import users as cli_users
from zmirror.auth.passwords import fast_context
from zmirror.logs import REDACTED, LogControl, redact
from zmirror.tap import Options, makeService


class FormatTests(unittest.TestCase):
    def test_json_lines(self):
        out = io.StringIO()
        log = Logger(namespace="zmirror.test", observer=LogControl("json", "info").observer(out))
        log.info("pulled {repo} ({n} bytes)", repo="library/nginx", n=42)
        log.debug("not shown")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("it broke")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])  # one JSON object per line, no record separator
        self.assertEqual(first["text"], "pulled library/nginx (42 bytes)")
        self.assertEqual(first["level"], "info")
        self.assertEqual(first["log_namespace"], "zmirror.test")
        self.assertEqual(first["repo"], "library/nginx")
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        second = json.loads(lines[1])
        self.assertEqual(second["level"], "critical")
        self.assertIn("ZeroDivisionError", second["traceback"])
        self.assertFalse(out.getvalue().startswith("\x1e"))

    def test_text_format(self):
        out = io.StringIO()
        Logger(namespace="zmirror.test", observer=LogControl("text", "info").observer(out)).info("hello {x}", x=1)
        self.assertIn("[zmirror.test#info] hello 1", out.getvalue())

    def test_levels(self):
        out = io.StringIO()
        control = LogControl("text", "error")
        log = Logger(observer=control.observer(out))
        log.warn("w1")
        log.error("e1")
        control.set_level("debug")
        log.debug("d1")
        self.assertEqual([ln.split("] ")[-1] for ln in out.getvalue().splitlines()], ["e1", "d1"])

    def test_redaction(self):
        out = io.StringIO()
        log = Logger(observer=LogControl("json", "info").observer(out))
        log.info("login {user} {password}", user="alice", password="hunter2")
        log.info("header {authorization}", authorization="Basic YWxpY2U6aHVudGVyMg==")
        log.info("tok {refresh_token} {client_secret}", refresh_token="eyJabc", client_secret="s")
        text = out.getvalue()
        for secret in ("hunter2", "YWxpY2U6aHVudGVyMg==", "eyJabc"):
            self.assertNotIn(secret, text)
        self.assertIn("alice", text)
        self.assertIn(REDACTED, text)
        e = {"log_format": "x", "token": "t", "tokens_total": 1, "user": "u"}
        self.assertEqual(redact(e)["token"], REDACTED)
        self.assertEqual(redact(e)["user"], "u")
        self.assertEqual(e["token"], "t")  # the original event is untouched


ADMIN_PW = "Adm1n-Secret-Q7x"
USER_PW = "UserSecret-1kz"
WRONG = ["Wrong-Secret-2qq", "Wrong-Secret-3ww", "Wrong-Admin-4ee", "Wrong-Bearer-5rr"]


def basic(user, pw):
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


class NoSecretsInLogsTests(unittest.TestCase):
    """The whole service (makeService, real Site on a TCP port, real treq clients)."""

    timeout = 60

    @inlineCallbacks
    def test_credentials_never_logged(self):
        data = Path(self.mktemp()).resolve() / "data"
        write_default_config(data)
        set_in_config(data, 'password = "admin123"', f'password = "{ADMIN_PW}"')
        first_start(data)  # the database the CLI writes into
        # an upstream that refuses at once: pulls fail fast, after the auth checks ran
        self.patch(cli_users, "_hash_user_password", lambda pw: fast_context().hash(pw))
        self.patch(sys, "stdout", io.StringIO())
        self.patch(sys, "stderr", io.StringIO())
        self.patch(sys, "stdin", io.StringIO(USER_PW + "\n"))
        self.assertEqual(cli.main(["--data", str(data), "user", "add", "alice", "--stdin"]), 0)
        conn = sqlite3.connect(str(data / "registry.db"))
        conn.execute("UPDATE registries SET url = 'http://127.0.0.1:1'")
        conn.commit()
        conn.close()

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        json_out, text_out = io.StringIO(), io.StringIO()
        globalLogPublisher.addObserver(LogControl("json", "debug").observer(json_out))
        globalLogPublisher.addObserver(LogControl("text", "debug").observer(text_out))

        opts = Options()
        opts.parseOptions(["--data", str(data), "--listen", "tcp:0:interface=127.0.0.1"])
        top = makeService(opts, reactor)
        top.startService()
        stopped = []

        def stop():
            if not stopped:
                stopped.append(True)
                return top.stopService()

        self.addCleanup(stop)
        web = [s for s in top if hasattr(s, "_waitingForPort")][0]
        port = web._waitingForPort.result.getHost().port
        base = f"http://127.0.0.1:{port}"
        pool = HTTPConnectionPool(reactor, persistent=False)

        def get(path, **kw):
            return treq.get(base + path, pool=pool, **kw)

        def post(path, **kw):
            return treq.post(base + path, pool=pool, **kw)

        # docker login: GET /token with Basic + offline_token → access and refresh tokens
        r = yield get("/token?account=alice&service=zmirror&scope=repository:team/app:pull"
                      "&client_id=docker&offline_token=true",
                      headers={"Authorization": basic("alice", USER_PW)})
        body = yield treq.json_content(r)
        self.assertEqual(r.code, 200, body)
        token, refresh = body["token"], body["refresh_token"]
        # pulls with the Bearer token, with Basic, with bad credentials
        r = yield get("/v2/team/app/manifests/latest", headers={"Authorization": "Bearer " + token})
        yield treq.content(r)
        self.assertNotIn(r.code, (401, 403))
        r = yield get("/v2/team/app/manifests/latest", headers={"Authorization": basic("alice", USER_PW)})
        yield treq.content(r)
        self.assertNotIn(r.code, (401, 403))
        r = yield get("/v2/team/app/blobs/sha256:" + "a" * 64,
                      headers={"Authorization": basic("alice", WRONG[0])})
        yield treq.content(r)
        self.assertEqual(r.code, 401)
        r = yield get("/v2/team/app/manifests/latest",
                      headers={"Authorization": "Bearer " + WRONG[3]})
        yield treq.content(r)
        self.assertEqual(r.code, 401)
        # POST /token: wrong password, then the refresh token
        r = yield post("/token", data={"grant_type": "password", "username": "alice",
                                       "password": WRONG[1], "service": "zmirror",
                                       "client_id": "containerd"})
        yield treq.content(r)
        self.assertEqual(r.code, 401)
        r = yield post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh,
                                       "service": "zmirror", "client_id": "docker",
                                       "scope": "repository:team/app:pull"})
        refreshed = yield treq.json_content(r)
        self.assertEqual(r.code, 200, refreshed)
        # admin API and metrics, right and wrong
        r = yield get("/api/users", headers={"Authorization": basic("admin", ADMIN_PW)})
        yield treq.content(r)
        self.assertEqual(r.code, 200)
        r = yield get("/api/users", headers={"Authorization": basic("admin", WRONG[2])})
        yield treq.content(r)
        self.assertEqual(r.code, 401)
        r = yield get("/metrics", headers={"Authorization": basic("admin", ADMIN_PW)})
        metrics = yield treq.content(r)
        self.assertEqual(r.code, 200)
        self.assertIn(b'zmirror_tokens_issued_total{subject="user",type="refresh"} 1.0', metrics)
        self.assertIn(b'zmirror_auth_failures_total{endpoint="registry",reason="bad_credentials"} 1.0',
                      metrics)
        self.assertIn(b'zmirror_auth_failures_total{endpoint="token",reason="bad_credentials"} 1.0',
                      metrics)
        self.assertIn(b'zmirror_requests_total{kind="token",status="200"} 2.0', metrics)
        yield stop()  # flushes the access log

        secrets = [USER_PW, ADMIN_PW, *WRONG, token, refresh, refreshed["token"]]
        secrets += [basic("alice", USER_PW).split()[1], basic("admin", ADMIN_PW).split()[1],
                    basic("alice", WRONG[0]).split()[1], basic("admin", WRONG[2]).split()[1]]
        # something was logged: the HTTP access lines of these requests
        rendered = [formatEvent(e) for e in events]
        self.assertTrue(any("GET /token?account=alice" in t for t in rendered), rendered[-20:])
        self.assertTrue(any("/api/users" in t for t in rendered))
        haystacks = {
            "formatted": "\n".join(rendered),
            "json": "\n".join(eventAsJSON(e) for e in events),
            "repr": "\n".join(repr(e) for e in events),
            "failures": "\n".join(e["log_failure"].getTraceback() for e in events
                                  if isinstance(e.get("log_failure"), Failure)),
            "json observer": json_out.getvalue(),
            "text observer": text_out.getvalue(),
        }
        conn = sqlite3.connect(str(data / "registry.db"))
        rows = conn.execute("SELECT * FROM access_logs").fetchall()
        conn.close()
        self.assertEqual(len(rows), 7)  # 3 token requests + 4 pulls
        haystacks["access_logs table"] = repr(rows)
        for where, text in haystacks.items():
            for s in secrets:
                self.assertNotIn(s, text, f"a secret ({s[:6]}…) appears in the {where} log")
            self.assertNotIn("Authorization: ", text, where)
