"""The ``zmirror`` commands never create a data directory, a config or a database
(only the server's first start does); ``check-config`` reports every bad key."""

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

from tests.fixtures.helpers import REPO, first_start, free_port, twistd_bin, write_default_config
from zmirror import cli
from zmirror.cli.parser import build_parser
from zmirror.config import DEFAULT_CONFIG, ConfigError, parse_config

# every command the data directory matters to, as an admin would type it
KNOWN = [
    ("check-config",),
    ("user", "list"),
    ("user", "add", "alice", "--stdin"),
    ("user", "passwd", "alice", "--stdin"),
    ("user", "disable", "alice"),
    ("user", "enable", "alice"),
    ("admin-password", "--stdin"),
    ("import-zmirror", "/nonexistent/registry.db"),
    ("backup", "/nonexistent/backup"),
    ("db", "copy", "--to", "postgresql://zmirror@127.0.0.1:1/zmirror"),
]


def leaf_commands(parser: argparse.ArgumentParser, prefix=()):
    """(argv prefix, sub-parser) of every command of ``zmirror``, nested ones too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaf_commands(sub, prefix + (name,))
            return
    yield prefix, parser


def sample_argv(prefix, parser) -> list[str]:
    """``prefix`` with a value for each positional and required option."""
    argv = list(prefix)
    for action in parser._actions:
        if action.option_strings:
            if action.required:
                argv += [action.option_strings[-1],
                         "postgresql://zmirror@127.0.0.1:1/zmirror" if "--to" in action.option_strings
                         else "x"]
        elif action.nargs not in ("?", "*") and not isinstance(action, argparse._SubParsersAction):
            argv.append("/nonexistent/x" if action.dest in ("path", "dest", "source") else "x1")
    return argv


class NoDataDirTests(unittest.TestCase):
    def setUp(self):
        self.work = Path(self.mktemp()).resolve()
        self.work.mkdir()
        self.data = self.work / "data"

    def run_cli(self, *argv, data=None, stdin="pa55word-x\n"):
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", io.StringIO(stdin))
        code = cli.main(["--data", str(data or self.data), *argv])
        return code, out.getvalue(), err.getvalue()

    def test_user_list_in_a_directory_without_data(self):
        # the console script, as typed: no --data, no ZMIRROR_DATA, in an empty directory
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZMIRROR_")}
        env["PYTHONPATH"] = str(REPO)
        proc = subprocess.run([sys.executable, "-m", "zmirror.cli", "user", "list"], cwd=str(self.work),
                              env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertEqual(proc.stdout, "")
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("zmirror: error: no ZMirror data directory"), lines[0])
        self.assertIn(str(self.data), lines[0])
        self.assertIn("--data", lines[0])
        self.assertNotIn("Traceback", proc.stderr)
        self.assertEqual(os.listdir(self.work), [])

    def test_every_known_command_refuses_and_creates_nothing(self):
        for argv in KNOWN:
            code, out, err = self.run_cli(*argv)
            self.assertEqual(code, 1, (argv, out, err))
            self.assertEqual(len(err.strip().splitlines()), 1, (argv, err))
            self.assertIn("no ZMirror data directory", err, argv)
            self.assertIn(str(self.data), err, argv)
            self.assertEqual(os.listdir(self.work), [], argv)

    def test_every_command_of_the_parser_creates_nothing(self):
        seen = 0
        for prefix, parser in leaf_commands(build_parser()):
            argv = sample_argv(prefix, parser)
            try:
                code, out, err = self.run_cli(*argv)
            except SystemExit as e:  # argparse refused the sample arguments: nothing ran
                code, err = e.code, ""
            self.assertNotEqual(code, 0, (argv, err))
            self.assertEqual(os.listdir(self.work), [], argv)
            seen += 1
        self.assertGreaterEqual(seen, len(KNOWN))

    def test_a_config_without_its_database_is_refused(self):
        write_default_config(self.data)
        for argv in (("user", "list"), ("user", "add", "alice", "--stdin")):
            code, out, err = self.run_cli(*argv)
            self.assertEqual(code, 1, (argv, out, err))
            self.assertIn(f"{self.data / 'registry.db'}: no such database", err)
            self.assertIn("first start", err)
            self.assertFalse((self.data / "registry.db").exists())

    def test_data_dir_without_config_names_the_file(self):
        self.data.mkdir()
        code, _, err = self.run_cli("user", "list")
        self.assertEqual(code, 1)
        self.assertIn(str(self.data / "config.toml"), err)
        self.assertEqual(os.listdir(self.data), [])

    def test_explicit_config_without_the_data_dir(self):
        first_start(self.data)
        cfg = str(self.data / "config.toml")
        missing = self.work / "missing"
        code, out, err = self.run_cli("--config", cfg, "check-config", data=missing)
        self.assertEqual(code, 0, err)
        # its relative database path is read inside the (missing) data dir: refused, not created
        code, out, err = self.run_cli("--config", cfg, "user", "list", data=missing)
        self.assertEqual(code, 1)
        self.assertIn(f"{missing / 'registry.db'}: no such database", err)
        self.assertFalse(missing.exists())

    def test_after_the_first_start_the_commands_work(self):
        first_start(self.data)
        code, out, err = self.run_cli("user", "list")
        self.assertEqual(code, 0, err)


class AllProblemsTests(unittest.TestCase):
    BAD = ('[server]\nport = 70000\nread_timeout = "slow"\n[cache]\nmax_size = "big"\n'
           '[access]\nanonymous = "some"\n')
    KEYS = ("server.port", "server.read_timeout", "cache.max_size", "access.anonymous")

    def test_parse_names_every_bad_key_on_one_line(self):
        with self.assertRaises(ConfigError) as e:
            parse_config(self.BAD, data_dir=Path("/srv/d"), config_path=Path("/srv/d/config.toml"))
        msg = str(e.exception)
        self.assertNotIn("\n", msg)
        self.assertTrue(msg.startswith("/srv/d/config.toml: 4 problems: "), msg)
        for key in self.KEYS:
            self.assertIn(key, msg)
        self.assertEqual(len(e.exception.problems), 4)
        for problem, key in zip(e.exception.problems, self.KEYS):
            self.assertTrue(problem.startswith(f"/srv/d/config.toml: {key}: "), problem)

    def test_one_problem_reads_as_before(self):
        with self.assertRaises(ConfigError) as e:
            parse_config("[server]\nport = 0\n", data_dir=Path("/srv/d"),
                         config_path=Path("/srv/d/config.toml"))
        self.assertEqual(str(e.exception), "/srv/d/config.toml: server.port: must be between 1 and "
                                           "65535, got 0")
        self.assertEqual(e.exception.problems, (str(e.exception),))

    def test_a_section_that_is_no_table_and_a_bad_key(self):
        with self.assertRaises(ConfigError) as e:
            parse_config('server = 5\n[log]\nlevel = "loud"\n', data_dir=Path("/srv/d"),
                         config_path=Path("/srv/d/config.toml"))
        self.assertEqual(len(e.exception.problems), 2)

    def test_check_config_lists_every_bad_key(self):
        work = Path(self.mktemp()).resolve()
        data = work / "data"
        write_default_config(data)
        text = DEFAULT_CONFIG.replace("port = 8080", "port = 70000").replace(
            'max_size = "50GB"', 'max_size = "big"').replace('anonymous = "whitelist"', 'anonymous = "x"')
        (data / "config.toml").write_text(text)
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(cli.main(["--data", str(data), "check-config"]), 1)
        lines = err.getvalue().strip().splitlines()
        self.assertEqual(len(lines), 3, err.getvalue())
        for line, key in zip(lines, ("server.port", "access.anonymous", "cache.max_size")):
            self.assertTrue(line.startswith(f"zmirror: error: {data / 'config.toml'}: {key}: "), line)
        self.assertEqual(out.getvalue(), "")

    def test_the_server_names_them_all_on_one_line(self):
        work = Path(self.mktemp()).resolve()
        data = work / "data"
        write_default_config(data)
        (data / "config.toml").write_text(self.BAD)
        proc = subprocess.run(
            [twistd_bin(), "-n", "--pidfile=", "zmirror", "--data", str(data), "--listen",
             f"tcp:{free_port()}:interface=127.0.0.1"],
            cwd=str(work), capture_output=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.assertNotEqual(proc.returncode, 0)
        err = proc.stderr.decode()
        self.assertNotIn("Traceback", err + proc.stdout.decode())
        lines = [ln for ln in err.splitlines() if ln.strip()]
        self.assertEqual(len(lines), 1, err)
        for key in self.KEYS:
            self.assertIn(key, lines[0])
