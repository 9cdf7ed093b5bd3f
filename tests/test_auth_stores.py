"""UserStore and WhitelistStore against a temporary SQLite file."""

import hashlib

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.authfixtures import START, coro, temp_db
from zmirror.auth.passwords import Passwords, fast_context
from zmirror.db.errors import Conflict, NotFound
from zmirror.db.users import InvalidField, UserStore, validate_username
from zmirror.db.whitelists import WhitelistStore


class UserStoreTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.db = temp_db(self)
        self.pw = Passwords(context=fast_context(), clock=self.clock)
        self.users = UserStore(self.db, self.clock, passwords=self.pw, admin_username="admin")

    @coro
    async def test_create_list_get(self):
        u = await self.users.create("alice", "pw1")
        self.assertEqual(set(u), {"id", "username", "enabled", "created_at", "updated_at",
                                  "last_login_at"})
        self.assertEqual((u["username"], u["enabled"], u["created_at"], u["last_login_at"]),
                         ("alice", True, START, None))
        await self.users.create("bob", "pw2", enabled=False)
        rows = await self.users.list()
        self.assertEqual([r["username"] for r in rows], ["alice", "bob"])
        self.assertFalse(any("password_hash" in r for r in rows))
        self.assertEqual((await self.users.get(u["id"]))["username"], "alice")
        full = await self.users.get_by_username("alice")
        self.assertTrue(full["password_hash"].startswith("$argon2id$"))
        self.assertTrue((await self.pw.verify("pw1", full["password_hash"]))[0])
        self.assertIsNone(await self.users.get_by_username("nobody"))
        self.assertIsNone(await self.users.get_by_username("ALICE"))
        self.assertEqual(await self.users.count(), 2)
        with self.assertRaises(NotFound):
            await self.users.get(999)

    @coro
    async def test_username_rules(self):
        for bad in ("", "a" * 65, "a b", "a:b", "ü", "a/b", None, 3, "admin", "ADMIN"):
            with self.assertRaises(InvalidField) as cm:
                await self.users.create(bad, "pw")
            self.assertEqual(cm.exception.field, "username")
        for good in ("a", "A.b_c-d", "x" * 64, "123"):
            await self.users.create(good, "pw")
        self.assertEqual(validate_username("admin"), "admin", "without an admin name it is fine")
        with self.assertRaises(InvalidField):
            validate_username("admin", "admin")
        for bad in ("", None, "x" * 1025, "a\x00b"):
            with self.assertRaises(InvalidField) as cm:
                await self.users.create("valid", bad)
            self.assertEqual(cm.exception.field, "password")

    @coro
    async def test_duplicates_conflict_case_insensitively(self):
        await self.users.create("alice", "pw")
        for name in ("alice", "Alice"):
            with self.assertRaises(Conflict) as cm:
                await self.users.create(name, "pw")
            self.assertEqual(cm.exception.field, "username")

    @coro
    async def test_update_delete(self):
        u = await self.users.create("alice", "pw")
        old_hash = (await self.users.get_by_username("alice"))["password_hash"]
        self.clock.advance(10)
        u2 = await self.users.update(u["id"], enabled=False)
        self.assertFalse(u2["enabled"])
        self.assertEqual(u2["updated_at"], START + 10)
        u3 = await self.users.update(u["id"], password="new", enabled=True)
        self.assertTrue(u3["enabled"])
        full = await self.users.get_by_username("alice")
        self.assertNotEqual(full["password_hash"], old_hash)
        self.assertTrue((await self.pw.verify("new", full["password_hash"]))[0])
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
    async def test_in_memory_auth_state_follows_writes(self):
        u = await self.users.create("alice", "pw")
        # lazy load on first use sees the row
        state = await self.users.auth_user(u["id"])
        self.assertEqual(state["username"], "alice")
        self.assertTrue(state["enabled"])
        await self.users.update(u["id"], enabled=False)
        self.assertFalse((await self.users.auth_user(u["id"]))["enabled"])
        b = await self.users.create("bob", "pw")
        self.assertEqual((await self.users.auth_user(b["id"]))["username"], "bob")
        await self.users.delete(u["id"])
        self.assertIsNone(await self.users.auth_user(u["id"]))
        self.assertEqual(await self.users.load(), 1)

    @coro
    async def test_concurrent_first_loads_share_one_query(self):
        from twisted.internet.defer import Deferred, gatherResults

        await self.users.create("alice", "pw")
        fresh = UserStore(self.db, self.clock, passwords=self.pw)
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
        self.db = temp_db(self)
        self.wl = WhitelistStore(self.db, self.clock)

    @coro
    async def test_crud_and_matcher(self):
        self.assertFalse(self.wl.loaded)
        await self.wl.load()
        self.assertFalse(self.wl.matcher.allows("helloz/x"))
        e = await self.wl.create("helloz", note=" demo ")
        self.assertEqual(set(e), {"id", "prefix", "enabled", "note", "created_at", "updated_at"})
        self.assertEqual((e["prefix"], e["enabled"], e["note"]), ("helloz", True, "demo"))
        self.assertTrue(self.wl.matcher.allows("helloz/x"))
        self.assertEqual(self.wl.match("helloz/x").id, e["id"])
        await self.wl.update(e["id"], enabled=False)
        self.assertFalse(self.wl.matcher.allows("helloz/x"))
        await self.wl.update(e["id"], enabled=True, prefix="nginx")
        self.assertTrue(self.wl.matcher.allows("library/nginx"))
        self.assertFalse(self.wl.matcher.allows("helloz/x"))
        self.assertEqual((await self.wl.get(e["id"]))["prefix"], "nginx")
        self.assertEqual(len(await self.wl.list()), 1)
        await self.wl.delete(e["id"])
        self.assertFalse(self.wl.matcher.allows("library/nginx"))
        with self.assertRaises(NotFound):
            await self.wl.delete(e["id"])
        with self.assertRaises(NotFound):
            await self.wl.update(e["id"], note="x")
        with self.assertRaises(NotFound):
            await self.wl.get(e["id"])

    @coro
    async def test_validation_and_conflicts(self):
        from zmirror.db.users import InvalidField

        for bad in ("", "  ", "*", "A", "a/../b", None):
            with self.assertRaises(InvalidField) as cm:
                await self.wl.create(bad)
            self.assertEqual(cm.exception.field, "prefix")
        with self.assertRaises(InvalidField):
            await self.wl.create("ok", note="x" * 1001)
        a = await self.wl.create("a")
        await self.wl.create("b")
        with self.assertRaises(Conflict):
            await self.wl.create("a")
        with self.assertRaises(Conflict) as cm:
            await self.wl.update(a["id"], prefix="b")
        self.assertEqual(cm.exception.field, "prefix")
        self.assertEqual(await self.wl.count(), 2)

    @coro
    async def test_loads_from_database_at_start(self):
        await self.wl.create("helloz")
        await self.wl.create("off", enabled=False)
        fresh = WhitelistStore(self.db, self.clock)
        m = await fresh.ready()
        self.assertTrue(m.allows("helloz/a"))
        self.assertFalse(m.allows("off/a"))
        self.assertEqual(len(m), 1)
