"""Brute-force protection for logins (registry users and the admin account).

After ``max_account`` failed logins for one account, or ``max_ip`` from one
client address, within ``window`` seconds, that account / address is locked
for ``cooldown`` seconds: :meth:`Lockout.check` then returns the seconds left
(callers answer 429 with ``Retry-After``) and the password is not even looked
at.  A success clears the account's failures (not the address's, so one valid
account cannot be used to reset an attacker's address).

Usage::

    wait = lockout.check(account, ip)      # 0 → go ahead, else seconds to wait
    if wait: answer 429, Retry-After: ceil(wait)
    ... verify ...
    lockout.failure(account, ip) / lockout.success(account, ip)

Failures are logged with account and address, never the password.  Memory is
bounded: stale entries are pruned and at most ``max_keys`` keys are tracked.

The thresholds come from ``[lockout]`` in config.toml (:func:`settings`;
defaults 10 per account / 30 per address in 600 s, 300 s cool-down) and
:meth:`Lockout.configure` changes them on SIGHUP; failures already counted and
locks in force are kept.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Any

from twisted.logger import Logger

log = Logger()


class Locked(Exception):
    """Raised by :meth:`Lockout.enforce` while locked; ``retry_after`` in whole seconds."""

    def __init__(self, retry_after: int):
        self.retry_after = retry_after
        super().__init__(f"too many failed logins, retry in {retry_after} s")


def settings(section: Any) -> dict:
    """:class:`Lockout` keyword arguments from a ``[lockout]`` config section
    (:class:`zmirror.config.LockoutConfig`); ``{}`` (the defaults) for None."""
    if section is None:
        return {}
    return dict(max_account=section.max_account_failures, max_ip=section.max_ip_failures,
                window=float(section.window), cooldown=float(section.cooldown))


class Lockout:
    def __init__(self, clock: Any, *, max_account: int = 10, max_ip: int = 30,
                 window: float = 600.0, cooldown: float = 300.0, max_keys: int = 100_000):
        self.clock = clock
        self.max_keys = max_keys
        self._failures: "OrderedDict[str, deque]" = OrderedDict()
        self._locked: dict[str, float] = {}
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

    @staticmethod
    def _keys(account: str, ip: str) -> list[tuple[str, str]]:
        keys = []
        if account:
            keys.append(("account", "a:" + account.lower()))
        if ip:
            keys.append(("ip", "i:" + ip))
        return keys

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

    def failure(self, account: str, ip: str, *, what: str = "login") -> None:
        now = self.clock.seconds()
        log.warn("failed {what} for account {account!r} from {ip}", what=what,
                 account=(account or "")[:100], ip=ip)
        for kind, key in self._keys(account, ip):
            limit = self.max_account if kind == "account" else self.max_ip
            q = self._failures.get(key)
            if q is None:
                q = self._failures[key] = deque(maxlen=limit)
            else:
                self._failures.move_to_end(key)
                if q.maxlen != limit:  # the limit was reconfigured
                    q = self._failures[key] = deque(q, maxlen=limit)
            q.append(now)
            while q and q[0] < now - self.window:
                q.popleft()
            if len(q) >= limit and key not in self._locked:
                self._locked[key] = now + self.cooldown
                log.warn("{kind} {key} locked for {s:.0f}s after {n} failed logins",
                         kind=kind, key=key[2:][:100], s=self.cooldown, n=len(q))
        self._prune(now)

    def success(self, account: str, ip: str) -> None:
        if account:
            key = "a:" + account.lower()
            self._failures.pop(key, None)

    def _prune(self, now: float) -> None:
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)  # locks stay until they expire
        if len(self._locked) > self.max_keys:
            for key in [k for k, until in self._locked.items() if until <= now]:
                del self._locked[key]
        # drop expired locks and empty windows occasionally (oldest first)
        for key in list(self._failures)[:64]:
            q = self._failures[key]
            if (not q or q[-1] < now - self.window) and self._locked.get(key, 0) <= now:
                del self._failures[key]
                self._locked.pop(key, None)
