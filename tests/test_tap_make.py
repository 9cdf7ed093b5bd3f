"""``make run`` / ``make dev``: the address and data directory are settable, twistd's
pid file goes into the data directory, so two instances run from one directory."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

from tests.fixtures.helpers import REPO, free_port, stop, wait_port

VENV = Path(sys.executable).parent.parent  # the venv running the tests: its twistd


class MakeRunTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        if shutil.which("make") is None:
            raise unittest.SkipTest("make is not installed")

    def command(self, target="run", **variables):
        """The twistd command line ``make TARGET`` runs (``make -n``: nothing is run)."""
        argv = ["make", "-n", "--no-print-directory", "-C", str(REPO), target, f"VENV={VENV}"]
        argv += [f"{k}={v}" for k, v in variables.items()]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = [ln for ln in proc.stdout.splitlines()
                 if re.search(r"/(twistd|hupper) ", ln)]
        self.assertEqual(len(lines), 1, proc.stdout)
        return lines[0]

    def test_defaults(self):
        line = self.command()
        args = shlex.split(line)
        self.assertEqual(args[0], f"{VENV}/bin/twistd")
        self.assertEqual(args[1:], ["-n", "--pidfile", "data/twistd.pid", "--logfile", "-", "zmirror",
                                    "--data", "data"])

    def test_listen_and_data(self):
        line = self.command(LISTEN="tcp:8080:interface=127.0.0.1", DATA="/srv/zmirror")
        self.assertEqual(shlex.split(line)[1:],
                         ["-n", "--pidfile", "/srv/zmirror/twistd.pid", "--logfile", "-", "zmirror",
                          "--data", "/srv/zmirror", "--listen", "tcp:8080:interface=127.0.0.1"])

    def test_dev_takes_the_same(self):
        line = self.command("dev", LISTEN="tcp:9090", DATA="/srv/z")
        self.assertEqual(shlex.split(line)[1:],
                         ["-m", "twisted", "-n", "--pidfile", "/srv/z/twistd.pid", "--logfile", "-",
                          "zmirror", "--data", "/srv/z", "--listen", "tcp:9090"])

    def test_two_instances_from_one_directory(self):
        """What ``make run`` runs, twice from the same working directory (twistd's default
        pid file there refused the second)."""
        base = Path(self.mktemp()).resolve()
        work = base / "work"
        work.mkdir(parents=True)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        procs, ports = [], []
        try:
            for name in ("a", "b"):
                port = free_port()
                line = self.command(DATA=str(base / name), LISTEN=f"tcp:{port}:interface=127.0.0.1")
                procs.append(subprocess.Popen(["sh", "-c", "exec " + line], cwd=str(work), env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
                ports.append(port)
            for port, proc in zip(ports, procs):
                wait_port(port, proc=proc)
            for name in ("a", "b"):
                pid = int((base / name / "twistd.pid").read_text())
                self.assertIn(pid, [p.pid for p in procs])
        finally:
            outs = [stop(p) for p in procs]
        self.assertEqual(os.listdir(work), [])
        for out in outs:
            self.assertIn(b"listening on", out)  # the log went to stdout


class ReadmeTests(unittest.TestCase):
    def test_quick_start_is_two_commands_and_make_run_is_documented(self):
        text = (REPO / "README.md").read_text(encoding="utf-8")
        block = text.split("## 快速开始 / Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
        commands = [ln.split("#", 1)[0].strip() for ln in block.splitlines() if ln.strip()]
        self.assertEqual(commands, ["make run", "make test"])
        self.assertIn("make run LISTEN=tcp:8080:interface=127.0.0.1 DATA=/srv/zmirror", text)
        self.assertIn("DATA/twistd.pid", text)
