"""Registry user accounts as the admin manages them (admin API, tests).

The password is checked and hashed here, in the auth layer, and the store
(:class:`zmirror.db.users.UserStore`) only saves the hash: the store holds rows
and runs no password policy.

Design: docs/design/auth.md ("Registry user accounts").
"""

from __future__ import annotations

from typing import Any, Optional

from zmirror.auth.scopes import validate_scopes
from zmirror.config.passwordpolicy import PASSWORD_POLICY
from zmirror.db.errors import InvalidField

PASSWORD_MAX = PASSWORD_POLICY.max_length


def validate_password(password: Any) -> str:
    """Returns ``password`` if it is acceptable as a new password (the one
    :data:`~zmirror.config.passwordpolicy.PASSWORD_POLICY`, the admin's too),
    else raises InvalidField.  Stored passwords are never re-checked: a user
    created under an older rule keeps logging in."""
    problem = PASSWORD_POLICY.problem(password)
    if problem is not None:
        raise InvalidField("password", problem)
    return password


class UserAccounts:
    """Creates and changes registry users: validates and hashes the password
    (on ``passwords``' bounded pool), then calls the store with the hash."""

    def __init__(self, store: Any, passwords: Any):
        self.store = store
        self.passwords = passwords

    async def create(self, username: str, password: str, enabled: bool = True,
                     scopes: Any = None) -> dict:
        """The new user's public row (InvalidField, Conflict as the store raises them).
        ``scopes``: repository patterns (:func:`validate_scopes`; None or ``[]``: everything)."""
        username = self.store.validate_username(username)
        password = validate_password(password)
        scopes = validate_scopes(scopes)
        password_hash = await self.passwords.hash(password)
        return await self.store.create_with_hash(username, password_hash, enabled, scopes=scopes)

    async def update(self, uid: int, password: Optional[str] = None,
                     enabled: Optional[bool] = None, scopes: Any = None) -> dict:
        """Change the password, the enabled flag and/or the scopes (None: unchanged;
        ``[]``: everything); returns the public row.

        Any change ends the user's outstanding tokens (see ``UserStore.update``).
        """
        new_scopes = None if scopes is None else validate_scopes(scopes)
        password_hash = None
        if password is not None:
            password_hash = await self.passwords.hash(validate_password(password))
        return await self.store.update(uid, password_hash=password_hash, enabled=enabled,
                                       scopes=new_scopes)


__all__ = ["UserAccounts", "validate_password", "PASSWORD_MAX", "PASSWORD_POLICY"]
