"""``/api/sync``: pre-warm and sync jobs and their runs (docs/api.md, "Pre-warm and
sync jobs").  Fields are checked by :mod:`zmirror.sync.spec`; rows live in
:class:`~zmirror.db.syncjobs.SyncJobStore`; runs start on this node's
:class:`~zmirror.sync.service.SyncService` (without one — no blob cache here —
a run is queued for another node)."""

from __future__ import annotations

from typing import Any, Optional

from zmirror.admin.http import maybe, need, route, update_values
from zmirror.admin.validate import ApiError, Field, check, identifier, invalid, json_body, path_id, q_int, query
from zmirror.db.errors import Conflict, NotFound
from zmirror.db.syncjobs import ActiveRun
from zmirror.sync import spec as S
from zmirror.sync.schedule import next_fire

JOB_FIELDS = {
    "name": Field(S.job_name, required=True),
    "enabled": Field(S.boolean, default=True),
    "images": Field(S.images, required=True),
    "newest": Field(S.newest),
    "platforms": Field(S.platforms, default=[]),
    "schedule": Field(S.schedule),
    "pin": Field(S.boolean, default=False),
    "concurrency": Field(S.concurrency, default=2),
}
JOB_UPDATE_FIELDS = {"id": Field(identifier), **{k: Field(f.validate) for k, f in JOB_FIELDS.items()}}
RUNS_LIMIT = 500

JOB_KEYS = ("id", "name", "enabled", "images", "newest", "platforms", "schedule", "pin", "concurrency",
            "created_at", "updated_at", "next_run_at", "last_run")
RUN_KEYS = ("id", "job_id", "job_name", "node", "trigger", "state", "started_at", "finished_at",
            "pause_reason", "resume_at", "images", "manifests", "blobs", "bytes", "current", "errors",
            "upstream_requests")


def job_out(row: dict) -> dict:
    out = {k: row.get(k) for k in JOB_KEYS}
    out["platforms"] = out["platforms"] or []
    out["pin"] = bool(out["pin"])
    if out["last_run"] is not None:
        out["last_run"] = run_out(out["last_run"])
    return out


def run_out(row: dict) -> dict:
    return {k: row.get(k) for k in RUN_KEYS}


def new_job_values(body: Any) -> dict:
    """A new job's checked values (``newest``, ``schedule`` default to null)."""
    values = check(body, JOB_FIELDS)
    values.setdefault("newest", None)
    values.setdefault("schedule", None)
    return values


async def create_job(store: Any, values: dict, now: float) -> dict:
    """Shared by the API and the CLI."""
    values = dict(values)
    name, enabled = values.pop("name"), values.pop("enabled")
    nxt = next_fire(values["schedule"], now) if enabled else None
    try:
        return await store.create_job(name, enabled, values, nxt)
    except Conflict:
        raise invalid_conflict() from None


async def update_job(store: Any, jid: int, values: dict, now: float) -> dict:
    if "schedule" in values or "enabled" in values:
        job = await maybe(store.get_job(jid))
        sched = values.get("schedule", job["schedule"])
        enabled = values.get("enabled", job["enabled"])
        nxt = next_fire(sched, now) if enabled else None
        if (sched == job["schedule"] and enabled == job["enabled"]):
            nxt = job["next_run_at"]  # unchanged: keep the rhythm
        return await _update(store, jid, values, nxt)
    return await _update(store, jid, values, ...)


async def _update(store: Any, jid: int, values: dict, nxt: Any) -> dict:
    try:
        return await store.update_job(jid, values, nxt)
    except Conflict:
        raise invalid_conflict() from None


def invalid_conflict() -> ApiError:
    return ApiError(409, "a sync job with this name exists", {"name": "already exists"})


class SyncHandlers:
    """``store``: the jobs and runs; ``service``: this node's scheduler (None: runs
    are queued for the nodes that have one); ``clock``."""

    def __init__(self, store: Any, service: Any, clock: Any):
        self.store = store
        self.service = service
        self.clock = clock

    def _store(self):
        return need(self.store, "sync jobs")

    # Without a store (an API built without the sync part) the reads answer what there is:
    # no jobs, no runs; the writes answer 503.

    @route("/sync/jobs", ["GET"])
    async def list_jobs(self, request):
        query(request, ())
        if self.store is None:
            return {"jobs": []}
        rows = await maybe(self.store.list_jobs())
        return {"jobs": [job_out(self._live_last(r)) for r in rows]}

    @route("/sync/jobs", ["POST"])
    async def create(self, request):
        store = self._store()
        values = new_job_values(json_body(request))
        return 201, job_out(await create_job(store, values, self.clock.seconds()))

    @route("/sync/jobs/<jid>", ["GET"])
    async def get(self, request, jid):
        jid = path_id(jid)
        if self.store is None:
            raise NotFound(f"sync job {jid}")
        return job_out(self._live_last(await maybe(self.store.get_job(jid))))

    @route("/sync/jobs/<jid>", ["PUT"])
    async def update(self, request, jid):
        store = self._store()
        jid, values = update_values(request, JOB_UPDATE_FIELDS, path_id(jid))
        return job_out(await update_job(store, jid, values, self.clock.seconds()))

    @route("/sync/jobs/<jid>", ["DELETE"])
    async def delete(self, request, jid):
        jid = path_id(jid)
        store = self._store()
        await maybe(store.get_job(jid))
        if self.service is not None:
            for act in list(self.service.active.values()):
                if act.run["job_id"] == jid:
                    await self.service.cancel(act.run["id"])
        await store.delete_job(jid)
        return None

    @route("/sync/jobs/<jid>/run", ["POST"])
    async def run(self, request, jid):
        jid = path_id(jid)
        store = self._store()
        try:
            if self.service is not None:
                run = await self.service.run_now(jid, "manual")
            else:
                run = await store.queue_run(jid, "manual")
        except ActiveRun as e:
            raise ApiError(409, f"run {e.run_id} of this job is not finished", {"run": e.run_id}) from None
        return 202, {"run": run_out(run)}

    @route("/sync/runs", ["GET"])
    async def runs(self, request):
        params = query(request, ("job", "limit"))
        errors: dict = {}
        job = q_int(params, "job", 0, 1, 2**63 - 1, errors)
        limit = q_int(params, "limit", 50, 1, RUNS_LIMIT, errors, clamp=True)
        if errors:
            raise invalid(errors, "query")
        if self.store is None:
            return {"runs": []}
        rows = await maybe(self.store.list_runs(job or None, limit))
        return {"runs": [run_out(self._live(r)) for r in rows]}

    @route("/sync/runs/<rid>", ["GET"])
    async def get_run(self, request, rid):
        rid = path_id(rid)
        if self.store is None:
            raise NotFound(f"sync run {rid}")
        return run_out(self._live(await maybe(self.store.get_run(rid))))

    @route("/sync/runs/<rid>/cancel", ["POST"])
    async def cancel(self, request, rid):
        rid = path_id(rid)
        store = self._store()
        if self.service is not None:
            return run_out(await self.service.cancel(rid))
        return run_out(await store.request_cancel(rid))

    # --- live progress of the runs going on here ---------------------------------------

    def _live(self, row: dict) -> dict:
        live: Optional[dict] = self.service.live(row["id"]) if self.service is not None else None
        return live if live is not None else row

    def _live_last(self, job: dict) -> dict:
        if job.get("last_run") is not None:
            job["last_run"] = self._live(job["last_run"])
        return job


__all__ = ["SyncHandlers", "JOB_FIELDS", "JOB_UPDATE_FIELDS", "job_out", "run_out", "new_job_values",
           "create_job", "update_job"]
