import os
import sqlite3
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

from tests.fixtures.helpers import REPO, free_port, start_twistd, stop, twistd_bin, wait_port


class PluginTests(unittest.TestCase):
    def test_service_maker_registered(self):
        names = [p.tapname for p in getPlugins(IServiceMaker)]
        self.assertIn("zmirror", names)

    def test_no_init_in_plugins_dir(self):
        self.assertFalse((REPO / "twisted" / "__init__.py").exists())
        self.assertFalse((REPO / "twisted" / "plugins" / "__init__.py").exists())


class TwistdTests(unittest.TestCase):
    """Runs the real ``twistd`` in a temporary directory."""

    timeout = 60

    def setUp(self):
        self.work = Path(self.mktemp()).resolve()
        self.work.mkdir()

    def _get(self, port, path="/v2/"):
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
        except urllib.error.HTTPError as e:  # 4xx answers are responses too
            return e

    def _assert_ping_challenge(self, resp, port):
        # access control: the ping answers 401 with Docker's Bearer challenge
        self.assertEqual(resp.status, 401)
        self.assertEqual(resp.headers["Docker-Distribution-API-Version"], "registry/2.0")
        self.assertEqual(resp.headers["WWW-Authenticate"],
                         f'Bearer realm="http://127.0.0.1:{port}/token",service="zmirror"')

    def test_first_start(self):
        port = free_port()
        proc = start_twistd(self.work, "zmirror", "--listen", f"tcp:{port}:interface=127.0.0.1")
        try:
            wait_port(port, proc=proc)
            resp = self._get(port)
            self._assert_ping_challenge(resp, port)
        finally:
            out = stop(proc)
        cfg = self.work / "data" / "config.toml"
        self.assertEqual(stat.S_IMODE(os.stat(cfg).st_mode), 0o600)
        key = self.work / "data" / "token.key"
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        conn = sqlite3.connect(self.work / "data" / "registry.db")
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertGreaterEqual(conn.execute("PRAGMA user_version").fetchone()[0], 1)
        conn.close()
        self.assertIn(b"admin password is still the default", out)
        self.assertIn(b"GET /v2/ HTTP/1.1", out)  # combined access log line
        # twistd re-raises the signal it stopped on: killed by SIGTERM after a clean shutdown
        self.assertIn(proc.returncode, (0, -15), out.decode(errors="replace")[-2000:])
        self.assertIn(b"Main loop terminated", out)

    def _fails_with(self, text, *expect):
        data = self.work / "data"
        data.mkdir()
        (data / "config.toml").write_text(text)
        proc = subprocess.run(
            [twistd_bin(), "-n", "--pidfile=", "zmirror", "--listen", f"tcp:{free_port()}"],
            cwd=str(self.work), capture_output=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.assertNotEqual(proc.returncode, 0)
        err = proc.stderr.decode()
        self.assertNotIn("Traceback", err + proc.stdout.decode())
        lines = [ln for ln in err.splitlines() if ln.strip()]
        self.assertEqual(len(lines), 1, err)
        for e in expect:
            self.assertIn(e, lines[0])

    def test_broken_toml_exits_nonzero(self):
        self._fails_with("[server\nport=1\n", "config.toml", "line 1")

    def test_bad_port_exits_nonzero(self):
        self._fails_with("[server]\nport = 70000\n", "server.port")

    def test_tac_serves_the_same(self):
        port = free_port()
        proc = start_twistd(
            self.work, "-y", str(REPO / "zmirror.tac"),
            env={"ZMIRROR_DATA": str(self.work / "tacdata"),
                 "ZMIRROR_LISTEN": f"tcp:{port}:interface=127.0.0.1"},
        )
        try:
            wait_port(port, proc=proc)
            resp = self._get(port)
            self._assert_ping_challenge(resp, port)
        finally:
            stop(proc)
        self.assertTrue((self.work / "tacdata" / "config.toml").exists())
