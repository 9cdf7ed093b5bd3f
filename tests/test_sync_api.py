"""/api/sync: jobs CRUD, runs (start, 409, live progress, cancel, history) and
hostile input → 400 with field errors, never a 500."""

from twisted.trial import unittest

from tests.fixtures.admin import T0, AdminTestMixin
from tests.fixtures.helpers import coro
from tests.fixtures.syncfakes import FakeBlobs, FakeManifests, FakeTags, multiarch
from zmirror.db.syncjobs import SyncJobStore
from zmirror.sync.service import SyncService

JOB = {"name": "base-images", "images": ["library/app:1.0"]}
JOB_KEYS = {"id", "name", "enabled", "images", "newest", "platforms", "schedule", "pin", "concurrency",
            "created_at", "updated_at", "next_run_at", "last_run"}
RUN_KEYS = {"id", "job_id", "job_name", "node", "trigger", "state", "started_at", "finished_at",
            "pause_reason", "resume_at", "images", "manifests", "blobs", "bytes", "current", "errors",
            "upstream_requests"}


class SyncApiTests(AdminTestMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.store = SyncJobStore(self.db, self.clock)
        self.manifests, self.blobs = FakeManifests(), FakeBlobs()
        multiarch(self.manifests)
        self.service = SyncService(self.store, manifests=self.manifests, tags=FakeTags([]), blobs=self.blobs,
                                   clock=self.clock, node="node-a")
        self.client = self.stub(self.make_api(sync_jobs=self.store, sync=self.service))

    @coro
    async def test_crud(self):
        code, _h, job = await self.call("POST", "/api/sync/jobs", {**JOB, "schedule": {"interval": 3600},
                                                                    "platforms": ["linux/amd64"]})
        self.assertEqual(code, 201, job)
        self.assertEqual(set(job), JOB_KEYS)
        self.assertEqual((job["enabled"], job["newest"], job["pin"], job["concurrency"], job["last_run"]),
                         (True, None, False, 2, None))
        self.assertEqual(job["next_run_at"], T0 + 3600)
        code, _h, got = await self.call("GET", f"/api/sync/jobs/{job['id']}")
        self.assertEqual(got, job)
        code, _h, listed = await self.call("GET", "/api/sync/jobs")
        self.assertEqual(listed, {"jobs": [job]})
        self.clock.advance(10)
        code, _h, upd = await self.call("PUT", f"/api/sync/jobs/{job['id']}",
                                        {"images": ["python:3.13-*"], "newest": 3, "schedule": {"cron": "0 3 * * *"}})
        self.assertEqual(code, 200, upd)
        self.assertEqual((upd["images"], upd["newest"], upd["platforms"]),
                         (["library/python:3.13-*"], 3, ["linux/amd64"]))
        self.assertEqual(upd["updated_at"], T0 + 10)
        self.assertGreater(upd["next_run_at"], T0)
        code, _h, upd = await self.call("PUT", f"/api/sync/jobs/{job['id']}", {"enabled": False})
        self.assertIsNone(upd["next_run_at"])
        code, _h, _ = await self.call("POST", "/api/sync/jobs", JOB)
        self.assertEqual(code, 409)
        code, _h, _ = await self.call("DELETE", f"/api/sync/jobs/{job['id']}")
        self.assertEqual(code, 204)
        code, _h, _ = await self.call("GET", f"/api/sync/jobs/{job['id']}")
        self.assertEqual(code, 404)

    @coro
    async def test_run_history_and_409(self):
        code, _h, job = await self.call("POST", "/api/sync/jobs", {**JOB, "pin": True})
        self.blobs.hold = True
        code, _h, obj = await self.call("POST", f"/api/sync/jobs/{job['id']}/run")
        self.assertEqual(code, 202, obj)
        run = obj["run"]
        self.assertEqual(set(run), RUN_KEYS)
        self.assertEqual((run["state"], run["trigger"], run["node"], run["job_name"]),
                         ("running", "manual", "node-a", "base-images"))
        code, _h, again = await self.call("POST", f"/api/sync/jobs/{job['id']}/run")
        self.assertEqual(code, 409)
        self.assertEqual(again["fields"], {"run": run["id"]})
        # live progress from memory
        code, _h, live = await self.call("GET", f"/api/sync/runs/{run['id']}")
        self.assertEqual(live["manifests"], {"done": 4, "total": 4})
        self.assertEqual(live["blobs"]["total"], 7)
        code, _h, j = await self.call("GET", f"/api/sync/jobs/{job['id']}")
        self.assertEqual(j["last_run"]["id"], run["id"])
        for _ in range(5):
            self.blobs.release_all()
        code, _h, done = await self.call("GET", f"/api/sync/runs/{run['id']}")
        self.assertEqual((done["state"], done["blobs"]["done"], done["bytes"]["done"]),
                         ("succeeded", 7, done["bytes"]["total"]))
        self.blobs.hold = False
        await self.call("POST", f"/api/sync/jobs/{job['id']}/run")
        code, _h, runs = await self.call("GET", f"/api/sync/runs?job={job['id']}&limit=1")
        self.assertEqual(len(runs["runs"]), 1)
        self.assertGreater(runs["runs"][0]["id"], run["id"])
        code, _h, runs = await self.call("GET", "/api/sync/runs")
        self.assertEqual(len(runs["runs"]), 2)

    @coro
    async def test_cancel(self):
        code, _h, job = await self.call("POST", "/api/sync/jobs", JOB)
        self.blobs.hold = True
        code, _h, obj = await self.call("POST", f"/api/sync/jobs/{job['id']}/run")
        code, _h, run = await self.call("POST", f"/api/sync/runs/{obj['run']['id']}/cancel")
        self.assertEqual((code, run["state"]), (200, "cancelled"))
        self.assertIsNotNone(run["finished_at"])
        code, _h, _ = await self.call("POST", "/api/sync/runs/999/cancel")
        self.assertEqual(code, 404)

    @coro
    async def test_without_a_service_runs_are_queued(self):
        self.client = self.stub(self.make_api(sync_jobs=self.store, sync=None))
        code, _h, job = await self.call("POST", "/api/sync/jobs", JOB)
        code, _h, obj = await self.call("POST", f"/api/sync/jobs/{job['id']}/run")
        self.assertEqual((code, obj["run"]["state"]), (202, "queued"))

    @coro
    async def test_hostile_input(self):
        cases = [
            ({}, ("name", "images")),
            ({**JOB, "name": ""}, ("name",)),
            ({**JOB, "name": "x" * 500}, ("name",)),
            ({**JOB, "images": []}, ("images",)),
            ({**JOB, "images": "nginx"}, ("images",)),
            ({**JOB, "images": ["../../etc/passwd"]}, ("images",)),
            ({**JOB, "images": ["nginx@sha256:zz"]}, ("images",)),
            ({**JOB, "images": [{"$ne": 1}]}, ("images",)),
            ({**JOB, "images": ["a"] * 1000}, ("images",)),
            ({**JOB, "newest": -1}, ("newest",)),
            ({**JOB, "newest": "3"}, ("newest",)),
            ({**JOB, "platforms": ["windows"]}, ("platforms",)),
            ({**JOB, "schedule": {"interval": 1}}, ("schedule",)),
            ({**JOB, "schedule": {"cron": "* * * * * * *"}}, ("schedule",)),
            ({**JOB, "schedule": {"cron": "99 99 99 99 99"}}, ("schedule",)),
            ({**JOB, "schedule": "hourly"}, ("schedule",)),
            ({**JOB, "pin": "yes"}, ("pin",)),
            ({**JOB, "concurrency": 0}, ("concurrency",)),
            ({**JOB, "concurrency": 1e308}, ("concurrency",)),
            ({**JOB, "colour": "red"}, ("colour",)),
        ]
        for body, fields in cases:
            result = await self.call("POST", "/api/sync/jobs", body)
            self.assertError(result, 400, *fields)
        for raw in (b"[1]", b"{", b"\xff", b"null"):
            self.assertError(await self.call("POST", "/api/sync/jobs", raw=raw), 400)
        code, _h, job = await self.call("POST", "/api/sync/jobs", JOB)
        self.assertError(await self.call("PUT", f"/api/sync/jobs/{job['id']}", {}), 400)
        self.assertError(await self.call("PUT", f"/api/sync/jobs/{job['id']}", {"id": 99, "pin": True}), 400, "id")
        self.assertError(await self.call("PUT", f"/api/sync/jobs/{job['id']}", {"concurrency": 9}), 400,
                         "concurrency")
        for path in ("/api/sync/runs?limit=abc", "/api/sync/runs?job=-1", "/api/sync/runs?x=1",
                     "/api/sync/runs?job=1&job=2"):
            self.assertError(await self.call("GET", path), 400)
        for path in ("/api/sync/jobs/abc", "/api/sync/jobs/0", "/api/sync/jobs/99999999999999999999",
                     "/api/sync/runs/1x"):
            self.assertError(await self.call("GET", path), 404)
        self.assertError(await self.call("POST", "/api/sync/jobs/12345/run"), 404)
        self.assertEqual(len((await self.call("GET", "/api/sync/jobs"))[2]["jobs"]), 1)

    @coro
    async def test_without_the_store_reads_are_empty_and_writes_503(self):
        self.client = self.stub(self.make_api())
        self.assertEqual((await self.call("GET", "/api/sync/jobs"))[::2], (200, {"jobs": []}))
        self.assertEqual((await self.call("GET", "/api/sync/runs"))[::2], (200, {"runs": []}))
        self.assertError(await self.call("GET", "/api/sync/jobs/1"), 404)
        self.assertError(await self.call("GET", "/api/sync/runs/1"), 404)
        self.assertError(await self.call("POST", "/api/sync/jobs", JOB), 503)
        self.assertError(await self.call("POST", "/api/sync/jobs/1/run"), 503)

    @coro
    async def test_requires_admin(self):
        code, _h, _ = await self.call("GET", "/api/sync/jobs", auth=False)
        self.assertEqual(code, 401)
        code, _h, _ = await self.call("POST", "/api/sync/jobs", JOB, auth=False)
        self.assertEqual(code, 401)
