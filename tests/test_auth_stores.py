"""UserStore and WhitelistStore against a temporary SQLite file, with the auth
layer above them (UserAccounts hashes passwords, Whitelist builds the matcher); a load
shared by several callers survives its first caller leaving."""

import hashlib

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.auth import START
from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import temp_database
from zmirror.auth.passwords import Passwords, fast_context
from zmirror.auth.users import UserAccounts
from zmirror.auth.whitelist import Whitelist, validate_prefix
from zmirror.db.errors import Conflict, NotFound
from zmirror.db.users import InvalidField, UserStore, validate_username
from zmirror.db.whitelists import WhitelistStore


class UserStoreTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.db = temp_database(self)
        self.pw = Passwords(context=fast_context(), clock=self.clock)
        self.users = UserStore(self.db, self.clock, admin_username="admin")
        self.accounts = UserAccounts(self.users, self.pw)

    @coro
    async def test_create_list_get(self):
        u = await self.accounts.create("alice", "pass-word-1")
        self.assertEqual(set(u), {"id", "username", "enabled", "created_at", "updated_at",
                                  "last_login_at", "scopes"})
        self.assertEqual((u["username"], u["enabled"], u["created_at"], u["last_login_at"]),
                         ("alice", True, START, None))
        await self.accounts.create("bob", "pass-word-2", enabled=False)
        rows = await self.users.list()
        self.assertEqual([r["username"] for r in rows], ["alice", "bob"])
        self.assertFalse(any("password_hash" in r for r in rows))
        self.assertEqual((await self.users.get(u["id"]))["username"], "alice")
        full = await self.users.get_by_username("alice")
        self.assertTrue(full["password_hash"].startswith("$argon2id$"))
        self.assertTrue((await self.pw.verify("pass-word-1", full["password_hash"]))[0])
        self.assertIsNone(await self.users.get_by_username("nobody"))
        self.assertIsNone(await self.users.get_by_username("ALICE"))
        self.assertEqual(await self.users.count(), 2)
        with self.assertRaises(NotFound):
            await self.users.get(999)

    @coro
    async def test_username_rules(self):
        for bad in ("", "a" * 65, "a b", "a:b", "ü", "a/b", None, 3, "admin", "ADMIN"):
            with self.assertRaises(InvalidField) as cm:
                await self.accounts.create(bad, "pass-word")
            self.assertEqual(cm.exception.field, "username")
        for good in ("a", "A.b_c-d", "x" * 64, "123"):
            await self.accounts.create(good, "pass-word")
        self.assertEqual(validate_username("admin"), "admin", "without an admin name it is fine")
        with self.assertRaises(InvalidField):
            validate_username("admin", "admin")
        for bad in ("", None, "x" * 1025, "a\x00b", "x", "seven-7", "tab\there-1", "\ud800" * 8):
            with self.assertRaises(InvalidField) as cm:
                await self.accounts.create("valid", bad)
            self.assertEqual(cm.exception.field, "password")

    @coro
    async def test_one_password_policy_for_users_and_the_admin(self):
        from zmirror.config.adminpassword import admin_password_problem
        from zmirror.config.passwordpolicy import PASSWORD_POLICY

        self.assertEqual(PASSWORD_POLICY.describe(), {"min_length": 8, "max_length": 1024})
        for bad in ("x", "1234567", "a\x00bcdefgh", "x" * 1025, "line\nbreak-1"):
            with self.assertRaises(InvalidField) as cm:
                await self.accounts.create("valid", bad)
            # the registry user's refusal is the admin's, word for word
            self.assertEqual(cm.exception.message, admin_password_problem(bad))
        self.assertEqual(str(cm.exception), "must not contain control characters")
        with self.assertRaises(InvalidField) as cm:
            await self.accounts.create("valid", "x")
        self.assertEqual(str(cm.exception), "must be at least 8 characters")
        await self.accounts.create("valid", "12345678")  # exactly the minimum
        await self.accounts.create("spaces", "with spaces ok")

    @coro
    async def test_a_stored_short_password_keeps_working(self):
        """Only new and changed passwords follow the policy: a user created before it
        (here: the store given a hash of "pw") still logs in and can be disabled."""
        from zmirror.auth.credentials import Authenticator
        from zmirror.auth.lockout import Lockout

        u = await self.users.create_with_hash("old", self.pw.hash_sync("pw"))
        auth = Authenticator(self.users, self.pw, Lockout(self.clock), clock=self.clock)
        self.assertEqual((await auth.authenticate("old", "pw", "10.0.0.1"))["username"], "old")
        await self.accounts.update(u["id"], enabled=False)
        await self.accounts.update(u["id"], enabled=True)
        self.assertEqual((await auth.authenticate("old", "pw", "10.0.0.1"))["username"], "old")
        with self.assertRaises(InvalidField):
            await self.accounts.update(u["id"], password="pw2")

    @coro
    async def test_duplicates_conflict_case_insensitively(self):
        await self.accounts.create("alice", "pass-word")
        for name in ("alice", "Alice"):
            with self.assertRaises(Conflict) as cm:
                await self.accounts.create(name, "pass-word")
            self.assertEqual(cm.exception.field, "username")

    @coro
    async def test_update_delete(self):
        u = await self.accounts.create("alice", "pass-word")
        old_hash = (await self.users.get_by_username("alice"))["password_hash"]
        self.clock.advance(10)
        u2 = await self.users.update(u["id"], enabled=False)
        self.assertFalse(u2["enabled"])
        self.assertEqual(u2["updated_at"], START + 10)
        u3 = await self.accounts.update(u["id"], password="new-password", enabled=True)
        self.assertTrue(u3["enabled"])
        full = await self.users.get_by_username("alice")
        self.assertNotEqual(full["password_hash"], old_hash)
        self.assertTrue((await self.pw.verify("new-password", full["password_hash"]))[0])
        with self.assertRaises(InvalidField):
            await self.users.update(u["id"], enabled="yes")
        with self.assertRaises(NotFound):
            await self.users.update(999, enabled=True)
        await self.users.delete(u["id"])
        with self.assertRaises(NotFound):
            await self.users.delete(u["id"])
        self.assertEqual(await self.users.list(), [])

    @coro
    async def test_record_login_and_set_hash(self):
        u = await self.users.create_with_hash("old", hashlib.md5(b"pw").hexdigest())
        self.clock.advance(5)
        await self.users.record_login(u["id"])
        self.assertEqual((await self.users.get(u["id"]))["last_login_at"], START + 5)
        auth = await self.users.set_hash(u["id"], "$argon2id$new")
        self.assertEqual(auth["password_hash"], "$argon2id$new")
        self.assertIsNone(await self.users.set_hash(999, "x"))

    @coro
    async def test_store_saves_the_hash_it_is_given_and_hashes_nothing(self):
        u = await self.users.create_with_hash("alice", "$argon2id$given")
        self.assertEqual((await self.users.get_by_username("alice"))["password_hash"],
                         "$argon2id$given")
        await self.users.update(u["id"], password_hash="$argon2id$other")
        self.assertEqual((await self.users.get_by_username("alice"))["password_hash"],
                         "$argon2id$other")
        for bad in ("", 3):
            with self.assertRaises(InvalidField) as cm:
                await self.users.update(u["id"], password_hash=bad)
            self.assertEqual(cm.exception.field, "password")
        for bad in ("", None, 3):
            with self.assertRaises(InvalidField):
                await self.users.create_with_hash("bob", bad)
        with self.assertRaises(TypeError):  # a plain password never reaches the store
            await self.users.update(u["id"], password="plain")
        self.assertFalse(hasattr(self.users, "passwords"))
        self.assertEqual(await self.users.count(), 1)

    @coro
    async def test_accounts_refuse_a_bad_password_before_hashing_or_writing(self):
        hashed = []
        real = self.pw.hash

        async def counting(password):
            hashed.append(password)
            return await real(password)

        self.pw.hash = counting
        u = await self.accounts.create("alice", "pass-word")
        self.assertEqual(hashed, ["pass-word"])
        before = await self.users.get_by_username("alice")
        for bad in ("", 3, "x" * 1025, "a\x00b", "short"):
            with self.assertRaises(InvalidField) as cm:
                await self.accounts.update(u["id"], password=bad)
            self.assertEqual(cm.exception.field, "password")
        self.assertEqual(hashed, ["pass-word"])
        self.assertEqual(await self.users.get_by_username("alice"), before)

    @coro
    async def test_in_memory_auth_state_follows_writes(self):
        u = await self.accounts.create("alice", "pass-word")
        # lazy load on first use sees the row
        state = await self.users.auth_user(u["id"])
        self.assertEqual(state["username"], "alice")
        self.assertTrue(state["enabled"])
        await self.users.update(u["id"], enabled=False)
        self.assertFalse((await self.users.auth_user(u["id"]))["enabled"])
        b = await self.accounts.create("bob", "pass-word")
        self.assertEqual((await self.users.auth_user(b["id"]))["username"], "bob")
        await self.users.delete(u["id"])
        self.assertIsNone(await self.users.auth_user(u["id"]))
        self.assertEqual(await self.users.load(), 1)

    @coro
    async def test_concurrent_first_loads_share_one_query(self):
        from twisted.internet.defer import Deferred, gatherResults

        await self.accounts.create("alice", "pass-word")
        fresh = UserStore(self.db, self.clock)
        loads = []
        real = fresh.load

        async def counting():
            loads.append(1)
            return await real()

        fresh.load = counting
        results = await gatherResults([Deferred.fromCoroutine(fresh.auth_user(1)) for _ in range(5)])
        self.assertEqual([r["username"] for r in results], ["alice"] * 5)
        self.assertEqual(len(loads), 1)


class WhitelistStoreTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.db = temp_database(self)
        self.store = WhitelistStore(self.db, self.clock)
        self.wl = Whitelist(self.store)  # the auth layer's live matcher on the store

    @coro
    async def test_crud_and_matcher(self):
        self.assertFalse(self.wl.loaded)
        await self.wl.load()
        self.assertTrue(self.wl.loaded)
        self.assertFalse(self.wl.matcher.allows("helloz/x"))
        e = await self.store.create("helloz", note=" demo ")
        self.assertEqual(set(e), {"id", "prefix", "enabled", "note", "created_at", "updated_at"})
        self.assertEqual((e["prefix"], e["enabled"], e["note"]), ("helloz", True, "demo"))
        self.assertTrue(self.wl.matcher.allows("helloz/x"))
        self.assertEqual(self.wl.match("helloz/x").id, e["id"])
        await self.store.update(e["id"], enabled=False)
        self.assertFalse(self.wl.matcher.allows("helloz/x"))
        await self.store.update(e["id"], enabled=True, prefix="nginx")
        self.assertTrue(self.wl.matcher.allows("library/nginx"))
        self.assertFalse(self.wl.matcher.allows("helloz/x"))
        self.assertEqual((await self.store.get(e["id"]))["prefix"], "nginx")
        self.assertEqual(len(await self.store.list()), 1)
        await self.store.delete(e["id"])
        self.assertFalse(self.wl.matcher.allows("library/nginx"))
        with self.assertRaises(NotFound):
            await self.store.delete(e["id"])
        with self.assertRaises(NotFound):
            await self.store.update(e["id"], note="x")
        with self.assertRaises(NotFound):
            await self.store.get(e["id"])

    @coro
    async def test_subscribers_get_the_enabled_rows_after_each_change(self):
        seen = []
        unsubscribe = self.store.subscribe(seen.append)
        a = await self.store.create("a")
        await self.store.create("b", enabled=False)
        self.assertEqual(seen, [[{"id": a["id"], "prefix": "a"}], [{"id": a["id"], "prefix": "a"}]])
        rows = await self.store.load()
        self.assertEqual(rows, [{"id": a["id"], "prefix": "a"}])
        self.assertEqual(seen[-1], rows)
        unsubscribe()
        await self.store.delete(a["id"])
        self.assertEqual(len(seen), 3)
        self.assertFalse(self.wl.matcher.allows("a/x"))  # the Whitelist still follows

    @coro
    async def test_a_failing_subscriber_does_not_break_writes_or_others(self):
        def bad(rows):
            raise RuntimeError("subscriber bug")

        self.store.subscribe(bad)
        await self.store.create("helloz")
        self.assertTrue(self.wl.matcher.allows("helloz/x"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @coro
    async def test_validation_and_conflicts(self):
        # the syntax of a prefix is the policy's: checked before the store is called
        for bad in ("", "  ", "*", "A", "a/../b", None):
            with self.assertRaises(InvalidField) as cm:
                validate_prefix(bad)
            self.assertEqual(cm.exception.field, "prefix")
        self.assertEqual(validate_prefix(" helloz "), "helloz")
        # the store checks what the column needs
        for bad in ("", None, 3, "x" * 256, "a\x00b"):
            with self.assertRaises(InvalidField) as cm:
                await self.store.create(bad)
            self.assertEqual(cm.exception.field, "prefix")
        with self.assertRaises(InvalidField):
            await self.store.create("ok", note="x" * 1001)
        a = await self.store.create("a")
        await self.store.create("b")
        with self.assertRaises(Conflict):
            await self.store.create("a")
        with self.assertRaises(Conflict) as cm:
            await self.store.update(a["id"], prefix="b")
        self.assertEqual(cm.exception.field, "prefix")
        self.assertEqual(await self.store.count(), 2)

    @coro
    async def test_loads_from_database_at_start(self):
        await self.store.create("helloz")
        await self.store.create("off", enabled=False)
        fresh = Whitelist(WhitelistStore(self.db, self.clock))
        self.assertFalse(fresh.loaded)
        m = await fresh.ready()
        self.assertTrue(m.allows("helloz/a"))
        self.assertFalse(m.allows("off/a"))
        self.assertEqual(len(m), 1)

    @coro
    async def test_concurrent_first_uses_share_one_load(self):
        from twisted.internet.defer import Deferred, gatherResults

        await self.store.create("helloz")
        store = WhitelistStore(self.db, self.clock)
        fresh = Whitelist(store)
        loads = []
        real = store.load

        async def counting():
            loads.append(1)
            return await real()

        store.load = counting
        results = await gatherResults([Deferred.fromCoroutine(fresh.ready()) for _ in range(5)])
        self.assertTrue(all(m.allows("helloz/x") for m in results))
        self.assertEqual(len(loads), 1)


# the same store tests against a real PostgreSQL (tests/fixtures/pgserver.py)
from tests.fixtures.pgserver import on_postgresql  # noqa: E402

UserStorePostgresTests = on_postgresql(UserStoreTests)
WhitelistStorePostgresTests = on_postgresql(WhitelistStoreTests)


class _SlowReads:
    """A Database whose reads wait for ``gate``."""

    def __init__(self, db):
        self.db = db
        self.gate = Deferred()

    def __getattr__(self, name):
        return getattr(self.db, name)

    async def read(self, *a, **kw):
        if not self.gate.called:
            waiter = Deferred()
            self.gate.addCallback(lambda r: (waiter.callback(None), r)[1])
            await waiter
        return await self.db.read(*a, **kw)


class SharedStoreLoadTests(unittest.TestCase):
    def setUp(self):
        self.db = temp_database(self, reactor)

    async def _first_caller_leaves(self, store, use):
        """``use(store)`` twice while the first load waits; the first caller leaves."""
        slow = _SlowReads(self.db)
        store.db = slow
        first = Deferred.fromCoroutine(use(store))
        second = Deferred.fromCoroutine(use(store))
        first.cancel()
        self.failureResultOf(first, CancelledError)
        slow.gate.callback(None)
        return await second

    @coro
    async def test_user_store_load_survives_first_caller_leaving(self):
        from zmirror.db.users import UserStore

        users = UserStore(self.db, reactor)
        u = await users.create_with_hash("alice", "$md5$x")
        fresh = UserStore(self.db, reactor)
        row = await self._first_caller_leaves(fresh, lambda s: s.auth_user(u["id"]))
        self.assertEqual(row["username"], "alice")

    @coro
    async def test_whitelist_load_survives_first_caller_leaving(self):
        from zmirror.auth.whitelist import Whitelist
        from zmirror.db.whitelists import WhitelistStore

        await WhitelistStore(self.db, reactor).create("library")
        fresh = Whitelist(WhitelistStore(self.db, reactor))
        matcher = await self._first_caller_leaves(fresh, lambda s: s.ready())
        self.assertIsNotNone(matcher.match("library/nginx"))
