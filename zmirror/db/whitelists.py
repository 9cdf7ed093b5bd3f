"""Anonymous-pull whitelist entries (the ``whitelists`` table).

Rows: ``id, prefix, enabled (bool), note, created_at, updated_at``.  Prefixes
are validated by :func:`zmirror.auth.whitelist.normalize_prefix` (an empty one
is refused).  Every write runs in one transaction that also reads the enabled
entries; the in-memory :class:`~zmirror.auth.whitelist.Matcher` is replaced
after the commit, so the policy decides from memory and never queries the
database per request.  :meth:`load` builds the first matcher (at start, or
lazily on first use).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

from zmirror.auth.whitelist import Entry, InvalidPrefix, Matcher, normalize_prefix
from zmirror.db.errors import Conflict, NotFound
from zmirror.db.users import InvalidField
from zmirror.singleflight import SingleFlight

log = Logger()

COLUMNS = ("id", "prefix", "enabled", "note", "created_at", "updated_at")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM whitelists"
NOTE_MAX = 1000


def validate_prefix(prefix: Any) -> str:
    try:
        return normalize_prefix(prefix)
    except InvalidPrefix as e:
        raise InvalidField("prefix", str(e)) from None


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


def _enabled(txn) -> list[Entry]:
    txn.execute("SELECT id, prefix FROM whitelists WHERE enabled = 1 ORDER BY id")
    return [Entry(r[0], r[1]) for r in txn.fetchall()]


def _check_unique(txn, prefix: str, wid: Optional[int]) -> None:
    txn.execute("SELECT id FROM whitelists WHERE prefix = ? AND id IS NOT ?", (prefix, wid))
    if txn.fetchone() is not None:
        raise Conflict("prefix", "this prefix is already in the whitelist")


class WhitelistStore:
    """CRUD on whitelist entries plus the live in-memory matcher."""

    def __init__(self, db: Any, clock: Any):
        self.db = db
        self.clock = clock
        self._matcher: Optional[Matcher] = None
        self._loading: SingleFlight = SingleFlight()  # the first load, shared by concurrent callers
        self._subscribers: list[Callable[[Matcher], Any]] = []

    # --- the matcher -------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._matcher is not None

    @property
    def matcher(self) -> Matcher:
        """The current matcher (empty until :meth:`load` has run)."""
        return self._matcher if self._matcher is not None else Matcher()

    async def ready(self) -> Matcher:
        """The matcher, loading it first if this is the first use."""
        if self._matcher is None:
            await self._loading.run("load", self.load)
        return self.matcher

    async def load(self) -> Matcher:
        entries = await self.db.read(_enabled)
        self._set(entries)
        return self.matcher

    def match(self, name: str) -> Optional[Entry]:
        return self.matcher.match(name)

    def subscribe(self, callback: Callable[[Matcher], Any]) -> None:
        self._subscribers.append(callback)

    def _set(self, entries: list[Entry]) -> None:
        self._matcher = Matcher(entries)
        for cb in list(self._subscribers):
            try:
                cb(self._matcher)
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
        prefix = validate_prefix(prefix)
        note = validate_note(note)
        now = self.clock.seconds()

        def run(txn):
            _check_unique(txn, prefix, None)
            txn.execute(
                "INSERT INTO whitelists (prefix, enabled, note, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (prefix, int(bool(enabled)), note, now, now),
            )
            return _get(txn, txn.lastrowid), _enabled(txn)

        row, entries = await self._write(run)
        self._set(entries)
        return row

    async def update(self, wid: int, prefix: Optional[str] = None, enabled: Optional[bool] = None,
                     note: Optional[str] = None) -> dict:
        sets: dict[str, Any] = {}
        if prefix is not None:
            sets["prefix"] = validate_prefix(prefix)
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
        self._set(entries)
        return row

    async def delete(self, wid: int) -> None:
        def run(txn):
            txn.execute("DELETE FROM whitelists WHERE id = ?", (wid,))
            if txn.rowcount == 0:
                raise NotFound(f"whitelist entry {wid}")
            return _enabled(txn)

        entries = await self._write(run)
        self._set(entries)

    async def _write(self, f):
        try:
            return await self.db.write(f)
        except Exception as e:
            if type(e).__name__ == "IntegrityError" and "UNIQUE" in str(e).upper():
                raise Conflict("prefix", "this prefix is already in the whitelist") from None
            raise


__all__ = ["WhitelistStore", "validate_prefix", "validate_note", "InvalidField", "NotFound", "Conflict"]
