"""``zmirror registry``: the commands and their output, the same refusals and the
same masked secrets as ``/api/registries``, secrets read from stdin or files; and
CLI changes (registries, whitelist) reaching a running ``twistd -n zmirror``
within 2 s."""

from __future__ import annotations

import base64
import io
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from twisted.trial import unittest

from tests.fixtures.cli import CLIWithAPICase
from tests.fixtures.helpers import (
    admin_password_line,
    coro,
    free_port,
    start_twistd,
    stop,
    wait_port,
    write_default_config,
)
from tests.fixtures.tlsregistry import TestPKI
from zmirror import cli

_PKI: dict = {}


def pki(case: unittest.TestCase) -> TestPKI:
    """One test PKI for the module (making keys costs time)."""
    if "pki" not in _PKI:
        _PKI["pki"] = TestPKI(Path(case.mktemp()).resolve() / "pki")
    return _PKI["pki"]


class RegistryCommandTests(CLIWithAPICase):
    def setUp(self):
        super().setUp()
        self.files = Path(self.mktemp()).resolve()
        self.files.mkdir()

    def file(self, name: str, text: str) -> str:
        path = self.files / name
        path.write_text(text)
        return str(path)

    def stored(self, rid: int) -> dict:
        cols = ("name", "url", "namespace", "priority", "enabled", "username", "password", "proxy",
                "tls_verify", "ca", "client_cert", "client_key", "server_name")
        row = self.db.conn.execute(f"SELECT {', '.join(cols)} FROM registries WHERE id = ?", (rid,)).fetchone()
        return dict(zip(cols, row)) if row else None

    def test_add_list_show_set_enable_disable_remove(self):
        code, out, err = self.cli("registry", "add", "GHCR", "https://GHCR.io/", "--namespace", "ghcr.io",
                                  "--priority", "10", "--username", "bob", "--password-stdin",
                                  stdin="upstream-s3cret\n")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "registry 2 added: GHCR (https://ghcr.io, namespace ghcr.io, priority 10)\n")
        self.assertIn("within 2 s", err)  # a running server reads it without SIGHUP
        self.assertNotIn("token", err)  # that part of the note is the users'
        row = self.stored(2)
        self.assertEqual((row["url"], row["username"], row["password"], row["proxy"]),
                         ("https://ghcr.io", "bob", "upstream-s3cret", None))
        proxy = self.file("proxy", "http://corp:Pr0xy-pw@Proxy.Corp.example:3128\n")
        shown = json.loads(self.ok("registry", "set", "ghcr", "--proxy-file", proxy, "--json"))
        self.assertEqual(shown["proxy"], "http://corp:****@proxy.corp.example:3128")
        self.assertEqual(self.stored(2)["proxy"], "http://corp:Pr0xy-pw@proxy.corp.example:3128")
        out = self.ok("registry", "list")
        self.assertEqual(out.splitlines(), [
            "ID  NAME        NAMESPACE  PRIORITY  ENABLED  USERNAME  URL",
            " 1  Docker Hub  docker.io         1  yes      -         https://registry-1.docker.io",
            " 2  GHCR        ghcr.io          10  yes      bob       https://ghcr.io"])
        out = self.ok("registry", "show", "2")
        self.assertIn("password:    set\n", out)
        self.assertIn("proxy:       http://corp:****@proxy.corp.example:3128\n", out)
        self.assertEqual(self.ok("registry", "disable", "Docker hub"),
                         "registry 1 disabled: Docker Hub (https://registry-1.docker.io, namespace docker.io, "
                         "priority 1, disabled)\n")
        self.assertFalse(self.stored(1)["enabled"])
        self.assertEqual(self.ok("registry", "enable", "1"),
                         "registry 1 enabled: Docker Hub (https://registry-1.docker.io, namespace docker.io, "
                         "priority 1)\n")
        out = self.ok("registry", "update", "GHCR", "--priority", "0", "--proxy", "direct", "--clear-password",
                      "--name", "ghcr.io mirror", "--tls-verify", "no")
        self.assertEqual(out, "registry 2 updated: ghcr.io mirror (https://ghcr.io, namespace ghcr.io, priority 0)\n")
        row = self.stored(2)
        self.assertEqual((row["priority"], row["proxy"], row["password"], row["tls_verify"]), (0, "", "", False))
        self.ok("registry", "set", "2", "--proxy", "default")
        self.assertIsNone(self.stored(2)["proxy"])
        self.assertEqual(self.ok("registry", "remove", "ghcr.io MIRROR"), "registry 2 removed: ghcr.io mirror\n")
        self.assertIsNone(self.stored(2))
        self.assertEqual([r["id"] for r in json.loads(self.ok("registry", "list", "--json"))], [1])

    @coro
    async def test_json_is_what_the_api_answers_secrets_masked(self):
        p = pki(self)
        self.ok("registry", "add", "private", "https://registry.internal:5000", "--proxy-file", "-",
                "--ca-file", str(p.ca.cert_path), "--client-cert-file", str(p.client.cert_path),
                "--client-key-file", str(p.client.key_path), "--password-file",
                self.file("pw", "upstream-pw\n"), "--username", "u", "--server-name", "registry.test",
                stdin="socks5h://sock:S0cks-pw@127.0.0.1:1080\n")
        listed = json.loads(self.ok("registry", "list", "--json"))
        _c, _h, api = await self.call("GET", "/api/registries")
        for item in api["items"]:
            del item["health"], item["rate_limit"]  # the running server's, not the database's
        self.assertEqual(listed, api["items"])
        mine = listed[1]
        self.assertEqual((mine["proxy"], mine["has_password"], mine["has_client_key"]),
                         ("socks5h://sock:****@127.0.0.1:1080", True, True))
        self.assertNotIn("password", mine)
        self.assertNotIn("client_key", mine)
        for argv in (("registry", "list", "--json"), ("registry", "list"), ("registry", "show", "private"),
                     ("registry", "show", "private", "--json"), ("registry", "disable", "private", "--json")):
            _code, out, err = self.cli(*argv)
            for secret in ("S0cks-pw", "upstream-pw", "PRIVATE KEY"):
                self.assertNotIn(secret, out + err, argv)
        row = self.stored(2)
        self.assertEqual(row["client_key"].strip(), p.client.key_pem.strip())
        self.assertEqual(row["proxy"], "socks5h://sock:S0cks-pw@127.0.0.1:1080")
        # a masked proxy password sent back keeps the stored one, as in the API
        self.ok("registry", "set", "private", "--proxy", "socks5h://sock:****@127.0.0.1:1081")
        self.assertEqual(self.stored(2)["proxy"], "socks5h://sock:S0cks-pw@127.0.0.1:1081")
        self.ok("registry", "set", "private", "--clear-client-cert", "--clear-client-key", "--clear-ca")
        row = self.stored(2)
        self.assertEqual((row["ca"], row["client_cert"], row["client_key"]), ("", "", ""))

    @coro
    async def test_refuses_what_the_api_refuses_in_its_words(self):
        p = pki(self)
        garbage = self.file("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        key = str(p.client.key_path)
        encrypted = self.file("encrypted.key", p.encrypted_key())
        base = ("registry", "add", "x", "https://x.example")
        cases = [  # (the API's body, the CLI's argv)
            ({"name": "x", "url": "ftp://x.example"}, ("registry", "add", "x", "ftp://x.example")),
            ({"name": "x", "url": "https://u:p@x.example"}, ("registry", "add", "x", "https://u:p@x.example")),
            ({"name": "x", "url": "https://x.example/?q"}, ("registry", "add", "x", "https://x.example/?q")),
            ({"name": "", "url": "https://x.example"}, ("registry", "add", "", "https://x.example")),
            ({"name": "n" * 101, "url": "https://x.example"}, ("registry", "add", "n" * 101, "https://x.example")),
            ({"name": "docker HUB", "url": "https://x.example"},
             ("registry", "add", "docker HUB", "https://x.example")),
            ({"name": "x", "url": "https://x.example", "namespace": "foo"}, base + ("--namespace", "foo")),
            ({"name": "x", "url": "https://x.example", "priority": "ten"}, base + ("--priority", "ten")),
            ({"name": "x", "url": "https://x.example", "priority": -1}, base + ("--priority", "-1")),
            ({"name": "x", "url": "https://x.example", "priority": 1000001}, base + ("--priority", "1000001")),
            ({"name": "x", "url": "https://x.example", "tls_verify": "maybe"}, base + ("--tls-verify", "maybe")),
            ({"name": "x", "url": "https://x.example", "username": "a:b"}, base + ("--username", "a:b")),
            ({"name": "x", "url": "https://x.example", "proxy": "ftp://p.example:21"},
             base + ("--proxy", "ftp://p.example:21")),
            ({"name": "x", "url": "https://x.example", "proxy": "http://u:****@p.example:3128"},
             base + ("--proxy", "http://u:****@p.example:3128")),
            ({"name": "x", "url": "https://x.example", "server_name": "not a name!"},
             base + ("--server-name", "not a name!")),
            ({"name": "x", "url": "https://x.example", "ca": Path(garbage).read_text()},
             base + ("--ca-file", garbage)),
            ({"name": "x", "url": "https://x.example", "client_key": p.client.key_pem},
             base + ("--client-key-file", key)),
            ({"name": "x", "url": "https://x.example", "client_cert": p.client.cert_pem,
              "client_key": p.encrypted_key()},
             base + ("--client-cert-file", str(p.client.cert_path), "--client-key-file", encrypted)),
            ({"name": "", "url": "ftp://x", "priority": "x", "namespace": "a b"},
             ("registry", "add", "", "ftp://x", "--priority", "x", "--namespace", "a b")),
            # updates of the seeded Docker Hub row (id 1)
            ({"url": "https://"}, ("registry", "set", "1", "--url", "https://")),
            ({"name": "  "}, ("registry", "set", "1", "--name", "  ")),
            ({"client_cert": p.client.cert_pem}, ("registry", "set", "1", "--client-cert-file",
                                                  str(p.client.cert_path))),
            ({"proxy": "http://u:****@p.example:3128"}, ("registry", "set", "1", "--proxy",
                                                         "http://u:****@p.example:3128")),
        ]
        for body, argv in cases:
            if argv[1] == "add":
                code, _h, obj = await self.call("POST", "/api/registries", body)
            else:
                code, _h, obj = await self.call("PUT", "/api/registries/1", body)
            self.assertIn(code, (400, 409), (body, obj))
            self.assertEqual(self.refused(*argv), obj["error"], argv)
        self.assertEqual(len(self.db.conn.execute("SELECT id FROM registries").fetchall()), 1)

    def test_secrets_never_needed_on_the_command_line(self):
        self.assertEqual(self.refused("registry", "add", "x", "https://x.example", "--password-stdin", stdin="\n"),
                         "--password-stdin: no password on stdin")
        self.assertEqual(self.refused("registry", "set", "1", "--password-stdin", stdin=""),
                         "--password-stdin: no password on stdin (to remove the stored one: --clear-password)")
        empty = str(self.files / "empty")
        Path(empty).write_text("\n")
        self.assertEqual(self.refused("registry", "set", "1", "--client-key-file", empty),
                         f"--client-key-file: {empty} is empty (to remove the stored value: --clear-client-key)")
        self.assertEqual(self.refused("registry", "set", "1", "--password-stdin", "--proxy-file", "-",
                                      stdin="pw\nhttp://p:3128\n"),
                         "stdin is already read for --password-stdin: give --proxy-file in a file")
        missing = str(self.files / "missing.key")
        self.assertIn(f"{missing}: No such file or directory",
                      self.refused("registry", "set", "1", "--client-key-file", missing))
        with self.assertRaises(SystemExit) as e:  # argparse: no option takes the password itself
            self.cli("registry", "set", "1", "--password", "x")
        self.assertEqual(e.exception.code, 2)
        self.assertIn("--password", sys.stderr.getvalue())
        self.ok("registry", "set", "1", "--password-file", self.file("pw", "file-pw\r\n"))
        self.assertEqual(self.stored(1)["password"], "file-pw")
        self.ok("registry", "set", "1", "--password-stdin", stdin="stdin pw \n")
        self.assertEqual(self.stored(1)["password"], "stdin pw ")  # as the API keeps it: not stripped

    def test_registries_by_id_or_name(self):
        self.ok("registry", "add", "2", "https://two.example")  # id 2, named "2"
        self.ok("registry", "add", "three", "https://three.example")  # id 3
        self.assertEqual(json.loads(self.ok("registry", "show", "2", "--json"))["name"], "2")  # one row: no doubt
        self.assertEqual(json.loads(self.ok("registry", "show", "THREE", "--json"))["id"], 3)
        self.ok("registry", "add", "1", "https://one.example")  # named "1": id 1 is Docker Hub
        self.assertEqual(self.refused("registry", "disable", "1"),
                         "'1' is the id of registry 'Docker Hub' and the name of registry 4: "
                         "add --by id or --by name")
        self.assertIn("registry 4 disabled: 1 ", self.ok("registry", "disable", "1", "--by", "name"))
        self.assertIn("registry 1 disabled: Docker Hub ", self.ok("registry", "disable", "1", "--by", "id"))
        self.assertEqual(self.refused("registry", "remove", "nothing"), "no registry with id or name 'nothing'")
        self.assertEqual(self.refused("registry", "remove", "99", "--by", "id"), "no registry with id 99")
        self.assertEqual(self.refused("registry", "set", "three"),
                         "nothing to update: give at least one option (zmirror registry set --help)")


from tests.fixtures.pgserver import on_postgresql  # noqa: E402

RegistryCommandPostgresTests = on_postgresql(RegistryCommandTests)


ADMIN_PW = "Cli-admin-pw-9"
# the poll of a running SQLite server is 2 s (zmirror.dbwatch.DB_POLL_INTERVAL); the rest is slack
# for a loaded machine
WITHIN = 3.0


class RunningServerTests(unittest.TestCase):
    """``twistd -n zmirror`` in a process of its own; the CLI changes its database."""

    def setUp(self):
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        self.data = work / "data"
        write_default_config(self.data, {**admin_password_line(ADMIN_PW), 'access = "admin"': 'access = "open"'})
        self.port = free_port()
        proc = start_twistd(work, "zmirror", "--data", str(self.data), "--listen",
                            f"tcp:{self.port}:interface=127.0.0.1")
        self.addCleanup(stop, proc)
        wait_port(self.port, timeout=60, proc=proc)

    def get(self, path: str, *, auth: bool = False) -> str:
        headers = {}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(f"admin:{ADMIN_PW}".encode()).decode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read().decode()

    def cli(self, *argv: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", io.StringIO(""))
        self.assertEqual(cli.main(["--data", str(self.data), *argv]), 0, err.getvalue())

    def seen_within(self, predicate, what: str) -> float:
        start = time.monotonic()
        while not predicate():
            self.assertLess(time.monotonic() - start, WITHIN, f"{what}: not seen by the running server")
            time.sleep(0.05)
        return time.monotonic() - start

    def test_changes_reach_the_running_server(self):
        def upstream_in_pool() -> bool:
            return 'zmirror_upstream_up{upstream="cli-probe"}' in self.get("/metrics")

        def whitelisted() -> bool:
            answer = json.loads(self.get("/api/whitelists/match?repository=team/app", auth=True))
            return answer["matched"] is not None

        self.assertFalse(upstream_in_pool())
        self.assertFalse(whitelisted())
        times = []
        self.cli("registry", "add", "cli-probe", "http://127.0.0.1:9", "--namespace", "probe.test:5000")
        times.append(self.seen_within(upstream_in_pool, "registry add"))
        self.cli("registry", "disable", "cli-probe")
        times.append(self.seen_within(lambda: not upstream_in_pool(), "registry disable"))
        self.cli("whitelist", "add", "team/*")
        times.append(self.seen_within(whitelisted, "whitelist add"))
        self.cli("whitelist", "disable", "team/*")
        times.append(self.seen_within(lambda: not whitelisted(), "whitelist disable"))
        self.cli("registry", "enable", "cli-probe")
        times.append(self.seen_within(upstream_in_pool, "registry enable"))
        self.cli("registry", "remove", "cli-probe")
        times.append(self.seen_within(lambda: not upstream_in_pool(), "registry remove"))
        self.assertLess(max(times), WITHIN, times)
