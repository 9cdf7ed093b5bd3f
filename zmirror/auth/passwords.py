"""Password hashing and verification.

Registry users: argon2id (``pbkdf2_sha256`` and the original ZMirror's
unsalted MD5 accepted, MD5 reported for a re-hash); the admin password of
``config.toml``: plain text or a passlib hash.  Comparisons are constant-time;
slow hashing runs through an injected ``run``, at most ``concurrency`` at once
and ``queue`` waiting (beyond: :class:`Busy`); successes are cached briefly.

Design: docs/design/auth.md ("Password hashing and verification").
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import OrderedDict
from typing import Any, Callable, Optional

from passlib.context import CryptContext
from twisted.internet.defer import DeferredSemaphore, maybeDeferred

from zmirror.auth.lockout import Locked
from zmirror.singleflight import Flight

_MD5_HEX = re.compile(r"^[0-9a-fA-F]{32}$")
PASSWORD_MAX = 1024

# OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane (~20-40 ms here).
ARGON2_SETTINGS = dict(argon2__memory_cost=19456, argon2__time_cost=2, argon2__parallelism=1)


def make_context(**overrides: Any) -> CryptContext:
    """The CryptContext for registry users (argon2 default, pbkdf2_sha256 accepted)."""
    kw = dict(schemes=["argon2", "pbkdf2_sha256"], default="argon2", **ARGON2_SETTINGS)
    kw.update(overrides)
    return CryptContext(**kw)


def fast_context() -> CryptContext:
    """Cheap parameters for tests only."""
    return make_context(argon2__memory_cost=256, argon2__time_cost=1, pbkdf2_sha256__rounds=1000)


def is_legacy_md5(stored: str) -> bool:
    return bool(_MD5_HEX.match(stored or ""))


# defaults of [lockout] max_concurrent_verifications / max_queued_verifications
CONCURRENCY = 2
QUEUE = 32
# admin cache keys kept before the evicted ones are dropped from the list
ADMIN_KEYS_MAX = 64
# Retry-After (seconds) when the verification queue is full
BUSY_RETRY_AFTER = 1


class Busy(Locked):
    """Too many password verifications running and queued: answer 429."""

    reason = "busy"

    def __init__(self, retry_after: int = BUSY_RETRY_AFTER):
        super().__init__(retry_after, "too many logins being checked; retry in "
                         f"{max(1, int(retry_after))} seconds", reason="busy")


def _sync_run(f: Callable, *args: Any):
    return maybeDeferred(f, *args)


class Passwords:
    """Hash and verify passwords; ``run`` executes the slow parts off the reactor thread."""

    def __init__(self, context: Optional[CryptContext] = None, run: Optional[Callable] = None,
                 clock: Any = None, cache_ttl: float = 300.0, cache_size: int = 10_000,
                 concurrency: int = CONCURRENCY, queue: int = QUEUE):
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 0:
            raise ValueError(f"queue must be a non-negative integer, got {queue!r}")
        self.context = context or make_context()
        self.run = run or _sync_run
        self.slots = DeferredSemaphore(concurrency)
        self.queue = queue
        self.clock = clock
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self._cache_key = os.urandom(32)
        self._cache: "OrderedDict[bytes, float]" = OrderedDict()
        # the cache keys of the admin's verified passwords (AdminCredentials), so a
        # password change forgets them without costing the registry users theirs
        self._admin_keys: set[bytes] = set()
        # verified against when the user does not exist, so both paths cost the same
        self._dummy = self.context.hash(os.urandom(16).hex())

    # --- synchronous primitives (call them through ``run``) ----------------

    def hash_sync(self, password: str) -> str:
        return self.context.hash(password)

    def verify_sync(self, password: str, stored: str) -> tuple[bool, Optional[str]]:
        """``(ok, new_hash)``: ``new_hash`` is set when the stored hash should be replaced."""
        if not isinstance(password, str) or not isinstance(stored, str) or not stored:
            return False, None
        if is_legacy_md5(stored):
            digest = hashlib.md5(password.encode("utf-8")).hexdigest()
            ok = hmac.compare_digest(digest.encode(), stored.lower().encode())
            return ok, (self.context.hash(password) if ok else None)
        try:
            ok = self.context.verify(password, stored)
        except (ValueError, TypeError):
            return False, None
        if not ok:
            return False, None
        try:
            new = self.context.hash(password) if self.context.needs_update(stored) else None
        except (ValueError, TypeError):
            new = None
        return True, new

    # --- async API ------------------------------------------------------

    @property
    def running(self) -> int:
        """Slow operations holding a slot now."""
        return self.slots.limit - self.slots.tokens

    @property
    def queued(self) -> int:
        """Slow operations waiting for a slot."""
        return len(self.slots.waiting)

    async def slow(self, f: Callable, *args: Any, bounded: bool = True) -> Any:
        """``await run(f, *args)`` in one of the slots.

        ``bounded``: raise :class:`Busy` instead of waiting when every slot is
        taken and the queue is full (logins); False waits in any case (the
        admin's own hashing of new passwords).
        """
        if bounded and self.slots.tokens == 0 and len(self.slots.waiting) >= self.queue:
            raise Busy()
        await self.slots.acquire()  # cancelled while waiting: leaves the queue, holds nothing
        # the slot is released when the work ends, not when this caller goes away
        flight = Flight.start(lambda: self.run(f, *args), on_done=self.slots.release)
        return await flight.wait()

    async def hash(self, password: str) -> str:
        return await self.slow(self.hash_sync, password, bounded=False)

    def is_cached(self, password: str, stored: str, *, account: str = "") -> bool:
        """Whether ``password`` was verified against ``stored`` recently (no slot needed)."""
        return self._cached(self._key(account, password, stored))

    async def verify(self, password: str, stored: str, *, account: str = "") -> tuple[bool, Optional[str]]:
        """Verify ``password`` against ``stored``; positive results are cached briefly.

        Raises :class:`Busy` when the verification queue is full.
        """
        key = self._key(account, password, stored)
        if self._cached(key):
            return True, None
        ok, new = await self.slow(self.verify_sync, password, stored)
        if ok and new is None:
            self._remember(key)
        return ok, new

    async def dummy_verify(self, password: str) -> None:
        """Spend the time of a real verification (unknown or disabled user).

        Raises :class:`Busy` when the verification queue is full.
        """
        await self.slow(self.verify_sync, password if isinstance(password, str) else "",
                        self._dummy)

    # --- positive-result cache --------------------------------------------

    def _key(self, account: str, password: str, stored: str) -> bytes:
        msg = "\0".join((account or "", password or "", stored or "")).encode("utf-8", "surrogatepass")
        return hmac.new(self._cache_key, msg, hashlib.sha256).digest()

    def _now(self) -> Optional[float]:
        return self.clock.seconds() if self.clock is not None else None

    def _cached(self, key: bytes) -> bool:
        now = self._now()
        if now is None or self.cache_ttl <= 0:
            return False
        exp = self._cache.get(key)
        if exp is None:
            return False
        if exp < now:
            self._cache.pop(key, None)
            return False
        return True

    def _remember(self, key: bytes) -> None:
        now = self._now()
        if now is None or self.cache_ttl <= 0:
            return
        self._cache[key] = now + self.cache_ttl
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def forget(self) -> None:
        self._cache.clear()
        self._admin_keys.clear()

    def remember_admin(self, key: bytes) -> None:
        """:meth:`_remember` a verified admin password (forgotten by :meth:`forget_admin`)."""
        self._remember(key)
        if key in self._cache:
            self._admin_keys.add(key)
        if len(self._admin_keys) > ADMIN_KEYS_MAX:
            self._admin_keys &= set(self._cache)  # those evicted meanwhile

    def forget_admin(self) -> None:
        """Forget every cached admin verification (the admin password changed)."""
        for key in self._admin_keys:
            self._cache.pop(key, None)
        self._admin_keys.clear()


# --- the admin account of config.toml --------------------------------------

_admin_context = CryptContext(
    schemes=["argon2", "pbkdf2_sha256", "sha512_crypt", "sha256_crypt", "bcrypt"],
    default="argon2",
    **ARGON2_SETTINGS,
)


def is_hash(configured: str) -> bool:
    """Whether an ``[admin] password`` value is a passlib hash (not plain text)."""
    if not configured.startswith("$"):
        return False
    try:
        return _admin_context.identify(configured, required=False) is not None
    except (ValueError, TypeError):
        return False


def is_wellformed_hash(value: str) -> bool:
    """Whether ``value`` parses as a hash of its scheme (:func:`is_hash` only
    recognises the scheme)."""
    try:
        handler = _admin_context.identify(value, resolve=True)
        handler.from_string(value)
    except Exception:  # passlib: ValueError / TypeError / a missing backend
        return False
    return True


def hash_admin_password(password: str) -> str:
    """A hash suitable for ``[admin] password`` in config.toml."""
    return _admin_context.hash(password)


def verify_admin_sync(password: str, configured: str) -> bool:
    """Constant-time check of ``password`` against the configured value (plain or hash)."""
    if not isinstance(password, str) or not isinstance(configured, str):
        return False
    if is_hash(configured):
        try:
            return bool(_admin_context.verify(password, configured))
        except Exception:  # malformed hash, missing backend (bcrypt) ...
            return False
    a = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(configured.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, b)


def same_text(a: str, b: str) -> bool:
    """Constant-time string equality (for usernames and other secrets)."""
    da = hashlib.sha256((a or "").encode("utf-8", "surrogatepass")).digest()
    db = hashlib.sha256((b or "").encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(da, db)


class AdminCredentials:
    """Checks the ``[admin]`` username/password of config.toml (for the admin API),
    or the cluster's password hash that overrides it on PostgreSQL
    (:mod:`zmirror.auth.adminsecret`): ``configured_password`` is whichever applies.

    ``await check(username, password)`` → bool.  Hash verification runs in one
    of ``passwords``' slots (may raise :class:`Busy`) and successful results
    are cached like users' ones (:meth:`cached`: no slot needed) until
    :meth:`Passwords.forget_admin` (a password change, on every node).
    """

    def __init__(self, username: str, configured_password: str, passwords: Passwords):
        self.username = username
        self._configured = configured_password
        self.passwords = passwords

    @property
    def is_hashed(self) -> bool:
        return is_hash(self._configured)

    def _cache_key(self, password: str) -> bytes:
        return self.passwords._key("\0admin", password, self._configured)

    def cached(self, username: str, password: str) -> bool:
        """True if these are the admin's credentials and a hashed password was
        verified recently (False says nothing: call :meth:`check`)."""
        if not isinstance(password, str) or not self.is_hashed:
            return False
        return same_text(username or "", self.username) and \
            self.passwords._cached(self._cache_key(password))

    async def check(self, username: str, password: str) -> bool:
        user_ok = same_text(username or "", self.username)
        if not isinstance(password, str):
            return False
        if not self.is_hashed:
            return user_ok & verify_admin_sync(password, self._configured)
        key = self._cache_key(password)
        if self.passwords._cached(key):
            return user_ok
        ok = await self.passwords.slow(verify_admin_sync, password, self._configured)
        if ok:
            self.passwords.remember_admin(key)
        return bool(user_ok and ok)
