"""Image policy rules (the ``policy_rules`` table).

A rule is ``allow`` or ``deny`` with a reference pattern (:mod:`zmirror.oci.patterns`,
stored in its normalized text), an optional note, ``enabled`` and a ``position``
(the order the admin lists them in).  What the rules mean is
:mod:`zmirror.auth.imagepolicy`'s business.  After every write and every
:meth:`~PolicyRuleStore.load` the enabled rules go to the subscribers, so the
evaluator matches in memory; other processes' changes arrive through
:meth:`~zmirror.reload.Reloader.refresh_stores` (SQLite's watch, PostgreSQL's NOTIFY).

Design: docs/design/auth.md ("The image policy").
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger

from zmirror.db.errors import Conflict, InvalidField, NotFound, is_unique_violation
from zmirror.db.whitelists import validate_note
from zmirror.oci.patterns import PatternError, parse_ref_pattern

log = Logger()

COLUMNS = ("id", "action", "pattern", "enabled", "note", "position", "created_at", "updated_at")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM policy_rules"
ACTIONS = ("allow", "deny")
POSITION_MAX = 1_000_000
RULES_MAX = 1000  # rules in the table: every pull is checked against the enabled ones


def check_action(action: Any) -> str:
    if action not in ACTIONS:
        raise InvalidField("action", "must be 'allow' or 'deny'")
    return action


def check_pattern(pattern: Any) -> str:
    """The normalized text of a reference pattern (``nginx:latest`` → ``library/nginx:latest``)."""
    if isinstance(pattern, str) and "\x00" in pattern:
        raise InvalidField("pattern", "must not contain NUL characters")
    try:
        return parse_ref_pattern(pattern).text
    except PatternError as e:
        raise InvalidField("pattern", str(e)) from None


def check_position(position: Any) -> int:
    if isinstance(position, bool) or not isinstance(position, int):
        raise InvalidField("position", "must be an integer")
    if not 0 <= position <= POSITION_MAX:
        raise InvalidField("position", f"must be between 0 and {POSITION_MAX}")
    return position


def _row(values) -> dict:
    row = dict(zip(COLUMNS, values))
    row["enabled"] = bool(row["enabled"])
    return row


def _get(txn, rid: int) -> dict:
    txn.execute(_SELECT + " WHERE id = ?", (rid,))
    r = txn.fetchone()
    if r is None:
        raise NotFound(f"policy rule {rid}")
    return _row(r)


def _all(txn) -> list[dict]:
    txn.execute(_SELECT + " ORDER BY position, id")
    return [_row(r) for r in txn.fetchall()]


def _enabled(txn) -> list[dict]:
    return [r for r in _all(txn) if r["enabled"]]


def _check_unique(txn, action: str, pattern: str, rid: Optional[int]) -> None:
    txn.execute("SELECT id FROM policy_rules WHERE action = ? AND pattern = ? AND id != ?",
                (action, pattern, -1 if rid is None else rid))
    if txn.fetchone() is not None:
        raise Conflict("pattern", "there is already a rule with this action and pattern")


class PolicyRuleStore:
    """CRUD on policy rules; subscribers get the enabled rules (by position) after each change."""

    def __init__(self, db: Any, clock: Any):
        self.db = db
        self.clock = clock
        self._subscribers: list[Callable[[list[dict]], Any]] = []

    def subscribe(self, callback: Callable[[list[dict]], Any]) -> Callable[[], None]:
        """``callback(rows)`` with the enabled rules after every change and every
        :meth:`load`.  Returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe():
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    async def load(self) -> list[dict]:
        """Read the enabled rules and hand them to every subscriber; returns them."""
        rows = await self.db.read(_enabled)
        self._publish(rows)
        return rows

    def _publish(self, rows: list[dict]) -> None:
        for cb in list(self._subscribers):
            try:
                cb([dict(r) for r in rows])
            except Exception:
                log.failure("policy rule subscriber failed")

    # --- reads -------------------------------------------------------------

    def list(self):
        """Deferred → all rules by position, then id."""
        return self.db.read(_all)

    def get(self, rid: int):
        """Deferred → the row; errbacks with NotFound."""
        return self.db.read(_get, rid)

    # --- writes ------------------------------------------------------------

    async def create(self, action: str, pattern: str, *, enabled: bool = True, note: str = "",
                     position: Optional[int] = None) -> dict:
        action = check_action(action)
        pattern = check_pattern(pattern)
        note = validate_note(note)
        if not isinstance(enabled, bool):
            raise InvalidField("enabled", "must be true or false")
        if position is not None:
            position = check_position(position)
        now = self.clock.seconds()

        def run(txn):
            _check_unique(txn, action, pattern, None)
            txn.execute("SELECT count(*), max(position) FROM policy_rules")
            count, last = txn.fetchone()
            if count >= RULES_MAX:
                raise InvalidField("pattern", f"there are already {RULES_MAX} rules")
            pos = position if position is not None else min((last or 0) + 10, POSITION_MAX)
            txn.execute(
                "INSERT INTO policy_rules (action, pattern, enabled, note, position, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (action, pattern, int(enabled), note, pos, now, now),
            )
            return _get(txn, txn.fetchone()[0]), _enabled(txn)

        row, rules = await self._write(run)
        self._publish(rules)
        return row

    async def update(self, rid: int, *, action: Optional[str] = None, pattern: Optional[str] = None,
                     enabled: Optional[bool] = None, note: Optional[str] = None,
                     position: Optional[int] = None) -> dict:
        sets: dict[str, Any] = {}
        if action is not None:
            sets["action"] = check_action(action)
        if pattern is not None:
            sets["pattern"] = check_pattern(pattern)
        if enabled is not None:
            if not isinstance(enabled, bool):
                raise InvalidField("enabled", "must be true or false")
            sets["enabled"] = int(enabled)
        if note is not None:
            sets["note"] = validate_note(note)
        if position is not None:
            sets["position"] = check_position(position)
        now = self.clock.seconds()

        def run(txn):
            old = _get(txn, rid)
            if "action" in sets or "pattern" in sets:
                _check_unique(txn, sets.get("action", old["action"]),
                              sets.get("pattern", old["pattern"]), rid)
            if sets:
                cols = sorted(sets)
                txn.execute(
                    f"UPDATE policy_rules SET {', '.join(f'{c} = ?' for c in cols)}, updated_at = ?"
                    " WHERE id = ?",
                    tuple(sets[c] for c in cols) + (now, rid),
                )
            return _get(txn, rid), _enabled(txn)

        row, rules = await self._write(run)
        self._publish(rules)
        return row

    async def delete(self, rid: int) -> None:
        def run(txn):
            txn.execute("DELETE FROM policy_rules WHERE id = ?", (rid,))
            if txn.rowcount == 0:
                raise NotFound(f"policy rule {rid}")
            return _enabled(txn)

        rules = await self._write(run)
        self._publish(rules)

    async def _write(self, f):
        try:
            return await self.db.write(f)
        except Exception as e:
            if is_unique_violation(e):
                raise Conflict("pattern", "there is already a rule with this action and pattern") from None
            raise


__all__ = ["ACTIONS", "PolicyRuleStore", "RULES_MAX", "check_action", "check_pattern", "check_position"]
