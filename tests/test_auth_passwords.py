"""Password hashing: argon2 default, pbkdf2 accepted, legacy MD5 re-hashed, admin plain or hash."""

import hashlib

from passlib.hash import pbkdf2_sha256
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.fixtures.helpers import coro
from zmirror.auth.passwords import (
    AdminCredentials,
    Passwords,
    fast_context,
    hash_admin_password,
    is_hash,
    is_legacy_md5,
    make_context,
    verify_admin_sync,
)


class PasswordTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.pw = Passwords(context=fast_context(), clock=self.clock)

    @coro
    async def test_argon2_default(self):
        h = await self.pw.hash("s3cret")
        self.assertTrue(h.startswith("$argon2id$"))
        self.assertNotIn("s3cret", h)
        self.assertEqual(await self.pw.verify("s3cret", h), (True, None))
        self.assertEqual(await self.pw.verify("wrong", h), (False, None))
        self.assertNotEqual(await self.pw.hash("s3cret"), h, "salted")

    def test_production_parameters(self):
        h = make_context().hash("x")
        self.assertIn("$argon2id$", h)
        self.assertIn("m=19456,t=2,p=1", h)

    @coro
    async def test_pbkdf2_accepted_not_rehashed(self):
        h = pbkdf2_sha256.using(rounds=1000).hash("pw")
        ok, new = await self.pw.verify("pw", h)
        self.assertTrue(ok)
        self.assertEqual((await self.pw.verify("nope", h))[0], False)

    @coro
    async def test_legacy_md5_accepted_and_flagged(self):
        legacy = hashlib.md5(b"oldpass").hexdigest()
        self.assertTrue(is_legacy_md5(legacy))
        ok, new = await self.pw.verify("oldpass", legacy)
        self.assertTrue(ok)
        self.assertTrue(new.startswith("$argon2id$"))
        self.assertEqual(await self.pw.verify("oldpass", new), (True, None))
        # upper-case hex from old exports too
        self.assertTrue((await self.pw.verify("oldpass", legacy.upper()))[0])
        self.assertEqual(await self.pw.verify("oldpasS", legacy), (False, None))

    @coro
    async def test_garbage_hashes_never_raise(self):
        for stored in ("", "plain", "$argon2id$broken", "$pbkdf2-sha256$x", None, "0" * 31):
            self.assertEqual(await self.pw.verify("x", stored), (False, None), repr(stored))
        self.assertEqual(await self.pw.verify(None, hashlib.md5(b"x").hexdigest()), (False, None))

    @coro
    async def test_positive_cache(self):
        calls = []
        real = self.pw.verify_sync

        def counting(p, s):
            calls.append(1)
            return real(p, s)

        self.pw.verify_sync = counting
        h = await self.pw.hash("pw")
        await self.pw.verify("pw", h, account="u")
        await self.pw.verify("pw", h, account="u")
        self.assertEqual(len(calls), 1)
        await self.pw.verify("bad", h, account="u")
        await self.pw.verify("bad", h, account="u")
        self.assertEqual(len(calls), 3, "failures are never cached")
        # a changed hash (new password) misses the cache
        h2 = await self.pw.hash("pw")
        await self.pw.verify("pw", h2, account="u")
        self.assertEqual(len(calls), 4)
        self.clock.advance(301)
        await self.pw.verify("pw", h, account="u")
        self.assertEqual(len(calls), 5, "entries expire")

    @coro
    async def test_runs_through_injected_runner(self):
        threads = []

        def run(f, *a):
            threads.append(f.__name__)
            return deferToThread(f, *a)

        pw = Passwords(context=fast_context(), run=run)
        h = await pw.hash("x")
        self.assertTrue((await pw.verify("x", h))[0])
        self.assertEqual(threads, ["hash_sync", "verify_sync"])


class AdminPasswordTests(unittest.TestCase):
    def test_plain_and_hashed(self):
        self.assertTrue(verify_admin_sync("admin123", "admin123"))
        self.assertFalse(verify_admin_sync("admin1234", "admin123"))
        self.assertFalse(verify_admin_sync("", "admin123"))
        self.assertFalse(is_hash("admin123"))
        self.assertFalse(is_hash("$notahash"))
        for h in (hash_admin_password("s3cret"), pbkdf2_sha256.using(rounds=1000).hash("s3cret")):
            self.assertTrue(is_hash(h))
            self.assertTrue(verify_admin_sync("s3cret", h))
            self.assertFalse(verify_admin_sync("s3cre", h))
            self.assertFalse(verify_admin_sync(h, h), "the hash itself is not the password")

    @coro
    async def test_admin_credentials(self):
        pw = Passwords(context=fast_context(), clock=Clock())
        for configured in ("plainpw", pbkdf2_sha256.using(rounds=1000).hash("plainpw")):
            admin = AdminCredentials("admin", configured, pw)
            self.assertTrue(await admin.check("admin", "plainpw"))
            self.assertTrue(await admin.check("admin", "plainpw"))  # cached path
            self.assertFalse(await admin.check("admin", "wrong"))
            self.assertFalse(await admin.check("Admin", "plainpw"))
            self.assertFalse(await admin.check("someone", "plainpw"))
            self.assertFalse(await admin.check("admin", None))
