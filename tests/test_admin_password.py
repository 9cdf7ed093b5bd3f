"""The default admin password: every /api route but the session check and the password
change answers 403 while it is in use; ``PUT /api/me/password`` (validation, config.toml
kept as it was apart from the hash, applied at once, one change at a time)."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from io import BytesIO
from pathlib import Path

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from tests.fixtures.helpers import coro
from tests.fixtures.admin import AdminTestMixin, basic, comments
from tests.fixtures.fakes import ControlledRun
from zmirror.config import adminpassword as config_module
from zmirror.admin.session import SessionHandlers
from zmirror.auth.passwords import (
    Passwords,
    fast_context,
    hash_admin_password,
    is_hash,
    verify_admin_sync,
)
from zmirror.config import DEFAULT_ADMIN_PASSWORD, DEFAULT_CONFIG, load_config

GATED = {"error": "change the default admin password first", "fields": {}}
NEW = "A-better-secret-9"


def api_rules(api):
    """(method, path) of every route of the admin API ``api``, from its Klein URL map, with
    ids filled in (HEAD is GET's)."""
    out = []
    for rule in api.app.url_map.iter_rules():
        path = "/api" + re.sub(r"<[^>]+>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, path))
    return out


OPEN_WITH_DEFAULT = {("GET", "/api/me"), ("PUT", "/api/me/password")}


class FileConfigMixin(AdminTestMixin):
    """The admin API on a config loaded from a real config.toml (the generated default,
    or with ``password`` replaced)."""

    password = None  # None: the generated default (admin123)

    def setUp(self):
        super().setUp()
        self.data = Path(self.mktemp()).resolve() / "data"
        self.data.mkdir(parents=True)
        self.path = self.data / "config.toml"
        text = DEFAULT_CONFIG
        if self.password is not None:
            text = text.replace('password = "admin123"', f'password = "{self.password}"')
        self.path.write_text(text)
        os.chmod(self.path, 0o600)
        self.config = load_config(self.data)
        self.api = self.make_api()
        self.client = self.stub(self.api)
        self.auth = basic("admin", self.password or DEFAULT_ADMIN_PASSWORD)

    def change(self, current, new, auth=True):
        return self.call("PUT", "/api/me/password", {"current_password": current, "new_password": new},
                         auth=auth)


class DefaultPasswordGateTests(FileConfigMixin, unittest.TestCase):
    def test_route_list_is_complete(self):
        rules = api_rules(self.api)
        for expected in (("POST", "/api/registries"), ("DELETE", "/api/cache"), ("PUT", "/api/users/1"),
                         ("GET", "/api/whitelists/match"), ("GET", "/api/stats")):
            self.assertIn(expected, rules)
        self.assertTrue(OPEN_WITH_DEFAULT <= set(rules))

    @coro
    async def test_every_other_route_is_403_while_default(self):
        before = self.db.snapshot()
        gated = [r for r in api_rules(self.api) if r not in OPEN_WITH_DEFAULT]
        self.assertGreater(len(gated), 20)
        for method, path in gated:
            code, headers, obj = await self.call(method, path, {"name": "x", "url": "http://127.0.0.1:9"})
            self.assertEqual((code, obj), (403, GATED), f"{method} {path}")
            self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(self.db.snapshot(), before)
        self.assertEqual(self.upstreams.probes, [])

    @coro
    async def test_session_check_answers_while_default(self):
        code, _h, obj = await self.call("GET", "/api/me")
        self.assertEqual((code, obj), (200, {"username": "admin", "default_password": True}))

    @coro
    async def test_wrong_credentials_are_still_401(self):
        for auth in (None, basic("admin", "wrong"), basic("root", DEFAULT_ADMIN_PASSWORD)):
            for method, path in (("GET", "/api/registries"), ("GET", "/api/me"), ("PUT", "/api/me/password")):
                code, headers, obj = await self.call(method, path, {}, auth=auth)
                self.assertEqual(code, 401, (method, path, obj))
                self.assertIn(b"Basic", headers.getRawHeaders(b"www-authenticate")[0])
        # a registry user is not the admin: 403, but the registry user's own message
        await self.api.accounts.create("bob", "bob-password")
        code, _h, obj = await self.call("GET", "/api/registries", auth=basic("bob", "bob-password"))
        self.assertEqual(code, 403)
        self.assertNotEqual(obj, GATED)

    @coro
    async def test_after_the_change_every_route_works(self):
        before_text = self.path.read_text()
        code, _h, obj = await self.change(DEFAULT_ADMIN_PASSWORD, NEW)
        self.assertEqual((code, obj), (200, {"username": "admin", "default_password": False}))
        # applied at once: the old password is refused, the new one works
        self.assertError(await self.call("GET", "/api/me"), 401)
        self.assertError(await self.call("GET", "/api/registries"), 401)
        self.auth = basic("admin", NEW)
        code, _h, obj = await self.call("GET", "/api/me")
        self.assertEqual((code, obj), (200, {"username": "admin", "default_password": False}))
        for method, path in api_rules(self.api):
            if method != "GET":
                continue  # reads only: the point is that the gate is gone
            needs_repository = "match" in path or path == "/api/cache/tags"
            code, _h, obj = await self.call(method, path + ("?repository=nginx" if needs_repository else ""))
            self.assertNotEqual(obj, GATED, path)
            self.assertIn(code, (200, 404), (path, obj))
        code, _h, obj = await self.call("POST", "/api/registries", {"name": "x", "url": "http://127.0.0.1:9"})
        self.assertEqual(code, 201, obj)
        # config.toml: a hash of the new password, every comment kept, mode 0600
        after_text = self.path.read_text()
        self.assertEqual(comments(after_text), comments(before_text))
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        changed = [(a, b) for a, b in zip(before_text.splitlines(), after_text.splitlines()) if a != b]
        self.assertEqual([a for a, _b in changed], ['password = "admin123"'])
        self.assertEqual(len(before_text.splitlines()), len(after_text.splitlines()))
        self.assertNotIn(NEW, after_text)
        on_disk = load_config(self.data)
        self.assertTrue(is_hash(on_disk.admin.password))
        self.assertTrue(verify_admin_sync(NEW, on_disk.admin.password))
        self.assertFalse(on_disk.admin_password_is_default)
        self.assertEqual(self.api.account.settings.password, on_disk.admin.password)
        self.assertEqual(list(self.data.iterdir()), [self.path])  # no temporary file left

    @coro
    async def test_the_reloader_sees_the_change(self):
        from zmirror.reload import LiveSettings, Reloader

        # only the account is asked here: the rest of the live settings are not touched
        live = LiveSettings(trusted=None, routing=None, policy=None, log_control=None, lockout=None,
                            metrics_endpoint=None, account=self.api.account)
        reloader = Reloader(self.config, live=live)
        code, _h, _o = await self.change(DEFAULT_ADMIN_PASSWORD, NEW)
        self.assertEqual(code, 200)
        seen = [reloader.config.admin]  # what the next reload compares config.toml against
        self.assertEqual([a.password for a in seen], [self.api.account.settings.password])
        self.assertEqual(seen[0].username, "admin")


class HashedDefaultTests(FileConfigMixin, unittest.TestCase):
    """A passlib hash *of* admin123 is the default password too."""

    password = hash_admin_password(DEFAULT_ADMIN_PASSWORD)

    def setUp(self):
        super().setUp()
        self.auth = basic("admin", DEFAULT_ADMIN_PASSWORD)

    @coro
    async def test_gated_and_reported(self):
        self.assertFalse(self.config.admin_password_is_default)  # not plain text ...
        code, _h, obj = await self.call("GET", "/api/registries")
        self.assertEqual((code, obj), (403, GATED))  # ... but the password that works is the default
        code, _h, obj = await self.call("GET", "/api/me")
        self.assertEqual(obj["default_password"], True)
        code, _h, obj = await self.change(DEFAULT_ADMIN_PASSWORD, NEW)
        self.assertEqual(code, 200, obj)
        self.auth = basic("admin", NEW)
        code, _h, obj = await self.call("GET", "/api/registries")
        self.assertEqual(code, 200, obj)


class ChangeValidationTests(FileConfigMixin, unittest.TestCase):
    password = "Current-pass-1"

    async def refused(self, body, status=400, *fields, raw=None, content_type="application/json"):
        before = self.path.read_bytes()
        running = self.api.account.settings.password
        result = await self.call("PUT", "/api/me/password", body, raw=raw, content_type=content_type)
        obj = self.assertError(result, status, *fields)
        self.assertEqual(self.path.read_bytes(), before)
        self.assertEqual(self.api.account.settings.password, running)
        return obj

    @coro
    async def test_field_errors(self):
        cur = self.password
        cases = [
            ({"current_password": cur, "new_password": "short7!"}, "new_password", "at least 8"),
            ({"current_password": cur, "new_password": "x" * 1025}, "new_password", "at most 1024"),
            ({"current_password": cur, "new_password": DEFAULT_ADMIN_PASSWORD}, "new_password", "default"),
            ({"current_password": "Wrong-pass-1", "new_password": NEW}, "current_password", "not the current"),
            ({"current_password": cur, "new_password": cur}, "new_password", "differ"),
            ({"current_password": cur, "new_password": "tab\there-and-more"}, "new_password", "control"),
            ({"current_password": cur, "new_password": "nul\x00here-and-more"}, "new_password", "control"),
            ({"current_password": cur, "new_password": 12345678}, "new_password", "string"),
            ({"current_password": cur, "new_password": None}, "new_password", "string"),
            ({"current_password": cur}, "new_password", "required"),
            ({"new_password": NEW}, "current_password", "required"),
            ({"current_password": "", "new_password": NEW}, "current_password", "empty"),
            ({"current_password": cur, "new_password": NEW, "username": "root"}, "username", "unknown"),
        ]
        for body, field, words in cases:
            obj = await self.refused(body, 400, field)
            self.assertIn(words, obj["fields"][field], body)
        # both wrong at once: every field's problem in one answer
        obj = await self.refused({"current_password": 1, "new_password": "short"}, 400,
                                 "current_password", "new_password")
        # the password itself never comes back
        self.assertNotIn("short", json.dumps(obj))

    @coro
    async def test_lone_surrogate_is_a_400(self):
        raw = b'{"current_password": "Current-pass-1", "new_password": "abc\\ud800defgh"}'
        obj = await self.refused(None, 400, "new_password", raw=raw)
        self.assertIn("Unicode", obj["fields"]["new_password"])

    @coro
    async def test_bad_bodies(self):
        await self.refused(None, 400, raw=b"[1, 2]")
        await self.refused(None, 400, raw=b"{not json")
        await self.refused(None, 415, raw=b'{"current_password": "x"}', content_type="text/plain")
        await self.refused(None, 413, raw=b'{"current_password": "' + b"x" * 70000 + b'"}')
        code, _h, obj = await self.call("POST", "/api/me/password", {})
        self.assertEqual(code, 405, obj)

    @coro
    async def test_needs_the_admin(self):
        await self.api.accounts.create("bob", "bob-password")
        for auth in (None, basic("admin", "Wrong-pass-1"), basic("bob", "bob-password")):
            before = self.path.read_bytes()
            code, _h, _o = await self.change(self.password, NEW, auth=auth)
            self.assertIn(code, (401, 403))
            self.assertEqual(self.path.read_bytes(), before)

    @coro
    async def test_broken_or_missing_file_is_409_not_500(self):
        self.path.write_text('[access]\nanonymous = "everyone"\n')  # the server would refuse it
        before = self.path.read_bytes()
        obj = await self.refused({"current_password": self.password, "new_password": NEW}, 409)
        self.assertNotIn("everyone", obj["error"])
        self.assertEqual(self.path.read_bytes(), before)
        self.path.unlink()
        code, _h, obj = await self.change(self.password, NEW)
        self.assertEqual(code, 409, obj)
        self.assertFalse(self.path.exists())
        # the running server keeps the password that works
        self.assertTrue(verify_admin_sync(self.password, self.api.account.settings.password))

    @coro
    async def test_write_failure_is_503_and_changes_nothing(self):
        def full(path, text):
            raise OSError(28, "No space left on device")

        self.patch(config_module, "write_preserving_mode", full)
        obj = await self.refused({"current_password": self.password, "new_password": NEW}, 503)
        self.assertNotIn("space", obj["error"])
        code, _h, _o = await self.call("GET", "/api/me")
        self.assertEqual(code, 200)  # the old password still works

    @coro
    async def test_full_password_check_queue_during_the_change_is_429(self):
        from zmirror.auth import passwords as passwords_module
        from zmirror.auth.passwords import Busy

        real = passwords_module.AdminCredentials.check
        calls = []

        async def check(creds, username, password):
            calls.append(username)
            if len(calls) == 1:  # the login itself goes through
                return await real(creds, username, password)
            raise Busy(3)  # the change's check of current_password finds the queue full

        self.patch(passwords_module.AdminCredentials, "check", check)
        before = self.path.read_bytes()
        code, headers, obj = await self.change(self.password, NEW)
        self.assertEqual(code, 429, obj)
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"3"])
        self.assertEqual(self.path.read_bytes(), before)

    @coro
    async def test_other_settings_untouched(self):
        # an operator's edit (not yet reloaded) and comments in odd places survive
        text = self.path.read_text().replace(
            'password = "Current-pass-1"', 'password = "Current-pass-1"   # set by ops, 2024')
        text = text.replace('anonymous = "whitelist"', 'anonymous = "all"  # edited')
        self.path.write_text(text)
        code, _h, obj = await self.change(self.password, NEW)
        self.assertEqual(code, 200, obj)
        after = self.path.read_text()
        self.assertIn('anonymous = "all"  # edited', after)
        self.assertRegex(after, r'\npassword = "\$argon2id\$[^"]+"   # set by ops, 2024\n')
        self.assertEqual(comments(after), comments(text))
        # only the password is applied to the running server; the rest waits for SIGHUP
        self.assertEqual(self.api.policy.mode, "whitelist")


class OneChangeAtATimeTests(FileConfigMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.run = ControlledRun()
        self.passwords = Passwords(context=fast_context(), clock=self.clock, run=self.run)
        self.api = self.make_api(passwords=self.passwords)
        self.client = self.stub(self.api)

    @coro
    async def test_second_change_must_know_the_first(self):
        a = self.change(DEFAULT_ADMIN_PASSWORD, "First-new-pass")
        b = self.change(DEFAULT_ADMIN_PASSWORD, "Second-new-pass")
        self.assertEqual(len(self.run.pending), 1)  # only the first one hashes; the other waits
        self.run.drain()
        self.client.flush()  # the responses of the handlers that finished late
        code_a, _h, obj_a = await a
        code_b, _h, obj_b = await b
        self.assertEqual(code_a, 200, obj_a)
        self.assertEqual(code_b, 400, obj_b)
        self.assertIn("current_password", obj_b["fields"])
        on_disk = load_config(self.data).admin.password
        self.assertTrue(verify_admin_sync("First-new-pass", on_disk))
        self.assertEqual(self.api.account.settings.password, on_disk)

    @coro
    async def test_client_gone_mid_change_still_applied(self):
        request = DummyRequest([b"me", b"password"])
        request.method = b"PUT"
        request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
        request.content = BytesIO(json.dumps({"current_password": DEFAULT_ADMIN_PASSWORD,
                                              "new_password": NEW}).encode())
        handler = SessionHandlers(self.api.account).change_password
        d = Deferred.fromCoroutine(handler(request))
        self.assertEqual(len(self.run.pending), 1)  # hashing
        d.cancel()  # what Klein does when the client hangs up
        self.failureResultOf(d, CancelledError)
        self.run.drain()  # hash, then the file write
        on_disk = load_config(self.data).admin.password
        self.assertTrue(verify_admin_sync(NEW, on_disk))
        self.assertEqual(self.api.account.settings.password, on_disk)  # file and server agree


class ConcurrentWritersTests(unittest.TestCase):
    def test_threads_never_corrupt_the_file(self):
        data = Path(self.mktemp()).resolve()
        data.mkdir()
        path = data / "config.toml"
        path.write_text(DEFAULT_CONFIG)
        os.chmod(path, 0o600)
        values = [f"$pbkdf2-sha256$1000$c2FsdA$value{i}" for i in range(8)]
        errors = []

        def write(v):
            try:
                for _ in range(5):
                    config_module.update_admin_password(path, v, data_dir=data)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=write, args=(v,)) for v in values]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        text = path.read_text()
        self.assertIn(load_config(data).admin.password, values)
        self.assertEqual(comments(text), comments(DEFAULT_CONFIG))
        self.assertEqual(len(text.splitlines()), len(DEFAULT_CONFIG.splitlines()))
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(list(data.iterdir()), [path])


class SQLiteKeepsTheFileTests(FileConfigMixin, unittest.TestCase):
    """SQLite (one node): the password lives in config.toml only; the database's
    cluster_secrets table (shared with PostgreSQL's schema) is never used for it."""

    @coro
    async def test_the_change_writes_the_file_and_no_database_row(self):
        self.assertIsNone(self.api.account.cluster_password)
        code, _h, obj = await self.change(DEFAULT_ADMIN_PASSWORD, NEW)
        self.assertEqual(code, 200, obj)
        self.assertTrue(verify_admin_sync(NEW, load_config(self.data).admin.password))
        rows = self.db.conn.execute("SELECT name FROM cluster_secrets").fetchall()
        self.assertEqual(rows, [])

    def test_a_wired_sqlite_node_has_no_cluster_admin_password(self):
        from twisted.internet import reactor

        from zmirror.tap import Options, makeService

        opts = Options()
        opts.parseOptions(["--data", str(self.data), "--listen", "tcp:0:interface=127.0.0.1"])
        top = makeService(opts, reactor)
        self.addCleanup(top.components.db.close)
        self.assertIsNone(top.components.cluster_admin_password)
        self.assertIsNone(top.components.admin.account.cluster_password)

    @coro
    async def test_the_old_passwords_cached_verification_is_forgotten(self):
        self.path.write_text(self.path.read_text().replace(
            'password = "admin123"', f'password = "{hash_admin_password("Current-pass-1")}"'))
        self.config = load_config(self.data)
        self.api = self.make_api()
        self.client = self.stub(self.api)
        self.auth = basic("admin", "Current-pass-1")
        self.assertEqual((await self.call("GET", "/api/registries"))[0], 200)
        old = self.api.account.credentials()
        self.assertTrue(old.cached("admin", "Current-pass-1"))
        code, _h, obj = await self.change("Current-pass-1", NEW)
        self.assertEqual(code, 200, obj)
        self.assertFalse(old.cached("admin", "Current-pass-1"))
