"""The sync scheduler of one node: every ``poll`` seconds it takes the due
schedule ticks (queuing their runs), starts the queued runs whose job lease it
gets, writes the progress of its running runs (renewing their leases) and
follows cancel requests made elsewhere (another node's API, the CLI).

Design: docs/design/sync.md ("Scheduling", "Runs across nodes").
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from zmirror.cache.download import CacheUnavailable
from zmirror.db.syncjobs import ActiveRun, SyncJobStore
from zmirror.sync.runner import SyncRun, error_text
from zmirror.sync.schedule import next_fire

log = Logger()

BUSY_WAIT = 1.0  # seconds a prefetch waits when the cache has no room for another download now
BUSY_TRIES = 60
POLL = 2.0  # seconds between looks at the database (CLI requests are seen within this)
LEASE = 60.0  # a run's job lease; renewed at every poll while it runs


class LocalBlobs:
    """Prefetch into this node's cache (:meth:`PullThroughBlobs.prefetch`).  When the
    cache is storing but has no room for another download right now (transfer threads,
    temp-file budget: taken by client pulls), wait ``busy_wait`` seconds and try again,
    up to ``busy_tries`` times: the job yields to clients."""

    def __init__(self, blob_source: Any, clock: Any = None, *, busy_wait: float = BUSY_WAIT,
                 busy_tries: int = BUSY_TRIES):
        self.blob_source = blob_source
        self.clock = clock
        self.busy_wait = busy_wait
        self.busy_tries = busy_tries

    async def fetch(self, repo: str, digest: str, size: int, record: Any, on_download: Any = None) -> bool:
        tries = 0
        while True:
            try:
                return await self.blob_source.prefetch(repo, digest, record=record, on_download=on_download)
            except CacheUnavailable:
                tries += 1
                local = self.blob_source.local
                if self.clock is None or tries >= self.busy_tries or local is None or not local.storing():
                    raise
            await deferLater(self.clock, self.busy_wait, lambda: None)


class _Active:
    def __init__(self, run: dict, runner: SyncRun):
        self.run = run
        self.runner = runner
        self.deferred: Optional[Deferred] = None
        self.cancelled = False


class SyncService(Service):
    """``store``: :class:`~zmirror.db.syncjobs.SyncJobStore`; ``manifests``,
    ``tags``: the proxy's sources; ``blobs``: the blob fetcher (:class:`LocalBlobs`
    or :class:`~zmirror.sync.cluster.FrontBlobs`); ``node``: this node's name."""

    name = "sync"

    def __init__(self, store: SyncJobStore, *, manifests: Any, tags: Any, blobs: Any, clock: Any,
                 node: str, poll: float = POLL, lease: float = LEASE):
        self.store = store
        self.manifests = manifests
        self.tags = tags
        self.blobs = blobs
        self.clock = clock
        self.node = node
        self.poll_interval = poll
        self.lease = lease
        self.active: dict[int, _Active] = {}  # run id → the run going on here
        self._loop: Optional[LoopingCall] = None
        self._polling: Optional[Deferred] = None

    # --- service ---------------------------------------------------------------------------

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.poll_interval, now=True).addErrback(
            lambda f: log.failure("sync scheduler stopped", f))

    def stopService(self) -> Deferred:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return Deferred.fromCoroutine(self._end_runs())

    async def _end_runs(self) -> None:
        """Cancel a poll under way (its database call may never answer once the pools
        close) and the runs going on here, and wait for their last save."""
        if self._polling is not None and not self._polling.called:
            self._polling.cancel()
        for act in list(self.active.values()):
            act.runner.state["errors"].append({"item": act.run.get("job_name") or "",
                                               "error": "the node stopped during the run"})
            self._stop(act)
        for act in list(self.active.values()):
            if act.deferred is not None:
                await act.deferred

    def _tick(self) -> Deferred:
        d = Deferred.fromCoroutine(self.poll())
        d.addErrback(lambda f: None if f.check(CancelledError) else log.failure("sync scheduler: poll failed", f))
        self._polling = d
        return d

    # --- the poll ----------------------------------------------------------------------

    async def poll(self) -> None:
        """Due ticks → queued runs → runs started here; progress written."""
        now = self.clock.seconds()
        for job in await self.store.due_jobs(now):
            due = job["next_run_at"]
            await self.store.tick(job["id"], due, next_fire(job["schedule"], now, due))
        await self._start_queued()
        for act in list(self.active.values()):
            await self._save(act)

    async def _start_queued(self) -> None:
        busy = {a.run["job_id"] for a in self.active.values()}
        for rid, jid in await self.store.queued_runs():
            if jid in busy:
                continue
            claimed = await self.store.claim(rid, jid, self.node, self.lease)
            if claimed is None:
                continue
            busy.add(jid)
            self._start(claimed)

    def _start(self, claimed: dict) -> None:
        spec = claimed.pop("spec")
        claimed.pop("cancel_requested", None)
        runner = SyncRun(claimed, spec, manifests=self.manifests, tags=self.tags, blobs=self.blobs,
                         clock=self.clock, on_change=lambda: self._save_soon(claimed["id"]))
        act = _Active(claimed, runner)
        self.active[claimed["id"]] = act
        log.info("sync run {id} of job {job} started on {node}", id=claimed["id"], job=claimed["job_name"],
                 node=self.node)
        act.deferred = Deferred.fromCoroutine(self._run(act, spec))
        act.deferred.addErrback(lambda f: log.failure("sync run failed", f))

    async def _run(self, act: _Active, spec: dict) -> None:
        run = act.run
        try:
            state = await act.runner.run()
        except CancelledError:
            state = "cancelled" if act.cancelled else "failed"
        except Exception as e:
            act.runner._error(run.get("job_name") or "run", e)
            state = "failed"
        if act.cancelled and state != "cancelled":
            state = "cancelled"
        if spec.get("pin") and act.runner.pinned:
            try:
                await self.store.pin(run["job_id"], sorted(set(act.runner.pinned)),
                                     replace=state == "succeeded" and not run["errors"])
            except Exception as e:
                log.failure("sync run {id}: writing pins failed", id=run["id"])
                act.runner._error("pins", e)
        run.update(state=state, finished_at=self.clock.seconds(), current=None, pause_reason=None,
                   resume_at=None)
        try:
            await self.store.save(run["id"], run["job_id"], self.node, self.lease, run, final=True)
        except Exception:
            log.failure("sync run {id}: saving its end failed", id=run["id"])
        finally:
            self.active.pop(run["id"], None)
        log.info("sync run {id} {state}: {blobs} blobs ({skipped} cached), {errors} errors",
                 id=run["id"], state=state, blobs=run["blobs"]["done"], skipped=run["blobs"]["skipped"],
                 errors=len(run["errors"]))

    async def _save(self, act: _Active) -> None:
        if act.run["id"] not in self.active or act.run["finished_at"] is not None:
            return
        try:
            cancel = await self.store.save(act.run["id"], act.run["job_id"], self.node, self.lease,
                                           act.runner.snapshot())
        except Exception:
            log.failure("sync run {id}: saving progress failed", id=act.run["id"])
            return
        if cancel or cancel is None:
            # asked elsewhere, or the job / run / our lease is gone
            self._stop(act)

    def _save_soon(self, rid: int) -> None:
        act = self.active.get(rid)
        if act is not None:
            self.clock.callLater(0, lambda: Deferred.fromCoroutine(self._save(act)))

    def _stop(self, act: _Active) -> None:
        if act.cancelled:
            return
        act.cancelled = True
        if act.deferred is not None:
            act.deferred.cancel()
        act.runner.cancel_tasks()

    # --- what the API asks ----------------------------------------------------------------

    async def run_now(self, jid: int, trigger: str = "manual") -> dict:
        """Queue a run of job ``jid`` and start it here if this node gets the job's
        lease; the run (raises ActiveRun when one is not finished)."""
        queued = await self.store.queue_run(jid, trigger)
        await self._start_queued()
        act = self.active.get(queued["id"])
        return act.runner.snapshot() if act is not None else await self.store.get_run(queued["id"])

    async def cancel(self, rid: int) -> dict:
        run = await self.store.request_cancel(rid)
        act = self.active.get(rid)
        if act is not None:
            self._stop(act)
            if act.deferred is not None:
                await act.deferred
            return await self.store.get_run(rid)
        return run

    def live(self, rid: int) -> Optional[dict]:
        """The in-memory run JSON of a run going on here (None otherwise)."""
        act = self.active.get(rid)
        return act.runner.snapshot() if act is not None else None


__all__ = ["SyncService", "LocalBlobs", "POLL", "LEASE", "ActiveRun", "error_text"]
