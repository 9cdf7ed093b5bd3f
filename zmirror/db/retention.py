"""Retention rules (``cache_rules``, one per namespace) and pins
(``cache_pins``): rows only.  What a rule or a pin means is
:mod:`zmirror.cache.retention` / :mod:`zmirror.cache.pins`; the admin API
validates the values (:mod:`zmirror.admin.retention`) before they come here.
Every method returns a Deferred (or is a coroutine)."""

from __future__ import annotations

from typing import Any, Optional

from zmirror.db.errors import Conflict, NotFound, is_unique_violation

RULE_COLUMNS = ("id", "namespace", "max_age_days", "max_size", "enabled", "note", "created_at",
                "updated_at")
PIN_COLUMNS = ("id", "pattern", "source", "note", "created_at")
_RULES = "SELECT " + ", ".join(RULE_COLUMNS) + " FROM cache_rules"
_PINS = "SELECT " + ", ".join(PIN_COLUMNS) + " FROM cache_pins"
PINS_MAX = 10_000  # pins listed (and applied) at most


def _rule(values) -> dict:
    row = dict(zip(RULE_COLUMNS, values))
    row["enabled"] = bool(row["enabled"])
    return row


def _pin(values) -> dict:
    return dict(zip(PIN_COLUMNS, values))


def _get_rule(txn, rid: int) -> dict:
    txn.execute(_RULES + " WHERE id = ?", (rid,))
    r = txn.fetchone()
    if r is None:
        raise NotFound(f"retention rule {rid}")
    return _rule(r)


def _unique_namespace(txn, namespace: str, rid: Optional[int]) -> None:
    txn.execute("SELECT id FROM cache_rules WHERE namespace = ? AND id != ?", (namespace, rid or 0))
    if txn.fetchone() is not None:
        raise Conflict("namespace", "this namespace has a rule already")


class RetentionStore:
    """CRUD on ``cache_rules`` and ``cache_pins``."""

    def __init__(self, db: Any, clock: Any):
        self.db = db
        self.clock = clock

    # -- rules --------------------------------------------------------------------
    def rules(self):
        """Deferred → every rule, by namespace."""

        def run(txn):
            txn.execute(_RULES + " ORDER BY namespace")
            return [_rule(r) for r in txn.fetchall()]

        return self.db.read(run)

    def rule(self, rid: int):
        return self.db.read(_get_rule, rid)

    async def create_rule(self, namespace: str, max_age_days: Optional[int] = None,
                          max_size: Optional[int] = None, enabled: bool = True, note: str = "") -> dict:
        now = self.clock.seconds()

        def run(txn):
            _unique_namespace(txn, namespace, None)
            txn.execute("INSERT INTO cache_rules (namespace, max_age_days, max_size, enabled, note,"
                        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                        (namespace, max_age_days, max_size, int(bool(enabled)), note, now, now))
            return _get_rule(txn, txn.fetchone()[0])

        return await self._write(run, "namespace", "this namespace has a rule already")

    async def update_rule(self, rid: int, **values: Any) -> dict:
        """Set the given columns (``namespace``, ``max_age_days``, ``max_size``,
        ``enabled``, ``note``; None clears the two limits)."""
        allowed = {"namespace", "max_age_days", "max_size", "enabled", "note"}
        sets = {k: (int(v) if k == "enabled" else v) for k, v in values.items() if k in allowed}
        now = self.clock.seconds()

        def run(txn):
            _get_rule(txn, rid)
            if "namespace" in sets:
                _unique_namespace(txn, sets["namespace"], rid)
            cols = sorted(sets)
            txn.execute(f"UPDATE cache_rules SET {''.join(f'{c} = ?, ' for c in cols)}updated_at = ?"
                        " WHERE id = ?", tuple(sets[c] for c in cols) + (now, rid))
            return _get_rule(txn, rid)

        return await self._write(run, "namespace", "this namespace has a rule already")

    def delete_rule(self, rid: int):
        def run(txn):
            txn.execute("DELETE FROM cache_rules WHERE id = ?", (rid,))
            if txn.rowcount == 0:
                raise NotFound(f"retention rule {rid}")

        return self.db.write(run)

    # -- pins ---------------------------------------------------------------------
    def pins(self):
        """Deferred → every pin (at most :data:`PINS_MAX`), oldest first."""

        def run(txn):
            txn.execute(_PINS + " ORDER BY id LIMIT ?", (PINS_MAX,))
            return [_pin(r) for r in txn.fetchall()]

        return self.db.read(run)

    async def create_pin(self, pattern: str, note: str = "", source: str = "admin") -> dict:
        now = self.clock.seconds()

        def run(txn):
            txn.execute("SELECT id FROM cache_pins WHERE pattern = ? AND source = ?", (pattern, source))
            if txn.fetchone() is not None:
                raise Conflict("pattern", "this pattern is pinned already")
            txn.execute("INSERT INTO cache_pins (pattern, source, note, created_at) VALUES (?, ?, ?, ?)"
                        " RETURNING id", (pattern, source, note, now))
            pid = txn.fetchone()[0]
            txn.execute(_PINS + " WHERE id = ?", (pid,))
            return _pin(txn.fetchone())

        return await self._write(run, "pattern", "this pattern is pinned already")

    def delete_pin(self, pid: int):
        """Deferred → the deleted row; errbacks with NotFound."""

        def run(txn):
            txn.execute(_PINS + " WHERE id = ?", (pid,))
            r = txn.fetchone()
            if r is None:
                raise NotFound(f"pin {pid}")
            txn.execute("DELETE FROM cache_pins WHERE id = ?", (pid,))
            return _pin(r)

        return self.db.write(run)

    async def _write(self, f, field: str, message: str):
        try:
            return await self.db.write(f)
        except Exception as e:
            if is_unique_violation(e):
                raise Conflict(field, message) from None
            raise


__all__ = ["RetentionStore", "RULE_COLUMNS", "PIN_COLUMNS", "PINS_MAX"]
