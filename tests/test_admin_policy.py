"""/api/policy: the rules (CRUD, normalized, hostile input → 400 with field errors and
nothing written) and the test of a reference (policy, anonymous, a user's scopes)."""

from __future__ import annotations

from twisted.trial import unittest

from tests.fixtures.admin import AdminTestMixin
from tests.fixtures.helpers import coro
from zmirror.auth.imagepolicy import ImagePolicy
from zmirror.db.policyrules import PolicyRuleStore

D1 = "sha256:" + "a" * 64


class PolicyRouteTests(AdminTestMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.image_policy = ImagePolicy(PolicyRuleStore(self.db, self.clock))
        self.access.policy.image_policy = self.image_policy

    async def rule(self, **body):
        code, _h, obj = await self.call("POST", "/api/policy/rules", body)
        self.assertEqual(code, 201, obj)
        return obj

    async def ask(self, reference, **extra):
        code, _h, obj = await self.call("POST", "/api/policy/test", {"reference": reference, **extra})
        self.assertEqual(code, 200, obj)
        return obj

    @coro
    async def test_crud(self):
        r = await self.rule(action="deny", pattern="docker.io/nginx:latest", note="pin versions")
        self.assertEqual((r["action"], r["pattern"], r["enabled"], r["note"], r["position"]),
                         ("deny", "library/nginx:latest", True, "pin versions", 10))
        a = await self.rule(action="allow", pattern="library/*", position=5)
        code, _h, obj = await self.call("GET", "/api/policy/rules")
        self.assertEqual([x["id"] for x in obj["items"]], [a["id"], r["id"]])
        code, _h, obj = await self.call("GET", f"/api/policy/rules/{r['id']}")
        self.assertEqual(obj, r)
        code, _h, obj = await self.call("PUT", f"/api/policy/rules/{r['id']}", {"enabled": False})
        self.assertEqual((code, obj["enabled"]), (200, False))
        code, _h, obj = await self.call("POST", "/api/policy/rules",
                                        {"action": "allow", "pattern": "nginx"})
        self.assertEqual(code, 201)
        code, _h, obj = await self.call("POST", "/api/policy/rules",
                                        {"action": "allow", "pattern": "library/nginx"})
        self.assertEqual((code, obj["fields"]), (409, {"pattern": "already exists"}))
        code, _h, _ = await self.call("DELETE", f"/api/policy/rules/{r['id']}")
        self.assertEqual(code, 204)
        code, _h, _ = await self.call("GET", f"/api/policy/rules/{r['id']}")
        self.assertEqual(code, 404)
        code, _h, _ = await self.call("GET", "/api/policy/rules", auth=False)
        self.assertEqual(code, 401)

    @coro
    async def test_hostile_input(self):
        await self.rule(action="deny", pattern="library/busybox")
        before = self.db.snapshot()
        for body, fields in (
            ({"action": "maybe", "pattern": "a"}, ("action",)),
            ({"action": "deny"}, ("pattern",)),
            ({"action": "deny", "pattern": "A/B"}, ("pattern",)),
            ({"action": "deny", "pattern": ["x"]}, ("pattern",)),
            ({"action": "deny", "pattern": "x" * 5000}, ("pattern",)),
            ({"action": "deny", "pattern": "a@sha256:zz"}, ("pattern",)),
            ({"action": "deny", "pattern": "<script>"}, ("pattern",)),
            ({"action": "deny", "pattern": "a", "position": "1"}, ("position",)),
            ({"action": "deny", "pattern": "a", "enabled": 1}, ("enabled",)),
            ({"action": "deny", "pattern": "a", "bogus": 1}, ("bogus",)),
            ({"action": 1, "pattern": None, "note": 5}, ("action", "pattern", "note")),
        ):
            obj = self.assertError(await self.call("POST", "/api/policy/rules", body), 400, *fields)
            for f in fields:
                self.assertLess(len(obj["fields"][f]), 300)
        code, _h, obj = await self.call("POST", "/api/policy/rules", raw=b"{nope")
        self.assertEqual(code, 400)
        self.assertError(await self.call("PUT", "/api/policy/rules/1", {"pattern": "**/x**"}),
                         400, "pattern")
        self.assertError(await self.call("PUT", "/api/policy/rules/1", {}), 400)
        code, _h, _ = await self.call("PUT", "/api/policy/rules/x", {"note": "a"})
        self.assertIn(code, (400, 404))
        for body, fields in (({}, ("reference",)), ({"reference": 3}, ("reference",)),
                             ({"reference": "A:B"}, ("reference",)),
                             ({"reference": "nginx:1.*"}, ("reference",)),
                             ({"reference": "nginx", "user": ""}, ("user",)),
                             ({"reference": "nginx", "user": "x" * 100}, ("user",)),
                             ({"reference": "nginx", "user": "nobody"}, ("user",))):
            self.assertError(await self.call("POST", "/api/policy/test", body), 400, *fields)
        self.assertEqual(self.db.snapshot(), before)

    @coro
    async def test_reference_answers(self):
        deny = await self.rule(action="deny", pattern="*:latest")
        await self.rule(action="allow", pattern="library/*")
        pin = await self.rule(action="deny", pattern=f"library/redis@{D1}")
        await self.whitelists.create("library/nginx")
        obj = await self.ask("nginx")  # tag latest
        self.assertEqual((obj["reference"], obj["allowed"], obj["rule"]["id"], obj["anonymous"],
                          obj["user"]), ("library/nginx:latest", False, deny["id"], True, None))
        obj = await self.ask("nginx:1.25")
        self.assertEqual((obj["allowed"], obj["rule"]["pattern"], obj["reason"]),
                         (True, "library/*", "allow_rule"))
        obj = await self.ask(f"redis@{D1}")
        self.assertEqual((obj["allowed"], obj["rule"]["id"], obj["anonymous"]),
                         (False, pin["id"], False))
        obj = await self.ask("bitnami/redis:7")
        self.assertEqual((obj["allowed"], obj["rule"], obj["reason"]),
                         (False, None, "no_allow_rule"))
        obj = await self.ask("ghcr.io/team/app:1")
        self.assertEqual((obj["allowed"], obj["reason"]), (True, "no_rules"))
        code, _h, _ = await self.call("POST", "/api/users", {"username": "sam", "password": "sam-password",
                                                             "scopes": ["ghcr.io/team/**"]})
        self.assertEqual(code, 201)
        obj = await self.ask("ghcr.io/team/app:1", user="sam")
        self.assertEqual(obj["user"], {"username": "sam", "enabled": True,
                                       "scopes": ["ghcr.io/team/**"], "in_scope": True,
                                       "may_pull": True})
        obj = await self.ask("bitnami/redis:7", user="sam")
        self.assertEqual((obj["user"]["in_scope"], obj["user"]["may_pull"]), (False, False))
        obj = await self.ask("nginx:1", user="sam")  # the whitelist lets everyone
        self.assertEqual((obj["user"]["in_scope"], obj["user"]["may_pull"]), (False, True))
        self.assertNotIn("password", str(obj))
