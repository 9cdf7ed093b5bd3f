"""Brute-force protection for logins (registry users and the admin account).

After too many failed logins of one account or from one address within a
window, that account / address is locked for a cool-down (:class:`Locked`:
429 with ``Retry-After``) and the password is not looked at; logins being
checked count too (:meth:`Lockout.attempt`).  Several nodes share the counts
through :mod:`zmirror.auth.lockoutsync`.  See docs/design/auth.md, "Login lockout".
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import ipaddress
import itertools
import math
import os
import re
from array import array
from collections import Counter, OrderedDict
from typing import Any, Iterable, Optional

from twisted.logger import Logger

log = Logger()


# Retry-After (seconds) when the attempts in flight fill the limit but no lock is in force
IN_FLIGHT_RETRY_AFTER = 1

# size of a key's digest (bytes) and of the names in log lines (characters)
KEY_DIGEST_SIZE = 16
LABEL_CHARS = 64

ACCOUNT, ADDRESS = b"a", b"i"  # the key's first byte: what it counts
KEY_SIZE = 1 + KEY_DIGEST_SIZE
_KEY_HEX = re.compile(r"[0-9a-f]{%d}" % (2 * KEY_SIZE))

# how far ahead of this node's clock another node's failure may be (clock skew)
MAX_SKEW = 60.0


# the prefix of the registry logins' accounts (zmirror.auth.credentials): the admin
# API counts the bare name, so failed registry logins never lock the admin out
REGISTRY_ACCOUNT = "user:"
MAX_NAMES = 10_000  # the names remembered for the keys this node counted


def printable_name(name: Any, limit: int = LABEL_CHARS) -> str:
    """``name`` as logs and lists may show it: at most ``limit`` characters,
    every one printable (others become ``?``)."""
    if not isinstance(name, str):
        return ""
    return "".join(c if c.isprintable() else "?" for c in name[:limit])


def address_bucket(ip: str) -> str:
    """What failures from ``ip`` are counted under: the IPv4 address itself
    (also for an IPv4-mapped IPv6 address), the /64 of an IPv6 address, or the
    text as given if it is no IP address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network(((int(addr) >> 64) << 64, 64)))
    return str(addr)


class Locked(Exception):
    """Raised while a login must not be checked now (answer 429 with
    ``Retry-After: retry_after``, whole seconds).

    ``reason``: "locked" (too many failed logins), "in_flight" (too many
    logins of the account / address being checked right now) or, for the
    subclass :class:`zmirror.auth.passwords.Busy`, "busy".  ``message`` is
    what clients are told.
    """

    reason = "locked"

    def __init__(self, retry_after: int, message: str = "", reason: str = ""):
        self.retry_after = max(1, int(retry_after))
        if reason:
            self.reason = reason
        self.message = message or (f"too many failed logins; retry in {self.retry_after} seconds")
        super().__init__(self.message)


def settings(section: Any) -> dict:
    """:class:`Lockout` keyword arguments from a ``[lockout]`` config section
    (:class:`zmirror.config.LockoutConfig`); ``{}`` (the defaults) for None."""
    if section is None:
        return {}
    return dict(max_account=section.max_account_failures, max_ip=section.max_ip_failures,
                window=float(section.window), cooldown=float(section.cooldown))


def derive_key(secret: bytes) -> bytes:
    """The digest key of the lockout from the cluster's shared token secret
    (its own label: it reveals nothing about the signing keys)."""
    return hmac.new(secret, b"zmirror-lockout-keys-v1", hashlib.sha256).digest()


def parse_key(value: Any) -> Optional[bytes]:
    """A key from its hex form (events, ``login_failures.key``), or None."""
    if not isinstance(value, str) or not _KEY_HEX.fullmatch(value):
        return None
    key = bytes.fromhex(value)
    return key if key[:1] in (ACCOUNT, ADDRESS) else None


def _is_key(key: Any) -> bool:
    return isinstance(key, bytes) and len(key) == KEY_SIZE and key[:1] in (ACCOUNT, ADDRESS)


def finite_time(value: Any) -> Optional[float]:
    """``value`` (a time from an event or a row) as a finite float, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return value if math.isfinite(value) else None


class Lockout:
    """The decisions of one node, synchronous and in memory.

    ``secret``: the cluster's shared token secret; the digests of the keys
    are then the same on every node
    (:class:`~zmirror.auth.lockoutsync.LockoutSync` tells the others by
    key).  Without it (one node) they are keyed by a random per-process key.
    ``listener`` (given by :meth:`listen`; :class:`~zmirror.auth.lockoutsync.LockoutSync`):
    told of every failure (``failed(keys, at)``) and of every success that
    cleared an account (``cleared(key)``); it must not block.
    """

    def __init__(self, clock: Any, *, max_account: int = 10, max_ip: int = 30,
                 window: float = 600.0, cooldown: float = 300.0, max_keys: int = 100_000,
                 secret: Optional[bytes] = None):
        self.clock = clock
        self.max_keys = max_keys
        # keys the digests: unpredictable; per process, or the cluster's
        self._secret = derive_key(secret) if secret is not None else os.urandom(32)
        self.listener: Any = None
        # key → failure times (array of doubles, oldest first, at most the limit)
        self._failures: "OrderedDict[bytes, array]" = OrderedDict()
        self._locked: dict[bytes, float] = {}
        self._in_flight: dict[bytes, int] = {}  # key → attempts being checked now
        # key → (kind, name, login) of the keys this node counted a failure of
        self._names: "OrderedDict[bytes, tuple[str, str, str]]" = OrderedDict()
        self._lock_watchers: list = []  # told of every lock this node starts
        self.configure(max_account=max_account, max_ip=max_ip, window=window, cooldown=cooldown)

    def configure(self, *, max_account: int, max_ip: int, window: float, cooldown: float) -> None:
        """Set the thresholds (at start and on SIGHUP).  Counted failures and
        current locks stay; the new limits apply from the next failure."""
        for name, value in (("max_account", max_account), ("max_ip", max_ip),
                            ("window", window), ("cooldown", cooldown)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"lockout {name} must be a positive number, got {value!r}")
        self.max_account = int(max_account)
        self.max_ip = int(max_ip)
        self.window = float(window)
        self.cooldown = float(cooldown)

    def _key(self, what: bytes, name: str) -> bytes:
        """The fixed-size key of a normalized account / address bucket."""
        h = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), key=self._secret,
                            digest_size=KEY_DIGEST_SIZE, person=b"zmirror-lockout")
        return what + h.digest()

    def _keys(self, account: str, ip: str) -> list[tuple[str, bytes]]:
        keys = []
        if account:
            keys.append(("account", self._key(ACCOUNT, str(account).lower())))
        if ip:
            keys.append(("ip", self._key(ADDRESS, address_bucket(str(ip)))))
        return keys

    @staticmethod
    def _label(kind: str, account: str, ip: str) -> str:
        """A readable, truncated name for log lines."""
        name = str(account) if kind == "account" else address_bucket(str(ip))
        return name[:LABEL_CHARS]

    def failures(self, account: str = "", ip: str = "") -> int:
        """Failures in the window for ``account`` (or, without it, for ``ip``)."""
        keys = self._keys(account, "" if account else ip)
        return self._recent(keys[0][1], self.clock.seconds()) if keys else 0

    def check(self, account: str, ip: str) -> float:
        """Seconds until ``account``/``ip`` may try again (0: allowed now)."""
        now = self.clock.seconds()
        wait = 0.0
        for _kind, key in self._keys(account, ip):
            until = self._locked.get(key)
            if until is None:
                continue
            if until <= now:
                del self._locked[key]
                self._failures.pop(key, None)
                continue
            wait = max(wait, until - now)
        return wait

    def retry_after(self, account: str, ip: str) -> int:
        """:meth:`check` rounded up to whole seconds (for ``Retry-After``)."""
        wait = self.check(account, ip)
        return int(math.ceil(wait)) if wait > 0 else 0

    def enforce(self, account: str, ip: str) -> None:
        """Raise :class:`Locked` while locked."""
        r = self.retry_after(account, ip)
        if r:
            raise Locked(r)

    def attempt(self, account: str, ip: str) -> "Attempt":
        """Start a login attempt, counted as in flight until it ends.

        Raises :class:`Locked` (the caller must not verify the password) while
        the account or the address is locked, or while its failures in the
        window plus its attempts in flight reach its limit.
        """
        self.enforce(account, ip)
        now = self.clock.seconds()
        keys = self._keys(account, ip)
        for kind, key in keys:
            limit = self.max_account if kind == "account" else self.max_ip
            if self._recent(key, now) + self._in_flight.get(key, 0) >= limit:
                log.info("login for {kind} {key} refused: {n} attempts in flight",
                         kind=kind, key=self._label(kind, account, ip),
                         n=self._in_flight.get(key, 0))
                raise Locked(IN_FLIGHT_RETRY_AFTER,
                             "too many logins for this account or address at once; retry in "
                             f"{IN_FLIGHT_RETRY_AFTER} seconds", reason="in_flight")
        for _kind, key in keys:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return Attempt(self, account, ip, [key for _kind, key in keys])

    def in_flight(self, account: str = "", ip: str = "") -> int:
        """Attempts in flight for ``account`` (or, without it, for ``ip``)."""
        keys = self._keys(account, "" if account else ip)
        return self._in_flight.get(keys[0][1], 0) if keys else 0

    def _end(self, keys: list[bytes]) -> None:
        for key in keys:
            n = self._in_flight.get(key, 0) - 1
            if n > 0:
                self._in_flight[key] = n
            else:
                self._in_flight.pop(key, None)

    def _recent(self, key: bytes, now: float) -> int:
        q = self._failures.get(key)
        if not q:
            return 0
        _forget_before(q, now - self.window)
        return len(q)

    def _limit(self, key: bytes) -> int:
        return self.max_account if key[:1] == ACCOUNT else self.max_ip

    def _count(self, key: bytes, at: float, now: float) -> int:
        """Count a failure of ``key`` at ``at`` (``now`` for this node's own, an
        earlier or slightly later time for another node's); the number of
        failures if it locked ``key`` now, else 0."""
        limit = self._limit(key)
        until = self._locked.get(key)
        if until is not None and until <= at:
            # the lock had run out before this failure: it starts a new count
            # (what check() does before a login of this node)
            del self._locked[key]
            self._failures.pop(key, None)
        q = self._failures.get(key)
        if q is None:
            q = self._failures[key] = array("d")
        else:
            self._failures.move_to_end(key)
        if not q or at >= q[-1]:
            q.append(at)
        else:  # another node's failure, late: keep the times in order
            bisect.insort(q, at)
        if len(q) > limit:  # only the newest ``limit`` matter (also after a reconfigure)
            del q[:len(q) - limit]
        _forget_before(q, now - self.window)
        if len(q) >= limit and key not in self._locked:
            until = min(q[-1], now) + self.cooldown
            if until > now:
                self._locked[key] = until
                return len(q)
        return 0

    def failure(self, account: str, ip: str, *, what: str = "login") -> None:
        now = self.clock.seconds()
        log.warn("failed {what} for account {account!r} from {ip}", what=what,
                 account=str(account or "")[:LABEL_CHARS], ip=str(ip or "")[:LABEL_CHARS])
        keys = self._keys(account, ip)
        for kind, key in keys:
            self._remember_name(key, kind, account, ip)
            n = self._count(key, now, now)
            if n:
                log.warn("{kind} {key} locked for {s:.0f}s after {n} failed logins",
                         kind=kind, key=self._label(kind, account, ip), s=self.cooldown, n=n)
                self._tell_locked(key, n, now)
        self._prune(now)
        self._tell("failed", [key for _kind, key in keys], now)

    def success(self, account: str, ip: str) -> None:
        if account:
            key = self._key(ACCOUNT, str(account).lower())
            if self._failures.pop(key, None):
                self._tell("cleared", key)

    # --- the locks, by name (GET /api/lockouts, `zmirror user locked`) -------------------

    def _remember_name(self, key: bytes, kind: str, account: str, ip: str) -> None:
        if kind == "account":
            name, login = str(account), "admin"
            if name.startswith(REGISTRY_ACCOUNT):
                name, login = name[len(REGISTRY_ACCOUNT):], "registry"
            entry = ("account", printable_name(name), login)
        else:
            entry = ("address", printable_name(address_bucket(str(ip))), "")
        self._names[key] = entry
        self._names.move_to_end(key)
        while len(self._names) > MAX_NAMES:
            self._names.popitem(last=False)

    def describe(self, key: bytes) -> dict:
        """What ``key`` counts: ``kind`` (account / address), ``name`` and, of an
        account, ``login`` (registry / admin); the name is '' when this node never
        saw it (another node's failures)."""
        kind, name, login = self._names.get(
            key, ("account" if key[:1] == ACCOUNT else "address", "", ""))
        return {"key": key.hex(), "kind": kind, "name": name, "login": login}

    def locks(self) -> list[dict]:
        """The locks in force on this node: :meth:`describe` with ``failures``,
        ``until`` (this node's clock) and ``locked_at`` (its last failure)."""
        now = self.clock.seconds()
        out = []
        for key, until in list(self._locked.items()):
            if until <= now:
                continue
            q = self._failures.get(key)
            out.append({**self.describe(key), "failures": len(q) if q else 0,
                        "locked_at": until - self.cooldown, "until": until})
        return out

    def keys_named(self, name: str) -> list[bytes]:
        """The keys an unlock of ``name`` lifts: an address's (IPv4, IPv6 or the
        /64 it is counted under), else the account's for registry logins and
        for the admin API."""
        name = str(name or "").strip()
        if not name:
            return []
        try:
            bucket = address_bucket(str(ipaddress.ip_network(name, strict=False).network_address)
                                    if "/" in name else name)
            ipaddress.ip_address(bucket.split("/")[0])
        except ValueError:
            return [self._key(ACCOUNT, (REGISTRY_ACCOUNT + name).lower()),
                    self._key(ACCOUNT, name.lower())]
        return [self._key(ADDRESS, bucket)]

    def release(self, key: bytes) -> bool:
        """Lift the lock of ``key`` and forget its failures (an admin's unlock);
        whether it was locked."""
        was = self._locked.pop(key, None) is not None
        self._failures.pop(key, None)
        if was:
            log.info("lockout: {kind} {name} unlocked", kind=self.describe(key)["kind"],
                     name=self.describe(key)["name"] or key.hex()[:12])
        return was

    def watch_locks(self, watcher: Any) -> None:
        """Tell ``watcher`` (``locked(info)``, :meth:`describe` with ``failures``,
        ``locked_at``, ``until``) of every lock this node's own failures start."""
        self._lock_watchers.append(watcher)

    def _tell_locked(self, key: bytes, n: int, now: float) -> None:
        info = {**self.describe(key), "failures": n, "locked_at": now,
                "until": self._locked.get(key, now + self.cooldown)}
        for watcher in self._lock_watchers:
            try:
                watcher.locked(info)
            except Exception:  # recording must never fail a login
                log.failure("lockout: recording a lock failed")

    def listen(self, listener: Any) -> None:
        """Tell ``listener`` of every failure and of every success that cleared an
        account from now on (one listener: the cluster's sharing)."""
        self.listener = listener

    def _tell(self, what: str, *args: Any) -> None:
        listener = self.listener
        if listener is None:
            return
        try:
            getattr(listener, what)(*args)
        except Exception:  # sharing must never fail a login
            log.failure("lockout: telling the other nodes failed")

    # --- what the other nodes counted (LockoutSync) ----------------------------------------

    def record_remote(self, keys: Iterable[bytes], at: float) -> int:
        """Count another node's failure of ``keys`` at ``at`` (its clock): as a
        failure at that time, not logged with a name (this node never saw one).
        Keys that are no lockout key and times outside the window (or more than
        :data:`MAX_SKEW` ahead) are ignored; returns the keys counted."""
        now = self.clock.seconds()
        at = finite_time(at)
        if at is None or at < now - self.window or at > now + MAX_SKEW:
            return 0
        counted = 0
        for key in keys:
            if not _is_key(key):
                continue
            counted += 1
            n = self._count(key, at, now)
            if n:
                log.info("{kind} {key} locked for {s:.0f}s after {n} failed logins on the nodes",
                         kind="account" if key[:1] == ACCOUNT else "ip", key=key.hex()[:12],
                         s=self._locked[key] - now, n=n)
        self._prune(now)
        return counted

    def clear_remote(self, key: bytes) -> None:
        """Another node's success cleared an account's failures (the lock stays)."""
        if isinstance(key, bytes) and key[:1] == ACCOUNT:
            self._failures.pop(key, None)

    def merge(self, rows: Iterable[tuple[bytes, float]]) -> None:
        """Merge failures read from ``login_failures`` (``(key, at)``, any order)
        with what this node counted: per key the union of both (a time in both
        counts once: it is the same failure), replayed as if each had been
        counted when it happened; a lock this node holds stays."""
        now = self.clock.seconds()
        cutoff = now - self.window
        by_key: dict[bytes, list[float]] = {}
        for key, at in rows:
            at = finite_time(at)
            if at is None or not cutoff <= at <= now + MAX_SKEW:
                continue
            if _is_key(key):
                by_key.setdefault(key, []).append(at)
        for key, times in by_key.items():
            stored, mine = Counter(times), Counter(self._failures.get(key, ()))
            merged = sorted((stored | mine).elements())
            q, until = self._replay(key, merged, now)
            self._failures[key] = q
            self._failures.move_to_end(key)
            if until > now and self._locked.get(key, 0.0) < until:
                self._locked[key] = until
        self._prune(now)

    def _replay(self, key: bytes, times: list[float], now: float) -> tuple[array, float]:
        limit = self._limit(key)
        q, until = array("d"), 0.0
        for t in times:
            if until and until <= t:
                q, until = array("d"), 0.0
            q.append(t)
            if len(q) > limit:
                del q[:len(q) - limit]
            _forget_before(q, t - self.window)
            if len(q) >= limit and not until:
                until = min(t, now) + self.cooldown
        if until and until <= now:  # ran out: check() would have dropped the count
            q, until = array("d"), 0.0
        _forget_before(q, now - self.window)
        return q, until

    def _prune(self, now: float) -> None:
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)  # locks stay until they expire
        if len(self._locked) > self.max_keys:
            for key in [k for k, until in self._locked.items() if until <= now]:
                del self._locked[key]
        # drop expired locks and empty windows occasionally (oldest first)
        for key in list(itertools.islice(self._failures, 64)):  # not a copy of every key
            q = self._failures[key]
            if (not q or q[-1] < now - self.window) and self._locked.get(key, 0) <= now:
                del self._failures[key]
                self._locked.pop(key, None)


def _forget_before(q: array, cutoff: float) -> None:
    """Drop the failure times older than ``cutoff`` (``q`` is oldest first)."""
    n = 0
    while n < len(q) and q[n] < cutoff:
        n += 1
    if n:
        del q[:n]


class Attempt:
    """One login attempt in flight (from :meth:`Lockout.attempt`).

    ``failure()`` / ``success()`` record the outcome and end it; ``end()``
    ends it without an outcome (nothing was verified, or the caller went
    away).  Ending twice is harmless; use it as a context manager so every
    path ends it.
    """

    def __init__(self, lockout: Lockout, account: str, ip: str, keys: list[bytes]):
        self.lockout = lockout
        self.account = account
        self.ip = ip
        self._keys = keys
        self.ended = False

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.lockout._end(self._keys)

    def failure(self, *, what: str = "login") -> None:
        if not self.ended:
            self.lockout.failure(self.account, self.ip, what=what)
        self.end()

    def success(self) -> None:
        if not self.ended:
            self.lockout.success(self.account, self.ip)
        self.end()

    def __enter__(self) -> "Attempt":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end()


class NullAttempt:
    """An :class:`Attempt` stand-in for callers without a lockout."""

    ended = False

    def end(self) -> None:
        pass

    def failure(self, *, what: str = "login") -> None:
        pass

    def success(self) -> None:
        pass

    def __enter__(self) -> "NullAttempt":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass
