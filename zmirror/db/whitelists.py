"""Anonymous-pull whitelist entries (the ``whitelists`` table).

The store checks only what the table needs; what a prefix means is
:mod:`zmirror.auth.whitelist`'s business.  After every write and every
:meth:`~WhitelistStore.load` the enabled entries go to the subscribers, so the
policy matches in memory.

Design: docs/design/database.md ("The stores").
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

from zmirror.db.errors import Conflict, InvalidField, NotFound, is_unique_violation

log = Logger()

COLUMNS = ("id", "prefix", "enabled", "note", "created_at", "updated_at")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM whitelists"
PREFIX_MAX = 255
NOTE_MAX = 1000


def check_prefix(prefix: Any) -> str:
    """The storage constraints on a prefix (the policy validates its syntax first)."""
    if not isinstance(prefix, str):
        raise InvalidField("prefix", "prefix must be a string")
    if not prefix:
        raise InvalidField("prefix", "prefix must not be empty")
    if len(prefix) > PREFIX_MAX:
        raise InvalidField("prefix", f"prefix is longer than {PREFIX_MAX} characters")
    if "\x00" in prefix:
        raise InvalidField("prefix", "prefix must not contain NUL characters")
    return prefix


def validate_note(note: Any) -> str:
    if not isinstance(note, str):
        raise InvalidField("note", "must be a string")
    note = note.strip()
    if len(note) > NOTE_MAX:
        raise InvalidField("note", f"must be at most {NOTE_MAX} characters")
    if "\x00" in note:
        raise InvalidField("note", "must not contain NUL characters")
    return note


def _row(values) -> dict:
    row = dict(zip(COLUMNS, values))
    row["enabled"] = bool(row["enabled"])
    return row


def _get(txn, wid: int) -> dict:
    txn.execute(_SELECT + " WHERE id = ?", (wid,))
    r = txn.fetchone()
    if r is None:
        raise NotFound(f"whitelist entry {wid}")
    return _row(r)


def _enabled(txn) -> list[dict]:
    txn.execute("SELECT id, prefix FROM whitelists WHERE enabled = 1 ORDER BY id")
    return [{"id": r[0], "prefix": r[1]} for r in txn.fetchall()]


def _check_unique(txn, prefix: str, wid: Optional[int]) -> None:
    if wid is None:
        txn.execute("SELECT id FROM whitelists WHERE prefix = ?", (prefix,))
    else:
        txn.execute("SELECT id FROM whitelists WHERE prefix = ? AND id != ?", (prefix, wid))
    if txn.fetchone() is not None:
        raise Conflict("prefix", "this prefix is already in the whitelist")


class WhitelistStore:
    """CRUD on whitelist entries; subscribers get the enabled entries after each change."""

    def __init__(self, db: Any, clock: Any):
        self.db = db
        self.clock = clock
        self._subscribers: list[Callable[[list[dict]], Any]] = []

    # --- the enabled entries, for the policy --------------------------------

    def subscribe(self, callback: Callable[[list[dict]], Any]) -> Callable[[], None]:
        """``callback(rows)`` with the enabled entries after every change and
        every :meth:`load`.  Returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe():
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    async def load(self) -> list[dict]:
        """Read the enabled entries and hand them to every subscriber; returns them."""
        rows = await self.db.read(_enabled)
        self._publish(rows)
        return rows

    def _publish(self, rows: list[dict]) -> None:
        for cb in list(self._subscribers):
            try:
                cb([dict(r) for r in rows])
            except Exception:
                log.failure("whitelist subscriber failed")

    # --- reads -------------------------------------------------------------

    def list(self):
        """Deferred → all rows ordered by id."""

        def run(txn):
            txn.execute(_SELECT + " ORDER BY id")
            return [_row(r) for r in txn.fetchall()]

        return self.db.read(run)

    def get(self, wid: int):
        """Deferred → the row; errbacks with NotFound."""
        return self.db.read(_get, wid)

    def count(self):
        def run(txn):
            txn.execute("SELECT count(*) FROM whitelists")
            return txn.fetchone()[0]

        return self.db.read(run)

    # --- writes ------------------------------------------------------------

    async def create(self, prefix: str, enabled: bool = True, note: str = "") -> dict:
        prefix = check_prefix(prefix)
        note = validate_note(note)
        now = self.clock.seconds()

        def run(txn):
            _check_unique(txn, prefix, None)
            txn.execute(
                "INSERT INTO whitelists (prefix, enabled, note, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (prefix, int(bool(enabled)), note, now, now),
            )
            return _get(txn, txn.fetchone()[0]), _enabled(txn)

        row, entries = await self._write(run)
        self._publish(entries)
        return row

    async def update(self, wid: int, prefix: Optional[str] = None, enabled: Optional[bool] = None,
                     note: Optional[str] = None) -> dict:
        sets: dict[str, Any] = {}
        if prefix is not None:
            sets["prefix"] = check_prefix(prefix)
        if enabled is not None:
            if not isinstance(enabled, bool):
                raise InvalidField("enabled", "must be true or false")
            sets["enabled"] = int(enabled)
        if note is not None:
            sets["note"] = validate_note(note)
        now = self.clock.seconds()

        def run(txn):
            _get(txn, wid)
            if "prefix" in sets:
                _check_unique(txn, sets["prefix"], wid)
            if sets:
                cols = sorted(sets)
                txn.execute(
                    f"UPDATE whitelists SET {', '.join(f'{c} = ?' for c in cols)}, updated_at = ?"
                    " WHERE id = ?",
                    tuple(sets[c] for c in cols) + (now, wid),
                )
            return _get(txn, wid), _enabled(txn)

        row, entries = await self._write(run)
        self._publish(entries)
        return row

    async def delete(self, wid: int) -> None:
        def run(txn):
            txn.execute("DELETE FROM whitelists WHERE id = ?", (wid,))
            if txn.rowcount == 0:
                raise NotFound(f"whitelist entry {wid}")
            return _enabled(txn)

        entries = await self._write(run)
        self._publish(entries)

    async def _write(self, f):
        try:
            return await self.db.write(f)
        except Exception as e:
            if is_unique_violation(e):
                raise Conflict("prefix", "this prefix is already in the whitelist") from None
            raise


__all__ = ["WhitelistStore", "check_prefix", "validate_note", "InvalidField", "NotFound", "Conflict"]
