"""Per-user scopes (zmirror.auth.scopes): what an admin may type, what the token service
grants, what Basic auth on /v2 allows, how a change reaches issued tokens, and the
users table's ``scopes`` column on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import jwt
from twisted.trial import unittest

from tests.fixtures.auth import basic, make_env, www
from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import on_postgresql
from zmirror.auth.scopes import MAX_SCOPES, compile_scopes, user_scopes, validate_scopes
from zmirror.db.errors import InvalidField
from zmirror.db.users import UNREADABLE_SCOPES, decode_scopes, encode_scopes

M = "http://mirror/v2/{}/manifests/latest"
PW = "scoped-pw-1"


def access_of(token: str) -> dict:
    """name -> actions of a token's access claim."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return {a["name"]: a["actions"] for a in claims["access"]}


class ValidateScopesTests(unittest.TestCase):
    def test_normalized_deduplicated(self):
        self.assertEqual(validate_scopes(None), [])
        self.assertEqual(validate_scopes([]), [])
        self.assertEqual(
            validate_scopes(["docker.io/library/*", " nginx ", "library/nginx", "GHCR.io/myorg/**",
                             "index.docker.io/bitnami/redis", "*"]),
            ["library/*", "library/nginx", "ghcr.io/myorg/**", "bitnami/redis"])
        # '*' on Docker Hub is library/* (one component): already listed above
        self.assertEqual(validate_scopes(["**", "library/nginx"]), [])  # '**' is everything

    def test_hostile_values_name_the_pattern(self):
        for bad, words in (
            ("library/nginx", "list"), ({"a": 1}, "list"), ([1], "item 1"), ([None], "item 1"),
            ([""], "empty"), (["Library/Nginx"], "lower case"), (["ghcr.io/a**"], "'**'"),
            (["gh*r.io/x"], "host"), (["a//b"], "empty component"), (["x" * 500], "at most"),
            (["\x00evil\nline"], "not a repository name component"),
            (["library/nginx:latest"], "not a repository name component"),
            (["ok/x"] * (MAX_SCOPES + 1), f"at most {MAX_SCOPES}"),
        ):
            with self.assertRaises(InvalidField, msg=repr(bad)[:80]) as cm:
                validate_scopes(bad)
            self.assertEqual(cm.exception.field, "scopes")
            self.assertIn(words, str(cm.exception), repr(bad)[:80])
            self.assertNotIn("\n", str(cm.exception))

    def test_matching(self):
        s = compile_scopes(tuple(validate_scopes(["docker.io/library/*", "ghcr.io/myorg/**"])))
        for name, ok in (("library/nginx", True), ("library/a/b", False), ("nginx/x", False),
                         ("ghcr.io/myorg/app", True), ("ghcr.io/myorg/a/b/c", True),
                         ("ghcr.io/myorg", False), ("ghcr.io/other/app", False),
                         ("myorg/app", False), ("quay.io/myorg/app", False)):
            self.assertEqual(s.allows(name), ok, name)
        # '*' stays in one component, '**' crosses them
        one = compile_scopes(("ghcr.io/myorg/*",))
        self.assertTrue(one.allows("ghcr.io/myorg/app"))
        self.assertFalse(one.allows("ghcr.io/myorg/a/b"))
        self.assertTrue(compile_scopes(()).allows("anything/at/all"))
        self.assertTrue(user_scopes({"id": 1}).allows("x/y"))

    def test_damaged_stored_value_grants_nothing(self):
        self.assertEqual(decode_scopes("not json"), list(UNREADABLE_SCOPES))
        self.assertEqual(decode_scopes('{"a": 1}'), list(UNREADABLE_SCOPES))
        self.assertEqual(decode_scopes("[]"), [])
        self.assertEqual(decode_scopes(None), [])
        s = user_scopes({"scopes": decode_scopes("not json")})
        self.assertFalse(s.everything)
        self.assertFalse(s.allows("library/nginx"))
        self.assertEqual(encode_scopes(["library/*"]), '["library/*"]')
        with self.assertRaises(InvalidField):
            encode_scopes("library/*")


class ScopedUserTests(unittest.TestCase):
    """A user scoped to docker.io/library/* and ghcr.io/myorg/**, another unscoped; the
    whitelist opens helloz/* to anonymous pulls."""

    @coro
    async def setUp(self):
        self.env = make_env(self, namespaces=("ghcr.io",))
        await self.env.whitelists.create("helloz")
        self.sam = await self.env.accounts.create(
            "sam", PW, scopes=["docker.io/library/*", "ghcr.io/myorg/**"])
        self.una = await self.env.accounts.create("una", PW)

    async def token(self, scopes, user="sam", **extra):
        query = {"scope": list(scopes), **extra}
        headers = {b"Authorization": [basic(user, PW)]} if user else None
        resp, body = await self.env.json("GET", "http://mirror/token?" + urlencode(query, doseq=True),
                                         headers=headers)
        self.assertEqual(resp.code, 200, body)
        return body

    async def pull(self, url, auth):
        return await self.env.call("GET", url, headers={b"Authorization": [auth]})

    # --- /token ------------------------------------------------------------------

    @coro
    async def test_grant_is_bounded_by_the_scopes(self):
        body = await self.token([
            "repository:nginx:pull",                   # library/nginx: in scope
            "repository:library/a/b:pull",             # '*' is one component: out
            "repository:bitnami/redis:pull,push",      # out
            "repository:ghcr.io/myorg/app/web:pull",   # '**': in
            "repository:ghcr.io/other/app:pull",       # another org: out
            "repository:myorg/app:pull",               # Docker Hub's myorg: out
            "repository:helloz/demo:pull",             # out of scope but anonymous may: in
            "registry:catalog:*",
        ])
        self.assertEqual(access_of(body["token"]), {
            "library/nginx": ["pull"], "library/a/b": [], "bitnami/redis": [],
            "ghcr.io/myorg/app/web": ["pull"], "ghcr.io/other/app": [], "myorg/app": [],
            "helloz/demo": ["pull"], "catalog": []})
        # the unscoped user keeps everything
        body = await self.token(["repository:bitnami/redis:pull"], user="una")
        self.assertEqual(access_of(body["token"]), {"bitnami/redis": ["pull"]})

    @coro
    async def test_post_password_and_refresh_grants_are_bounded_too(self):
        form = {"grant_type": "password", "username": "sam", "password": PW, "access_type": "offline",
                "scope": "repository:library/nginx:pull repository:bitnami/redis:pull"}
        h = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
        resp, body = await self.env.json("POST", "http://mirror/token", headers=h,
                                         data=urlencode(form).encode())
        self.assertEqual(resp.code, 200, body)
        self.assertEqual(body["scope"], "repository:library/nginx:pull")
        self.assertEqual(access_of(body["token"]), {"library/nginx": ["pull"], "bitnami/redis": []})
        form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                "scope": "repository:bitnami/redis:pull"}
        resp, body2 = await self.env.json("POST", "http://mirror/token", headers=h,
                                          data=urlencode(form).encode())
        self.assertEqual(resp.code, 200, body2)
        self.assertEqual(access_of(body2["token"]), {"bitnami/redis": []})

    # --- /v2 with a token ---------------------------------------------------------

    @coro
    async def test_pull_outside_the_scopes_is_insufficient_scope(self):
        body = await self.token(["repository:library/nginx:pull", "repository:bitnami/redis:pull"])
        bearer = b"Bearer " + body["token"].encode()
        resp, got = await self.pull(M.format("nginx"), bearer)
        self.assertEqual(resp.code, 200, got)
        self.assertEqual(json.loads(got), {"fetched": "library/nginx", "user": "sam"})
        resp, got = await self.pull(M.format("bitnami/redis"), bearer)
        self.assertEqual(resp.code, 401)
        self.assertEqual(json.loads(got)["errors"][0]["code"], "UNAUTHORIZED")
        self.assertIn('error="insufficient_scope"', www(resp))
        self.assertIn('scope="repository:bitnami/redis:pull"', www(resp))
        self.assertEqual([p.path.name for p in self.env.proxy.pulls], ["library/nginx"])

    @coro
    async def test_namespaces_by_path_and_by_ns_parameter(self):
        body = await self.token(["repository:ghcr.io/myorg/app:pull",
                                 "repository:ghcr.io/other/app:pull"])
        bearer = b"Bearer " + body["token"].encode()
        for url in ("http://mirror/v2/ghcr.io/myorg/app/manifests/1",
                    "http://mirror/v2/myorg/app/manifests/1?ns=ghcr.io"):
            resp, got = await self.pull(url, bearer)
            self.assertEqual(resp.code, 200, (url, got))
        for url in ("http://mirror/v2/ghcr.io/other/app/manifests/1",
                    "http://mirror/v2/other/app/manifests/1?ns=ghcr.io",
                    "http://mirror/v2/myorg/app/manifests/1"):  # Docker Hub's myorg/app
            resp, _ = await self.pull(url, bearer)
            self.assertEqual(resp.code, 401, url)
            self.assertIn('error="insufficient_scope"', www(resp))
        self.assertEqual([p.path.name for p in self.env.proxy.pulls], ["ghcr.io/myorg/app"] * 2)

    @coro
    async def test_host_routing(self):
        self.env.routes.routing.set_hosts({"ghcr.fake": "ghcr.io"})
        auth = basic("sam", PW)
        resp, got = await self.pull("http://ghcr.fake/v2/myorg/app/manifests/1", auth)
        self.assertEqual(resp.code, 200, got)
        self.assertEqual(json.loads(got)["fetched"], "ghcr.io/myorg/app")
        # library/* is Docker Hub's: on the ghcr.io host it names ghcr.io/library/x, outside
        resp, _ = await self.pull("http://ghcr.fake/v2/library/x/manifests/1", auth)
        self.assertEqual(resp.code, 401)
        self.assertIn('scope="repository:ghcr.io/library/x:pull"', www(resp))
        self.assertIn('error="insufficient_scope"', www(resp))

    # --- /v2 with Basic credentials -------------------------------------------------

    @coro
    async def test_basic_auth_applies_the_same_check(self):
        auth = basic("sam", PW)
        resp, got = await self.pull(M.format("library/nginx"), auth)
        self.assertEqual(resp.code, 200, got)
        resp, got = await self.pull("http://mirror/v2/myorg/app/blobs/sha256:" + "a" * 64 + "?ns=ghcr.io",
                                    auth)
        self.assertEqual(resp.code, 200, got)
        for url, name in ((M.format("bitnami/redis"), "bitnami/redis"),
                          ("http://mirror/v2/ghcr.io/other/x/tags/list", "ghcr.io/other/x")):
            resp, got = await self.pull(url, auth)
            self.assertEqual(resp.code, 401, url)
            self.assertEqual(json.loads(got)["errors"][0]["code"], "UNAUTHORIZED")
            self.assertIn('error="insufficient_scope"', www(resp))
            self.assertIn(f'scope="repository:{name}:pull"', www(resp))
        # what anonymous users may pull stays pullable with the user's credentials
        resp, _ = await self.pull(M.format("helloz/demo"), auth)
        self.assertEqual(resp.code, 200)
        # the ping needs no repository
        resp, _ = await self.pull("http://mirror/v2/", auth)
        self.assertEqual(resp.code, 200)
        self.assertEqual([p.path.name for p in self.env.proxy.pulls],
                         ["library/nginx", "ghcr.io/myorg/app", "helloz/demo"])
        # the unscoped user pulls anything
        resp, _ = await self.pull(M.format("bitnami/redis"), basic("una", PW))
        self.assertEqual(resp.code, 200)

    # --- changes ------------------------------------------------------------------

    @coro
    async def test_a_scope_change_ends_issued_tokens_and_applies_to_new_ones(self):
        body = await self.token(["repository:library/nginx:pull"], offline_token="true")
        bearer = b"Bearer " + body["token"].encode()
        resp, _ = await self.pull(M.format("nginx"), bearer)
        self.assertEqual(resp.code, 200)
        self.env.clock.advance(1)
        await self.env.accounts.update(self.sam["id"], scopes=["bitnami/*"])
        # the issued access token dies at once (its fingerprint covers the scopes)
        resp, _ = await self.pull(M.format("nginx"), bearer)
        self.assertEqual(resp.code, 401)
        self.assertIn('error="invalid_token"', www(resp))
        # so does the refresh token
        h = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
        form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                "scope": "repository:library/nginx:pull"}
        resp, _ = await self.env.json("POST", "http://mirror/token", headers=h,
                                      data=urlencode(form).encode())
        self.assertEqual(resp.code, 401)
        # a new token follows the new scopes, as Basic auth does
        body = await self.token(["repository:library/nginx:pull", "repository:bitnami/redis:pull"])
        self.assertEqual(access_of(body["token"]), {"library/nginx": [], "bitnami/redis": ["pull"]})
        resp, _ = await self.pull(M.format("nginx"), basic("sam", PW))
        self.assertEqual(resp.code, 401)
        resp, _ = await self.pull(M.format("bitnami/redis"), basic("sam", PW))
        self.assertEqual(resp.code, 200)
        # back to everything
        await self.env.accounts.update(self.sam["id"], scopes=[])
        resp, _ = await self.pull(M.format("nginx"), basic("sam", PW))
        self.assertEqual(resp.code, 200)

    @coro
    async def test_an_unscoped_users_fingerprint_is_what_it_was(self):
        user = await self.env.users.auth_user(self.una["id"])
        without = {k: v for k, v in user.items() if k != "scopes"}
        self.assertEqual(self.env.tokens.fingerprint(user), self.env.tokens.fingerprint(without))
        scoped = await self.env.users.auth_user(self.sam["id"])
        changed = dict(scoped, scopes=["library/*"])
        self.assertNotEqual(self.env.tokens.fingerprint(scoped), self.env.tokens.fingerprint(changed))

    @coro
    async def test_store_round_trip(self):
        self.assertEqual(self.sam["scopes"], ["library/*", "ghcr.io/myorg/**"])
        self.assertEqual((await self.env.users.get(self.sam["id"]))["scopes"],
                         ["library/*", "ghcr.io/myorg/**"])
        self.assertEqual(self.una["scopes"], [])
        row = await self.env.users.update(self.una["id"], enabled=False)
        self.assertEqual(row["scopes"], [])  # unchanged by another change
        row = await self.env.users.update(self.una["id"], scopes=["a/b"])
        self.assertEqual(row["scopes"], ["a/b"])
        self.assertEqual([u["scopes"] for u in await self.env.users.list()],
                         [["library/*", "ghcr.io/myorg/**"], ["a/b"]])


ScopedUserPostgresTests = on_postgresql(ScopedUserTests)
