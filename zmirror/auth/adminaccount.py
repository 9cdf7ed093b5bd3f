"""The admin account: its login (lockout included), the default-password gate and
the password change.  The admin API and ``/metrics`` both log the admin in here
and answer its refusals (the exceptions below) as :func:`refusal_answer` says.
See docs/design/auth.md, "The admin account".
"""

from __future__ import annotations

import dataclasses
import functools
from inspect import isawaitable
from pathlib import Path
from typing import Any, Optional

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from zmirror.auth.adminsecret import Unavailable
from zmirror.auth.credentials import parse_basic
from zmirror.auth.lockout import Locked, NullAttempt
from zmirror.auth.passwords import AdminCredentials, hash_admin_password, same_text
from zmirror.config import DEFAULT_ADMIN_PASSWORD, ConfigError, update_admin_password
from zmirror.db.errors import NotFound
from zmirror.singleflight import Flight

log = Logger()

REALM = b'Basic realm="zmirror-admin"'  # the challenge of a refused admin login


class AccountError(Exception):
    """A refusal of the admin account; ``message`` may be shown to the client."""

    message = ""

    def __init__(self, message: str = ""):
        self.message = message or self.message
        super().__init__(self.message)


class BadCredentials(AccountError):
    """No admin credentials, or wrong ones."""

    message = "invalid username or password"


class NotAdministrator(AccountError):
    """Valid credentials of an enabled registry user, who may pull but not administer."""

    message = "this account may pull images but not administer ZMirror"


class DefaultPasswordInUse(AccountError):
    """The admin's password is still the well-known default: only the session
    check and the password change are allowed."""

    message = "change the default admin password first"


class AccountUnavailable(AccountError):
    """The cluster's admin password has not been read yet (never fall back to
    config.toml's while it may replace it); try again in ``retry_after`` seconds."""

    message = "the admin account is not available: the database cannot be read (see the server log)"
    retry_after = 5


class PasswordRefused(AccountError):
    """A password change refused because of one of its fields."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"invalid input: {field} {reason}")


class PasswordNotStored(AccountError):
    """The new password cannot be stored now (database unreachable, config.toml
    not writable); nothing changed."""


class PasswordConflict(AccountError):
    """The stored password cannot be replaced as asked (config.toml is invalid, or
    the cluster's password changed meanwhile); nothing changed."""


_REFUSAL_STATUS = {
    BadCredentials: 401,
    NotAdministrator: 403,
    DefaultPasswordInUse: 403,
    PasswordConflict: 409,
    AccountUnavailable: 503,
    PasswordNotStored: 503,
}


def refusal_answer(e: Exception) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    """``(status, headers, extra JSON fields)`` of the HTTP answer to a refusal: an
    :class:`AccountError` (a :class:`PasswordRefused` is a 400 on its field, the
    caller's) or a :class:`~zmirror.auth.lockout.Locked` login (a lockout, too many
    logins at once, a full password-check queue: 429).  Shared by the admin API and
    ``/metrics``, so a refused admin login is answered alike on both."""
    if isinstance(e, Locked):
        return 429, {b"Retry-After": str(e.retry_after).encode()}, {"retry_after": e.retry_after}
    headers = {}
    if isinstance(e, BadCredentials):
        headers[b"WWW-Authenticate"] = REALM
    elif isinstance(e, AccountUnavailable):
        headers[b"Retry-After"] = str(e.retry_after).encode()
    return _REFUSAL_STATUS.get(type(e), 500), headers, {}


def basic_credentials(request: Any) -> tuple[str, str]:
    """``(username, password)`` of the request's Basic credentials; raises
    :class:`BadCredentials` when there are none (or they are malformed)."""
    creds = parse_basic(request.getHeader(b"authorization"))
    if creds is None:
        raise BadCredentials("authentication required")
    return creds


async def _maybe(x: Any) -> Any:
    return (await x) if isawaitable(x) else x


class AdminAccount:
    """The admin of this node.

    ``settings``: ``[admin]`` of config.toml (:class:`zmirror.config.AdminConfig`);
    ``config_path``/``data_dir``: the file the password change writes (SQLite);
    ``passwords``: the verification slots and cache (:class:`~zmirror.auth.passwords.Passwords`);
    ``lockout``: the one shared with registry logins (None: no lockout);
    ``users``: the registry users' store (a registry user gets "not an
    administrator" rather than a failed login; None: no users);
    ``cluster_password``: on PostgreSQL the cluster's admin password
    (:class:`~zmirror.auth.adminsecret.ClusterAdminPassword`), which overrides
    ``[admin] password``; None on SQLite.
    """

    def __init__(self, settings: Any, *, config_path: Path, data_dir: Path, passwords: Any,
                 lockout: Any = None, users: Any = None, cluster_password: Any = None):
        self._settings = settings
        self.config_path = config_path
        self.data_dir = data_dir
        self.passwords = passwords
        self.lockout = lockout
        self.users = users
        self.cluster_password = cluster_password
        self._change_lock = DeferredLock()  # one password change at a time

    @property
    def username(self) -> str:
        return self._settings.username

    @property
    def settings(self) -> Any:
        """``[admin]`` as in force now: config.toml's, with the password this
        node wrote there (a reload compares the re-read file against it)."""
        return self._settings

    def reload(self, config: Any) -> None:
        """Apply a re-read config.toml: its ``[admin]`` section.  A new username
        needs a restart: then nothing of ``[admin]`` changes."""
        if config.admin.username == self._settings.username:
            self._settings = config.admin

    def password(self) -> str:
        """The admin password in force: the cluster's hash when there is one
        (PostgreSQL), else ``[admin] password`` of config.toml."""
        cluster = self.cluster_password
        if cluster is not None and cluster.value is not None:
            return cluster.value
        return self._settings.password

    def credentials(self) -> AdminCredentials:
        return AdminCredentials(self._settings.username, self.password(), self.passwords)

    # --- login ---------------------------------------------------------------------------

    async def authenticate(self, username: str, password: str, ip: str) -> str:
        """The admin's name, or :class:`BadCredentials` / :class:`NotAdministrator` /
        :class:`AccountUnavailable`; :class:`~zmirror.auth.lockout.Locked` (too many
        failures, or the password-check queue is full) before anything is verified."""
        cluster = self.cluster_password
        if cluster is not None and not cluster.loaded:
            raise AccountUnavailable()
        admin = self.credentials()
        lockout = self.lockout
        if lockout is not None:
            lockout.enforce(username, ip)
        if admin.cached(username, password):  # verified a moment ago: no slot, not in flight
            if lockout is not None:
                lockout.success(username, ip)
            return username
        # in flight until the outcome is recorded; leaving the block ends it
        with (lockout.attempt(username, ip) if lockout is not None else NullAttempt()) as attempt:
            if await admin.check(username, password):
                attempt.success()
                return username
            try:
                registry_user = await self._is_registry_user(username, password)
            except Locked:
                # the admin password was checked (and wrong): that counts, or a
                # full queue would hide every wrong guess from the lockout
                attempt.failure()
                raise
            if registry_user:
                raise NotAdministrator()
            attempt.failure()
        log.info("admin API: failed login for {user!r} from {ip}", user=username[:64], ip=ip)
        raise BadCredentials()

    async def _is_registry_user(self, username: str, password: str) -> bool:
        """Valid credentials of an enabled registry user."""
        if self.users is None:
            return False
        try:
            row = await _maybe(self.users.get_by_username(username))
        except NotFound:
            row = None
        stored = (row or {}).get("password_hash") or ""
        if not row or not stored:
            await self.passwords.dummy_verify(password)
            return False
        ok, _new = await self.passwords.verify(password, stored, account=username)
        return bool(ok) and bool(row.get("enabled", True))

    def default_password_in_use(self, password: Optional[str]) -> bool:
        """The admin password is the well-known default: configured as plain text,
        or (a hash of it) ``password``, the one the authenticated request carries."""
        cluster = self.cluster_password
        overridden = cluster is not None and cluster.value is not None  # a hash, never plain
        if not overridden and self._settings.password == DEFAULT_ADMIN_PASSWORD:
            return True
        return password is not None and same_text(password, DEFAULT_ADMIN_PASSWORD)

    # --- the password change ---------------------------------------------------------------

    async def change_password(self, current: str, new: str) -> None:
        """Replace the admin password, applied at once: a passlib hash in config.toml
        (SQLite), or in the database for every node (PostgreSQL).

        Raises :class:`PasswordRefused` (``current`` is wrong, ``new`` the same),
        :class:`PasswordNotStored`, :class:`PasswordConflict` or
        :class:`~zmirror.auth.lockout.Locked` (the password-check queue is full).
        The change is owned by no caller: one that goes away while the file is
        written cannot leave the file and the running server disagreeing."""
        flight = Flight.start(lambda: self._change(current, new))
        await flight.wait()

    async def _change(self, current: str, new: str) -> None:
        # one change at a time: a second one waits, then must know the new password
        await self._change_lock.acquire()
        try:
            settings = self._settings
            cluster = self.cluster_password
            configured, expected = settings.password, None
            if cluster is not None:
                # checked against the row as it is now, not this node's copy of it
                expected, in_db = await _fresh(cluster)
                if in_db is not None:
                    configured = in_db
            creds = AdminCredentials(settings.username, configured, self.passwords)
            if not await creds.check(settings.username, current):
                raise PasswordRefused("current_password", "is not the current password")
            if same_text(new, current):
                raise PasswordRefused("new_password", "must differ from the current password")
            hashed = await self.passwords.run(hash_admin_password, new)
            if cluster is not None:
                await _store_in_cluster(cluster, expected, hashed)
            else:
                await self._store_in_file(settings, hashed)
        finally:
            self._change_lock.release()

    async def _store_in_file(self, settings: Any, hashed: str) -> None:
        """SQLite: the hash goes into config.toml (every comment kept), then applies here."""
        path = self.config_path
        try:
            await self.passwords.run(functools.partial(
                update_admin_password, path, hashed, data_dir=self.data_dir))
        except ConfigError as e:
            log.error("admin API: cannot change the admin password: {error}", error=str(e))
            raise PasswordConflict("config.toml cannot be updated (see the server log);"
                                   " fix the file or use `zmirror admin-password`") from None
        except OSError as e:
            log.error("admin API: cannot write {path}: {error}", path=str(path),
                      error=e.strerror or type(e).__name__)
            raise PasswordNotStored("config.toml cannot be written (see the server log)") from None
        self._settings = dataclasses.replace(settings, password=hashed)
        self.passwords.forget_admin()
        log.info("admin API: the admin password was changed (config.toml updated)")


async def _fresh(cluster: Any) -> tuple[Optional[str], Optional[str]]:
    try:
        return await cluster.fresh()
    except Unavailable as e:
        log.error("admin API: cannot change the admin password: {error}", error=str(e))
        raise PasswordNotStored("the database cannot be reached (see the server log)") from None


async def _store_in_cluster(cluster: Any, expected: Optional[str], hashed: str) -> None:
    """PostgreSQL: the hash goes into the database (every node applies it within
    2 s); config.toml is left alone (it may be read-only, and the other nodes'
    files could not follow)."""
    try:
        written = await cluster.replace(expected, hashed)
    except Unavailable as e:
        log.error("admin API: cannot change the admin password: {error}", error=str(e))
        raise PasswordNotStored("the database cannot be reached (see the server log)") from None
    if not written:
        raise PasswordConflict("the admin password was changed meanwhile (on another node or "
                               "with `zmirror admin-password`); log in with the new one")
    log.info("admin API: the admin password was changed (in the database, for every node)")


__all__ = ["AdminAccount", "AccountError", "AccountUnavailable", "BadCredentials",
           "DefaultPasswordInUse", "NotAdministrator", "PasswordConflict", "PasswordNotStored",
           "PasswordRefused", "REALM", "basic_credentials"]
