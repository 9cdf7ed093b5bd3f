"""/token through ZMirrorApp: GET and POST, every grant type, bad input → 400/401 JSON."""

import hashlib
import json
import time
from urllib.parse import urlencode

import jwt
from twisted.trial import unittest

from tests.fixtures.auth import basic, make_env
from tests.fixtures.helpers import coro
from zmirror.auth.credentials import ADMIN_LOGIN_MESSAGE
from zmirror.auth.tokenservice import TokenError, parse_scopes

FORM = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
T = "http://mirror/token"


def claims(token):
    return jwt.decode(token, options={"verify_signature": False})


class ScopeParsingTests(unittest.TestCase):
    def test_parse(self):
        self.assertEqual(
            parse_scopes(["repository:nginx:pull", "repository:a/b:pull,push repository:c/d:*"]),
            [("repository", "library/nginx", ["pull"]), ("repository", "a/b", ["pull", "push"]),
             ("repository", "c/d", ["*"])],
        )
        self.assertEqual(parse_scopes(["registry:catalog:*"]), [("registry", "catalog", [])])
        self.assertEqual(parse_scopes(["", " "]), [])

    def test_malformed(self):
        for bad in ("repository", "repository:nginx", "repository:../x:pull", "repository:A:pull",
                    "repository:a%2fb:pull", "repository::pull", "repository:a:b:pull"):
            with self.assertRaises(TokenError, msg=bad) as cm:
                parse_scopes([bad])
            self.assertEqual(cm.exception.status, 400)
        with self.assertRaises(TokenError):
            parse_scopes(["repository:a/b:pull"] * 40)


class TokenServiceTests(unittest.TestCase):
    @coro
    async def setUp(self):
        self.env = make_env(self, lockout_kw={"max_account": 3, "max_ip": 50})
        await self.env.whitelists.create("helloz")
        self.alice = await self.env.accounts.create("alice", "alice-pw1")

    async def get(self, query, headers=None):
        return await self.env.json("GET", T + "?" + urlencode(query, doseq=True), headers=headers)

    async def post(self, form, headers=None):
        h = dict(FORM)
        h.update(headers or {})
        return await self.env.json("POST", T, headers=h, data=urlencode(form, doseq=True).encode())

    def assert_token_body(self, body, *, refresh=False):
        self.assertEqual(body["token"], body["access_token"])
        self.assertEqual(body["expires_in"], 300)
        self.assertRegex(body["issued_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(body["issued_at"], time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                           time.gmtime(self.env.clock.seconds())))
        self.assertEqual("refresh_token" in body, refresh)
        return claims(body["token"])

    # --- GET -----------------------------------------------------------------

    @coro
    async def test_anonymous_whitelisted_and_not(self):
        resp, body = await self.get({"service": "zmirror", "scope": [
            "repository:helloz/demo:pull", "repository:secret/x:pull,push"]})
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        c = self.assert_token_body(body)
        self.assertEqual(c["sub"], "")
        self.assertEqual(c["aud"], "zmirror")
        self.assertEqual(c["access"], [
            {"type": "repository", "name": "helloz/demo", "actions": ["pull"]},
            {"type": "repository", "name": "secret/x", "actions": []},
        ])

    @coro
    async def test_anonymous_without_scope_and_offline_gets_no_refresh(self):
        resp, body = await self.get({"service": "zmirror", "offline_token": "true"})
        self.assertEqual(resp.code, 200)
        self.assertEqual(self.assert_token_body(body)["access"], [])

    @coro
    async def test_docker_login_gets_refresh_token(self):
        q = {"account": "alice", "client_id": "docker", "offline_token": "true", "service": "zmirror"}
        resp, body = await self.get(q, headers={b"Authorization": [basic("alice", "alice-pw1")]})
        self.assertEqual(resp.code, 200, body)
        c = self.assert_token_body(body, refresh=True)
        self.assertEqual(c["sub"], "alice")
        self.assertEqual(c["uid"], self.alice["id"])
        self.assertEqual((await self.env.users.get(self.alice["id"]))["last_login_at"],
                         self.env.clock.seconds())

    @coro
    async def test_user_gets_pull_on_anything_never_push(self):
        resp, body = await self.get(
            {"scope": ["repository:secret/x:pull,push", "repository:nginx:*",
                       "registry:catalog:*", "repository:a/b:push"]},
            headers={b"Authorization": [basic("alice", "alice-pw1")]})
        self.assertEqual(resp.code, 200)
        self.assertEqual(claims(body["token"])["access"], [
            {"type": "repository", "name": "secret/x", "actions": ["pull"]},
            {"type": "repository", "name": "library/nginx", "actions": ["pull"]},
            {"type": "registry", "name": "catalog", "actions": []},
            {"type": "repository", "name": "a/b", "actions": []},
        ])

    @coro
    async def test_bad_credentials_401(self):
        await self.env.accounts.create("off", "off-pw-12", enabled=False)
        for user, pw in (("alice", "wrong"), ("nobody", "x"),
                         ("off", "off-pw-12"), ("alice", ""), ("", "")):
            resp, body = await self.get({"scope": "repository:secret/x:pull"},
                                        headers={b"Authorization": [basic(user, pw)]})
            self.assertEqual(resp.code, 401, (user, body))
            self.assertEqual(body["details"], "incorrect username or password")
            self.assertNotIn("token", body)
            self.env.lockout.success(user, "127.0.0.1")
            self.env.lockout._failures.clear()

    @coro
    async def test_malformed_get_input(self):
        cases = [
            ({"scope": "repository:../etc:pull"}, None, 400),
            ({"scope": "repository:nginx"}, None, 400),
            ({"account": "bob"}, {b"Authorization": [basic("alice", "alice-pw1")]}, 400),
            ({}, {b"Authorization": [b"Basic !!!notbase64"]}, 401),
            ({}, {b"Authorization": [b"Basic " + __import__("base64").b64encode(b"nocolon")]}, 401),
            ({}, {b"Authorization": [b"Basic " + __import__("base64").b64encode(b"\xff\xfe:x")]}, 401),
            ({"scope": "x" * 5000}, None, 400),
        ]
        for query, headers, code in cases:
            resp, body = await self.get(query, headers=headers)
            self.assertEqual(resp.code, code, (query, body))
            self.assertIn("error", body)
            self.assertIn("details", body)
        resp, body = await self.env.json("GET", T + "?scope=%ff%fe")
        self.assertEqual(resp.code, 400)
        resp, body = await self.env.json("GET", T + "?" + "&".join(["scope=repository:a/b:pull"] * 40))
        self.assertEqual(resp.code, 400)
        # a Bearer header on /token is simply anonymous
        resp, body = await self.get({"scope": "repository:helloz/x:pull"},
                                    headers={b"Authorization": [b"Bearer abc"]})
        self.assertEqual(resp.code, 200)

    @coro
    async def test_other_methods(self):
        for method in ("PUT", "DELETE", "PATCH"):
            resp, body = await self.env.json(method, T)
            self.assertEqual(resp.code, 405, method)
            self.assertIn("error", body)
        resp, body = await self.env.call("HEAD", T)
        self.assertEqual(resp.code, 200)

    # --- POST ----------------------------------------------------------------

    @coro
    async def test_post_password_grant(self):
        form = {"grant_type": "password", "username": "alice", "password": "alice-pw1",
                "client_id": "containerd-client", "scope": "repository:secret/x:pull",
                "service": "zmirror"}
        resp, body = await self.post(form)
        self.assertEqual(resp.code, 200, body)
        c = self.assert_token_body(body)
        self.assertEqual(c["access"][0]["actions"], ["pull"])
        self.assertEqual(body["scope"], "repository:secret/x:pull")
        resp, body = await self.post({**form, "access_type": "offline"})
        self.assert_token_body(body, refresh=True)
        resp, body = await self.post({**form, "password": "nope"})
        self.assertEqual(resp.code, 401)
        self.assertEqual(body["error"], "invalid_grant")
        resp, body = await self.post({**form, "username": "admin", "password": "admin123"})
        self.assertEqual(resp.code, 401)
        self.assertEqual(body["details"], ADMIN_LOGIN_MESSAGE)

    @coro
    async def test_admin_account_login_says_so_whatever_the_password(self):
        """``docker login`` as the admin: one clear answer for the right password, a
        wrong one or none, on GET and POST, never counted toward the lockout."""
        answers = []
        for i in range(12):  # more than the account's (3) lockout threshold
            for name, pw in (("admin", "admin123"), ("Admin", f"wrong{i}"), ("ADMIN", "")):
                resp, body = await self.get({"account": name, "service": "zmirror"},
                                            headers={b"Authorization": [basic(name, pw)]})
                answers.append((resp.code, body["error"], body["details"], "token" in body))
                resp, body = await self.post({"grant_type": "password", "username": name,
                                              "password": pw})
                answers.append((resp.code, body["error"], body["details"], "token" in body))
        self.assertEqual(set(answers), {(401, "invalid_grant", ADMIN_LOGIN_MESSAGE, False)})
        self.assertEqual(self.env.lockout.failures(ip="127.0.0.1"), 0)
        self.assertEqual(self.env.lockout.failures("user:admin"), 0)
        # and the address may still log in as a registry user
        resp, body = await self.get({}, headers={b"Authorization": [basic("alice", "alice-pw1")]})
        self.assertEqual(resp.code, 200, body)
        recs = [r for r in self.env.log.records if r.kind == "token" and r.status == 401]
        self.assertEqual({r.username for r in recs}, {"admin", "Admin", "ADMIN"})

    @coro
    async def test_post_refresh_grant_and_revocation(self):
        resp, body = await self.get({"account": "alice", "offline_token": "true", "client_id": "docker"},
                                    headers={b"Authorization": [basic("alice", "alice-pw1")]})
        rt = body["refresh_token"]
        form = {"grant_type": "refresh_token", "refresh_token": rt, "client_id": "docker",
                "scope": "repository:secret/x:pull", "service": "zmirror"}
        resp, body = await self.post(form)
        self.assertEqual(resp.code, 200, body)
        c = self.assert_token_body(body)
        self.assertEqual((c["sub"], c["access"][0]["actions"]), ("alice", ["pull"]))
        # a later pull still works a month later
        self.env.clock.advance(30 * 86400)
        resp, body = await self.post(form)
        self.assertEqual(resp.code, 200)
        # disabled → dead, and it stays dead after re-enabling
        await self.env.accounts.update(self.alice["id"], enabled=False)
        resp, body = await self.post(form)
        self.assertEqual(resp.code, 401)
        self.assertEqual(body["error"], "invalid_grant")
        await self.env.accounts.update(self.alice["id"], enabled=True)
        resp, body = await self.post(form)
        self.assertEqual(resp.code, 401)
        # a fresh login works; a password change kills it
        resp, body = await self.get({"offline_token": "true"},
                                    headers={b"Authorization": [basic("alice", "alice-pw1")]})
        form["refresh_token"] = body["refresh_token"]
        self.assertEqual((await self.post(form))[0].code, 200)
        await self.env.accounts.update(self.alice["id"], password="new-pw-12")
        self.assertEqual((await self.post(form))[0].code, 401)
        # deleted → dead
        resp, body = await self.get({"offline_token": "true"},
                                    headers={b"Authorization": [basic("alice", "new-pw-12")]})
        form["refresh_token"] = body["refresh_token"]
        self.assertEqual((await self.post(form))[0].code, 200)
        await self.env.users.delete(self.alice["id"])
        self.assertEqual((await self.post(form))[0].code, 401)

    @coro
    async def test_post_bad_input(self):
        access, _ = self.env.tokens.issue_access(subject="", access=[])
        cases = [
            ({"grant_type": "password", "username": "alice"}, 400),
            ({"grant_type": "password", "password": "x"}, 400),
            ({"grant_type": "refresh_token"}, 400),
            ({"grant_type": "refresh_token", "refresh_token": "garbage"}, 401),
            ({"grant_type": "refresh_token", "refresh_token": access}, 401),
            ({"grant_type": "client_credentials"}, 400),
            ({}, 400),
            ({"grant_type": "password", "username": "alice", "password": "alice-pw1",
              "scope": "repository:Bad:pull"}, 400),
        ]
        for form, code in cases:
            resp, body = await self.post(form)
            self.assertEqual(resp.code, code, (form, body))
            self.assertIn("error", body)
        resp, body = await self.env.json("POST", T, headers={b"Content-Type": [b"application/json"]},
                                         data=b'{"grant_type": "password"}')
        self.assertEqual(resp.code, 400)
        resp, body = await self.env.json("POST", T, headers=FORM, data=b"grant_type=%ff")
        self.assertEqual(resp.code, 400)
        resp, body = await self.env.json("POST", T, headers=FORM, data=b"a=" + b"x" * 70000)
        self.assertEqual(resp.code, 413)
        resp, body = await self.env.json("POST", T, headers=FORM, data=b"&".join([b"a=b"] * 300))
        self.assertEqual(resp.code, 400)
        resp, body = await self.env.json("POST", T, headers=FORM, data=b"")
        self.assertEqual(resp.code, 400)

    # --- lockout, legacy hashes, access log ------------------------------------

    @coro
    async def test_lockout_429(self):
        for _ in range(3):
            resp, _ = await self.get({}, headers={b"Authorization": [basic("alice", "bad")]})
            self.assertEqual(resp.code, 401)
        resp, body = await self.get({}, headers={b"Authorization": [basic("alice", "alice-pw1")]})
        self.assertEqual(resp.code, 429)
        self.assertEqual(resp.headers.getRawHeaders(b"retry-after"), [b"300"])
        self.assertEqual(body["retry_after"], 300)
        resp, body = await self.post({"grant_type": "password", "username": "alice",
                                      "password": "alice-pw1"})
        self.assertEqual(resp.code, 429)
        self.env.clock.advance(301)
        resp, body = await self.get({}, headers={b"Authorization": [basic("alice", "alice-pw1")]})
        self.assertEqual(resp.code, 200)

    @coro
    async def test_legacy_md5_user_rehashed_on_login(self):
        await self.env.users.create_with_hash("legacy", hashlib.md5(b"oldpw").hexdigest())
        resp, body = await self.get({"offline_token": "true"},
                                    headers={b"Authorization": [basic("legacy", "oldpw")]})
        self.assertEqual(resp.code, 200)
        row = await self.env.users.get_by_username("legacy")
        self.assertTrue(row["password_hash"].startswith("$argon2id$"))
        # the refresh token issued on that login matches the re-hashed state
        resp, body = await self.post({"grant_type": "refresh_token",
                                      "refresh_token": body["refresh_token"]})
        self.assertEqual(resp.code, 200)
        resp, body = await self.get({}, headers={b"Authorization": [basic("legacy", "oldpw")]})
        self.assertEqual(resp.code, 200)

    @coro
    async def test_access_log_records(self):
        await self.get({"scope": "repository:secret/x:pull"},
                       headers={b"Authorization": [basic("alice", "alice-pw1")]})
        await self.get({"scope": "repository:secret/x:pull"},
                       headers={b"Authorization": [basic("alice", "bad")]})
        recs = [r for r in self.env.log.records if r.kind == "token"]
        # a failed login records the account it tried
        self.assertEqual([(r.username, r.status, r.repository, r.method) for r in recs],
                         [("alice", 200, "secret/x", "GET"), ("alice", 401, "secret/x", "GET")])
        self.assertEqual(recs[0].client_ip, "127.0.0.1")
        self.assertGreater(recs[0].bytes, 0)
        self.assertFalse(any("alice-pw1" in json.dumps(r.as_row()) for r in recs))

    @coro
    async def test_access_log_records_the_attempted_name_of_failed_and_locked_logins(self):
        evil = "bo\x1bb\nname" + "x" * 200
        for name in ("nobody", evil):
            await self.get({}, headers={b"Authorization": [basic(name, "bad")]})
        await self.post({"grant_type": "password", "username": "ghost", "password": "bad"})
        for _ in range(3):
            await self.get({}, headers={b"Authorization": [basic("alice", "bad")]})
        resp, _ = await self.get({}, headers={b"Authorization": [basic("alice", "alice-pw1")]})
        self.assertEqual(resp.code, 429)
        recs = [(r.username, r.status) for r in self.env.log.records if r.kind == "token"]
        self.assertEqual(recs[0], ("nobody", 401))
        name, status = recs[1]
        self.assertEqual(status, 401)
        self.assertTrue(name.startswith("bo?b?namexx"), name)
        self.assertTrue(name.isprintable())
        self.assertEqual(len(name), 64)
        self.assertEqual(recs[2:], [("ghost", 401)] + [("alice", 401)] * 3 + [("alice", 429)])

    @coro
    async def test_no_accesslog_is_fine(self):
        self.env.token_service.accesslog = None
        resp, _ = await self.get({})
        self.assertEqual(resp.code, 200)
