"""``zmirror user add --scope``, ``zmirror user edit --scope|--all-scopes`` and the scopes in
``zmirror user list``, on the database the admin API reads."""

from __future__ import annotations

import json

from tests.fixtures.cli import CLIWithAPICase
from tests.fixtures.helpers import coro

PW = "cli-password-1\n"


class UserScopeCommandTests(CLIWithAPICase):
    async def api_user(self, name: str) -> dict:
        code, _h, obj = await self.call("GET", "/api/users")
        self.assertEqual(code, 200, obj)
        return next(u for u in obj["items"] if u["username"] == name)

    @coro
    async def test_add_edit_list(self):
        out = self.ok("user", "add", "sam", "--stdin", "--scope", "docker.io/library/*",
                      "--scope", "GHCR.io/myorg/**", stdin=PW)
        self.assertIn("scopes: library/*, ghcr.io/myorg/**", out)
        self.assertEqual((await self.api_user("sam"))["scopes"], ["library/*", "ghcr.io/myorg/**"])
        self.ok("user", "add", "una", "--stdin", stdin=PW)
        self.assertEqual((await self.api_user("una"))["scopes"], [])
        listed = json.loads(self.ok("user", "list", "--json"))
        self.assertEqual({u["username"]: u["scopes"] for u in listed},
                         {"sam": ["library/*", "ghcr.io/myorg/**"], "una": []})
        table = self.ok("user", "list")
        self.assertIn("SCOPES", table.splitlines()[0])
        sam_line = next(line for line in table.splitlines() if " sam " in line)
        self.assertTrue(sam_line.rstrip().endswith("library/* ghcr.io/myorg/**"), sam_line)
        una_line = next(line for line in table.splitlines() if " una " in line)
        self.assertTrue(una_line.rstrip().endswith("all"), una_line)

        out = self.ok("user", "edit", "sam", "--scope", "quay.io/team/*")
        self.assertIn("quay.io/team/*", out)
        self.assertEqual((await self.api_user("sam"))["scopes"], ["quay.io/team/*"])
        self.ok("user", "edit", "SAM", "--all-scopes")  # names are found in any case
        self.assertEqual((await self.api_user("sam"))["scopes"], [])

    @coro
    async def test_refusals_change_nothing(self):
        self.ok("user", "add", "sam", "--stdin", "--scope", "library/*", stdin=PW)
        for argv, words in (
            (("user", "edit", "sam"), "nothing to change"),
            (("user", "edit", "sam", "--scope", "Upper/x"),
             "scopes: 'Upper/x': repository names are lower case"),
            (("user", "edit", "sam", "--scope", "a/**b"), "'**'"),
            (("user", "edit", "sam", "--scope", ""), "must not be empty"),
            (("user", "edit", "nobody", "--scope", "a/b"), "no user named"),
            (("user", "add", "eve", "--stdin", "--scope", "x" * 500), "at most"),
        ):
            self.assertIn(words, self.refused(*argv, stdin=PW), argv)
        too_many = [a for i in range(101) for a in ("--scope", f"r/x{i}")]
        self.assertIn("at most 100", self.refused("user", "edit", "sam", *too_many))
        # both at once: argparse refuses (exit 2), nothing changed
        with self.assertRaises(SystemExit) as cm:
            self.cli("user", "edit", "sam", "--scope", "a/b", "--all-scopes")
        self.assertEqual(cm.exception.code, 2)
        self.assertEqual((await self.api_user("sam"))["scopes"], ["library/*"])
