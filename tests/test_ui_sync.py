"""The Sync page in a real browser (headless Chromium against `twistd -n zmirror`), at 1366 px
and 390 px: a pre-warm job is created in the dialog (the API's refusal of a bad image shows
under the images field), run with "run now", its progress bars (polled from
``GET /api/sync/runs/<id>``) reach 100 %, the run is in the history, and the blobs are in
zmirror's cache; then the job is edited (a schedule) and deleted. With a slow, rate-limited
upstream: the run pauses (the reason and when it resumes are shown), goes on, its bars stand
between 0 and 100 % with the current item, and "cancel run" ends it (cancelled, in the
history too).

The upstream is a real Debian ``docker-registry`` (tests/e2e/harness.py) holding a small
multi-arch OCI index (linux/amd64 + linux/arm64/v8, two small layers each) behind a
:class:`~tests.e2e.faultproxy.FaultProxy` (unlimited unless a test paces it or plans a 429);
zmirror runs with its cache on. Skipped (with the reason) where Chromium, chromedriver, selenium,
docker-registry or skopeo are missing or the UI is not built (`make ui`).
"""

from __future__ import annotations

from tests.e2e import harness as H
from tests.e2e.faultproxy import Fault, FaultProxy, manifest_request
from tests.e2e.httpclient import http_json
from tests.e2e.images import DirLayout, _image, _list, _small_layers
from tests.fixtures import ui_browser
from tests.fixtures.ui_browser import BrowserCase, sel

# What is wrong with the layout under ``arguments[0]``: on a desktop, a table header on more
# than one line, a cell (or tag) whose content is cut, a cell outside its table's box; on a
# phone, anything wider than the page, and the page scrolling sideways.
LAYOUT_PROBLEMS = """
const root = document.querySelector(arguments[0]);
if (!root) return ['no ' + arguments[0]];
const out = [];
const text = (el) => (el.innerText || '').trim().replace(/\\s+/g, ' ').slice(0, 60);
for (const table of root.querySelectorAll('.el-table')) {
  if (!table.offsetParent) continue;
  const box = table.getBoundingClientRect();
  for (const th of table.querySelectorAll('thead th.el-table__cell .cell')) {
    if (text(th) && th.getClientRects().length && th.scrollHeight > th.clientHeight + 1) out.push('header on 2 lines: ' + text(th));
  }
  for (const cell of table.querySelectorAll('.el-table__cell .cell')) {
    if (!text(cell)) continue;
    const r = cell.closest('.el-table__cell').getBoundingClientRect();
    if (r.right > box.right + 1 || r.left < box.left - 1) out.push('outside the table: ' + text(cell));
    if (cell.scrollWidth > cell.clientWidth + 1) out.push('cell cut: ' + text(cell));
  }
}
const page = document.querySelector('.main').getBoundingClientRect();
for (const el of root.querySelectorAll('*')) {
  if (!el.offsetParent || el.closest('.el-table')) continue;
  const r = el.getBoundingClientRect();
  if (r.width && (r.right > page.right + 1 || r.left < page.left - 1)) out.push('outside the page: ' + text(el));
}
for (const tag of root.querySelectorAll('.el-tag')) {
  if (tag.offsetParent && tag.scrollWidth > tag.clientWidth + 1) out.push('tag cut: ' + text(tag));
}
const m = document.querySelector('.main');
if (m.scrollWidth > m.clientWidth) out.push('the page scrolls sideways');
return [...new Set(out)];
"""

E2E_SKIP = H.missing_tools()
REPO_NAME, TAG = "e2e/warm", "1"
JOB = "e2e-warm"
# the textarea (Element Plus puts the attributes on it, or on its wrapper)
IMAGES_BOX = f"textarea{sel('sync-images')}, {sel('sync-images')} textarea"
RUN_TIMEOUT = 60  # seconds for the run to end (a few hundred KiB on loopback)


def build_index(root):
    """A two-platform OCI index of small layers (tests/e2e/images.py's builders)."""
    lay = DirLayout(root)
    kids = [
        _image(lay, "warm-amd64", _small_layers("warm", "amd64", 31), oci=True, top=False),
        _image(lay, "warm-arm64", _small_layers("warm", "arm64", 32), oci=True, arch="arm64", variant="v8", top=False),
    ]
    return _list(lay, "warm", REPO_NAME, TAG, kids, oci=True)


class SyncPageCase(BrowserCase):
    if ui_browser.SKIP or E2E_SKIP:
        skip = ui_browser.SKIP or E2E_SKIP

    maxDiff = None
    width, height, mobile = 1366, 900, False

    def setUp(self):
        # not BrowserCase.setUp: zmirror comes from the e2e harness, with a real upstream
        from pathlib import Path

        self.out = Path(self.mktemp()).resolve()
        self.out.mkdir(parents=True)
        self.shots = self.out / "screenshots"
        self.shots.mkdir()
        self.h = H.Harness(self.out / "harness")
        self.addCleanup(self.h.stop)
        self.reg = self.h.start_open("upstream")
        self.image = build_index(self.out / "image")
        self.h.push(self.image, self.reg)
        self.proxy = FaultProxy(self.reg.port, name="upstream-proxy", chunk=4 * 1024)
        self.addCleanup(self.proxy.close)
        self.zm = self.h.start_zmirror("ui", [H.Upstream("upstream", self.proxy.url)], cache=True)
        self.user, self.password = self.zm.admin_credentials()
        self.driver = ui_browser.make_driver(self.out / "profile", self.width, self.height, self.mobile)
        self.addCleanup(self._quit)

    # --- helpers ---------------------------------------------------------------------------

    def api(self, method: str, path: str, body=None, status: int = 200):
        r = self.zm.api(method, path, body)
        self.assertEqual(r.status, status, r.describe())
        return r.json() if r.body else None

    def visible(self, css: str):
        """The element of ``css`` that shows (the table and the cards carry the same
        data-test names; only one of them is rendered, but fixed columns are doubled)."""
        from selenium.webdriver.common.by import By

        def found(d):
            for el in d.find_elements(By.CSS_SELECTOR, css):
                if el.is_displayed():
                    return el
            return False

        return self.wait().until(found, f"visible {css}")

    def press(self, css: str):
        el = self.visible(css)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click()", el)
        return el

    def assertNoProblems(self, script: str, css: str, what: str):
        self.assertEqual(self.driver.execute_script(script, css), [], what)

    def layout_ok(self, what: str):
        self.assertNoProblems(LAYOUT_PROBLEMS, sel("sync-page"), what)

    def live_state(self) -> str:
        return self.driver.execute_script(
            "const r = document.querySelector('[data-test=sync-live] [data-state]'); return r ? r.dataset.state : ''")

    def until(self, check, what: str):
        """Waits up to RUN_TIMEOUT for ``check()``; on a timeout the runs as the API has them."""
        from selenium.common.exceptions import TimeoutException

        try:
            self.wait(RUN_TIMEOUT).until(lambda d: check(), what)
        except TimeoutException:
            self.fail(f"{what}: not within {RUN_TIMEOUT} s; the page shows {self.live_state()!r}; "
                      f"runs: {self.api('GET', '/sync/runs')}")

    def percent(self, bar: str) -> int:
        return int(self.visible(sel(f"sync-progress-{bar}")).get_attribute("data-percent"))

    def create_job(self, name: str, image: str, concurrency: int = 2):
        self.click(sel("sync-add"))
        self.find(sel("sync-dialog"))
        self.type(sel("sync-name"), name)
        self.type(IMAGES_BOX, image)
        self.type(f"{sel('sync-concurrency')} input", str(concurrency))
        self.click(sel("sync-save"))
        self.gone(".el-dialog")
        self.wait_text(sel("sync-jobs-table"), name)

    # --- the tests ---------------------------------------------------------------------------

    def test_create_run_watch_progress_history_edit_delete(self):
        self.driver.get(self.zm.url + "/sync")
        self.login(self.password, self.user)
        self.find(sel("sync-page"))
        self.find(sel("sync-jobs-table"))

        # the dialog: a bad image is refused by the API, the message under the images field
        self.click(sel("sync-add"))
        self.find(sel("sync-dialog"))
        self.assertIn("library/python:3.13-*", self.find(sel("sync-images-help")).text)
        self.type(sel("sync-name"), JOB)
        self.type(IMAGES_BOX, "Not An Image")
        self.click(sel("sync-save"))
        self.wait_field_error("第 1 行：不是有效的仓库名")
        self.shot("sync-dialog-error")
        self.assertEqual(self.api("GET", "/sync/jobs")["jobs"], [])
        self.type(IMAGES_BOX, f"{REPO_NAME}:{TAG}")
        self.click(sel("sync-save"))
        self.gone(".el-dialog")
        self.wait_text(sel("sync-jobs-table"), JOB)
        jobs = self.api("GET", "/sync/jobs")["jobs"]
        self.assertEqual([(j["name"], j["images"], j["platforms"], j["schedule"], j["concurrency"]) for j in jobs],
                         [(JOB, [f"{REPO_NAME}:{TAG}"], [], None, 2)])
        self.layout_ok("the job listed")

        # run now: the live panel's bars are polled up to 100 %
        self.press(sel(f"sync-run-now-{JOB}"))
        self.find(sel("sync-live"))
        self.wait(RUN_TIMEOUT).until(
            lambda d: d.execute_script(
                "const r = document.querySelector('[data-test=sync-live] [data-state]');"
                " return r && r.dataset.state"), "a run shown")
        self.wait(RUN_TIMEOUT).until(
            lambda d: d.execute_script(
                "const r = document.querySelector('[data-test=sync-live] [data-state]');"
                " return r.dataset.state === 'succeeded'"), "the run succeeded")
        for bar in ("images", "manifests", "blobs", "bytes"):
            self.wait_text(sel(f"sync-percent-{bar}"), "100 %")
            self.assertEqual(self.find(sel(f"sync-progress-{bar}")).get_attribute("data-percent"), "100", bar)
        blobs = self.image.all_blobs()
        self.wait_text(sel("sync-bar-blobs-figure"), f"{len(blobs)} / {len(blobs)}")
        self.wait_text(sel("sync-bar-images-figure"), "1 / 1")
        self.shot("sync-run-done")

        # the history lists the run, succeeded; the job's last run says so too
        runs = self.api("GET", "/sync/runs")["runs"]
        self.assertEqual([(r["job_name"], r["state"]) for r in runs], [(JOB, "succeeded")])
        run = runs[0]
        self.assertEqual(run["bytes"]["done"], run["bytes"]["total"])
        self.assertEqual(run["bytes"]["total"], sum(b.size for b in blobs.values()))
        self.wait_text(sel("sync-history-table"), JOB)
        self.wait_text(sel("sync-history-table"), "成功")
        if not self.mobile:
            self.wait_text(sel(f"sync-history-run-{run['id']}"), str(run["id"]))
            self.wait_text(sel(f"sync-last-state-{JOB}"), "成功")
        self.layout_ok("after the run")
        self.shot_bottom("sync-history")

        # every blob of both platforms is in zmirror's cache: none left to fetch upstream
        since = self.reg.log_offset()
        for digest in blobs:
            r = http_json("GET", f"{self.zm.url}/v2/{REPO_NAME}/blobs/{digest}", None)
            self.assertEqual(r.status, 200, digest)
        for digest in blobs:
            self.assertEqual(self.reg.requests("GET", f"/v2/{REPO_NAME}/blobs/{digest}", since), [], digest)

        # run again: every blob is found in the cache (done, and counted as skipped)
        self.press(sel(f"sync-run-now-{JOB}"))
        self.wait(RUN_TIMEOUT).until(
            lambda d: d.execute_script(
                "const r = document.querySelector('[data-test=sync-live] [data-state]');"
                " return r.dataset.test === arguments[0] && r.dataset.state === 'succeeded'",
                f"sync-run-{run['id'] + 1}"), "the second run succeeded")
        figure = self.visible(sel("sync-bar-blobs-figure")).text
        self.assertEqual(figure, f"{len(blobs)} / {len(blobs)} （含 {len(blobs)} 个已缓存）")
        self.assertEqual(self.percent("blobs"), 100)
        self.wait_text(sel("sync-history-table"), str(run["id"] + 1))

        # edit: every 2 hours
        self.press(sel(f"sync-edit-{JOB}"))
        self.find(sel("sync-dialog"))
        self.click(sel("sync-schedule-interval"))
        self.find(sel("sync-every"))
        self.type(f"{sel('sync-every')} input", "2")
        self.click(sel("sync-save"))
        self.gone(".el-dialog")
        self.wait_text(sel("sync-jobs-table"), "每 2 小时")
        job = self.api("GET", "/sync/jobs")["jobs"][0]
        self.assertEqual(job["schedule"], {"interval": 7200})
        self.assertIsNotNone(job["next_run_at"])
        self.layout_ok("the job scheduled")
        self.shot("sync-scheduled")

        # delete, after the confirmation
        self.press(sel(f"sync-delete-{JOB}"))
        self.confirm()
        self.wait_no_text(sel("sync-jobs-table"), JOB)
        self.assertEqual(self.api("GET", "/sync/jobs")["jobs"], [])

    def test_pause_live_progress_and_cancel(self):
        # the first manifest GET is rate limited (429, 3 s); bodies come at 12 KB/s, one blob
        # at a time (the job's concurrency 1): about 8 s for each of the two big layers
        self.proxy.plan(manifest_request("GET"), [Fault.answer(429, retry_after=3, headers={
            "ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"})])
        self.proxy.rate = 12_000
        self.driver.get(self.zm.url + "/sync")
        self.login(self.password, self.user)
        self.find(sel("sync-jobs-table"))
        self.create_job(JOB, f"{REPO_NAME}:{TAG}", concurrency=1)
        self.assertEqual(self.api("GET", "/sync/jobs")["jobs"][0]["concurrency"], 1)
        self.press(sel(f"sync-run-now-{JOB}"))
        self.find(sel("sync-live"))

        # paused: why, and when it resumes
        self.until(lambda: self.live_state() == "paused", "the run paused")
        pause = self.visible("[data-test^=sync-run-pause-]")
        self.assertIn("rate limited by docker.io", pause.text)
        self.assertIn("恢复", pause.text)
        self.shot("sync-run-paused")

        # going on: the bars move, below 100 %, the current item named
        self.until(lambda: self.live_state() == "running" and 0 < self.percent("blobs") < 100, "blobs partly fetched")
        self.assertLess(self.percent("bytes"), 100)
        self.assertIn(REPO_NAME, self.visible("[data-test^=sync-run-current-]").text)
        self.wait_text(sel("sync-jobs-table"), "运行中")  # the job's last run
        self.wait_text(sel("sync-history-table"), "运行中")  # the run's row follows the live figures
        self.shot("sync-run-live")

        # cancel, after the confirmation
        self.press("[data-test^=sync-run-cancel-]")
        self.find(".el-message-box")
        self.click(".el-message-box__btns button:nth-child(2)")
        self.gone(".el-message-box")
        self.until(lambda: self.live_state() == "cancelled", "the run cancelled")
        self.assertLess(self.percent("bytes"), 100)
        self.wait_text(sel("sync-history-table"), "已取消")
        runs = self.api("GET", "/sync/runs")["runs"]
        self.assertEqual([(r["job_name"], r["state"]) for r in runs], [(JOB, "cancelled")])
        self.shot("sync-run-cancelled")

        # the finished run's panel closes
        self.press("[data-test^=sync-run-dismiss-]")
        self.gone(sel("sync-live"))

    def test_errors_of_a_run_in_english(self):
        # the UI in English; one image of the job is not upstream: the run ends with its error
        self.driver.get(self.zm.url + "/sync")
        self.login(self.password, self.user)
        self.find(sel("sync-jobs-table"))
        self.click(sel("lang-toggle"))
        self.wait().until(lambda d: self.storage("localStorage", "zmirror.lang") == "en", "English")
        self.create_job("mixed", f"{REPO_NAME}:{TAG}\ne2e/missing:1")
        self.assertEqual(self.api("GET", "/sync/jobs")["jobs"][0]["images"], [f"{REPO_NAME}:{TAG}", "e2e/missing:1"])
        self.press(sel("sync-run-now-mixed"))
        self.until(lambda: self.live_state() in ("succeeded", "failed"), "the run ended")
        run = self.api("GET", "/sync/runs")["runs"][0]
        self.assertEqual(run["state"], "succeeded")  # the other image was fetched
        self.assertEqual([e["item"] for e in run["errors"]], ["e2e/missing:1"])
        self.wait_text(sel("sync-bar-images-figure"), "2 / 2")
        self.wait_text(sel(f"sync-run-state-{run['id']}"), "succeeded")

        # the live panel: the errors folded under their count, unfolded on a click
        box = sel(f"sync-run-errors-{run['id']}")
        self.assertIn("1 error(s)", self.visible(box).text)
        self.press(f"{box} .el-collapse-item__header")
        self.wait_text(box, "e2e/missing:1")
        self.wait_text(box, run["errors"][0]["error"][:40])

        # the history: its row counts the error; on a desktop the row unfolds to it
        self.wait_text(sel("sync-history-table"), "succeeded")
        if self.mobile:
            self.wait_text(sel(f"sync-history-run-{run['id']}"), "1 error(s)")
        else:
            self.press(f"{sel('sync-history-table')} .el-table__expand-icon")
            self.wait_text(sel(f"sync-history-errors-{run['id']}"), "e2e/missing:1")
        self.layout_ok("a run with an error, in English")
        self.shot_bottom("sync-errors-en")

        # a run of another job; the history filtered by job shows the runs of that job only
        self.create_job("other", f"{REPO_NAME}:{TAG}")
        self.press(sel("sync-run-now-other"))
        self.until(lambda: self.live_state() == "succeeded", "the other run ended")
        self.wait_text(sel("sync-history-table"), "other")
        self.click(sel("sync-history-job"))
        self.find(f".el-select-dropdown {sel('sync-history-job-mixed')}")
        self.settled()
        self.click(f".el-select-dropdown {sel('sync-history-job-mixed')}")
        self.wait_no_text(sel("sync-history-table"), "other")
        self.assertIn("mixed", self.visible(sel("sync-history-table")).text)


class PhoneSyncPageTests(SyncPageCase):
    width, height, mobile = 390, 844, True


class DesktopSyncPageTests(SyncPageCase):
    width, height, mobile = 1366, 900, False


del SyncPageCase  # only its sizes run

