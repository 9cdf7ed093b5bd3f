"""Checking a registry user's username and password (token endpoint and Basic auth).

:meth:`Authenticator.authenticate` applies the brute-force lockout, looks the
user up, verifies the password (constant-time; unknown and disabled users cost
the same as real ones), re-hashes legacy MD5 hashes after a success and records
the login time.  The admin account of config.toml is never a registry user.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Optional

from zmirror.auth.lockout import Locked, Lockout
from zmirror.db.users import USERNAME_RE


def parse_basic(header: Optional[bytes]) -> Optional[tuple[str, str]]:
    """``(username, password)`` from an ``Authorization: Basic`` value, or None if malformed."""
    if not header:
        return None
    try:
        scheme, _, value = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return None
        raw = base64.b64decode(value.strip(), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if ":" not in text:
        return None
    user, _, password = text.partition(":")
    return user, password


def auth_scheme(header: Optional[bytes]) -> str:
    """The lower-cased scheme of an Authorization header ('' if none)."""
    if not header:
        return ""
    return header.strip().split(b" ", 1)[0].decode("latin-1").lower()


class Authenticator:
    def __init__(self, users: Any, passwords: Any, lockout: Lockout, *, clock: Any,
                 admin_username: Optional[str] = None, login_record_interval: float = 60.0):
        self.users = users
        self.passwords = passwords
        self.lockout = lockout
        self.clock = clock
        self.admin_username = admin_username
        self.login_record_interval = login_record_interval
        self._last_recorded: dict[int, float] = {}

    async def authenticate(self, username: str, password: str, ip: str) -> Optional[dict]:
        """The user's auth row on success; None for bad credentials.

        Raises :class:`~zmirror.auth.lockout.Locked` while the account or
        address is locked out (the password is then not checked).
        """
        # Registry accounts are counted apart from the admin's (the admin API uses
        # the bare name): failed registry logins as "admin" must not lock the
        # admin out of the web UI.  Failures per IP are shared.
        account = "user:" + (username if isinstance(username, str) else "")[:64]
        self.lockout.enforce(account, ip)
        row = None
        if (isinstance(username, str) and isinstance(password, str)
                and USERNAME_RE.match(username) and len(password) <= 1024
                and not (self.admin_username and username.lower() == self.admin_username.lower())):
            row = await self.users.get_by_username(username)
        if row is None or not row["enabled"]:
            await self.passwords.dummy_verify(password if isinstance(password, str) else "")
            self.lockout.failure(account, ip)
            return None
        ok, new_hash = await self.passwords.verify(password, row["password_hash"], account=username)
        if not ok:
            self.lockout.failure(account, ip)
            return None
        self.lockout.success(account, ip)
        auth = {k: row[k] for k in ("id", "username", "password_hash", "enabled", "updated_at")}
        if new_hash:
            updated = await self.users.set_hash(row["id"], new_hash)
            if updated is not None:
                auth = updated
        else:
            self.users.refresh_one(row)
        await self._record_login(row["id"])
        return auth

    async def _record_login(self, uid: int) -> None:
        now = self.clock.seconds()
        last = self._last_recorded.get(uid)
        if last is not None and now - last < self.login_record_interval:
            return
        self._last_recorded[uid] = now
        if len(self._last_recorded) > 10_000:
            self._last_recorded.clear()
        try:
            await self.users.record_login(uid)
        except Exception:
            pass  # last_login_at is informational; never fail a login over it


__all__ = ["Authenticator", "Locked", "parse_basic", "auth_scheme"]
