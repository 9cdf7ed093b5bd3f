"""``zmirror sync``: the commands beside /api/sync on one database; ``run`` queues a
run that a node's scheduler starts; the same refusals as the API."""

from __future__ import annotations

import json

from tests.fixtures.cli import CLIWithAPICase
from tests.fixtures.helpers import coro
from tests.fixtures.syncfakes import FakeBlobs, FakeManifests, FakeTags, multiarch
from zmirror.db.syncjobs import SyncJobStore
from zmirror.sync.service import SyncService


class SyncCommandTests(CLIWithAPICase):
    def test_add_list_show_edit_remove(self):
        self.assertEqual(self.ok("sync", "list"), "no sync jobs / 没有同步任务\n")
        out = self.ok("sync", "add", "base", "--image", "nginx:1.27", "--image", "python:3.13-*",
                      "--newest", "3", "--platforms", "linux/amd64,linux/arm64", "--interval", "3600", "--pin", "yes")
        self.assertEqual(out, "sync job 1 added: base (every 3600 s)\n")
        job = json.loads(self.ok("sync", "show", "base", "--json"))
        self.assertEqual((job["images"], job["newest"], job["platforms"], job["schedule"], job["pin"]),
                         (["library/nginx:1.27", "library/python:3.13-*"], 3, ["linux/amd64", "linux/arm64"],
                          {"interval": 3600}, True))
        self.assertIsNotNone(job["next_run_at"])
        self.assertIn("schedule:    every 3600 s", self.ok("sync", "show", "1"))
        out = self.ok("sync", "edit", "base", "--cron", "0 3 * * *", "--newest", "0", "--concurrency", "4")
        self.assertEqual(out, "sync job 1 updated: base (cron 0 3 * * *)\n")
        job = json.loads(self.ok("sync", "show", "1", "--json"))
        self.assertEqual((job["newest"], job["concurrency"]), (None, 4))
        self.assertEqual(self.ok("sync", "list").splitlines()[1].split()[:4], ["1", "base", "yes", "cron"])
        self.assertEqual(self.ok("sync", "remove", "base"), "sync job 1 removed: base\n")
        self.assertEqual(json.loads(self.ok("sync", "list", "--json")), [])

    def test_refusals(self):
        self.ok("sync", "add", "base", "--image", "nginx")
        self.assertIn("images", self.refused("sync", "add", "x", "--image", "NGINX"))
        self.assertIn("schedule", self.refused("sync", "add", "x", "--image", "nginx", "--interval", "5"))
        self.assertIn("schedule", self.refused("sync", "add", "x", "--image", "nginx", "--cron", "nope"))
        self.assertIn("concurrency", self.refused("sync", "edit", "base", "--concurrency", "99"))
        self.assertIn("platforms", self.refused("sync", "edit", "base", "--platforms", "linux"))
        self.assertEqual(self.refused("sync", "add", "base", "--image", "nginx"), "a sync job with this name exists")
        self.assertEqual(self.refused("sync", "edit", "base"), "nothing to update")
        self.assertIn("no sync job", self.refused("sync", "show", "nope"))
        self.assertIn("run id", self.refused("sync", "cancel", "abc"))

    @coro
    async def test_run_is_queued_for_the_service_and_runs_are_listed(self):
        self.ok("sync", "add", "base", "--image", "library/app:1.0")
        out = self.ok("sync", "run", "base")
        self.assertTrue(out.startswith("run 1 of sync job base queued"), out)
        self.assertIn("is not finished", self.refused("sync", "run", "base"))
        runs = json.loads(self.ok("sync", "runs", "--json"))
        self.assertEqual([(r["id"], r["state"], r["trigger"]) for r in runs], [(1, "queued", "cli")])
        self.client = self.stub(self.make_api(sync_jobs=SyncJobStore(self.db, self.clock)))
        _c, _h, api = await self.call("GET", "/api/sync/runs")
        self.assertEqual(runs, api["runs"])
        # a node's scheduler picks it up at its next poll
        manifests = FakeManifests()
        multiarch(manifests)
        svc = SyncService(SyncJobStore(self.db, self.clock), manifests=manifests, tags=FakeTags([]),
                          blobs=FakeBlobs(), clock=self.clock, node="node-a")
        await svc.poll()
        run = json.loads(self.ok("sync", "runs", "base", "--json"))[0]
        self.assertEqual((run["state"], run["node"], run["blobs"]["done"]), ("succeeded", "node-a", 7))
        self.assertIn("succeeded", self.ok("sync", "runs"))
        # cancel: a queued run at once
        self.ok("sync", "run", "1")
        self.assertEqual(self.ok("sync", "cancel", "2"), "run 2: cancelled\n")
