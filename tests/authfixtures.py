"""Shared fixtures for the access-control tests (tests/test_auth_*.py)."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any, Optional

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from zmirror.accesslog import MemoryAccessLog
from zmirror.app import ZMirrorApp
from zmirror.auth.credentials import Authenticator
from zmirror.auth.lockout import Lockout
from zmirror.auth.passwords import Passwords, fast_context
from zmirror.auth.policy import AccessPolicy
from zmirror.auth.tokens import TokenIssuer
from zmirror.auth.tokenservice import TokenService
from zmirror.auth.users import UserAccounts
from zmirror.auth.whitelist import Whitelist
from zmirror.db import Database
from zmirror.db.users import UserStore
from zmirror.db.whitelists import WhitelistStore
from zmirror.net import TrustedProxies
from zmirror.registry.routes import RegistryRoutes

START = 1_700_000_000.0
SECRET = b"s" * 32


def coro(f):
    """Decorator: run an ``async def`` test method as a Deferred."""

    def wrapper(self, *a, **kw):
        return Deferred.fromCoroutine(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


def temp_db(testcase) -> Database:
    """A migrated, started database for ``testcase``: SQLite in its temp dir, or a
    fresh PostgreSQL database when the class says ``backend = "postgresql"``
    (:func:`tests.pgserver.on_postgresql`)."""
    from tests.pgserver import temp_database

    return temp_database(testcase)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class FakeResult:
    def __init__(self, body: bytes, private: bool):
        self.body = body
        self.private = private

    def send(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"private" if self.private else b"public, max-age=60")
        request.setHeader(b"Content-Length", str(len(self.body)).encode())
        return self.body


class FakeProxy:
    """Records every pull it is asked to do and answers with the name it fetched."""

    def __init__(self):
        self.pulls = []

    async def pull(self, pull):
        self.pulls.append(pull)
        body = json.dumps({"fetched": pull.path.name, "user": pull.identity.username}).encode()
        return FakeResult(body, pull.identity.private)


class Env(SimpleNamespace):
    """Everything of one access-control setup, on a temp SQLite file."""

    async def call(self, method: str, url: str, *, headers: Optional[dict] = None,
                   data: Any = None) -> tuple[Any, bytes]:
        return await call(self.client, method, url, headers=headers, data=data)

    async def json(self, method: str, url: str, **kw) -> tuple[Any, Any]:
        resp, body = await self.call(method, url, **kw)
        try:
            return resp, json.loads(body)
        except ValueError:
            raise AssertionError(f"not JSON ({resp.code}): {body[:300]!r}")


async def call(client, method: str, url: str, *, headers=None, data=None):
    """A request through StubTreq against handlers that wait on real threads (SQLite)."""
    d = client.request(method, url, headers=headers, data=data)
    body = await _pump(client, d)
    resp = body
    content = client.content(resp)
    data = await _pump(client, content)
    return resp, data


async def _pump(client, d: Deferred):
    done = []
    d.addBoth(lambda r: (done.append(True), r)[1])
    for _ in range(20000):
        client.flush()
        if done:
            break
        await deferLater(reactor, 0.0005, lambda: None)
    else:
        raise AssertionError("request did not finish")
    return await d


def make_env(testcase, *, mode: str = "whitelist", trusted=(), external_url: str = "",
             lockout_kw: Optional[dict] = None, namespaces=()) -> Env:
    clock = Clock()
    clock.advance(START)
    db = temp_db(testcase)
    passwords = Passwords(context=fast_context(), clock=clock)
    users = UserStore(db, clock, admin_username="admin")
    accounts = UserAccounts(users, passwords)
    whitelists = WhitelistStore(db, clock)
    whitelist = Whitelist(whitelists)
    lockout = Lockout(clock, **(lockout_kw or {}))
    tokens = TokenIssuer(SECRET, clock, service="zmirror")
    tp = TrustedProxies(trusted)
    authn = Authenticator(users, passwords, lockout, clock=clock, admin_username="admin")
    policy = AccessPolicy(whitelist=whitelist, users=users, tokens=tokens, authenticator=authn,
                          mode=mode, trusted=tp, external_url=external_url)
    log = MemoryAccessLog()
    token_service = TokenService(tokens=tokens, authenticator=authn, policy=policy, users=users,
                                 clock=clock, trusted=tp, accesslog=log)
    proxy = FakeProxy()
    from zmirror.registry.routing import RoutingTable

    routes = RegistryRoutes(proxy, policy=policy, accesslog=log, clock=clock, trusted=tp,
                            routing=RoutingTable(lambda: namespaces))
    app = ZMirrorApp(routes, token=token_service)
    client = StubTreq(app.resource())
    return Env(clock=clock, db=db, passwords=passwords, users=users, accounts=accounts,
               whitelists=whitelists, whitelist=whitelist,
               lockout=lockout, tokens=tokens, authn=authn, policy=policy, log=log,
               token_service=token_service, proxy=proxy, routes=routes, app=app, client=client)
