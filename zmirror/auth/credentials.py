"""Checking a registry user's username and password (token endpoint and Basic auth).

:meth:`Authenticator.authenticate` applies the brute-force lockout, looks the
user up, verifies the password (constant-time; unknown and disabled users cost
the same as real ones), re-hashes legacy MD5 hashes after a success and records
the login time.  :func:`parse_basic` is the one parser of ``Authorization:
Basic`` headers.

Design: docs/design/auth.md.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Optional, Union

from werkzeug.datastructures import Authorization

from zmirror.auth.lockout import Locked, Lockout, printable_name
from zmirror.db.users import USERNAME_RE


# the attempted account name as the access log records it
ATTEMPTED_NAME_CHARS = 64

ADMIN_LOGIN_MESSAGE = ("the admin account cannot be used for docker login; "
                       "create a registry user")


class AdminAccountLogin(Exception):
    """A registry login (``/token``, Basic auth on ``/v2/``) with the admin
    account's name: refused the same whatever the password (it is not checked)
    and not counted as a failed guess.  ``message`` is what clients are told."""

    message = ADMIN_LOGIN_MESSAGE

    def __init__(self) -> None:
        super().__init__(self.message)


def attempted_name(username: Any) -> str:
    """``username`` as a log may show it: at most :data:`ATTEMPTED_NAME_CHARS`
    characters, every one printable (others become ``?``)."""
    return printable_name(username, ATTEMPTED_NAME_CHARS)


def parse_basic(header: Union[bytes, str, None]) -> Optional[tuple[str, str]]:
    """``(username, password)`` from an ``Authorization: Basic`` value, or None if malformed.

    The credentials are UTF-8; the password is everything after the first ':'
    (it may contain more).  None for another scheme, bad base64, bad UTF-8 or
    a missing ':' (RFC 7617 requires it).
    """
    if not header:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    try:
        auth = Authorization.from_header(header.strip())
    except ValueError:  # non-ASCII in the base64 part (werkzeug lets that through)
        return None
    if auth is None or auth.type != "basic":
        return None
    username, password = auth.username or "", auth.password or ""
    if not password and not _ends_with_colon(header):
        return None  # werkzeug reads "user" (no ':') as "user:"
    return username, password


def _ends_with_colon(header: str) -> bool:
    try:
        raw = base64.b64decode(header.strip().partition(" ")[2].strip(" \t"), validate=True)
    except (binascii.Error, ValueError):
        return False
    return raw.endswith(b":")


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

    def is_admin_name(self, username: Any) -> bool:
        """Whether ``username`` is the admin account's name (case-insensitive)."""
        return bool(self.admin_username and isinstance(username, str)
                    and username.lower() == self.admin_username.lower())

    async def authenticate(self, username: str, password: str, ip: str) -> Optional[dict]:
        """The user's auth row on success; None for bad credentials.

        Raises :class:`AdminAccountLogin` for the admin account's name, at once:
        the password is not looked at and nothing is counted.

        Raises :class:`~zmirror.auth.lockout.Locked` (the password is then not
        checked) while the account or address is locked out, while as many of
        its logins as its limit allows are failed or being checked, or
        (:class:`~zmirror.auth.passwords.Busy`) while the verification queue
        is full.
        """
        # Registry accounts are counted apart from the admin's (the admin API uses
        # the bare name): failed registry logins as "admin" must not lock the
        # admin out of the web UI.  Failures per IP are shared.
        if self.is_admin_name(username):
            raise AdminAccountLogin()
        account = "user:" + (username if isinstance(username, str) else "")[:64]
        self.lockout.enforce(account, ip)
        row = None
        if (isinstance(username, str) and isinstance(password, str)
                and USERNAME_RE.match(username) and len(password) <= 1024):
            row = await self.users.get_by_username(username)
        usable = row is not None and bool(row["enabled"])
        if usable and self._is_cached(password, row, username):
            # verified a moment ago (clients sending Basic on every request): no
            # verification, so nothing to count as in flight
            self.lockout.success(account, ip)
            return await self._succeeded(row, None)
        # counted as in flight until the outcome is recorded; leaving the block
        # (an error, the client going away) ends it too
        with self.lockout.attempt(account, ip) as attempt:
            if not usable:
                await self.passwords.dummy_verify(password if isinstance(password, str) else "")
                attempt.failure()
                return None
            ok, new_hash = await self.passwords.verify(password, row["password_hash"],
                                                       account=username)
            if not ok:
                attempt.failure()
                return None
            attempt.success()
        return await self._succeeded(row, new_hash)

    def _is_cached(self, password: Any, row: dict, username: str) -> bool:
        is_cached = getattr(self.passwords, "is_cached", None)
        return bool(is_cached is not None and isinstance(password, str)
                    and is_cached(password, row["password_hash"], account=username))

    async def _succeeded(self, row: dict, new_hash: Optional[str]) -> dict:
        auth = {k: row[k] for k in ("id", "username", "password_hash", "enabled", "updated_at")}
        auth["scopes"] = list(row.get("scopes") or ())
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


__all__ = ["ADMIN_LOGIN_MESSAGE", "AdminAccountLogin", "Authenticator", "Locked", "attempted_name",
           "auth_scheme", "parse_basic"]
