"""SIGHUP reload: live settings applied, bad files refused, CLI changes re-read, handler lifecycle."""

import io
import os
import signal
import sys
from pathlib import Path

from twisted.application.service import Application
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver
from twisted.trial import unittest

from tests.fixtures.helpers import Captured, set_in_config, write_default_config
from zmirror import cli
from zmirror.cli import users as cli_users
from zmirror.auth.passwords import fast_context, hash_admin_password
from zmirror.config import load_config
from zmirror.logs import LogControl
from zmirror.reload import SighupService
from zmirror.service import ZMirrorService
from zmirror.tap import Options, makeService


class ReloadTests(unittest.TestCase):
    def setUp(self):
        self.data = Path(self.mktemp()).resolve() / "data"
        write_default_config(self.data)
        self.opts = Options()
        self.opts.parseOptions(["--data", str(self.data), "--listen", "tcp:0:interface=127.0.0.1"])
        self.top = makeService(self.opts, reactor)
        self.c = self.top.components
        # not started: only the DB pools run (adbapi starts them when the reactor runs)
        self.addCleanup(self.c.db.close)

    def test_live_settings_applied(self):
        reloader = self.c.reloader
        policy = self.c.access.policy
        trusted = self.c.trusted
        self.assertEqual(policy.mode, "whitelist")
        self.assertFalse(trusted.trusts("10.1.2.3"))
        cap = Captured(self)
        set_in_config(self.data, 'anonymous = "whitelist"', 'anonymous = "all"')
        set_in_config(self.data, "trusted_proxies = []", 'trusted_proxies = ["10.0.0.0/8"]')
        set_in_config(self.data, 'level = "info"', 'level = "debug"')
        set_in_config(self.data, 'access = "admin"', 'access = "open"')
        new_hash = hash_admin_password("Fresh-Admin-9")
        set_in_config(self.data, 'password = "admin123"', f'password = "{new_hash}"')
        set_in_config(self.data, "port = 8080", "port = 8081")
        routing = self.c.routing
        self.assertIs(self.c.app.registry.routing, routing)
        self.assertEqual(routing.by_host("ghcr.mirror.example.com"), None)
        set_in_config(self.data, "hosts = {}", 'hosts = { "ghcr.mirror.example.com" = "ghcr.io" }')
        self.assertTrue(reloader.reload())
        self.assertEqual(routing.by_host("ghcr.mirror.example.com"), "ghcr.io")
        self.assertEqual(policy.mode, "all")
        # one TrustedProxies object is shared by routes, policy, token service and admin API
        self.assertTrue(trusted.trusts("10.1.2.3"))
        self.assertIs(self.c.app.registry.trusted, trusted)
        self.assertIs(policy.trusted, trusted)
        self.assertEqual(self.c.log_control.level, "debug")
        self.assertEqual(self.c.metrics_endpoint.access, "open")
        self.assertEqual(self.c.admin.account.settings.password, new_hash)
        self.assertEqual(self.c.admin.policy.mode, "all")  # /api/whitelists/match mode
        line = [t for t in cap.texts() if t.startswith("reload: configuration re-read")][0]
        self.assertIn("access.anonymous", line)
        self.assertIn("needs a restart: server.port", line)
        self.assertIn("routing.hosts", line.split("needs a restart")[0])
        self.assertNotIn(new_hash, "\n".join(cap.texts()))

    def test_lockout_thresholds_from_config_and_applied_on_sighup(self):
        lockout = self.c.access.lockout
        self.assertIs(self.c.admin.account.lockout, lockout)  # one lockout for registry and admin logins
        self.assertEqual((lockout.max_account, lockout.max_ip, lockout.window, lockout.cooldown),
                         (10, 30, 600.0, 300.0))
        cap = Captured(self)
        set_in_config(self.data, "max_account_failures = 10", "max_account_failures = 3")
        set_in_config(self.data, "cooldown = 300", "cooldown = 900")
        self.assertTrue(self.c.reloader.reload())
        self.assertEqual((lockout.max_account, lockout.max_ip, lockout.cooldown), (3, 30, 900.0))
        line = [t for t in cap.texts() if t.startswith("reload: configuration re-read")][0]
        self.assertIn("lockout.max_account_failures", line)
        self.assertIn("lockout.cooldown", line)
        self.assertNotIn("needs a restart", line)
        for _ in range(3):
            lockout.failure("someone", "10.0.0.1")
        self.assertGreater(lockout.check("someone", "10.0.0.2"), 0)
        # a bad value is refused and the running thresholds stay
        set_in_config(self.data, "max_account_failures = 3", "max_account_failures = 0")
        self.assertFalse(self.c.reloader.reload())
        self.assertEqual(lockout.max_account, 3)
        self.assertTrue(any("lockout.max_account_failures" in t for t in cap.texts()))

    def test_broken_file_keeps_the_running_configuration(self):
        cap = Captured(self)
        (self.data / "config.toml").write_text('[access]\nanonymous = "everyone"\n')
        self.assertFalse(self.c.reloader.reload())
        self.assertEqual(self.c.access.policy.mode, "whitelist")
        self.assertTrue(any("keeping the running configuration" in t and "access.anonymous" in t
                            for t in cap.texts()))
        (self.data / "config.toml").write_text("[server\n")
        self.assertFalse(self.c.reloader.reload())

    def test_admin_username_change_needs_restart(self):
        cap = Captured(self)
        set_in_config(self.data, 'username = "admin"', 'username = "boss"')
        self.assertTrue(self.c.reloader.reload())
        self.assertEqual(self.c.admin.account.username, "admin")
        self.assertTrue(any("needs a restart: admin.username" in t for t in cap.texts()))

    @inlineCallbacks
    def test_cli_changes_reach_the_running_stores(self):
        self.patch(cli_users, "_hash_user_password", lambda pw: fast_context().hash(pw))
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", io.StringIO())
        users = self.c.access.users
        yield users.load()
        self.patch(sys, "stdin", io.StringIO("pw-of-ivan\n"))
        self.assertEqual(cli.main(["--data", str(self.data), "user", "add", "ivan", "--stdin"]), 0)
        self.assertEqual(cli.main(["--data", str(self.data), "user", "list", "--json"]), 0)
        uid = 1
        self.assertIsNone((yield users.auth_user(uid)))  # the server's copy is stale
        yield self.c.reloader.refresh_stores()
        self.assertTrue((yield users.auth_user(uid))["enabled"])
        self.assertEqual(cli.main(["--data", str(self.data), "user", "disable", "ivan"]), 0)
        yield self.c.reloader.refresh_stores()
        self.assertFalse((yield users.auth_user(uid))["enabled"])
        # whitelist and registries too
        import sqlite3

        conn = sqlite3.connect(str(self.data / "registry.db"))
        conn.execute("INSERT INTO whitelists (prefix, created_at, updated_at) VALUES ('helloz', 0, 0)")
        conn.execute("UPDATE registries SET url = 'https://mirror.test' WHERE id = 1")
        conn.commit()
        conn.close()
        yield self.c.reloader.refresh_stores()
        whitelist = self.c.access.whitelist  # one live matcher: policy and admin API share it
        self.assertIs(self.c.access.policy.whitelist, whitelist)
        self.assertIs(self.c.admin.whitelist, whitelist)
        self.assertTrue(whitelist.matcher.allows("helloz/app"))
        self.assertEqual([u.url for u in self.c.upstreams.upstreams], ["https://mirror.test"])


class FakeReloader:
    def __init__(self):
        self.calls = 0

    def reload(self):
        self.calls += 1


class SighupTests(unittest.TestCase):
    @inlineCallbacks
    def test_handler_installed_while_running(self):
        previous = signal.getsignal(signal.SIGHUP)
        r = FakeReloader()
        svc = SighupService(r, reactor)
        svc.startService()
        try:
            self.assertTrue(svc.installed)
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(100):
                if r.calls:
                    break
                yield deferLater(reactor, 0.01, lambda: None)
            self.assertEqual(r.calls, 1)
        finally:
            svc.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_nothing_installed_at_import_or_construction(self):
        previous = signal.getsignal(signal.SIGHUP)
        SighupService(FakeReloader(), reactor)
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)


class LogSetupTests(unittest.TestCase):
    def build(self, fmt="text", level="info", parent=None):
        data = Path(self.mktemp()).resolve() / "data"
        write_default_config(data)
        set_in_config(data, 'format = "text"', f'format = "{fmt}"')
        set_in_config(data, 'level = "info"', f'level = "{level}"')
        opts = Options()
        opts.parseOptions(["--data", str(data), "--listen", "tcp:0:interface=127.0.0.1"])
        if parent is not None:
            opts.parent = parent
        top = makeService(opts, reactor)
        self.addCleanup(top.components.db.close)
        return top

    def test_twistd_foreground_gets_our_observer(self):
        top = self.build("json", parent={"nodaemon": True, "logfile": None, "logger": None,
                                         "syslog": False})
        self.assertIsInstance(top, ZMirrorService)
        app = Application("zmirror")
        top.setServiceParent(app)
        self.assertIs(app.getComponent(ILogObserver), top.log_observer)

    def test_twistd_logger_option_wins(self):
        top = self.build("json", parent={"nodaemon": True, "logfile": None,
                                         "logger": "my.observer", "syslog": False})
        self.assertIsNone(top.log_observer)

    def test_tac_defaults_keep_twistd_observer(self):
        self.assertIsNone(self.build().log_observer)
        self.assertIsNotNone(self.build("json").log_observer)

    def test_logfile(self):
        logfile = Path(self.mktemp()).resolve()
        top = self.build("text", "warn", parent={"nodaemon": False, "logfile": str(logfile),
                                                 "logger": None, "syslog": False})
        from twisted.logger import Logger

        Logger(observer=top.log_observer).info("quiet info")
        Logger(observer=top.log_observer).warn("loud warning")
        text = logfile.read_text()
        self.assertIn("loud warning", text)
        self.assertNotIn("quiet info", text)

    def test_level_reload_changes_filter(self):
        from twisted.logger import Logger

        control = LogControl("text", "warn")
        out = io.StringIO()
        log = Logger(observer=control.observer(out))
        log.info("before")
        cfg = load_config(self.mktemp())
        control.reload(cfg)  # default level info
        log.info("after")
        self.assertNotIn("before", out.getvalue())
        self.assertIn("after", out.getvalue())
