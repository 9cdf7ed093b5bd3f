"""The registry's checks: RegistryRoutes + AccessPolicy with a fake proxy core."""

import json
from urllib.parse import urlencode

from twisted.trial import unittest

from tests.fixtures.auth import basic, make_env, www
from tests.fixtures.helpers import coro
from zmirror.auth.credentials import ADMIN_LOGIN_MESSAGE

M = "http://mirror/v2/{}/manifests/latest"
PING = "http://mirror/v2/"


class PolicyTests(unittest.TestCase):
    @coro
    async def setUp(self):
        self.env = make_env(self, lockout_kw={"max_account": 3, "max_ip": 50})
        await self.env.whitelists.create("helloz")
        await self.env.whitelists.create("nginx")
        self.alice = await self.env.accounts.create("alice", "alice-pw1")

    async def token(self, scopes=(), user=None, password=None):
        headers = {b"Authorization": [basic(user, password)]} if user else None
        resp, body = await self.env.json(
            "GET", "http://mirror/token?" + urlencode({"scope": list(scopes)}, doseq=True),
            headers=headers)
        assert resp.code == 200, body
        return body["token"]

    async def pull(self, name, *, auth=None, method="GET", url=None):
        headers = {b"Authorization": [auth]} if auth else None
        return await self.env.call(method, url or M.format(name), headers=headers)

    def bearer(self, token):
        return b"Bearer " + token.encode()

    # --- /v2/ ------------------------------------------------------------------

    @coro
    async def test_ping_challenge(self):
        resp, body = await self.env.call("GET", PING)
        self.assertEqual(resp.code, 401)
        self.assertEqual(www(resp), 'Bearer realm="http://mirror/token",service="zmirror"')
        self.assertEqual(json.loads(body)["errors"][0]["code"], "UNAUTHORIZED")
        resp, _ = await self.env.call("HEAD", "http://mirror/v2")
        self.assertEqual(resp.code, 401)
        self.assertIn("Bearer realm=", www(resp))

    @coro
    async def test_ping_credentials(self):
        ok = [basic("alice", "alice-pw1"), self.bearer(await self.token()),
              self.bearer(await self.token(user="alice", password="alice-pw1"))]
        for auth in ok:
            resp, body = await self.env.call("GET", PING, headers={b"Authorization": [auth]})
            self.assertEqual(resp.code, 200, auth)
        for auth, err in ((basic("alice", "nope"), None), (basic("admin", "admin123"), None),
                          (b"Bearer garbage", "invalid_token"), (b"Basic %%%", None)):
            resp, body = await self.env.call("GET", PING, headers={b"Authorization": [auth]})
            self.assertEqual(resp.code, 401, auth)
            self.assertIn('realm="http://mirror/token"', www(resp))
            if err:
                self.assertIn(f'error="{err}"', www(resp))

    # --- anonymous ---------------------------------------------------------------

    @coro
    async def test_anonymous_whitelisted(self):
        for raw, fetched in (("helloz/demo", "helloz/demo"), ("nginx", "library/nginx"),
                             ("library/nginx", "library/nginx"), ("helloz/a/b", "helloz/a/b")):
            resp, body = await self.pull(raw)
            self.assertEqual(resp.code, 200, raw)
            self.assertEqual(json.loads(body), {"fetched": fetched, "user": None})
            self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"public, max-age=60"])
        self.assertFalse(self.env.proxy.pulls[-1].identity.private)

    @coro
    async def test_anonymous_private_is_challenged_with_scope(self):
        for method in ("GET", "HEAD"):
            for url, name in ((M.format("hellozz/x"), "hellozz/x"),
                              ("http://mirror/v2/secret/x/blobs/sha256:" + "a" * 64, "secret/x"),
                              ("http://mirror/v2/alpine/tags/list", "library/alpine")):
                resp, body = await self.env.call(method, url)
                self.assertEqual(resp.code, 401, (method, url))
                self.assertEqual(
                    www(resp),
                    f'Bearer realm="http://mirror/token",service="zmirror",'
                    f'scope="repository:{name}:pull"')
                if method == "GET":
                    self.assertEqual(json.loads(body)["errors"][0]["code"], "UNAUTHORIZED")
        self.assertEqual(self.env.proxy.pulls, [])

    @coro
    async def test_name_tricks_never_reach_the_proxy(self):
        for path in ("helloz/../secret/x", "helloz/%2e%2e/secret", "helloz%2fsecret",
                     "helloz/./x", "HELLOZ/x", "helloz//x", "%68elloz/x", "helloz/x%00"):
            resp, body = await self.env.call("GET", M.format(path))
            self.assertIn(resp.code, (400, 404), path)
            self.assertEqual(self.env.proxy.pulls, [], path)

    # --- tokens -----------------------------------------------------------------

    @coro
    async def test_anonymous_token(self):
        tok = await self.token(["repository:helloz/demo:pull", "repository:secret/x:pull"])
        resp, _ = await self.pull("helloz/demo", auth=self.bearer(tok))
        self.assertEqual(resp.code, 200)
        resp, _ = await self.pull("secret/x", auth=self.bearer(tok))
        self.assertEqual(resp.code, 401)
        self.assertIn('error="insufficient_scope"', www(resp))
        self.assertIn('scope="repository:secret/x:pull"', www(resp))
        # a scope granted while whitelisted stops working when the entry goes
        entry = self.env.whitelist.match("helloz/demo")
        await self.env.whitelists.update(entry.id, enabled=False)
        resp, _ = await self.pull("helloz/demo", auth=self.bearer(tok))
        self.assertEqual(resp.code, 401)

    @coro
    async def test_user_token_private_pull(self):
        tok = await self.token(["repository:secret/x:pull", "repository:helloz/demo:pull"],
                               user="alice", password="alice-pw1")
        resp, body = await self.pull("secret/x", auth=self.bearer(tok))
        self.assertEqual(resp.code, 200, body)
        self.assertEqual(json.loads(body), {"fetched": "secret/x", "user": "alice"})
        self.assertTrue(self.env.proxy.pulls[-1].identity.private)
        self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"private"])
        # whitelisted content pulled by a user keeps the public headers
        resp, _ = await self.pull("helloz/demo", auth=self.bearer(tok))
        self.assertFalse(self.env.proxy.pulls[-1].identity.private)
        # another repository: not in the token
        resp, _ = await self.pull("secret/y", auth=self.bearer(tok))
        self.assertEqual(resp.code, 401)
        self.assertIn('error="insufficient_scope"', www(resp))
        # expiry
        self.env.clock.advance(301 + self.env.tokens.leeway)
        resp, _ = await self.pull("secret/x", auth=self.bearer(tok))
        self.assertEqual(resp.code, 401)
        self.assertIn('error="invalid_token"', www(resp))

    @coro
    async def test_user_token_dies_with_user_changes(self):
        for change in ({"enabled": False}, {"password": "other-pw-1"}, "delete"):
            user = await self.env.accounts.create("bob", "bob-pw-12")
            tok = await self.token(["repository:secret/x:pull"], user="bob", password="bob-pw-12")
            resp, _ = await self.pull("secret/x", auth=self.bearer(tok))
            self.assertEqual(resp.code, 200)
            self.env.clock.advance(1)
            if change == "delete":
                await self.env.users.delete(user["id"])
            else:
                await self.env.accounts.update(user["id"], **change)
            resp, _ = await self.pull("secret/x", auth=self.bearer(tok))
            self.assertEqual(resp.code, 401, change)
            existing = await self.env.users.get_by_username("bob")
            if existing:
                await self.env.users.delete(existing["id"])

    @coro
    async def test_foreign_token_refused(self):
        from zmirror.auth.tokens import TokenIssuer

        other = TokenIssuer(b"x" * 32, self.env.clock, service="zmirror")
        tok, _ = other.issue_access(subject="alice", access=[
            {"type": "repository", "name": "secret/x", "actions": ["pull"]}])
        resp, _ = await self.pull("secret/x", auth=self.bearer(tok))
        self.assertEqual(resp.code, 401)
        self.assertEqual(self.env.proxy.pulls, [])

    # --- Basic -------------------------------------------------------------------

    @coro
    async def test_basic_credentials(self):
        resp, body = await self.pull("secret/x", auth=basic("alice", "alice-pw1"))
        self.assertEqual(resp.code, 200)
        self.assertEqual(json.loads(body)["user"], "alice")
        self.assertTrue(self.env.proxy.pulls[-1].identity.private)
        for auth in (basic("alice", "bad"), basic("admin", "admin123"), b"Basic ???"):
            # bad credentials are refused even for whitelisted content
            for name in ("secret/x", "helloz/demo"):
                resp, body = await self.pull(name, auth=auth)
                self.assertEqual(resp.code, 401, (auth, name))
            self.env.lockout._failures.clear()
            self.env.lockout._locked.clear()

    @coro
    async def test_basic_lockout_429(self):
        for _ in range(3):
            resp, _ = await self.pull("secret/x", auth=basic("alice", "bad"))
            self.assertEqual(resp.code, 401)
        resp, body = await self.pull("secret/x", auth=basic("alice", "alice-pw1"))
        self.assertEqual(resp.code, 429)
        self.assertEqual(resp.headers.getRawHeaders(b"retry-after"), [b"300"])
        self.assertEqual(json.loads(body)["errors"][0]["code"], "TOOMANYREQUESTS")

    @coro
    async def test_basic_as_the_admin_says_so_and_is_not_counted(self):
        answers = set()
        for i in range(10):  # beyond the account's threshold (3)
            for pw in ("admin123", f"wrong{i}"):
                for url in (M.format("secret/x"), M.format("helloz/demo"), PING):
                    resp, body = await self.pull(None, auth=basic("admin", pw), url=url)
                    err = json.loads(body)["errors"][0]
                    answers.add((resp.code, err["code"], err["message"]))
        self.assertEqual(answers, {(401, "UNAUTHORIZED", ADMIN_LOGIN_MESSAGE)})
        self.assertEqual(self.env.lockout.failures(ip="127.0.0.1"), 0)
        resp, _ = await self.pull("secret/x", auth=basic("alice", "alice-pw1"))
        self.assertEqual(resp.code, 200)

    @coro
    async def test_unknown_scheme_is_anonymous(self):
        resp, _ = await self.pull("helloz/demo", auth=b"Negotiate abc")
        self.assertEqual(resp.code, 200)
        resp, _ = await self.pull("secret/x", auth=b"Negotiate abc")
        self.assertEqual(resp.code, 401)

    # --- access log ------------------------------------------------------------

    @coro
    async def test_denied_and_user_logged(self):
        await self.pull("secret/x")
        await self.pull("secret/x", auth=basic("alice", "alice-pw1"))
        recs = [r for r in self.env.log.records if r.kind != "token"]
        self.assertEqual([(r.kind, r.status, r.username) for r in recs],
                         [("denied", 401, ""), ("manifest", 200, "alice")])

    @coro
    async def test_refused_basic_logins_log_the_attempted_name(self):
        await self.pull("secret/x", auth=basic("mallory", "bad"))
        await self.pull("secret/x", auth=basic("admin", "whatever"))
        await self.pull("secret/x", auth=basic("ev\til" + "y" * 100, "bad"))
        for _ in range(3):
            await self.pull("secret/x", auth=basic("alice", "bad"))
        await self.pull("secret/x", auth=basic("alice", "alice-pw1"))  # locked: 429
        recs = [(r.kind, r.status, r.username) for r in self.env.log.records if r.kind != "token"]
        self.assertEqual(recs[:2], [("denied", 401, "mallory"), ("denied", 401, "admin")])
        self.assertEqual(recs[2][2], "ev?il" + "y" * 59)
        self.assertEqual([(s, u) for _k, s, u in recs[3:]],
                         [(401, "alice")] * 3 + [(429, "alice")])

    # --- a whole docker-login-like flow ----------------------------------------

    @coro
    async def test_docker_flow_with_refresh_token(self):
        resp, _ = await self.env.call("GET", PING)
        self.assertEqual(resp.code, 401)
        resp, body = await self.env.json(
            "GET", "http://mirror/token?account=alice&client_id=docker&offline_token=true&service=zmirror",
            headers={b"Authorization": [basic("alice", "alice-pw1")]})
        refresh = body["refresh_token"]
        resp, _ = await self.pull("secret/x")
        self.assertIn('scope="repository:secret/x:pull"', www(resp))
        resp, body = await self.env.json(
            "POST", "http://mirror/token",
            headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
            data=urlencode({"grant_type": "refresh_token", "refresh_token": refresh,
                            "client_id": "docker", "service": "zmirror",
                            "scope": "repository:secret/x:pull"}).encode())
        self.assertEqual(resp.code, 200, body)
        resp, _ = await self.pull("secret/x", auth=self.bearer(body["access_token"]))
        self.assertEqual(resp.code, 200)


class AllModeTests(unittest.TestCase):
    @coro
    async def setUp(self):
        self.env = make_env(self, mode="all")
        await self.env.accounts.create("alice", "alice-pw1")

    token = PolicyTests.token
    pull = PolicyTests.pull
    bearer = PolicyTests.bearer

    @coro
    async def test_everything_public(self):
        resp, body = await self.pull("secret/x")
        self.assertEqual(resp.code, 200)
        self.assertFalse(self.env.proxy.pulls[-1].identity.private)
        resp, body = await self.pull("secret/x", auth=basic("alice", "alice-pw1"))
        self.assertEqual(json.loads(body)["user"], "alice")
        self.assertFalse(self.env.proxy.pulls[-1].identity.private)
        tok = await self.token(["repository:secret/x:pull"])
        resp, _ = await self.pull("secret/x", auth=self.bearer(tok))
        self.assertEqual(resp.code, 200)
        # the ping still challenges, so docker login checks credentials
        resp, _ = await self.env.call("GET", PING)
        self.assertEqual(resp.code, 401)


class NoneModeTests(unittest.TestCase):
    @coro
    async def test_everything_needs_a_user(self):
        env = make_env(self, mode="none")
        await env.whitelists.create("helloz")
        await env.accounts.create("alice", "alice-pw1")
        resp, _ = await env.call("GET", M.format("helloz/demo"))
        self.assertEqual(resp.code, 401)
        resp, body = await env.json("GET", "http://mirror/token?scope=repository:helloz/demo:pull")
        self.assertEqual(resp.code, 200)
        tok = body["token"]
        resp, _ = await env.call("GET", M.format("helloz/demo"),
                                 headers={b"Authorization": [b"Bearer " + tok.encode()]})
        self.assertEqual(resp.code, 401)
        resp, body = await env.call("GET", M.format("helloz/demo"),
                                    headers={b"Authorization": [basic("alice", "alice-pw1")]})
        self.assertEqual(resp.code, 200)
        self.assertTrue(env.proxy.pulls[-1].identity.private)


class RealmTests(unittest.TestCase):
    @coro
    async def test_external_url(self):
        env = make_env(self, external_url="https://hub.example.com/mirror")
        resp, _ = await env.call("GET", PING)
        self.assertEqual(www(resp),
                         'Bearer realm="https://hub.example.com/mirror/token",service="zmirror"')

    @coro
    async def test_forwarded_headers_only_from_trusted_peers(self):
        fwd = {b"X-Forwarded-Proto": [b"https"], b"X-Forwarded-Host": [b"public.example"]}
        env = make_env(self)
        resp, _ = await env.call("GET", PING, headers=fwd)
        self.assertIn('realm="http://mirror/token"', www(resp))
        env = make_env(self, trusted=["127.0.0.1"])
        resp, _ = await env.call("GET", PING, headers=fwd)
        self.assertIn('realm="https://public.example/token"', www(resp))

    @coro
    async def test_host_header_with_port(self):
        env = make_env(self)
        resp, _ = await env.call("GET", "http://mirror.local:5000/v2/")
        self.assertIn('realm="http://mirror.local:5000/token"', www(resp))
