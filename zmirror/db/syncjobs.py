"""Sync jobs and their runs (the ``sync_jobs`` and ``sync_runs`` tables), and the
pins a pinning job writes into ``cache_pins``.

The store checks nothing of a job's meaning (zmirror.sync.spec does); it keeps
rows and makes the cluster's decisions atomic: a schedule tick is taken by the
one node whose compare-and-set on ``next_run_at`` succeeds (it queues the
tick's run); a queued run is started by the one node that takes the job's lease
(``lease_node``/``lease_until``: free when NULL or expired, renewed while the
run goes on).

Design: docs/design/sync.md ("Runs across nodes").
"""

from __future__ import annotations

import json
from typing import Any, Optional

from zmirror.db.errors import Conflict, NotFound, is_unique_violation

ACTIVE = ("queued", "running", "paused")
FINISHED = ("succeeded", "failed", "cancelled")
SPEC_KEYS = ("images", "newest", "platforms", "schedule", "pin", "concurrency")
_JOB_COLS = "id, name, enabled, spec, created_at, updated_at, next_run_at, lease_node, lease_until"
_RUN_COLS = ("r.id, r.job_id, j.name, r.node, r.run_trigger, r.state, r.started_at, r.finished_at,"
             " r.pause_reason, r.resume_at, r.cancel_requested, r.progress")
_RUN_FROM = " FROM sync_runs r LEFT JOIN sync_jobs j ON j.id = r.job_id"


def empty_progress() -> dict:
    return {"images": {"done": 0, "total": 0}, "manifests": {"done": 0, "total": 0},
            "blobs": {"done": 0, "skipped": 0, "total": 0}, "bytes": {"done": 0, "total": 0},
            "current": None, "errors": [], "upstream_requests": 0}


def pin_source(job_id: int) -> str:
    return f"sync:{job_id}"


def _job(r) -> dict:
    spec = json.loads(r[3])
    return {"id": r[0], "name": r[1], "enabled": bool(r[2]),
            **{k: spec.get(k) for k in SPEC_KEYS},
            "created_at": r[4], "updated_at": r[5], "next_run_at": r[6],
            "lease_node": r[7], "lease_until": r[8]}


def _run(r) -> dict:
    progress = empty_progress()
    try:
        saved = json.loads(r[11] or "{}")
    except ValueError:
        saved = {}
    if isinstance(saved, dict):
        progress.update({k: v for k, v in saved.items() if k in progress})
    return {"id": r[0], "job_id": r[1], "job_name": r[2] or "", "node": r[3], "trigger": r[4],
            "state": r[5], "started_at": r[6], "finished_at": r[7], "pause_reason": r[8],
            "resume_at": r[9], **progress, "cancel_requested": bool(r[10])}


def _get_job(txn, jid: int) -> dict:
    txn.execute(f"SELECT {_JOB_COLS} FROM sync_jobs WHERE id = ?", (jid,))
    r = txn.fetchone()
    if r is None:
        raise NotFound(f"sync job {jid}")
    return _job(r)


def _get_run(txn, rid: int) -> dict:
    txn.execute(f"SELECT {_RUN_COLS}{_RUN_FROM} WHERE r.id = ?", (rid,))
    r = txn.fetchone()
    if r is None:
        raise NotFound(f"sync run {rid}")
    return _run(r)


def _last_run(txn, jid: int) -> Optional[dict]:
    txn.execute(f"SELECT {_RUN_COLS}{_RUN_FROM} WHERE r.job_id = ? ORDER BY r.id DESC LIMIT 1", (jid,))
    r = txn.fetchone()
    return _run(r) if r is not None else None


def _active_run(txn, jid: int) -> Optional[int]:
    txn.execute("SELECT id FROM sync_runs WHERE job_id = ? AND state IN (?, ?, ?) ORDER BY id LIMIT 1",
                (jid, *ACTIVE))
    r = txn.fetchone()
    return r[0] if r is not None else None


def _insert_run(txn, jid: int, trigger: str, now: float) -> int:
    txn.execute("INSERT INTO sync_runs (job_id, node, run_trigger, state, started_at, progress)"
                " VALUES (?, '', ?, 'queued', ?, ?) RETURNING id",
                (jid, trigger, now, json.dumps(empty_progress())))
    return txn.fetchone()[0]


class ActiveRun(Exception):
    """The job already has a queued, running or paused run (``run_id``)."""

    def __init__(self, run_id: int):
        self.run_id = run_id
        super().__init__(f"run {run_id} of this job is not finished")


class SyncJobStore:
    """Rows of sync jobs and runs on ``db`` (the server's pools or the CLI's
    :class:`~zmirror.db.sync.SyncDatabase`); ``clock`` gives "now"."""

    def __init__(self, db: Any, clock: Any):
        self.db = db
        self.clock = clock

    # --- jobs ----------------------------------------------------------------------------

    def list_jobs(self):
        def run(txn):
            txn.execute(f"SELECT {_JOB_COLS} FROM sync_jobs ORDER BY id")
            jobs = [_job(r) for r in txn.fetchall()]
            for j in jobs:
                j["last_run"] = _last_run(txn, j["id"])
            return jobs

        return self.db.read(run)

    def get_job(self, jid: int):
        def run(txn):
            j = _get_job(txn, jid)
            j["last_run"] = _last_run(txn, jid)
            return j

        return self.db.read(run)

    async def create_job(self, name: str, enabled: bool, spec: dict, next_run_at: Optional[float]) -> dict:
        now = self.clock.seconds()

        def run(txn):
            txn.execute("INSERT INTO sync_jobs (name, enabled, spec, created_at, updated_at, next_run_at)"
                        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                        (name, int(enabled), json.dumps({k: spec.get(k) for k in SPEC_KEYS}), now, now,
                         next_run_at))
            j = _get_job(txn, txn.fetchone()[0])
            j["last_run"] = None
            return j

        return await self._write(run)

    async def update_job(self, jid: int, values: dict, next_run_at: Any = ...) -> dict:
        """Change ``values`` (name, enabled and spec keys); ``next_run_at``: the new
        next tick when the schedule or enabled changed (``...``: unchanged)."""
        now = self.clock.seconds()

        def run(txn):
            j = _get_job(txn, jid)
            spec = {k: values.get(k, j[k]) for k in SPEC_KEYS}
            name = values.get("name", j["name"])
            enabled = values.get("enabled", j["enabled"])
            nxt = j["next_run_at"] if next_run_at is ... else next_run_at
            txn.execute("UPDATE sync_jobs SET name = ?, enabled = ?, spec = ?, updated_at = ?,"
                        " next_run_at = ? WHERE id = ?",
                        (name, int(enabled), json.dumps(spec), now, nxt, jid))
            out = _get_job(txn, jid)
            out["last_run"] = _last_run(txn, jid)
            return out

        return await self._write(run)

    async def delete_job(self, jid: int) -> None:
        """The job, its runs and its pins (a running run is cancelled by its node,
        which finds the job gone at its next lease renewal)."""

        def run(txn):
            txn.execute("DELETE FROM sync_jobs WHERE id = ?", (jid,))
            if txn.rowcount == 0:
                raise NotFound(f"sync job {jid}")
            txn.execute("DELETE FROM sync_runs WHERE job_id = ?", (jid,))
            txn.execute("DELETE FROM cache_pins WHERE source = ?", (pin_source(jid),))

        await self.db.write(run)

    async def _write(self, f):
        try:
            return await self.db.write(f)
        except Exception as e:
            if is_unique_violation(e):
                raise Conflict("name", "a sync job with this name exists") from None
            raise

    # --- runs: queue, claim, progress, finish --------------------------------------------

    async def queue_run(self, jid: int, trigger: str) -> dict:
        """A queued run of job ``jid``; :class:`ActiveRun` when one is not finished."""
        now = self.clock.seconds()

        def run(txn):
            _get_job(txn, jid)
            active = _active_run(txn, jid)
            if active is not None:
                raise ActiveRun(active)
            return _get_run(txn, _insert_run(txn, jid, trigger, now))

        return await self.db.write(run)

    async def tick(self, jid: int, due: float, following: Optional[float]) -> Optional[int]:
        """Take the schedule tick ``due`` of job ``jid`` (compare-and-set of
        ``next_run_at`` to ``following``): the one node that succeeds queues the
        tick's run (none while a run is unfinished).  The run's id, or None."""
        now = self.clock.seconds()

        def run(txn):
            txn.execute("UPDATE sync_jobs SET next_run_at = ? WHERE id = ? AND next_run_at = ? AND enabled = 1",
                        (following, jid, due))
            if txn.rowcount != 1 or _active_run(txn, jid) is not None:
                return None
            return _insert_run(txn, jid, "schedule", now)

        return await self.db.write(run)

    def due_jobs(self, now: float):
        def run(txn):
            txn.execute(f"SELECT {_JOB_COLS} FROM sync_jobs WHERE enabled = 1 AND next_run_at IS NOT NULL"
                        " AND next_run_at <= ? ORDER BY next_run_at", (now,))
            return [_job(r) for r in txn.fetchall()]

        return self.db.read(run)

    def queued_runs(self):
        def run(txn):
            txn.execute("SELECT id, job_id FROM sync_runs WHERE state = 'queued' ORDER BY id")
            return [(r[0], r[1]) for r in txn.fetchall()]

        return self.db.read(run)

    async def claim(self, rid: int, jid: int, node: str, lease: float) -> Optional[dict]:
        """Start queued run ``rid`` on ``node``: take job ``jid``'s lease (free or
        expired) for ``lease`` seconds and move the run to running, atomically.
        Runs left running by a node whose lease expired are marked failed.
        The run, or None when another node has the job or the run is gone."""
        now = self.clock.seconds()

        def run(txn):
            txn.execute("UPDATE sync_jobs SET lease_node = ?, lease_until = ? WHERE id = ?"
                        " AND (lease_node IS NULL OR lease_until IS NULL OR lease_until < ?)",
                        (node, now + lease, jid, now))
            if txn.rowcount != 1:
                return None
            txn.execute("UPDATE sync_runs SET state = 'failed', finished_at = ?, pause_reason = NULL,"
                        " resume_at = NULL WHERE job_id = ? AND state IN ('running', 'paused')",
                        (now, jid))
            txn.execute("UPDATE sync_runs SET state = 'running', node = ?, started_at = ?"
                        " WHERE id = ? AND state = 'queued'", (node, now, rid))
            if txn.rowcount != 1:
                txn.execute("UPDATE sync_jobs SET lease_node = NULL, lease_until = NULL WHERE id = ?", (jid,))
                return None
            out = _get_run(txn, rid)
            out["spec"] = _get_job(txn, jid)
            return out

        return await self.db.write(run)

    async def save(self, rid: int, jid: int, node: str, lease: float, run_json: dict,
                   *, final: bool = False) -> Optional[bool]:
        """Write the run's state and figures and renew the lease (``final``: release
        it).  Returns whether a cancel was asked for (another node's API, the CLI),
        or None when the job or run is gone."""
        now = self.clock.seconds()
        progress = json.dumps({k: run_json[k] for k in empty_progress()})

        def run(txn):
            txn.execute("UPDATE sync_runs SET state = ?, finished_at = ?, pause_reason = ?, resume_at = ?,"
                        " progress = ? WHERE id = ?",
                        (run_json["state"], run_json["finished_at"], run_json["pause_reason"],
                         run_json["resume_at"], progress, rid))
            if txn.rowcount != 1:
                return None
            if final:
                txn.execute("UPDATE sync_jobs SET lease_node = NULL, lease_until = NULL"
                            " WHERE id = ? AND lease_node = ?", (jid, node))
            else:
                txn.execute("UPDATE sync_jobs SET lease_until = ? WHERE id = ? AND lease_node = ?",
                            (now + lease, jid, node))
                if txn.rowcount != 1:
                    return None
            txn.execute("SELECT cancel_requested FROM sync_runs WHERE id = ?", (rid,))
            return bool(txn.fetchone()[0])

        return await self.db.write(run)

    async def request_cancel(self, rid: int) -> dict:
        """A queued run is cancelled at once; a running or paused one is marked for
        its node (which also stops at once when it is this one: the service)."""
        now = self.clock.seconds()

        def run(txn):
            r = _get_run(txn, rid)
            if r["state"] == "queued":
                txn.execute("UPDATE sync_runs SET state = 'cancelled', finished_at = ?"
                            " WHERE id = ? AND state = 'queued'", (now, rid))
            elif r["state"] in ACTIVE:
                txn.execute("UPDATE sync_runs SET cancel_requested = 1 WHERE id = ?", (rid,))
            return _get_run(txn, rid)

        return await self.db.write(run)

    def get_run(self, rid: int):
        return self.db.read(_get_run, rid)

    def list_runs(self, jid: Optional[int] = None, limit: int = 50):
        def run(txn):
            if jid is None:
                txn.execute(f"SELECT {_RUN_COLS}{_RUN_FROM} ORDER BY r.id DESC LIMIT ?", (limit,))
            else:
                txn.execute(f"SELECT {_RUN_COLS}{_RUN_FROM} WHERE r.job_id = ? ORDER BY r.id DESC LIMIT ?",
                            (jid, limit))
            return [_run(r) for r in txn.fetchall()]

        return self.db.read(run)

    # --- pins ----------------------------------------------------------------------------

    async def pin(self, jid: int, patterns: list[str], *, replace: bool) -> None:
        """Pin ``patterns`` (``<repo>@<digest>``) for job ``jid`` (source
        ``sync:<id>``); ``replace``: drop the job's other pins (what it no longer
        fetches)."""
        now = self.clock.seconds()
        source = pin_source(jid)

        def run(txn):
            if replace:
                txn.execute("SELECT id, pattern FROM cache_pins WHERE source = ?", (source,))
                keep = set(patterns)
                for pid, pattern in txn.fetchall():
                    if pattern not in keep:
                        txn.execute("DELETE FROM cache_pins WHERE id = ?", (pid,))
            for p in patterns:
                txn.execute("INSERT INTO cache_pins (pattern, source, note, created_at) VALUES (?, ?, ?, ?)"
                            " ON CONFLICT (pattern, source) DO NOTHING", (p, source, "pinned by a sync job", now))

        await self.db.write(run)

    def pins(self, jid: int):
        def run(txn):
            txn.execute("SELECT pattern FROM cache_pins WHERE source = ? ORDER BY pattern", (pin_source(jid),))
            return [r[0] for r in txn.fetchall()]

        return self.db.read(run)


__all__ = ["SyncJobStore", "ActiveRun", "ACTIVE", "FINISHED", "SPEC_KEYS", "empty_progress", "pin_source"]
