"""``zmirror policy``: the commands, their output, and the admin API's refusals (the CLI and
the admin API side by side on one database)."""

from __future__ import annotations

import json

from tests.fixtures.cli import CLIWithAPICase
from tests.fixtures.helpers import coro
from zmirror.auth.imagepolicy import ImagePolicy
from zmirror.db.policyrules import PolicyRuleStore


class PolicyCommandTests(CLIWithAPICase):
    def setUp(self):
        super().setUp()
        self.access.policy.image_policy = ImagePolicy(PolicyRuleStore(self.db, self.clock))

    @coro
    async def test_add_list_enable_disable_remove(self):
        self.assertIn("no policy rules", self.ok("policy", "list"))
        code, out, err = self.cli("policy", "add", "deny", "docker.io/nginx:latest", "--note", "pin")
        self.assertEqual((code, out), (0, "policy rule 1 added: deny library/nginx:latest\n"), err)
        self.assertIn("within 2 s", err)
        added = json.loads(self.ok("policy", "add", "allow", "library/*", "--position", "5",
                                   "--disabled", "--json"))
        self.assertEqual((added["id"], added["pattern"], added["enabled"], added["position"]),
                         (2, "library/*", False, 5))
        self.assertEqual(self.ok("policy", "list").splitlines(),
                         ["ID  POS  ACTION  PATTERN               ENABLED  NOTE",
                          " 2  5    allow   library/*             no",
                          " 1  10   deny    library/nginx:latest  yes      pin"])
        code, _h, api = await self.call("GET", "/api/policy/rules")
        self.assertEqual(code, 200, api)
        self.assertEqual(json.loads(self.ok("policy", "list", "--json")), api["items"])
        self.assertEqual(self.ok("policy", "enable", "2"), "policy rule 2 enabled: allow library/*\n")
        self.assertEqual(self.ok("policy", "disable", "1"),
                         "policy rule 1 disabled: deny library/nginx:latest (disabled)\n")
        self.assertEqual(self.ok("policy", "remove", "1"),
                         "policy rule 1 removed: deny library/nginx:latest\n")
        self.assertEqual([r["id"] for r in json.loads(self.ok("policy", "list", "--json"))], [2])

    def test_refusals(self):
        self.assertIn("lower case", self.refused("policy", "add", "deny", "A/B"))
        self.assertIn("already exists", (self.ok("policy", "add", "deny", "x") and
                                         self.refused("policy", "add", "deny", "library/x")))
        self.assertIn("no policy rule 9", self.refused("policy", "remove", "9"))
        self.assertIn("positive integers", self.refused("policy", "enable", "x"))
        self.assertIn("no policy rule 9", self.refused("policy", "disable", "9"))
