"""Database-wide background jobs on one node at a time: :class:`JobLock`, a
PostgreSQL session advisory lock held on the writer connection for the whole
job (nothing to lock on SQLite).

Design: docs/design/database.md ("Jobs on one node at a time").
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

log = Logger()

# pg_advisory_lock keys of the jobs (distinct from zmirror.db.postgresql.MIGRATION_LOCK)
ACCESS_LOG_RETENTION = 0x7A6D_6A6F_6201  # "zmjob" 1


def _try_lock(txn, key: int) -> bool:
    txn.execute("SELECT pg_try_advisory_lock(?)", (key,))
    return bool(txn.fetchone()[0])


def _unlock(txn, key: int) -> bool:
    txn.execute("SELECT pg_advisory_unlock(?)", (key,))
    return bool(txn.fetchone()[0])


class JobLock:
    """``if await lock.acquire(): try: ... finally: await lock.release()``.

    ``acquire()`` fires True when this node may run the job now (always on
    SQLite), False when another node holds it.  The job's writes must go
    through ``db.write`` (the connection that holds the lock).  Not re-entrant
    across one node's own jobs: PostgreSQL counts a session's locks, so one
    node must not run the same job twice at once (the services guard that).
    """

    def __init__(self, db: Any, key: int):
        self.db = db
        self.key = key
        self.held = False

    @property
    def needed(self) -> bool:
        return getattr(self.db, "dialect", "sqlite") == "postgresql"

    async def acquire(self) -> bool:
        if not self.needed:
            return True
        self.held = await self.db.write(_try_lock, self.key)
        return self.held

    async def release(self) -> None:
        """Never raises: a lock that cannot be released goes with its connection."""
        if not self.held:
            return
        self.held = False
        try:
            await self.db.write(_unlock, self.key)
        except Exception as e:
            log.warn("background job lock {key:#x}: releasing it failed ({err}); it goes "
                     "when the connection closes", key=self.key, err=" ".join(str(e).split())[:200])


__all__ = ["ACCESS_LOG_RETENTION", "JobLock"]
