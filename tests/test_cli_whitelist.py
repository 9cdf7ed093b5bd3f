"""``zmirror whitelist``: the commands, their output, and the same refusals as
``/api/whitelists`` (the CLI and the admin API side by side on one database)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from twisted.trial import unittest

from tests.fixtures.cli import CLIWithAPICase
from tests.fixtures.helpers import coro
from zmirror.config import load_config


class WhitelistCommandTests(CLIWithAPICase):
    def test_add_list_show_set_enable_disable_remove(self):
        self.assertEqual(self.ok("whitelist", "list"), "no whitelist entries / 白名单为空\n")
        self.assertEqual(json.loads(self.ok("whitelist", "list", "--json")), [])
        code, out, err = self.cli("whitelist", "add", "library/nginx", "--note", "web")
        self.assertEqual((code, out), (0, "whitelist entry 1 added: library/nginx\n"), err)
        self.assertIn("within 2 s", err)  # a running server reads it without SIGHUP
        self.assertNotIn("token", err)  # that part of the note is the users'
        added = json.loads(self.ok("whitelist", "add", "docker.io/team/*", "--disabled", "--json"))
        self.assertEqual((added["id"], added["prefix"], added["enabled"], added["note"]),
                         (2, "team/*", False, ""))
        out = self.ok("whitelist", "list")
        self.assertEqual(out.splitlines(), ["ID  PREFIX         ENABLED  NOTE",
                                            " 1  library/nginx  yes      web",
                                            " 2  team/*         no"])
        self.assertIn("prefix:  team/*", self.ok("whitelist", "show", "2"))
        self.assertEqual(self.ok("whitelist", "enable", "team/*"), "whitelist entry 2 enabled: team/*\n")
        self.assertEqual(self.ok("whitelist", "disable", "docker.io/library/nginx"),
                         "whitelist entry 1 disabled: library/nginx (disabled)\n")
        out = self.ok("whitelist", "set", "1", "--prefix", "library/redis", "--note", "")
        self.assertEqual(out, "whitelist entry 1 updated: library/redis (disabled)\n")
        self.assertEqual(json.loads(self.ok("whitelist", "update", "1", "--note", "cache", "--json"))["note"],
                         "cache")
        rows = {r["id"]: r for r in self.whitelists_rows()}
        self.assertEqual((rows[1]["prefix"], rows[1]["enabled"], rows[1]["note"]), ("library/redis", 0, "cache"))
        self.assertEqual(rows[2]["enabled"], 1)
        self.assertEqual(self.ok("whitelist", "remove", "library/redis"),
                         "whitelist entry 1 removed: library/redis\n")
        self.assertEqual([r["id"] for r in self.whitelists_rows()], [2])

    def whitelists_rows(self):
        cur = self.db.conn.execute("SELECT id, prefix, enabled, note FROM whitelists ORDER BY id")
        return [dict(zip(("id", "prefix", "enabled", "note"), r)) for r in cur.fetchall()]

    @coro
    async def test_json_is_what_the_api_answers(self):
        self.ok("whitelist", "add", "ghcr.io/owner", "--note", "ours")
        listed = json.loads(self.ok("whitelist", "list", "--json"))
        _c, _h, api = await self.call("GET", "/api/whitelists")
        self.assertEqual(listed, api["items"])
        shown = json.loads(self.ok("whitelist", "show", "ghcr.io/owner", "--json"))
        _c, _h, one = await self.call("GET", f"/api/whitelists/{shown['id']}")
        self.assertEqual(shown, one)
        removed = json.loads(self.ok("whitelist", "remove", "1", "--json"))
        self.assertEqual(removed, one)

    @coro
    async def test_refuses_what_the_api_refuses_in_its_words(self):
        await self.call("POST", "/api/whitelists", {"prefix": "library/nginx"})
        await self.call("POST", "/api/whitelists", {"prefix": "library/redis"})
        want = await self.api_error("POST", "/api/whitelists", {"prefix": "docker.io/library/nginx"})
        self.assertEqual(want, "prefix already exists")
        self.assertEqual(self.refused("whitelist", "add", "docker.io/library/nginx"), want)
        for prefix in ("", "  ", "Library/Nginx", "a/*b", "*", "/x", "x" * 300, "a//b"):
            want = await self.api_error("POST", "/api/whitelists", {"prefix": prefix})
            self.assertEqual(self.refused("whitelist", "add", prefix), want, prefix)
            want = await self.api_error("PUT", "/api/whitelists/1", {"prefix": prefix})
            self.assertEqual(self.refused("whitelist", "set", "1", "--prefix", prefix), want, prefix)
        want = await self.api_error("POST", "/api/whitelists", {"prefix": "x", "note": "n" * 1001})
        self.assertEqual(self.refused("whitelist", "add", "x", "--note", "n" * 1001), want)
        want = await self.api_error("PUT", "/api/whitelists/1", {"prefix": "library/redis"})
        self.assertEqual(self.refused("whitelist", "set", "1", "--prefix", "library/redis"), want)

    def test_entries_by_id_or_prefix(self):
        self.ok("whitelist", "add", "one")
        self.ok("whitelist", "add", "1")  # a prefix that reads as a number: entry 2
        self.assertIn("is the id of whitelist entry 'one' and the prefix of whitelist entry 2",
                      self.refused("whitelist", "disable", "1"))
        self.assertEqual(self.ok("whitelist", "disable", "1", "--by", "prefix"),
                         "whitelist entry 2 disabled: 1 (disabled)\n")
        self.assertEqual(self.ok("whitelist", "disable", "1", "--by", "id"),
                         "whitelist entry 1 disabled: one (disabled)\n")
        self.assertEqual(self.ok("whitelist", "enable", "2"), "whitelist entry 2 enabled: 1\n")
        self.assertEqual(self.refused("whitelist", "remove", "nothing"),
                         "no whitelist entry with id or prefix 'nothing'")
        self.assertEqual(self.refused("whitelist", "remove", "7", "--by", "id"), "no whitelist entry with id 7")
        self.assertEqual(self.refused("whitelist", "set", "one"), "nothing to update: give --prefix and/or --note")

    def test_a_missing_data_directory_is_refused_and_not_created(self):
        if "create" not in inspect.signature(load_config).parameters:
            raise unittest.SkipTest("the CLI still creates a missing data directory (zmirror.cli.common)")
        missing = Path(self.mktemp()).resolve() / "nowhere"
        for argv in (("whitelist", "list"), ("whitelist", "add", "library/nginx"),
                     ("registry", "list"), ("registry", "disable", "1")):
            code, out, err = self.cli(*argv, data=missing)
            self.assertEqual(code, 1, (argv, out, err))
            self.assertIn(str(missing), err)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertFalse(missing.exists())


from tests.fixtures.pgserver import on_postgresql  # noqa: E402

WhitelistCommandPostgresTests = on_postgresql(WhitelistCommandTests)
