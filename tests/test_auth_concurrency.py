"""Login limits that hold under concurrency.

- The lockout counts attempts in flight: N concurrent wrong logins for one
  account cannot all be verified before the first failure is recorded.
- Password verifications share a bounded semaphore (slots + queue); a full
  queue answers 429 with Retry-After on /token, /v2 and /api.
- A cancelled login (client gone) releases its in-flight count at once, and its
  slot when its verification really ends (queued: at once).

The verification function is held (``HeldRun``): Deferreds the test fires, so
the requests are really concurrent; one test per endpoint runs over real HTTP
on 127.0.0.1 with real argon2 on a thread pool.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from tests.fixtures.auth import basic, make_env
from tests.fixtures.helpers import coro
from tests.fixtures.admin import ADMIN, AdminTestMixin
from tests.fixtures.admin import basic as admin_basic
from zmirror.auth.adminaccount import basic_credentials
from zmirror.auth.lockout import Locked, Lockout
from zmirror.auth.passwords import Busy, Passwords, fast_context, hash_admin_password
from zmirror.config import LockoutConfig
from zmirror.net import TrustedProxies, client_ip

N = 120
TOKEN = "http://mirror/token?service=zmirror&account=alice"


class HeldRun:
    """A ``run(f, *args)`` whose Deferreds fire only when the test releases them."""

    def __init__(self):
        self.pending: list[tuple[Deferred, object, tuple]] = []
        self.calls: list[tuple] = []  # every (f, args) ever started

    def __call__(self, f, *args):
        d = Deferred()
        self.pending.append((d, f, args))
        self.calls.append((f, args))
        return d

    def release(self, n: int = 1) -> int:
        """Run and fire the ``n`` oldest held calls; returns how many."""
        done = 0
        while self.pending and done < n:
            d, f, args = self.pending.pop(0)
            d.callback(f(*args))
            done += 1
        return done

    def passwords_seen(self) -> set:
        """The distinct passwords that reached verification (first argument)."""
        return {args[0] for _f, args in self.calls}


async def pump(client, until, what: str, rounds: int = 20000):
    """Let SQLite threads and StubTreq make progress until ``until()``."""
    for _ in range(rounds):
        client.flush()
        if until():
            return
        await deferLater(reactor, 0.0005, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


async def release_all(client, held: HeldRun, results: list):
    """End the held verifications one by one until all N requests are answered."""
    while len(results) < N:
        if not held.release():
            # a request between two steps (a SQLite read, a response on its way)
            await pump(client, lambda: held.pending or len(results) == N, "the next step")
            continue
        await pump(client, lambda: True, "a turn")


def fill(case, passwords: Passwords, held: HeldRun) -> list:
    """Take every slot and every queue place with verifications held by ``held``."""
    waiting = [Deferred.fromCoroutine(passwords.dummy_verify(f"filler{i}"))
               for i in range(passwords.slots.limit + passwords.queue)]
    case.assertEqual((passwords.running, passwords.queued),
                     (passwords.slots.limit, passwords.queue))
    case.assertEqual(len(held.pending), passwords.slots.limit)
    return waiting


class ConcurrentTokenLoginTests(unittest.TestCase):
    """120 parallel wrong /token logins for one account (limit 10)."""

    @coro
    async def test_concurrent_wrong_logins_verify_at_most_the_limit(self):
        env = make_env(self, lockout_kw={"max_account": 10, "max_ip": 1000})
        await env.accounts.create("alice", "alice-pw1")
        held = HeldRun()
        env.passwords.run = held
        results: list = []

        async def login(i):
            resp, body = await env.call("GET", TOKEN,
                                        headers={b"Authorization": [basic("alice", f"g{i}")]})
            results.append((resp.code, resp.headers.getRawHeaders(b"retry-after"),
                            json.loads(body)))

        ds = [Deferred.fromCoroutine(login(i)) for i in range(N)]
        # no verification has ended yet: every login not being verified is refused
        await pump(env.client, lambda: len(results) >= N - 10, "the refused logins")
        in_flight = env.lockout.in_flight("user:alice")
        self.assertLessEqual(in_flight, 15)
        self.assertEqual(env.passwords.running + env.passwords.queued, in_flight)
        self.assertEqual(len(held.pending), 2)  # two slots
        refused = [r for r in results if r[0] == 429]
        self.assertEqual(len(refused), N - in_flight)
        self.assertEqual(len(results), len(refused))
        for _code, retry_after, body in refused:
            self.assertEqual(body["error"], "too_many_requests")
            self.assertEqual(retry_after, [str(body["retry_after"]).encode()])
            self.assertGreaterEqual(body["retry_after"], 1)
        # the held verifications end: each a 401, and then the account is locked
        await release_all(env.client, held, results)
        await gatherResults(ds)
        codes = Counter(r[0] for r in results)
        self.assertEqual(codes[401], 10, codes)
        self.assertEqual(codes[429], N - 10, codes)
        self.assertEqual(len(held.passwords_seen()), 10)
        self.assertEqual(env.lockout.in_flight("user:alice"), 0)
        self.assertEqual((env.passwords.running, env.passwords.queued), (0, 0))
        self.assertEqual(env.lockout.retry_after("user:alice", "10.9.9.9"), 300)
        # locked: even the right password is not looked at
        before = len(held.calls)
        resp, _body = await env.call("GET", TOKEN, headers={b"Authorization": [basic("alice",
                                                                                      "alice-pw1")]})
        self.assertEqual((resp.code, len(held.calls)), (429, before))

    @coro
    async def test_concurrent_logins_of_unknown_users_limited_per_address(self):
        # every guess for another (unknown) account: the address's limit holds
        env = make_env(self, lockout_kw={"max_account": 10, "max_ip": 12})
        held = HeldRun()
        env.passwords.run = held
        results: list = []

        async def login(i):
            resp, _body = await env.call(
                "GET", f"http://mirror/token?account=u{i}",
                headers={b"Authorization": [basic(f"u{i}", f"g{i}")]})
            results.append(resp.code)

        ds = [Deferred.fromCoroutine(login(i)) for i in range(N)]
        await pump(env.client, lambda: len(results) >= N - 12, "the refused logins")
        await release_all(env.client, held, results)
        await gatherResults(ds)
        self.assertEqual(Counter(results), Counter({401: 12, 429: N - 12}))
        self.assertEqual(len(held.calls), 12)

    @coro
    async def test_cached_success_needs_no_slot_and_is_not_held_up(self):
        env = make_env(self, lockout_kw={"max_account": 3, "max_ip": 1000})
        await env.accounts.create("alice", "alice-pw1")
        resp, _b = await env.call("GET", TOKEN, headers={b"Authorization": [basic("alice",
                                                                                   "alice-pw1")]})
        self.assertEqual(resp.code, 200)
        # now three wrong guesses are in flight (the account's whole limit) and
        # the verification slots are all busy
        held = HeldRun()
        env.passwords.run = held
        guesses = [Deferred.fromCoroutine(env.authn.authenticate("alice", f"g{i}", "10.0.0.1"))
                   for i in range(3)]
        await pump(env.client, lambda: env.lockout.in_flight("user:alice") == 3, "3 in flight")
        # ... a client that sends its (already verified) Basic credentials again is served
        resp, _b = await env.call("GET", TOKEN, headers={b"Authorization": [basic("alice",
                                                                                   "alice-pw1")]})
        self.assertEqual(resp.code, 200)
        self.assertEqual(len(held.calls), 2)  # only the guesses' verifications
        while held.release():
            pass
        for d in guesses:
            self.assertIsNone(await d)


class RealHTTPLoginTests(unittest.TestCase):
    """Over real HTTP on 127.0.0.1, real argon2 on a 2-thread pool."""

    def setUp(self):
        from twisted.python.threadpool import ThreadPool
        from twisted.web.client import HTTPConnectionPool

        self.threads = ThreadPool(minthreads=0, maxthreads=2, name="test-passwords")
        self.threads.start()
        self.addCleanup(self.threads.stop)
        self.http = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.http.closeCachedConnections)

    def counting_passwords(self):
        from twisted.internet.threads import deferToThreadPool

        from zmirror.auth.passwords import make_context

        verified = []

        class Counting(Passwords):
            def verify_sync(self, password, stored):
                verified.append(password)  # list.append is atomic
                return super().verify_sync(password, stored)

        passwords = Counting(context=make_context(),  # the production argon2 parameters
                             run=lambda f, *a: deferToThreadPool(reactor, self.threads, f, *a),
                             clock=reactor)
        return passwords, verified

    def listen(self, resource):
        from twisted.web.server import Site

        port = reactor.listenTCP(0, Site(resource), backlog=N + 8, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def storm(self, url, auth_for):
        import treq

        async def one(i):
            resp = await treq.get(url, headers={b"Authorization": [auth_for(i)]}, pool=self.http)
            body = await resp.content()
            return resp.code, resp.headers.getRawHeaders(b"retry-after"), body

        return await gatherResults([Deferred.fromCoroutine(one(i)) for i in range(N)])

    @coro
    async def test_token_logins(self):
        from zmirror.app import ZMirrorApp
        from zmirror.auth.credentials import Authenticator
        from zmirror.auth.policy import AccessPolicy
        from zmirror.auth.tokens import TokenIssuer
        from zmirror.auth.tokenservice import TokenService
        from zmirror.auth.users import UserAccounts
        from zmirror.auth.whitelist import Whitelist
        from zmirror.db.users import UserStore
        from zmirror.db.whitelists import WhitelistStore
        from zmirror.registry.routes import RegistryRoutes
        from tests.fixtures.pgserver import temp_database

        passwords, verified = self.counting_passwords()
        db = temp_database(self)
        users = UserStore(db, reactor, admin_username="admin")
        await UserAccounts(users, passwords).create("alice", "alice-pw1")
        lockout = Lockout(reactor, max_account=10, max_ip=1000)
        tokens = TokenIssuer(b"k" * 32, reactor, service="zmirror")
        authn = Authenticator(users, passwords, lockout, clock=reactor, admin_username="admin")
        policy = AccessPolicy(whitelist=Whitelist(WhitelistStore(db, reactor)), users=users,
                              tokens=tokens, authenticator=authn)
        service = TokenService(tokens=tokens, authenticator=authn, policy=policy, users=users,
                               clock=reactor)
        app = ZMirrorApp(RegistryRoutes(None, policy=policy, clock=reactor), token=service)
        base = self.listen(app.resource())

        results = await self.storm(base + "/token?account=alice",
                                   lambda i: basic("alice", f"guess-{i}"))
        codes = Counter(code for code, _r, _b in results)
        self.assertLessEqual(len(verified), 15)
        self.assertEqual(codes[401], len(verified), codes)
        self.assertEqual(codes[429], N - len(verified), codes)
        self.assertGreaterEqual(len(verified), 1)
        for code, retry_after, body in results:
            if code == 429:
                self.assertEqual(json.loads(body)["error"], "too_many_requests")
                self.assertTrue(retry_after and int(retry_after[0]) >= 1)
        self.assertEqual(lockout.in_flight("user:alice"), 0)

    @coro
    async def test_admin_logins(self):
        from zmirror.app import ZMirrorApp
        from zmirror.registry.routes import RegistryRoutes

        passwords, verified = self.counting_passwords()
        mixin = _AdminSetup(self)
        mixin.config = dataclasses.replace(
            _config_with_password(mixin, hash_admin_password("the-admin-pw")),
            lockout=LockoutConfig(max_account_failures=10, max_ip_failures=1000))
        api = mixin.make_api(clock=reactor, passwords=passwords)
        lockout = mixin.lockout
        app = ZMirrorApp(RegistryRoutes(None, clock=reactor), admin=api.resource())
        base = self.listen(app.resource())

        admin_verified = []
        import zmirror.auth.passwords as pw

        real = pw.verify_admin_sync

        def counting_admin(password, configured):
            admin_verified.append(password)
            return real(password, configured)

        self.patch(pw, "verify_admin_sync", counting_admin)
        results = await self.storm(base + "/api/me",
                                   lambda i: admin_basic("admin", f"guess-{i}")["Authorization"])
        codes = Counter(code for code, _r, _b in results)
        tried = set(admin_verified) | set(verified)
        self.assertLessEqual(len(tried), 15)
        self.assertGreaterEqual(len(tried), 1)
        self.assertEqual(codes[401], len(tried), codes)
        self.assertEqual(codes[429], N - len(tried), codes)
        for code, retry_after, body in results:
            if code == 429:
                obj = json.loads(body)
                self.assertEqual(obj["fields"], {})
                self.assertEqual(retry_after, [str(obj["retry_after"]).encode()])
        self.assertEqual(lockout.in_flight("admin"), 0)


def _config_with_password(mixin, password):
    import dataclasses

    return dataclasses.replace(mixin.config, admin=dataclasses.replace(mixin.config.admin,
                                                                       password=password))


class _AdminSetup(AdminTestMixin):
    """AdminTestMixin's stores for a test case that is not itself a mixin user."""

    def __init__(self, case):
        self.mktemp = case.mktemp
        self.addCleanup = case.addCleanup
        self.setUp()


class ConcurrentAdminLoginTests(AdminTestMixin, unittest.TestCase):
    """120 parallel wrong Basic logins for the admin on /api (limit 5 here)."""

    async def storm(self, held):
        results: list = []

        async def one(i):
            results.append(await self.call("GET", "/api/me", auth=admin_basic("admin", f"g{i}")))

        ds = [Deferred.fromCoroutine(one(i)) for i in range(N)]
        await pump(self.client, lambda: len(results) >= N - 5, "the refused logins")
        refused = len(results)
        self.assertEqual(self.lockout.in_flight("admin"), N - refused)
        await release_all(self.client, held, results)
        await gatherResults(ds)
        return results, refused

    @coro
    async def test_hashed_admin_password(self):
        self.config = _config_with_password(self, hash_admin_password(ADMIN[1]))
        held = HeldRun()
        self.passwords.run = held
        self.client = self.stub(self.make_api())
        results, refused = await self.storm(held)
        self.assertEqual(refused, N - 5)  # answered before any verification ended
        codes = Counter(r[0] for r in results)
        self.assertEqual(codes, Counter({401: 5, 429: N - 5}))
        self.assertLessEqual(len(held.passwords_seen()), 15)
        self.assertEqual(len(held.passwords_seen()), 5)
        for code, headers, obj in results:
            if code == 429:
                self.assertEqual(headers.getRawHeaders(b"retry-after"),
                                 [str(obj["retry_after"]).encode()])
                self.assertEqual(obj["fields"], {})
        self.assertEqual(self.lockout.in_flight("admin"), 0)
        self.assertEqual(self.lockout.retry_after("admin", "10.1.1.1"), 300)

    @coro
    async def test_plain_admin_password(self):
        # the admin check is instant; the registry-user check (dummy) is held
        held = HeldRun()
        self.passwords.run = held
        results, refused = await self.storm(held)
        self.assertEqual(refused, N - 5)
        self.assertEqual(Counter(r[0] for r in results), Counter({401: 5, 429: N - 5}))
        self.assertEqual(len(held.passwords_seen()), 5)


class VerificationQueueTests(unittest.TestCase):
    """The semaphore's bounded queue: full → Busy → 429 + Retry-After everywhere."""

    def test_full_queue_raises_busy_and_frees_up(self):
        held = HeldRun()
        passwords = Passwords(context=fast_context(), run=held, concurrency=2, queue=3)
        waiting = fill(self, passwords, held)
        d = Deferred.fromCoroutine(passwords.verify("pw", passwords._dummy, account="x"))
        e = self.failureResultOf(d, Busy).value
        self.assertIsInstance(e, Locked)
        self.assertEqual((e.retry_after, e.reason), (1, "busy"))
        self.assertEqual(len(held.calls), 2)  # the refused one never started
        # one ends: a queued one takes its slot, and the queue has room again
        held.release()
        self.assertEqual((passwords.running, passwords.queued), (2, 2))
        d = Deferred.fromCoroutine(passwords.dummy_verify("later"))
        self.assertNoResult(d)
        while held.pending:
            held.release()
        self.successResultOf(d)
        for w in waiting:
            self.successResultOf(w)
        self.assertEqual((passwords.running, passwords.queued), (0, 0))

    def test_hashing_new_passwords_waits_instead(self):
        held = HeldRun()
        passwords = Passwords(context=fast_context(), run=held, concurrency=1, queue=0)
        fill(self, passwords, held)
        d = Deferred.fromCoroutine(passwords.hash("new-user-pw"))
        self.assertNoResult(d)
        held.release()
        held.release()
        self.assertTrue(self.successResultOf(d).startswith("$argon2"))

    def test_config_sets_the_bound(self):
        from pathlib import Path

        from zmirror.auth.build import build_access, verification_limits
        from zmirror.config import ConfigError, parse_config

        def cfg(text):
            return parse_config(text, data_dir=Path("/srv/d"), config_path=Path("/srv/d/c.toml"))

        self.assertEqual(verification_limits(cfg("").lockout), (2, 32))
        self.assertEqual(cfg("").warnings, ())
        c = cfg("[lockout]\nmax_concurrent_verifications = 3\nmax_queued_verifications = 7\n")
        self.assertEqual(verification_limits(c.lockout), (3, 7))
        for bad in ("max_concurrent_verifications = 0", "max_queued_verifications = -1",
                    "max_concurrent_verifications = 1000", 'max_queued_verifications = "9"'):
            with self.assertRaises(ConfigError, msg=bad):
                cfg("[lockout]\n" + bad + "\n")
        # build() makes the shared Passwords with those limits
        from tests.fixtures.pgserver import temp_database

        c = parse_config("[lockout]\nmax_concurrent_verifications = 3\n"
                         "max_queued_verifications = 7\n",
                         data_dir=Path(self.mktemp()), config_path=Path("/x/c.toml"))
        access = build_access(c, temp_database(self), reactor, threads=False, secret=b"k" * 32)
        self.assertEqual((access.passwords.slots.limit, access.passwords.queue), (3, 7))

    async def full_env(self):
        env = make_env(self, lockout_kw={"max_account": 10, "max_ip": 1000})
        await env.accounts.create("alice", "alice-pw1")
        held = HeldRun()
        env.passwords.run = held
        env.passwords.queue = 2
        fill(self, env.passwords, held)
        return env, held

    @coro
    async def test_token_endpoint_answers_429(self):
        env, held = await self.full_env()
        for _ in range(3):  # more than once: refusals are not failed logins
            resp, body = await env.json("GET", TOKEN,
                                        headers={b"Authorization": [basic("alice", "guess")]})
            self.assertEqual(resp.code, 429, body)
            self.assertEqual(resp.headers.getRawHeaders(b"retry-after"), [b"1"])
            self.assertEqual((body["error"], body["retry_after"]), ("too_many_requests", 1))
            self.assertIn("retry in 1 seconds", body["details"])
        self.assertEqual(env.lockout.check("user:alice", "x"), 0)
        self.assertEqual(env.lockout.failures("user:alice"), 0)
        self.assertEqual(env.lockout.in_flight("user:alice"), 0)
        self.assertEqual(len(held.calls), 2)

    @coro
    async def test_registry_basic_answers_toomanyrequests(self):
        env, _held = await self.full_env()
        resp, body = await env.json("GET", "http://mirror/v2/",
                                    headers={b"Authorization": [basic("alice", "guess")]})
        self.assertEqual(resp.code, 429, body)
        self.assertEqual(resp.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertEqual(body["errors"][0]["code"], "TOOMANYREQUESTS")
        self.assertIn("retry in 1 seconds", body["errors"][0]["message"])
        self.assertEqual(env.proxy.pulls, [])


class AdminQueueTests(AdminTestMixin, unittest.TestCase):
    @coro
    async def test_admin_api_answers_429_json(self):
        self.config = _config_with_password(self, hash_admin_password(ADMIN[1]))
        held = HeldRun()
        self.passwords.run = held
        self.passwords.queue = 1
        self.client = self.stub(self.make_api())
        fill(self, self.passwords, held)
        code, headers, obj = await self.call("GET", "/api/me", auth=admin_basic("admin", "guess"))
        self.assertEqual(code, 429, obj)
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertEqual((obj["retry_after"], obj["fields"]), (1, {}))
        self.assertIsInstance(obj["error"], str)
        self.assertEqual(self.lockout.failures("admin"), 0)

    @coro
    async def test_wrong_admin_password_counts_even_if_the_user_check_is_refused(self):
        # plain-text admin password: checked at once and wrong; the registry-user
        # check then finds the queue full.  The wrong guess must still count, or
        # a full queue would let an attacker guess the admin password unlimited.
        held = HeldRun()
        self.passwords.run = held
        self.passwords.queue = 0
        fill(self, self.passwords, held)
        for i in range(5):
            code, _h, _o = await self.call("GET", "/api/me", auth=admin_basic("admin", f"g{i}"))
            self.assertEqual(code, 429)
        self.assertEqual(self.lockout.retry_after("admin", "x"), 300)
        # the right password is not even looked at now
        while held.pending:
            held.release()
        code, _h, obj = await self.call("GET", "/api/me")
        self.assertEqual((code, obj["retry_after"]), (429, 300))


class CancelledLoginTests(unittest.TestCase):
    """A client that goes away while its password is checked leaks nothing."""

    @coro
    async def test_cancel_while_verifying(self):
        env = make_env(self, lockout_kw={"max_account": 10, "max_ip": 1000})
        await env.accounts.create("alice", "alice-pw1")
        held = HeldRun()
        run, env.passwords.run = env.passwords.run, held
        request = DummyRequest([b"token"])
        request.client = IPv4Address("TCP", "10.0.0.7", 50000)
        request.args = {b"account": [b"alice"]}
        request.requestHeaders.setRawHeaders(b"authorization", [basic("alice", "guess")])
        d = env.token_service.handle(request)  # what Klein calls; it cancels on disconnect
        await pump(env.client, lambda: len(held.pending) == 1, "the verification")
        self.assertEqual(env.lockout.in_flight("user:alice"), 1)
        self.assertEqual(env.passwords.running, 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        # the in-flight count is released at once ...
        self.assertEqual(env.lockout.in_flight("user:alice"), 0)
        self.assertEqual(env.lockout.in_flight(ip="10.0.0.7"), 0)
        # ... the slot when the verification (a thread that cannot be stopped) ends
        self.assertEqual(env.passwords.running, 1)
        held.release()
        self.assertEqual((env.passwords.running, env.passwords.queued), (0, 0))
        # not counted as a failure: the outcome went to nobody
        self.assertEqual(env.lockout.failures("user:alice"), 0)
        self.assertEqual(request.responseCode, None)  # nothing written to the gone client
        # and the account still logs in
        env.passwords.run = run
        resp, _b = await env.call("GET", TOKEN, headers={b"Authorization": [basic("alice",
                                                                                   "alice-pw1")]})
        self.assertEqual(resp.code, 200)

    def test_cancel_while_queued(self):
        from twisted.internet.task import Clock

        from zmirror.auth.credentials import Authenticator

        row = {"id": 1, "username": "alice", "password_hash": "x", "enabled": True,
               "updated_at": 0}

        class Users:
            async def get_by_username(self, name):
                return row

        held = HeldRun()
        clock = Clock()
        passwords = Passwords(context=fast_context(), run=held, clock=clock, concurrency=1,
                              queue=5)
        lockout = Lockout(clock, max_account=10, max_ip=1000)
        authn = Authenticator(Users(), passwords, lockout, clock=clock)
        first = Deferred.fromCoroutine(authn.authenticate("alice", "g1", "10.0.0.1"))
        second = Deferred.fromCoroutine(authn.authenticate("alice", "g2", "10.0.0.2"))
        self.assertEqual((passwords.running, passwords.queued), (1, 1))
        self.assertEqual(lockout.in_flight("user:alice"), 2)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertEqual((passwords.running, passwords.queued), (1, 0))
        self.assertEqual(lockout.in_flight("user:alice"), 1)
        self.assertEqual(lockout.in_flight(ip="10.0.0.2"), 0)
        held.release()
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(len(held.calls), 1)  # the cancelled one never ran
        self.assertEqual((passwords.running, lockout.in_flight("user:alice")), (0, 0))
        self.assertEqual(lockout.failures("user:alice"), 1)

    def test_cancelled_admin_login(self):
        a = _AdminSetup(self)
        held = HeldRun()
        a.passwords.run = held
        request = DummyRequest([b"me"])
        request.client = IPv4Address("TCP", "10.0.0.8", 50000)
        request.requestHeaders.setRawHeaders(b"authorization",
                                             [admin_basic("admin", "guess")["Authorization"]
                                              .encode()])
        username, password = basic_credentials(request)
        d = Deferred.fromCoroutine(a.api.account.authenticate(username, password,
                                                              client_ip(request, TrustedProxies())))
        self.assertEqual((a.lockout.in_flight("admin"), a.passwords.running), (1, 1))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(a.lockout.in_flight("admin"), 0)
        held.release()
        self.assertEqual(a.passwords.running, 0)
        self.assertEqual(a.lockout.failures("admin"), 0)
