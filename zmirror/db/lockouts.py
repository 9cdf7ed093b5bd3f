"""The ``lockouts`` table: the locks of the login lockout, as rows.

The lockout itself decides in memory (:mod:`zmirror.auth.lockout`);
:class:`~zmirror.auth.lockoutrecords.LockoutRecords` writes a row when a node
locks an account or an address and lifts the locks whose rows an unlock marked
released.  This store only reads and writes the rows (the CLI runs it too).
Every method returns a Deferred.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

COLUMNS = ("key", "kind", "name", "login", "failures", "locked_at", "until", "node", "released_at")
_SELECT = "SELECT " + ", ".join(COLUMNS) + " FROM lockouts"
MAX_LIST = 1000


def _row(values) -> dict:
    return dict(zip(COLUMNS, values))


def _put(txn, row: dict, cutoff: float) -> None:
    txn.execute(
        "INSERT INTO lockouts (key, kind, name, login, failures, locked_at, until, node,"
        " released_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)"
        " ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, name = excluded.name,"
        " login = excluded.login, failures = excluded.failures, locked_at = excluded.locked_at,"
        " until = excluded.until, node = excluded.node, released_at = NULL",
        (row["key"], row["kind"], row["name"], row["login"], int(row["failures"]),
         float(row["locked_at"]), float(row["until"]), row["node"]))
    # upkeep: locks that ran out long ago
    txn.execute("DELETE FROM lockouts WHERE until < ?", (cutoff,))


def _release(txn, keys: list[str], name: str, now: float) -> list[dict]:
    where = ["lower(name) = lower(?)"] if name else []
    params: list[Any] = [name] if name else []
    if keys:
        where.append("key IN (" + ", ".join("?" * len(keys)) + ")")
        params.extend(keys)
    if not where:
        return []
    cond = "released_at IS NULL AND until > ? AND (" + " OR ".join(where) + ")"
    txn.execute(_SELECT + " WHERE " + cond, [now, *params])
    rows = [_row(r) for r in txn.fetchall()]
    if rows:
        hexkeys = [r["key"] for r in rows]
        marks = ", ".join("?" * len(hexkeys))
        txn.execute(f"UPDATE lockouts SET released_at = ? WHERE key IN ({marks})", [now, *hexkeys])
        # the failures counted for them go too: a node reading login_failures
        # (a resync) must not lock them again
        txn.execute(f"DELETE FROM login_failures WHERE key IN ({marks})", hexkeys)
    for r in rows:
        r["released_at"] = now
    return rows


class LockoutStore:
    def __init__(self, db: Any):
        self.db = db

    def put(self, row: dict, *, cutoff: float):
        """Write the lock ``row`` (a new lock of its key: not released); rows
        whose lock ran out before ``cutoff`` go."""
        return self.db.write(_put, row, cutoff)

    def locked(self, now: float):
        """Deferred → the rows locked at ``now`` and not released, newest first."""

        def run(txn):
            txn.execute(_SELECT + " WHERE released_at IS NULL AND until > ?"
                        " ORDER BY locked_at DESC LIMIT ?", (now, MAX_LIST))
            return [_row(r) for r in txn.fetchall()]

        return self.db.read(run)

    def release(self, now: float, *, name: str = "", keys: Iterable[str] = ()):
        """Mark released the locks in force of the account or address ``name``
        (any case) and of ``keys`` (hex); Deferred → the released rows."""
        return self.db.write(_release, list(keys), name, now)

    def released_since(self, since: float):
        """Deferred → ``(key, released_at)`` of the rows released at or after ``since``."""

        def run(txn):
            txn.execute("SELECT key, released_at FROM lockouts WHERE released_at >= ?"
                        " ORDER BY released_at LIMIT ?", (since, MAX_LIST))
            return [(r[0], r[1]) for r in txn.fetchall()]

        return self.db.read(run)

    def clear(self):
        """Delete every row (one node on SQLite: its locks die with the process)."""
        return self.db.write(lambda txn: txn.execute("DELETE FROM lockouts"))


def row_out(row: dict, now: Optional[float] = None) -> dict:
    """A row as the admin API and ``zmirror user locked --json`` show it."""
    out = {"id": row["key"], "kind": row["kind"], "name": row["name"] or None,
           "login": row["login"] or None, "failures": row["failures"],
           "locked_at": row["locked_at"], "until": row["until"], "node": row["node"]}
    if now is not None:
        out["retry_after"] = max(0, int(-(-(row["until"] - now) // 1)))
    return out


__all__ = ["COLUMNS", "LockoutStore", "row_out"]
