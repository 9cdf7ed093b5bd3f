"""The sync store (zmirror.db.syncjobs) and scheduler (zmirror.sync.service) on a real
database with an injected clock: schedule ticks, runs queued and started, the job
lease shared by two "nodes" on one database, cancel from elsewhere, pins, history.
The same tests run on PostgreSQL when it is available."""

from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.admin import sync_database
from tests.fixtures.helpers import coro
from tests.fixtures.syncfakes import FakeBlobs, FakeManifests, FakeTags, image_manifest, multiarch, rate_limited
from zmirror.db.syncjobs import ActiveRun, SyncJobStore
from zmirror.oci.mediatypes import OCI_MANIFEST
from zmirror.sync.schedule import next_fire
from zmirror.sync.service import SyncService

T0 = 1_700_000_000.0
SPEC = {"images": ["library/app:1.0"], "newest": None, "platforms": [], "schedule": None, "pin": False,
        "concurrency": 2}


class SyncServiceTests(unittest.TestCase):
    backend = "sqlite"

    def setUp(self):
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        self.clock = Clock()
        self.clock.advance(T0)
        self.db = sync_database(self, tmp / "registry.db")
        self.addCleanup(self.db.close)
        self.store = SyncJobStore(self.db, self.clock)
        self.manifests = FakeManifests()
        self.blobs = FakeBlobs()
        self.index = multiarch(self.manifests)

    def node(self, name="node-a", blobs=None):
        svc = SyncService(SyncJobStore(self.db, self.clock), manifests=self.manifests, tags=FakeTags([]),
                          blobs=blobs or self.blobs, clock=self.clock, node=name, poll=2.0, lease=60.0)
        return svc

    async def job(self, **spec):
        s = {**SPEC, **spec}
        return await self.store.create_job(spec.pop("name", "base"), True, s,
                                           next_fire(s["schedule"], self.clock.seconds()))

    @coro
    async def test_manual_run_completes_and_is_saved(self):
        job = await self.job(pin=True)
        svc = self.node()
        run = await svc.run_now(job["id"])
        self.assertEqual((run["state"], run["node"], run["trigger"], run["job_name"]),
                         ("succeeded", "node-a", "manual", "base"))
        saved = await self.store.get_run(run["id"])
        self.assertEqual(saved["state"], "succeeded")
        self.assertEqual(saved["blobs"], {"done": 7, "skipped": 0, "total": 7})
        self.assertEqual(saved["manifests"], {"done": 4, "total": 4})
        self.assertIsNotNone(saved["finished_at"])
        self.assertEqual(svc.active, {})
        pins = await self.store.pins(job["id"])
        self.assertEqual(len(pins), 4)
        self.assertIn(f"library/app@{self.index}", pins)
        # the lease is free again: the next run starts
        run2 = await svc.run_now(job["id"])
        self.assertEqual(run2["state"], "succeeded")
        self.assertEqual([r["id"] for r in await self.store.list_runs(job["id"])], [run2["id"], run["id"]])
        got = await self.store.get_job(job["id"])
        self.assertEqual(got["last_run"]["id"], run2["id"])
        # deleting the job deletes its runs and pins
        await self.store.delete_job(job["id"])
        self.assertEqual(await self.store.pins(job["id"]), [])
        self.assertEqual(await self.store.list_runs(job["id"]), [])

    @coro
    async def test_live_progress_and_one_run_at_a_time(self):
        job = await self.job()
        self.blobs.hold = True
        svc = self.node()
        run = await svc.run_now(job["id"])
        self.assertEqual(run["state"], "running")
        with self.assertRaises(ActiveRun):
            await svc.run_now(job["id"])
        live = svc.live(run["id"])
        self.assertEqual(live["manifests"], {"done": 4, "total": 4})
        self.assertEqual(live["blobs"]["done"], 0)
        await svc.poll()  # writes the progress
        self.assertEqual((await self.store.get_run(run["id"]))["manifests"]["done"], 4)
        for _ in range(5):
            self.blobs.release_all()
        self.assertEqual((await self.store.get_run(run["id"]))["state"], "succeeded")

    @coro
    async def test_two_nodes_one_lease(self):
        job = await self.job()
        self.blobs.hold = True
        a, b = self.node("node-a"), self.node("node-b", blobs=FakeBlobs())
        queued = await self.store.queue_run(job["id"], "cli")
        self.assertEqual(queued["state"], "queued")
        await a.poll()
        await b.poll()
        self.assertEqual(list(a.active), [queued["id"]])
        self.assertEqual(b.active, {})
        self.assertEqual((await self.store.get_run(queued["id"]))["node"], "node-a")
        # node-a keeps renewing its lease: node-b never takes the job
        self.clock.advance(50)
        await a.poll()
        self.clock.advance(50)
        await b.poll()
        self.assertEqual(b.active, {})
        # node-a dies (no renewal): after the lease, the next queued run goes to node-b
        # and node-a's run is marked failed
        a.active.clear()
        self.clock.advance(61)
        await self.db.write(lambda txn: txn.execute(
            "INSERT INTO sync_runs (job_id, node, run_trigger, state, started_at, progress)"
            " VALUES (?, '', 'cli', 'queued', ?, '{}')", (job["id"], self.clock.seconds())))
        await b.poll()
        latest = (await self.store.list_runs(job["id"]))[0]
        self.assertEqual((latest["node"], latest["state"]), ("node-b", "succeeded"))
        self.assertEqual((await self.store.get_run(queued["id"]))["state"], "failed")

    @coro
    async def test_schedule_tick_runs_once_across_nodes(self):
        job = await self.job(schedule={"interval": 3600})
        self.assertEqual(job["next_run_at"], T0 + 3600)
        a, b = self.node("node-a"), self.node("node-b")
        await a.poll()
        await b.poll()
        self.assertEqual(await self.store.list_runs(job["id"]), [])
        self.clock.advance(3600)
        await a.poll()
        await b.poll()
        runs = await self.store.list_runs(job["id"])
        self.assertEqual(len(runs), 1)
        self.assertEqual((runs[0]["trigger"], runs[0]["state"]), ("schedule", "succeeded"))
        self.assertEqual((await self.store.get_job(job["id"]))["next_run_at"], T0 + 7200)
        # a tick missed while no node ran is skipped, not run in a burst
        self.clock.advance(3 * 3600 + 10)
        await b.poll()
        await a.poll()
        self.assertEqual(len(await self.store.list_runs(job["id"])), 2)
        self.assertEqual((await self.store.get_job(job["id"]))["next_run_at"], T0 + 4 * 3600 + 10 + 3600)

    @coro
    async def test_disabled_job_does_not_fire(self):
        job = await self.job(schedule={"interval": 60})
        await self.store.update_job(job["id"], {"enabled": False}, None)
        self.clock.advance(600)
        await self.node().poll()
        self.assertEqual(await self.store.list_runs(job["id"]), [])

    @coro
    async def test_cancel_here_and_from_elsewhere(self):
        job = await self.job()
        self.blobs.hold = True
        svc = self.node()
        run = await svc.run_now(job["id"])
        done = await svc.cancel(run["id"])
        self.assertEqual(done["state"], "cancelled")
        self.assertEqual(self.blobs.cancelled, 2)
        # another node (or the CLI) asks: this node stops at its next poll
        run = await svc.run_now(job["id"])
        other = SyncJobStore(self.db, self.clock)
        asked = await other.request_cancel(run["id"])
        self.assertEqual(asked["state"], "running")
        await svc.poll()
        self.assertEqual((await self.store.get_run(run["id"]))["state"], "cancelled")
        # a queued run is cancelled at once
        queued = await self.store.queue_run(job["id"], "cli")
        self.assertEqual((await other.request_cancel(queued["id"]))["state"], "cancelled")

    @coro
    async def test_pause_is_saved_and_the_run_resumes(self):
        job = await self.job(images=["library/one:1"])
        self.manifests.add("library/one", "1", OCI_MANIFEST, image_manifest("x"))
        self.manifests.fail[("library/one", "1")] = [rate_limited(20)]
        svc = self.node()
        run = await svc.run_now(job["id"])
        self.assertEqual(run["state"], "paused")
        self.clock.advance(0)  # the save of the pause
        saved = await self.store.get_run(run["id"])
        self.assertEqual((saved["state"], saved["pause_reason"], saved["resume_at"]),
                         ("paused", "rate limited by docker.io", T0 + 20))
        self.clock.advance(20)
        saved = await self.store.get_run(run["id"])
        self.assertEqual((saved["state"], saved["resume_at"]), ("succeeded", None))

    @coro
    async def test_stop_service_ends_runs(self):
        job = await self.job()
        self.blobs.hold = True
        svc = self.node()
        svc.startService()
        run = await svc.run_now(job["id"])
        await svc.stopService()
        saved = await self.store.get_run(run["id"])
        self.assertEqual(saved["state"], "cancelled")
        self.assertEqual(saved["errors"][-1]["error"], "the node stopped during the run")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @coro
    async def test_loop_picks_up_requests(self):
        job = await self.job()
        svc = self.node()
        svc.startService()
        self.addCleanup(svc.stopService)
        queued = await self.store.queue_run(job["id"], "cli")
        self.clock.advance(2)
        self.assertEqual((await self.store.get_run(queued["id"]))["state"], "succeeded")


class SyncServicePostgresTests(SyncServiceTests):
    backend = "postgresql"


class StopTests(unittest.TestCase):
    def test_stop_does_not_wait_for_a_poll_that_never_answers(self):
        class Hanging:
            def due_jobs(self, now):
                return Deferred()  # a database call of a closed pool

        clock = Clock()
        svc = SyncService(Hanging(), manifests=None, tags=None, blobs=None, clock=clock, node="n")
        svc.startService()
        self.assertIsNone(self.successResultOf(svc.stopService()))
        clock.advance(10)
        self.assertEqual(clock.getDelayedCalls(), [])
