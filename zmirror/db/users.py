"""Registry users (the ``users`` table): the accounts of ``docker login``.

Public rows never hold the hash; ``get_by_username`` returns the full row for
the login path.  An in-memory copy of the authentication columns lets the
registry check a token's user per request without a query.  The store saves
hashes and never hashes or verifies a password (that is :mod:`zmirror.auth`).

Design: docs/design/database.md ("The stores").
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from twisted.logger import Logger

from zmirror.db.errors import Conflict, InvalidField, NotFound, is_unique_violation
from zmirror.singleflight import SingleFlight

log = Logger()

USERNAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PUBLIC = ("id", "username", "enabled", "created_at", "updated_at", "last_login_at", "scopes")
FULL = PUBLIC + ("password_hash",)
AUTH = ("id", "username", "password_hash", "enabled", "updated_at", "scopes")
_SELECT = f"SELECT {', '.join(FULL)} FROM users"
# a stored scopes value that is not a JSON list of strings: one pattern that names
# nothing, so a damaged row grants nothing rather than everything
UNREADABLE_SCOPES = ("<unreadable>",)


def validate_username(name: Any, admin_username: Optional[str] = None) -> str:
    """Returns ``name`` if it is an acceptable new username, else raises InvalidField."""
    if not isinstance(name, str):
        raise InvalidField("username", "must be a string")
    if not name:
        raise InvalidField("username", "must not be empty")
    if len(name) > 64:
        raise InvalidField("username", "must be at most 64 characters")
    if not USERNAME_RE.match(name):
        raise InvalidField("username", "may only contain letters, digits, '.', '_' and '-'")
    if admin_username and name.lower() == admin_username.lower():
        raise InvalidField("username", "is the admin account's name, which cannot be a registry user")
    return name


def encode_scopes(scopes: Any) -> str:
    """The ``scopes`` column's text: a JSON list of strings (``[]``: everything).
    The patterns are checked by the auth layer (``zmirror.auth.scopes``) first;
    the store only checks the shape."""
    if scopes is None:
        scopes = []
    if not isinstance(scopes, (list, tuple)) or not all(isinstance(x, str) for x in scopes):
        raise InvalidField("scopes", "must be a list of repository patterns")
    return json.dumps(list(scopes), ensure_ascii=False, separators=(",", ":"))


def decode_scopes(text: Any) -> list[str]:
    """The ``scopes`` column as a list (``[]``: everything); a damaged value is
    :data:`UNREADABLE_SCOPES` (grants nothing)."""
    if text is None or text == "":
        return []
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return list(UNREADABLE_SCOPES)
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        return list(UNREADABLE_SCOPES)
    return value


def _full(values) -> dict:
    row = dict(zip(FULL, values))
    row["enabled"] = bool(row["enabled"])
    row["scopes"] = decode_scopes(row["scopes"])
    return row


def public(row: dict) -> dict:
    return {k: (list(row[k]) if k == "scopes" else row[k]) for k in PUBLIC}


def _auth(row: dict) -> dict:
    return {k: (list(row[k]) if k == "scopes" else row[k]) for k in AUTH}


def _get_full(txn, uid: int) -> dict:
    txn.execute(_SELECT + " WHERE id = ?", (uid,))
    r = txn.fetchone()
    if r is None:
        raise NotFound(f"user {uid}")
    return _full(r)


def _check_unique(txn, username: str) -> None:
    txn.execute("SELECT id FROM users WHERE lower(username) = lower(?)", (username,))
    if txn.fetchone() is not None:
        raise Conflict("username", "a user with this name already exists")


class UserStore:
    """CRUD on registry users.  Every method returns a Deferred or is a coroutine."""

    def __init__(self, db: Any, clock: Any, *, admin_username: Optional[str] = None):
        self.db = db
        self.clock = clock
        self.admin_username = admin_username
        self._by_id: Optional[dict[int, dict]] = None
        self._loading: SingleFlight = SingleFlight()  # the first load, shared by concurrent callers

    # --- validation helpers ------------------------------------------------

    def validate_username(self, name: Any) -> str:
        return validate_username(name, self.admin_username)

    # --- reads ---------------------------------------------------------------

    def list(self):
        """Deferred → public rows ordered by id."""

        def run(txn):
            txn.execute(_SELECT + " ORDER BY id")
            return [public(_full(r)) for r in txn.fetchall()]

        return self.db.read(run)

    def get(self, uid: int):
        """Deferred → the public row; errbacks with NotFound."""
        return self.db.read(lambda txn: public(_get_full(txn, uid)))

    def get_by_username(self, username: str):
        """Deferred → the full row (with ``password_hash``) or None (exact name)."""

        def run(txn):
            txn.execute(_SELECT + " WHERE username = ?", (username,))
            r = txn.fetchone()
            return _full(r) if r is not None else None

        return self.db.read(run)

    def find(self, name: str):
        """Deferred → the public row of the user called ``name`` in any case, or None."""

        def run(txn):
            txn.execute(_SELECT + " WHERE lower(username) = lower(?)", (name,))
            r = txn.fetchone()
            return public(_full(r)) if r is not None else None

        return self.db.read(run)

    def list_with_hashes(self):
        """Deferred → the full rows (with ``password_hash``) ordered by id, for a
        report on the stored hashes (``zmirror user list`` marks legacy MD5)."""

        def run(txn):
            txn.execute(_SELECT + " ORDER BY id")
            return [_full(r) for r in txn.fetchall()]

        return self.db.read(run)

    def count(self):
        def run(txn):
            txn.execute("SELECT count(*) FROM users")
            return txn.fetchone()[0]

        return self.db.read(run)

    # --- writes -------------------------------------------------------------

    async def create_with_hash(self, username: str, password_hash: str, enabled: bool = True,
                               *, created_at: Optional[float] = None,
                               scopes: Optional[list[str]] = None) -> dict:
        """Insert a user with its password hash (made by the auth layer; imports keep
        legacy MD5 hex and the source's ``created_at``) and its scopes (patterns
        normalized by ``zmirror.auth.scopes``; None or ``[]``: everything); returns
        the public row."""
        username = self.validate_username(username)
        if not isinstance(password_hash, str) or not password_hash:
            raise InvalidField("password", "missing password hash")
        scopes_text = encode_scopes(scopes)
        now = self.clock.seconds()
        created = now if created_at is None else created_at

        def run(txn):
            _check_unique(txn, username)
            try:
                txn.execute(
                    "INSERT INTO users (username, password_hash, enabled, created_at, updated_at,"
                    " scopes) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    (username, password_hash, int(bool(enabled)), created, now, scopes_text),
                )
                uid = txn.fetchone()[0]
            except Exception as e:  # the UNIQUE index (another writer got there first)
                if is_unique_violation(e):
                    raise Conflict("username", "a user with this name already exists") from None
                raise
            return _get_full(txn, uid)

        row = await self.db.write(run)
        self._remember(row)
        return public(row)

    async def update(self, uid: int, *, password_hash: Optional[str] = None,
                     enabled: Optional[bool] = None, scopes: Optional[list[str]] = None) -> dict:
        """Change the password hash, the enabled flag and/or the scopes (``[]``:
        everything; None: unchanged); returns the public row.

        Any change (even re-saving the same value) ends the user's outstanding
        tokens: their fingerprint includes ``updated_at``.
        """
        sets: dict[str, Any] = {}
        if password_hash is not None:
            if not isinstance(password_hash, str) or not password_hash:
                raise InvalidField("password", "missing password hash")
            sets["password_hash"] = password_hash
        if enabled is not None:
            if not isinstance(enabled, bool):
                raise InvalidField("enabled", "must be true or false")
            sets["enabled"] = int(enabled)
        if scopes is not None:
            sets["scopes"] = encode_scopes(scopes)
        now = self.clock.seconds()

        def run(txn):
            _get_full(txn, uid)
            if sets:
                cols = sorted(sets)
                txn.execute(
                    f"UPDATE users SET {', '.join(f'{c} = ?' for c in cols)}, updated_at = ? WHERE id = ?",
                    tuple(sets[c] for c in cols) + (now, uid),
                )
            return _get_full(txn, uid)

        row = await self.db.write(run)
        self._remember(row)
        return public(row)

    async def delete(self, uid: int) -> None:
        def run(txn):
            txn.execute("DELETE FROM users WHERE id = ?", (uid,))
            if txn.rowcount == 0:
                raise NotFound(f"user {uid}")

        await self.db.write(run)
        if self._by_id is not None:
            self._by_id.pop(uid, None)

    async def record_login(self, uid: int) -> None:
        await self.db.execute("UPDATE users SET last_login_at = ? WHERE id = ?",
                              (self.clock.seconds(), uid))

    async def set_hash(self, uid: int, password_hash: str) -> Optional[dict]:
        """Replace the stored hash (re-hash after login); returns the new auth row."""

        def run(txn):
            txn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, uid))
            if txn.rowcount == 0:
                return None
            return _get_full(txn, uid)

        row = await self.db.write(run)
        if row is not None:
            self._remember(row)
            return _auth(row)
        return None

    # --- in-memory authentication state ------------------------------------

    async def load(self) -> int:
        """(Re)load the in-memory copy; returns the number of users."""

        def run(txn):
            txn.execute(_SELECT)
            return [_full(r) for r in txn.fetchall()]

        rows = await self.db.read(run)
        self._by_id = {r["id"]: _auth(r) for r in rows}
        return len(rows)

    async def _ensure_loaded(self) -> None:
        # One load shared by every concurrent first caller and owned by none of them:
        # a caller that goes away does not fail the others' wait.
        if self._by_id is None:
            await self._loading.run("load", self.load)

    async def auth_user(self, uid: int) -> Optional[dict]:
        """The auth row (id, username, password_hash, enabled, updated_at) or None."""
        if self._by_id is None:
            await self._ensure_loaded()
        row = self._by_id.get(uid) if self._by_id is not None else None
        return dict(row) if row is not None else None

    def _remember(self, row: dict) -> None:
        if self._by_id is not None:
            self._by_id[row["id"]] = _auth(row)

    def refresh_one(self, row: dict) -> None:
        """Update the in-memory copy from a freshly read full row."""
        self._remember(row)


__all__ = ["UserStore", "validate_username", "InvalidField", "encode_scopes", "decode_scopes",
           "NotFound", "Conflict", "public"]
