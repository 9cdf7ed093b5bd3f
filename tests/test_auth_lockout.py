"""Brute-force lockout per account and per address, with an injected clock."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from zmirror.auth.lockout import Locked, Lockout


class LockoutTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.lock = Lockout(self.clock, max_account=3, max_ip=5, window=60, cooldown=120)

    def test_account_locked_after_n_failures(self):
        for _ in range(2):
            self.lock.failure("alice", "10.0.0.1")
        self.assertEqual(self.lock.check("alice", "10.0.0.1"), 0)
        self.lock.failure("alice", "10.0.0.2")
        self.assertEqual(self.lock.retry_after("alice", "10.0.0.9"), 120)
        self.assertEqual(self.lock.retry_after("ALICE", "10.0.0.9"), 120, "case-insensitive")
        self.assertEqual(self.lock.check("bob", "10.0.0.9"), 0)
        with self.assertRaises(Locked) as cm:
            self.lock.enforce("alice", "10.0.0.3")
        self.assertEqual(cm.exception.retry_after, 120)
        self.clock.advance(100.5)
        self.assertEqual(self.lock.retry_after("alice", "x"), 20)
        self.clock.advance(20)
        self.assertEqual(self.lock.check("alice", "x"), 0)
        # the counter starts over after the cool-down
        self.lock.failure("alice", "x")
        self.assertEqual(self.lock.check("alice", "x"), 0)

    def test_ip_locked_after_n_failures_across_accounts(self):
        for i in range(5):
            self.lock.failure(f"user{i}", "10.0.0.1")
        self.assertEqual(self.lock.retry_after("fresh", "10.0.0.1"), 120)
        self.assertEqual(self.lock.check("fresh", "10.0.0.2"), 0)

    def test_failures_outside_window_forgotten(self):
        self.lock.failure("alice", "ip")
        self.lock.failure("alice", "ip")
        self.clock.advance(61)
        self.lock.failure("alice", "ip")
        self.assertEqual(self.lock.check("alice", "ip"), 0)

    def test_success_resets_account_not_ip(self):
        self.lock.failure("alice", "ip")
        self.lock.failure("alice", "ip")
        self.lock.success("alice", "ip")
        self.lock.failure("alice", "ip")
        self.lock.failure("alice", "ip")
        self.assertEqual(self.lock.check("alice", "other"), 0)
        self.lock.failure("bob", "ip")  # 5th failure from "ip"
        self.assertGreater(self.lock.check("", "ip"), 0)

    def test_memory_bounded(self):
        lock = Lockout(self.clock, max_account=3, max_ip=10**9, window=60, cooldown=120, max_keys=50)
        for i in range(1000):
            lock.failure(f"u{i}", "ip")
        self.assertLessEqual(len(lock._failures), 50)

    def test_failure_log_has_no_password(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.lock.failure("alice", "10.1.1.1")
        self.assertTrue(any(e.get("account") == "alice" for e in events))
        self.assertFalse(any("password" in str(e) for e in events))


class RegistryLoginsDoNotLockTheAdminTests(unittest.TestCase):
    def test_registry_logins_as_the_admin_are_refused_and_never_counted(self):
        """``docker login`` with the admin's name: refused at once whatever the
        password (it is not checked), and neither the account nor the address
        gets a failure: the admin UI stays open and no lock is near."""
        from twisted.internet.defer import Deferred

        from zmirror.auth.credentials import ADMIN_LOGIN_MESSAGE, AdminAccountLogin, Authenticator

        checked = []

        class NoUsers:
            async def get_by_username(self, name):
                checked.append(name)
                return None

        class Passwords:
            async def dummy_verify(self, password):
                checked.append(password)

        clock = Clock()
        lockout = Lockout(clock, max_account=10, max_ip=10)
        auth = Authenticator(NoUsers(), Passwords(), lockout, clock=clock, admin_username="admin")

        async def attack():
            for i in range(30):
                name = ("admin", "ADMIN", "Admin")[i % 3]
                with self.assertRaises(AdminAccountLogin) as cm:
                    await auth.authenticate(name, f"guess{i}", "10.0.0.1")
                self.assertEqual(str(cm.exception), ADMIN_LOGIN_MESSAGE)

        d = Deferred.fromCoroutine(attack())
        self.successResultOf(d)
        self.assertEqual(checked, [], "no password and no user was looked at")
        self.assertEqual(lockout.failures("user:admin"), 0)
        self.assertEqual(lockout.failures(ip="10.0.0.1"), 0)
        self.assertEqual(lockout.check("admin", "10.0.0.1"), 0)
        self.assertEqual(lockout.check("user:admin", "10.0.0.1"), 0)


class LockNamesTests(unittest.TestCase):
    """The locks by name (``Lockout.locks``, ``keys_named``, ``release``)."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.lock = Lockout(self.clock, max_account=2, max_ip=3, window=60, cooldown=120)
        self.told = []
        self.lock.watch_locks(type("W", (), {"locked": lambda _s, info: self.told.append(info)})())

    def test_locks_name_what_is_locked(self):
        self.lock.failure("user:Alice", "10.0.0.1")
        self.lock.failure("user:alice", "10.0.0.2")
        for _ in range(2):
            self.lock.failure("bob", "2001:db8::1")
        locks = sorted(self.lock.locks(), key=lambda x: x["name"])
        self.assertEqual([(x["kind"], x["name"], x["login"], x["failures"], x["until"])
                          for x in locks],
                         [("account", "alice", "registry", 2, 1120.0),
                          ("account", "bob", "admin", 2, 1120.0)])
        self.assertEqual([x["name"] for x in self.told], ["alice", "bob"])
        self.lock.failure("carol", "2001:db8::2")  # the same /64: three
        self.assertIn(("address", "2001:db8::/64"),
                      [(x["kind"], x["name"]) for x in self.lock.locks()])

    def test_names_are_sanitized_and_bounded(self):
        self.lock.failure("user:ev\x1bil\n" + "x" * 100, "10.0.0.1")
        self.lock.failure("user:ev\x1bil\n" + "x" * 100, "10.0.0.1")
        (lock,) = self.lock.locks()
        self.assertTrue(lock["name"].startswith("ev?il?x"))
        self.assertTrue(lock["name"].isprintable())
        self.assertLessEqual(len(lock["name"]), 64)

    def test_release_by_name_and_by_address(self):
        for _ in range(2):
            self.lock.failure("user:alice", "10.0.0.1")
        self.lock.failure("alice", "10.0.0.1")
        self.assertTrue(self.lock.check("user:alice", ""))
        self.assertTrue(self.lock.check("", "10.0.0.1"))
        keys = self.lock.keys_named("ALICE")
        self.assertEqual(len(keys), 2)  # its registry logins and the admin API's
        self.assertEqual([self.lock.release(k) for k in keys], [True, False])
        self.assertEqual(self.lock.check("user:alice", ""), 0)
        self.assertEqual(self.lock.failures("alice"), 0, "its failures go too")
        (addr,) = self.lock.keys_named("10.0.0.1")
        self.assertTrue(self.lock.release(addr))
        self.assertEqual(self.lock.check("", "10.0.0.1"), 0)
        self.assertEqual(self.lock.keys_named("2001:db8::5"), self.lock.keys_named("2001:db8::/64"))
        self.assertEqual(self.lock.keys_named("  "), [])


class ConfiguredLockoutTests(unittest.TestCase):
    """``[lockout]`` in config.toml decides when logins lock."""

    def config(self, text):
        from pathlib import Path

        from zmirror.config import parse_config

        return parse_config(text, data_dir=Path("/srv/d"), config_path=Path("/srv/d/config.toml"))

    def test_defaults_unchanged(self):
        from zmirror.auth.lockout import settings

        lock = Lockout(Clock(), **settings(self.config("").lockout))
        self.assertEqual((lock.max_account, lock.max_ip, lock.window, lock.cooldown),
                         (10, 30, 600.0, 300.0))
        self.assertEqual(settings(None), {})

    def test_configure_rejects_non_positive(self):
        for kw in ({"max_account": 0}, {"max_ip": -1}, {"window": 0}, {"cooldown": "5"},
                   {"max_account": True}):
            args = dict(max_account=3, max_ip=5, window=60, cooldown=120)
            args.update(kw)
            with self.assertRaises(ValueError, msg=kw):
                Lockout(Clock(), **args)

    def test_reconfigure_keeps_counts_and_locks(self):
        clock = Clock()
        lock = Lockout(clock, max_account=3, max_ip=100, window=60, cooldown=120)
        for _ in range(3):
            lock.failure("alice", "ip")
        lock.failure("bob", "ip")
        lock.failure("bob", "ip")
        self.assertEqual(lock.retry_after("alice", "x"), 120)
        # a higher limit: bob's two failures still count, alice stays locked
        lock.configure(max_account=5, max_ip=100, window=60, cooldown=30)
        self.assertEqual(lock.retry_after("alice", "x"), 120)
        lock.failure("bob", "ip")
        lock.failure("bob", "ip")
        self.assertEqual(lock.check("bob", "x"), 0)
        lock.failure("bob", "ip")  # the 5th
        self.assertEqual(lock.retry_after("bob", "x"), 30)
        # a lower limit applies from the next failure
        lock.configure(max_account=2, max_ip=100, window=60, cooldown=30)
        lock.failure("carol", "ip")
        self.assertEqual(lock.check("carol", "x"), 0)
        lock.failure("carol", "ip")
        self.assertEqual(lock.retry_after("carol", "x"), 30)

    def test_configured_threshold_is_what_locks_token_logins(self):
        from tests.fixtures.auth import basic, make_env
        from tests.fixtures.helpers import coro
        from zmirror.auth.lockout import settings

        cfg = self.config("[lockout]\nmax_account_failures = 4\nmax_ip_failures = 1000\n"
                          "window = 30\ncooldown = 45\n")

        @coro
        async def run(self):
            env = make_env(self, lockout_kw=settings(cfg.lockout))
            await env.accounts.create("alice", "alice-pw1")

            async def login(password):
                resp, body = await env.json(
                    "GET", "http://mirror/token?account=alice",
                    headers={b"Authorization": [basic("alice", password)]})
                return resp, body

            for _ in range(3):
                self.assertEqual((await login("bad"))[0].code, 401)
            self.assertEqual((await login("alice-pw1"))[0].code, 200)  # 3 < 4: not locked
            # a success clears the account's failures: four more
            for _ in range(4):
                self.assertEqual((await login("bad"))[0].code, 401)
            resp, body = await login("alice-pw1")
            self.assertEqual(resp.code, 429)
            self.assertEqual(resp.headers.getRawHeaders(b"retry-after"), [b"45"])
            env.clock.advance(45)
            self.assertEqual((await login("alice-pw1"))[0].code, 200)
            # failures further apart than the window never add up
            for _ in range(6):
                self.assertEqual((await login("bad"))[0].code, 401)
                env.clock.advance(10.1)
            self.assertEqual((await login("alice-pw1"))[0].code, 200)

        return run(self)


class InFlightAttemptTests(unittest.TestCase):
    """``Lockout.attempt``: failures recorded *or in flight* count against the limit."""

    def setUp(self):
        self.clock = Clock()
        self.lock = Lockout(self.clock, max_account=3, max_ip=5, window=60, cooldown=120)

    def test_attempts_in_flight_fill_the_account_limit(self):
        attempts = [self.lock.attempt("alice", f"10.0.0.{i}") for i in range(3)]
        self.assertEqual(self.lock.in_flight("alice"), 3)
        with self.assertRaises(Locked) as cm:
            self.lock.attempt("ALICE", "10.0.0.9")
        self.assertEqual((cm.exception.retry_after, cm.exception.reason), (1, "in_flight"))
        self.assertEqual(self.lock.check("alice", "x"), 0, "no lock in force yet")
        self.lock.attempt("bob", "10.0.0.9").end()  # other accounts are not affected
        # one ends without an outcome: room for one more
        attempts[0].end()
        attempts[0].end()  # twice is harmless
        again = self.lock.attempt("alice", "10.0.0.9")
        self.assertEqual(self.lock.in_flight("alice"), 3)
        # all fail: locked for the cool-down
        for a in attempts[1:] + [again]:
            a.failure()
        self.assertEqual(self.lock.in_flight("alice"), 0)
        with self.assertRaises(Locked) as cm:
            self.lock.attempt("alice", "10.0.0.10")
        self.assertEqual((cm.exception.retry_after, cm.exception.reason), (120, "locked"))

    def test_recorded_failures_and_in_flight_add_up(self):
        self.lock.failure("alice", "a")
        self.lock.failure("alice", "b")
        first = self.lock.attempt("alice", "c")
        with self.assertRaises(Locked):
            self.lock.attempt("alice", "d")
        first.success()  # clears the account's failures
        self.assertEqual(self.lock.in_flight("alice"), 0)
        for _ in range(3):
            self.lock.attempt("alice", "e").end()
        # failures older than the window no longer count
        self.lock.failure("carol", "f")
        self.lock.failure("carol", "f")
        self.clock.advance(61)
        attempts = [self.lock.attempt("carol", "g") for _ in range(3)]
        self.assertEqual(self.lock.in_flight("carol"), 3)
        for a in attempts:
            a.end()

    def test_address_limit_across_accounts(self):
        attempts = [self.lock.attempt(f"user{i}", "10.0.0.1") for i in range(5)]
        self.assertEqual(self.lock.in_flight(ip="10.0.0.1"), 5)
        with self.assertRaises(Locked):
            self.lock.attempt("fresh", "10.0.0.1")
        self.lock.attempt("fresh", "10.0.0.2").end()
        for a in attempts:
            a.end()
        self.assertEqual(self.lock._in_flight, {})

    def test_leaving_the_block_ends_the_attempt(self):
        class Boom(Exception):
            pass

        with self.assertRaises(Boom):
            with self.lock.attempt("alice", "ip"):
                raise Boom()
        self.assertEqual((self.lock.in_flight("alice"), self.lock.in_flight(ip="ip")), (0, 0))
        self.assertEqual(self.lock.failures("alice"), 0, "no outcome")
        with self.lock.attempt("alice", "ip") as a:
            a.failure()
            a.failure()  # recorded once
        self.assertEqual(self.lock.failures("alice"), 1)

    def test_reconfigured_limit_applies_to_attempts(self):
        attempts = [self.lock.attempt("alice", "ip") for _ in range(2)]
        self.lock.configure(max_account=2, max_ip=5, window=60, cooldown=120)
        with self.assertRaises(Locked):
            self.lock.attempt("alice", "ip")
        for a in attempts:
            a.end()


class BoundedKeyTests(unittest.TestCase):
    """Every tracked key costs the same, whatever the account / address sent."""

    def setUp(self):
        self.clock = Clock()
        self.lock = Lockout(self.clock, max_account=3, max_ip=10**6, window=60, cooldown=120)

    def all_keys(self, lock):
        return list(lock._failures) + list(lock._locked) + list(lock._in_flight)

    def test_long_username_key_is_as_small_as_a_short_one(self):
        import sys

        long_name = "x" * 16384
        self.lock.failure("bob", "10.0.0.1")
        attempt = self.lock.attempt(long_name, "10.0.0.2")
        for _ in range(3):
            self.lock.failure(long_name, "10.0.0.2")
        keys = self.all_keys(self.lock)
        self.assertTrue(keys)
        sizes = {sys.getsizeof(k) for k in keys}
        self.assertEqual(len(sizes), 1, sizes)
        self.assertLess(sizes.pop(), 100)
        # behaviour unchanged: the long account is locked after 3, case-insensitively
        self.assertEqual(self.lock.retry_after(long_name.upper(), "10.9.9.9"), 120)
        self.assertEqual(self.lock.check("bob", "10.9.9.9"), 0)
        attempt.end()

    def test_memory_for_many_long_usernames_is_bounded(self):
        import tracemalloc

        n = 200
        names = [f"{i:05d}" + "u" * 16379 for i in range(n)]  # 16 KB each, all distinct
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.take_snapshot()
        for i, name in enumerate(names):
            self.lock.failure(name, f"10.0.{i // 250}.{i % 250}")
        after = tracemalloc.take_snapshot()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename")
                    if s.traceback[0].filename.endswith("lockout.py"))
        self.assertEqual(len(self.lock._failures), 2 * n)
        # a few hundred bytes per key (an account and an address per failure), never the name
        self.assertLess(grown, 2 * n * 1024, grown)

    def test_log_lines_keep_a_truncated_readable_name(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        name = "mallory" + "m" * 16000
        for _ in range(3):
            self.lock.failure(name, "10.0.0.1")
        locked = [e for e in events if "locked for" in e.get("log_format", "")]
        self.assertEqual(len(locked), 1)
        self.assertTrue(locked[0]["key"].startswith("mallory"))
        self.assertLessEqual(len(locked[0]["key"]), 64)
        self.assertTrue(all(len(str(e.get("account", ""))) <= 64 for e in events))


class IPv6PrefixTests(unittest.TestCase):
    """IPv6 addresses count per /64: the part of an address an attacker is given."""

    def setUp(self):
        self.clock = Clock()
        self.lock = Lockout(self.clock, max_account=100, max_ip=5, window=60, cooldown=120)

    def test_one_64_shares_one_budget(self):
        for i in range(5):
            self.lock.failure(f"user{i}", f"2001:db8:1:2::{i + 1:x}")
        self.assertEqual(self.lock.retry_after("fresh", "2001:db8:1:2:ffff:ffff:ffff:ffff"), 120)
        self.assertEqual(self.lock.check("fresh", "2001:db8:1:3::1"), 0, "another /64")
        with self.assertRaises(Locked):
            self.lock.attempt("fresh", "2001:db8:1:2::abcd")

    def test_ipv4_counts_per_address_and_mapped_as_ipv4(self):
        from zmirror.auth.lockout import address_bucket

        for i in range(5):
            self.lock.failure(f"user{i}", "::ffff:192.0.2.7")
        self.assertEqual(self.lock.retry_after("fresh", "192.0.2.7"), 120)
        self.assertEqual(self.lock.check("fresh", "192.0.2.8"), 0)
        self.assertEqual(address_bucket("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(address_bucket("not an ip"), "not an ip")


class ListenerTests(unittest.TestCase):
    """What a Lockout tells its listener (zmirror.auth.lockoutsync.LockoutSync)."""

    def setUp(self):
        self.clock = Clock()
        self.lock = Lockout(self.clock, max_account=3, max_ip=5, window=60, cooldown=120)
        self.told = []

        class Listener:
            def failed(inner, keys, at):
                self.told.append(("failed", list(keys), at))

            def cleared(inner, key):
                self.told.append(("cleared", key))

        self.lock.listen(Listener())

    def test_failures_and_clearing_successes_are_told_by_key(self):
        self.clock.advance(5)
        self.lock.failure("alice", "10.0.0.1")
        self.lock.success("alice", "10.0.0.1")
        self.lock.success("alice", "10.0.0.1")  # nothing left to clear: not told
        self.lock.success("bob", "10.0.0.1")
        (kind, keys, at), cleared = self.told
        self.assertEqual((kind, at), ("failed", 5.0))
        self.assertEqual([k[:1] for k in keys], [b"a", b"i"])
        self.assertNotIn(b"alice", b"".join(keys))
        self.assertEqual(cleared, ("cleared", keys[0]))

    def test_a_failing_listener_never_fails_a_login(self):
        class Broken:
            def failed(self, keys, at):
                raise RuntimeError("bus down")

            cleared = failed

        self.lock.listen(Broken())
        for _ in range(3):
            self.lock.failure("alice", "ip")
        self.assertEqual(self.lock.retry_after("alice", "x"), 120)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

    def test_a_lock_that_ran_out_restarts_the_count_of_a_later_failure(self):
        # failure() without a check() first (another node's failure, or a caller
        # of the low-level API): the expired lock does not linger
        for _ in range(3):
            self.lock.failure("alice", "ip")
        self.clock.advance(121)
        self.lock.failure("alice", "ip")
        self.assertEqual(self.lock.failures("alice"), 1)
        self.assertEqual(self.lock.check("alice", "x"), 0)
        self.lock.failure("alice", "ip")
        self.lock.failure("alice", "ip")
        self.assertEqual(self.lock.retry_after("alice", "x"), 120, "locked again after 3 more")


class LockoutRecordsServiceTests(unittest.TestCase):
    def test_a_stop_before_the_start_finished_leaves_no_timer(self):
        from twisted.internet.defer import Deferred, succeed

        from zmirror.auth.lockoutrecords import LockoutRecords

        cleared = Deferred()

        class Store:
            def clear(self):
                return cleared

            def released_since(self, since):
                return succeed([])

        clock = Clock()
        records = LockoutRecords(Lockout(clock), Store(), clock=clock)
        records.start()
        records.stop()  # the server gave up at start, before the old rows were deleted
        cleared.callback(None)
        self.assertEqual(clock.getDelayedCalls(), [])
        records.start()
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # polling every 2 s
        records.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
