"""JWT access and refresh tokens; the secret file."""

import os
import stat
import warnings

import jwt
from twisted.internet.task import Clock
from twisted.trial import unittest

from zmirror.auth.tokens import (
    SECRET_FILE,
    InvalidToken,
    SecretError,
    TokenIssuer,
    load_or_create_secret,
)

SECRET = b"k" * 32
USER = {"id": 7, "username": "alice", "password_hash": "$argon2id$x", "enabled": True,
        "updated_at": 1000.5}


class SecretTests(unittest.TestCase):
    def test_created_once_with_mode_0600(self):
        d = self.mktemp()
        os.makedirs(d)
        s1 = load_or_create_secret(d)
        self.assertGreaterEqual(len(s1), 32)
        mode = stat.S_IMODE(os.stat(os.path.join(d, SECRET_FILE)).st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(load_or_create_secret(d), s1, "kept across restarts")
        self.assertEqual([n for n in os.listdir(d)], [SECRET_FILE], "no temp files left")

    def test_permissions_tightened(self):
        d = self.mktemp()
        os.makedirs(d)
        load_or_create_secret(d)
        p = os.path.join(d, SECRET_FILE)
        os.chmod(p, 0o644)
        load_or_create_secret(d)
        self.assertEqual(stat.S_IMODE(os.stat(p).st_mode), 0o600)

    def test_broken_file_is_a_clear_error(self):
        d = self.mktemp()
        os.makedirs(d)
        p = os.path.join(d, SECRET_FILE)
        for content in ("not hex\n", "abcd\n"):
            with open(p, "w") as f:
                f.write(content)
            with self.assertRaises(SecretError) as cm:
                load_or_create_secret(d)
            self.assertIn(SECRET_FILE, str(cm.exception))


class TokenTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.issuer = TokenIssuer(SECRET, self.clock, service="zmirror", access_ttl=300, leeway=0)

    def access(self, name="library/nginx", actions=("pull",)):
        return [{"type": "repository", "name": name, "actions": list(actions)}]

    def test_access_token_roundtrip(self):
        tok, iat = self.issuer.issue_access(subject="alice", access=self.access(), user=USER)
        self.assertEqual(iat, 1_700_000_000)
        header = jwt.get_unverified_header(tok)
        self.assertEqual(header["alg"], "HS256")
        c = self.issuer.verify_access(tok)
        self.assertEqual(c.subject, "alice")
        self.assertEqual(c.uid, 7)
        self.assertFalse(c.anonymous)
        self.assertTrue(c.allows("library/nginx"))
        self.assertFalse(c.allows("library/nginx", "push"))
        self.assertFalse(c.allows("library/nginx2"))
        self.assertTrue(self.issuer.fingerprint_matches(USER, c.fp))

    def test_anonymous_token(self):
        tok, _ = self.issuer.issue_access(subject="", access=self.access(actions=()))
        c = self.issuer.verify_access(tok)
        self.assertTrue(c.anonymous)
        self.assertFalse(c.allows("library/nginx"))

    def test_expiry_uses_the_clock(self):
        tok, _ = self.issuer.issue_access(subject="", access=self.access())
        self.clock.advance(299)
        self.issuer.verify_access(tok)
        self.clock.advance(2)
        with self.assertRaises(InvalidToken):
            self.issuer.verify_access(tok)

    def test_forgeries_refused(self):
        tok, _ = self.issuer.issue_access(subject="", access=self.access())
        other = TokenIssuer(b"o" * 32, self.clock)
        forged, _ = other.issue_access(subject="", access=self.access())
        claims = jwt.decode(tok, options={"verify_signature": False})
        none_alg = jwt.encode(claims, key=None, algorithm="none")
        head, payload, sig = tok.split(".")
        bad = [forged, none_alg, tok + "x", head + "." + payload + ".", "", "a.b.c", "x" * 10000,
               None, 5, head + "." + payload[:-2] + "." + sig]
        # signed with the right key but for another audience / issuer / kind
        key = self.issuer._sign_key
        for change in ({"aud": "other"}, {"iss": "other"}, {"zt": "refresh"}, {"exp": "soon"},
                       {"uid": "7"}, {"uid": True}):
            bad.append(jwt.encode({**claims, **change}, key, algorithm="HS256"))
        bad.append(jwt.encode({k: v for k, v in claims.items() if k != "exp"}, key, algorithm="HS256"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyJWT warns about the key length for HS512
            bad.append(jwt.encode(claims, key, algorithm="HS512"))
        for t in bad:
            with self.assertRaises(InvalidToken, msg=repr(t)[:80]):
                self.issuer.verify_access(t)

    def test_refresh_token_bound_to_user_state(self):
        rt = self.issuer.issue_refresh(USER)
        uid, fp = self.issuer.verify_refresh(rt)
        self.assertEqual(uid, 7)
        self.assertTrue(self.issuer.fingerprint_matches(USER, fp))
        for change in ({"password_hash": "$argon2id$y"}, {"enabled": False}, {"updated_at": 1001.0},
                       {"id": 8}):
            self.assertFalse(self.issuer.fingerprint_matches({**USER, **change}, fp), change)
        self.assertFalse(self.issuer.fingerprint_matches(None, fp))
        # an access token is not a refresh token and vice versa
        tok, _ = self.issuer.issue_access(subject="alice", access=[], user=USER)
        with self.assertRaises(InvalidToken):
            self.issuer.verify_refresh(tok)
        with self.assertRaises(InvalidToken):
            self.issuer.verify_access(rt)

    def test_refresh_tokens_live_long(self):
        rt = self.issuer.issue_refresh(USER)
        self.clock.advance(30 * 86400)
        self.assertEqual(self.issuer.verify_refresh(rt)[0], 7)

    def test_secret_too_short(self):
        with self.assertRaises(ValueError):
            TokenIssuer(b"short", self.clock)
