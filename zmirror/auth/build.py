"""Builds the access-control parts (:class:`AccessControl`) from the configuration.

:func:`zmirror.wiring.build` plugs ``policy`` into ``RegistryRoutes`` and
``token_service`` into ``ZMirrorApp`` and hands the stores, the live whitelist
and the accounts to the admin API; the test environments
(``tests/fixtures/auth.py``) call the same builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from zmirror.auth.credentials import Authenticator
from zmirror.auth.lockout import Lockout, settings as lockout_settings
from zmirror.auth.lockoutrecords import LockoutRecords
from zmirror.auth.lockoutsync import LockoutSync
from zmirror.auth.passwords import CONCURRENCY, QUEUE, Passwords
from zmirror.auth.policy import AccessPolicy
from zmirror.auth.tokens import TokenIssuer, load_secret
from zmirror.auth.tokenservice import TokenService
from zmirror.auth.users import UserAccounts
from zmirror.auth.imagepolicy import ImagePolicy
from zmirror.auth.whitelist import Whitelist
from zmirror.db.lockouts import LockoutStore
from zmirror.db.users import UserStore
from zmirror.db.policyrules import PolicyRuleStore
from zmirror.db.whitelists import WhitelistStore
from zmirror.net import TrustedProxies
from zmirror.service import CallbackService

log = Logger()

SERVICE = "zmirror"


def verification_limits(section: Any) -> tuple[int, int]:
    """``(concurrency, queue)`` of password verifications from ``[lockout]``."""
    return (getattr(section, "max_concurrent_verifications", CONCURRENCY),
            getattr(section, "max_queued_verifications", QUEUE))


@dataclass
class AccessControl:
    users: Any  # zmirror.db.users.UserStore
    whitelists: Any  # zmirror.db.whitelists.WhitelistStore
    whitelist: Whitelist  # the live matcher, following the store
    accounts: UserAccounts  # user create/update: validates and hashes passwords
    lockout: Lockout
    passwords: Passwords
    tokens: TokenIssuer
    authenticator: Authenticator
    policy: AccessPolicy
    token_service: TokenService
    services: list = field(default_factory=list)
    lockout_sync: Optional[LockoutSync] = None  # the lockout shared with the other nodes
    lockout_records: Optional[LockoutRecords] = None  # the locks by name: listed, unlocked


def build_access(config: Any, db: Any, reactor: Any, *, accesslog: Any = None,
                 trusted: Any = None, threads: bool = True, secret: Optional[bytes] = None,
                 passwords: Optional[Passwords] = None, bus: Any = None,
                 metrics: Any = None, image_policy: Any = None) -> AccessControl:
    """Build the access-control parts.

    ``accesslog``: where ``/token`` requests are recorded (the pulls' access log);
    ``bus``: the :class:`zmirror.cluster.IBus` this node shares state over
    (None: a node alone); ``metrics``: the :class:`zmirror.metrics.Metrics` the
    policy and the token service count authentication failures and tokens in;
    ``image_policy``: the :class:`zmirror.auth.imagepolicy.ImagePolicy` every pull is
    checked by (default: one over a :class:`~zmirror.db.policyrules.PolicyRuleStore` on ``db``).

    On PostgreSQL (several nodes may share the database) the token signing
    secret is the cluster's (:func:`zmirror.auth.tokens.load_secret`), the
    lockout's key digests are derived from it and a :class:`LockoutSync`
    shares the failure counts over ``bus`` and ``login_failures``.  On SQLite
    (one node) nothing is shared: ``token.key`` and an in-memory lockout.

    ``threads``: run password hashing on a small dedicated thread pool (started
    and stopped by the returned ``services``); False runs it inline (tests).
    """
    trusted = trusted or TrustedProxies(config.server.trusted_proxies)
    services: list = []
    if passwords is None:
        passwords = _passwords(config, reactor, threads, services)
    if secret is None:
        secret = load_secret(config, reactor)  # blocking, at start
    clustered = getattr(db, "dialect", "sqlite") == "postgresql"
    admin_username = config.admin.username
    users = UserStore(db, reactor, admin_username=admin_username)
    whitelists = WhitelistStore(db, reactor)
    whitelist = Whitelist(whitelists)
    if image_policy is None:
        image_policy = ImagePolicy(PolicyRuleStore(db, reactor), metrics=metrics)
    # [lockout] thresholds; zmirror.reload.Reloader re-applies them on SIGHUP
    lockout = Lockout(reactor, secret=secret if clustered else None,
                      **lockout_settings(getattr(config, "lockout", None)))
    lockout_sync = None
    node = getattr(getattr(config, "server", None), "node", "") or ""
    if clustered:
        lockout_sync = LockoutSync(lockout, bus, db, clock=reactor, node=node)
    lockout_records = LockoutRecords(lockout, LockoutStore(db), clock=reactor, node=node,
                                     shared=clustered)
    tokens = TokenIssuer(secret, reactor, service=SERVICE)
    authenticator = Authenticator(users, passwords, lockout, clock=reactor,
                                  admin_username=admin_username)
    policy = AccessPolicy(
        whitelist=whitelist, users=users, tokens=tokens, authenticator=authenticator,
        mode=config.access.anonymous, trusted=trusted, external_url=config.server.external_url,
        metrics=metrics, image_policy=image_policy,
    )
    token_service = TokenService(tokens=tokens, authenticator=authenticator, policy=policy,
                                 users=users, clock=reactor, trusted=trusted, accesslog=accesslog,
                                 metrics=metrics)
    services.append(CallbackService(start=lambda: _load(whitelist, users)))
    if lockout_sync is not None:
        # stops (writes what is queued) before the DatabaseService closes the pools
        services.append(CallbackService(start=lockout_sync.start, stop=lockout_sync.stop))
    services.append(CallbackService(start=lockout_records.start, stop=lockout_records.stop))
    return AccessControl(
        users=users, whitelists=whitelists, whitelist=whitelist,
        accounts=UserAccounts(users, passwords), lockout=lockout, passwords=passwords,
        tokens=tokens, authenticator=authenticator, policy=policy, token_service=token_service,
        services=services, lockout_sync=lockout_sync, lockout_records=lockout_records,
    )


def _passwords(config: Any, reactor: Any, threads: bool, services: list) -> Passwords:
    """One bound on password verifications for registry logins and the admin's Basic
    auth: that many slots (and threads), that many waiting, then 429.  With
    ``threads`` the hashing runs on its own pool, started and stopped by a service
    appended to ``services``."""
    concurrency, queue = verification_limits(getattr(config, "lockout", None))
    if not threads:
        return Passwords(run=None, clock=reactor, concurrency=concurrency, queue=queue)
    pool = ThreadPool(minthreads=0, maxthreads=concurrency, name="zmirror-passwords")

    def run(f, *args):
        return deferToThreadPool(reactor, pool, f, *args)

    services.append(CallbackService(start=pool.start, stop=pool.stop))
    return Passwords(run=run, clock=reactor, concurrency=concurrency, queue=queue)


def _load(whitelist: Whitelist, users: Any) -> None:
    """Read the whitelist and the users at start (a failure is retried on demand)."""

    async def go():
        await whitelist.load()
        await users.load()

    Deferred.fromCoroutine(go()).addErrback(
        lambda f: log.failure("loading whitelist/users failed (retried on demand)", f))


__all__ = ["AccessControl", "build_access", "SERVICE", "verification_limits"]
