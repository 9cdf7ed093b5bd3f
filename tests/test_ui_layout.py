"""The web UI's layout in a real browser (headless Chromium against `twistd -n zmirror`), at
1366x900 and 390x844, in Chinese and English: table headers on one line and never broken
mid-word, table cells not cut (``scrollWidth <= clientWidth``, inside the table), tags not
clipped, chart axes in whole bytes, the registry dialog's defaults and limits (those of the
API), its field errors clear of the next row, and the dashboard's cache figures (those of
``GET /api/cache``).

Traffic goes to a fake upstream on 127.0.0.1 (tests/fixtures/ui_browser.py): a manifest that
is not there (404) and one blob, pulled twice (a miss, then a hit). Screenshots go to the
test's temp directory. Skipped (with the reason) where Chromium, chromedriver or selenium
are missing or the UI is not built (`make ui`).
"""

from __future__ import annotations

import hashlib
import json
import re

from tests.fixtures import ui_browser
from tests.fixtures.ui_browser import ADMIN_PASSWORD, ADMIN_USER, BrowserCase, sel

# What the page reports about the table(s) under `arguments[0]`: every header cell whose text
# takes more than one line or overflows, every cell (header or body) outside its table's
# box (a table wider than its card scrolls: its last columns are cut), every cell whose
# content is wider than the cell (clipped or ellipsised), every tag wider than it shows.
TABLE_PROBLEMS = """
const root = document.querySelector(arguments[0]);
if (!root) return ['no ' + arguments[0]];
const out = [];
const text = (el) => (el.innerText || '').trim().replace(/\\s+/g, ' ');
const lines = (el) => {
  const r = document.createRange();
  r.selectNodeContents(el);
  const tops = new Set();
  for (const rect of r.getClientRects()) if (rect.width > 0.5) tops.add(Math.round(rect.top));
  return tops.size;
};
const tables = root.matches('.el-table') ? [root] : [...root.querySelectorAll('.el-table')];
if (!tables.length) out.push('no table in ' + arguments[0]);
for (const table of tables) {
  if (!table.offsetParent) continue;
  const box = table.getBoundingClientRect();
  for (const th of table.querySelectorAll('thead th.el-table__cell')) {
    const cell = th.querySelector('.cell');
    if (!cell || !text(cell)) continue;
    if (lines(cell) > 1) out.push('header on ' + lines(cell) + ' lines: ' + text(cell));
    if (cell.scrollWidth > cell.clientWidth) out.push('header cut: ' + text(cell));
  }
  for (const td of table.querySelectorAll('th.el-table__cell, td.el-table__cell')) {
    const cell = td.querySelector('.cell');
    if (!cell || !text(cell)) continue;
    const r = td.getBoundingClientRect();
    if (r.right > box.right + 1 || r.left < box.left - 1) out.push('outside the table: ' + text(cell));
    if (cell.scrollWidth > cell.clientWidth) out.push('cell cut: ' + text(cell));
  }
  for (const tag of table.querySelectorAll('.el-tag')) {
    const cell = tag.closest('.cell');
    const r = tag.getBoundingClientRect();
    const c = cell.getBoundingClientRect();
    if (tag.scrollWidth > tag.clientWidth + 1 || r.right > c.right + 1) out.push('tag cut: ' + text(tag));
  }
}
return out;
"""

# On a phone: the cards (and anything in them) no wider than the page, no tag clipped.
CARD_PROBLEMS = """
const root = document.querySelector(arguments[0]);
if (!root) return ['no ' + arguments[0]];
const out = [];
const text = (el) => (el.innerText || '').trim().replace(/\\s+/g, ' ');
const page = document.querySelector('.main').getBoundingClientRect();
for (const el of root.querySelectorAll('*')) {
  if (!el.offsetParent) continue;
  const r = el.getBoundingClientRect();
  if (r.width && (r.right > page.right + 1 || r.left < page.left - 1)) out.push('outside the page: ' + text(el).slice(0, 60));
}
for (const tag of root.querySelectorAll('.el-tag')) {
  if (tag.scrollWidth > tag.clientWidth + 1) out.push('tag cut: ' + text(tag));
}
const m = document.querySelector('.main');
if (m.scrollWidth > m.clientWidth) out.push('the page scrolls sideways');
return [...new Set(out)];
"""

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n) -> str:
    """The UI's formatBytes (web/src/utils.js)."""
    if n is None:
        return "-"
    value, i = float(n), 0
    while abs(value) >= 1024 and i < len(UNITS) - 1:
        value /= 1024
        i += 1
    if i == 0:
        return f"{int(n)} B"
    return f"{value:.{0 if value >= 100 else 1 if value >= 10 else 2}f} {UNITS[i]}"


def format_percent(x) -> str:
    """The UI's formatPercent."""
    if x is None:
        return "-"
    return f"{x * 100:.{2 if x < 0.1 else 1}f} %"


BLOB = bytes(range(256)) * 12  # 3 KiB
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class LayoutCase(BrowserCase):
    maxDiff = None
    width, height, mobile = 1366, 900, False

    def setUp(self):
        super().setUp()
        self.auth = (ADMIN_USER, ADMIN_PASSWORD)
        self.upstream = ui_browser.FakeUpstream(blobs={BLOB_DIGEST: BLOB})
        self.addCleanup(self.upstream.stop)
        self.problems: dict[str, list] = {}

    # --- helpers ---------------------------------------------------------------------------

    def api(self, method: str, path: str, body=None, status: int = 200):
        code, data = self.server.request(method, path, auth=self.auth, body=body)
        self.assertEqual(code, status, data)
        return json.loads(data) if data else None

    def pull(self, path: str) -> int:
        code, _ = self.server.request("GET", path, headers={"User-Agent": "ui-layout-test"})
        return code

    def enter(self):
        self.driver.get(self.server.base + "/")
        self.login()
        self.find(sel("stat-requests"))

    def to_english(self):
        self.click(sel("lang-toggle"))
        self.wait().until(lambda d: self.storage("localStorage", "zmirror.lang") == "en", "English")
        self.settled()

    def assertNoProblems(self, script: str, css: str, what: str):
        """Collects what is cut on the page (every page is looked at before the test
        fails: see assertNothingCut)."""
        problems = self.driver.execute_script(script, css)
        if problems:
            self.problems[f"{what} at {self.width}x{self.height}"] = problems

    def assertNothingCut(self):
        self.assertEqual(self.problems, {})

    def tables_ok(self, css: str, what: str):
        self.assertNoProblems(TABLE_PROBLEMS, css, what)

    def cards_ok(self, css: str, what: str):
        self.assertNoProblems(CARD_PROBLEMS, css, what)

    def list_ok(self, css: str, what: str):
        """A list page's rows: the table on a desktop, the cards on a phone."""
        if self.mobile:
            self.cards_ok(css, what)
        else:
            self.tables_ok(css, what)

    def axis_labels(self) -> list:
        """The labels the dashboard's charts drew on their y axes: per chart, per axis."""
        from selenium.webdriver.common.by import By

        self.charts_drawn()
        out = []
        for chart in self.driver.find_elements(By.CSS_SELECTOR, ".echart"):
            raw = chart.get_attribute("data-axis-labels")
            self.assertTrue(raw, "the chart publishes its axis labels")
            out.append(json.loads(raw))
        self.assertEqual(len(out), 2)
        return out

    def assertWholeAxes(self, charts: list):
        for requests_axis, bytes_axis in charts:
            self.assertTrue(requests_axis and bytes_axis, charts)
            for label in requests_axis:
                self.assertRegex(label.replace(",", ""), r"^[0-9]+$", charts)
            for label in bytes_axis:
                m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?) (B|KiB|MiB|GiB|TiB|PiB)", label)
                self.assertIsNotNone(m, charts)
                if m.group(2) == "B":
                    self.assertRegex(m.group(1), r"^[0-9]+$", f"a fraction of a byte: {charts}")

    def seed(self):
        """Registries (the seeded ones off: no traffic to the Internet), whitelist entries,
        and traffic through the fake upstream: a manifest (404) and a blob twice."""
        for r in self.api("GET", "/api/registries")["items"]:
            self.api("PUT", f"/api/registries/{r['id']}", {"enabled": False})
        self.api("POST", "/api/registries", {"name": "local-mirror", "url": self.upstream.url,
                                             "priority": 10}, status=201)
        self.api("POST", "/api/registries", {"name": "team-registry", "url": "http://127.0.0.1:18081",
                                             "namespace": "registry.example.com"}, status=201)
        self.api("POST", "/api/whitelists", {"prefix": "library", "note": "official images"}, status=201)
        self.api("POST", "/api/whitelists", {"prefix": "team/app*"}, status=201)
        self.assertEqual(self.pull("/v2/library/alpine/manifests/3.20"), 404)
        for _ in range(2):
            self.assertEqual(self.pull(f"/v2/library/alpine/blobs/{BLOB_DIGEST}"), 200)

    def wait_logged(self, n: int):
        self.wait(30).until(lambda d: self.api("GET", "/api/logs")["total"] >= n, f"{n} log rows")

    # --- the checks, one page at a time ------------------------------------------------------

    def check_registries(self, lang: str):
        self.nav("registries")
        self.wait_text(sel("registries-table"), "local-mirror")
        self.wait_text(sel("registries-table"), self.upstream.url)
        self.list_ok(sel("registries-table"), f"registries ({lang})")
        self.shot(f"registries-{lang}")

    def check_whitelists(self, lang: str):
        self.nav("whitelists")
        self.wait_text(sel("whitelists-table"), "official images")
        self.list_ok(sel("whitelists-table"), f"whitelists ({lang})")
        self.shot(f"whitelists-{lang}")

    def check_logs(self, lang: str):
        self.nav("logs")
        self.wait_text(sel("logs-table"), "library/alpine")
        self.list_ok(sel("logs-table"), f"logs ({lang})")
        self.shot(f"logs-{lang}")

    def check_nodes(self, lang: str):
        from zmirror.config import default_node_name

        self.nav("nodes")
        self.wait_text(sel("nodes-table"), default_node_name())
        self.list_ok(sel("nodes-table"), f"nodes ({lang})")
        text = self.find(sel("nodes-table")).text
        self.assertNotIn("…", text)
        self.assertNotRegex(text, r"(single node|单节点)\s*\.", "a stray '.' after the bus state")
        self.shot(f"nodes-{lang}")

    def check_dashboard(self, lang: str):
        self.nav("dashboard")
        self.wait_text(sel("upstream-health"), "local-mirror")
        self.tables_ok(".page", f"dashboard tables ({lang})")
        self.check_cache_figures()
        self.assertWholeAxes(self.axis_labels())
        self.shot(f"dashboard-{lang}")
        self.shot_bottom(f"dashboard-bottom-{lang}")

    def check_cache_figures(self):
        """The cache card shows what GET /api/cache says (this node's cache)."""
        c = self.api("GET", "/api/cache")
        self.assertTrue(c["enabled"])

        def figure(key: str) -> str:
            return self.find(f'{sel("cache-" + key)} {sel("value")}').text

        self.wait().until(lambda d: figure("entries") == str(c["entries"]), "entries shown")
        self.assertEqual(figure("hit-ratio"), format_percent(c["hit_ratio"]))
        self.assertEqual(figure("from-cache"), format_bytes(c["bytes_from_cache"]))
        self.assertEqual(figure("from-upstream"), format_bytes(c["bytes_from_upstream"]))
        if c["bytes_from_cache"]:
            saved = max(0, 1 - c["bytes_from_upstream"] / c["bytes_from_cache"])
            self.assertIn(format_percent(saved), self.find(f'{sel("cache-from-cache")} {sel("sub")}').text)
        self.assertEqual(figure("size"), format_bytes(c["size"]))
        sub = self.find(f'{sel("cache-size")} {sel("sub")}').text
        self.assertIn(format_bytes(c["max_size"]), sub)
        self.assertNoProblems(CARD_PROBLEMS, sel("cache-card"), "cache card")
        cut = self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".filter(v => v.scrollWidth > v.clientWidth).map(v => v.innerText)",
            f'{sel("cache-card")} {sel("value")}')
        if cut:
            self.problems[f"cache figures at {self.width}x{self.height}"] = cut
        return c

    # --- the registry dialog ------------------------------------------------------------------

    def open_add_dialog(self):
        self.nav("registries")
        self.find(sel("registry-group-docker.io"))
        self.click(sel("registry-add"))
        self.find(sel("registry-priority") + " input")
        self.settled()

    def priority(self) -> str:
        return self.find(sel("registry-priority") + " input").get_attribute("value")

    def check_url_error_clear_of_priority(self, message: str):
        self.type(sel("registry-url"), "ftp://mirror.example.com/some/long/path")
        self.click(sel("registry-name"))
        error = self.wait_field_error(message)
        self.settled()
        gap = self.driver.execute_script(
            "const e = arguments[0].getBoundingClientRect();"
            " const p = document.querySelector(arguments[1]).closest('.el-form-item').getBoundingClientRect();"
            " return p.top - e.bottom", error, sel("registry-priority"))
        self.assertGreaterEqual(gap, 0, "the URL's error runs into the priority row")


class DesktopLayoutTests(LayoutCase):
    width, height, mobile = 1366, 900, False

    def test_nothing_cut(self):
        """Every list page in both languages: no header broken, no cell or tag cut."""
        self.seed()
        self.wait_logged(3)
        self.enter()
        for lang in ("zh", "en"):
            if lang == "en":
                self.to_english()
            self.check_registries(lang)
            self.check_whitelists(lang)
            self.check_logs(lang)
            self.check_nodes(lang)
            self.check_dashboard(lang)
        self.assertNothingCut()
        c = self.api("GET", "/api/cache")
        # the blob: fetched once from upstream; both pulls sent from the cache
        self.assertEqual((c["entries"], c["bytes_from_upstream"], c["bytes_from_cache"]),
                         (1, len(BLOB), 2 * len(BLOB)))

    def test_empty_dashboard(self):
        """No traffic yet: the axes count whole requests and whole bytes, the cache card
        shows an empty cache."""
        self.enter()
        self.assertWholeAxes(self.axis_labels())
        c = self.check_cache_figures()
        self.assertEqual(c["entries"], 0)
        self.assertEqual(self.find(f'{sel("cache-hit-ratio")} {sel("value")}').text, "-")
        self.assertNotIn("本节点", self.find(sel("cache-note")).text)  # a single node
        self.to_english()
        self.assertWholeAxes(self.axis_labels())
        self.assertIn("since the server started", self.find(sel("cache-note")).text)
        self.shot("dashboard-empty-en")
        self.assertNothingCut()

    def test_registry_dialog(self):
        """Priority after the last registry of the namespace (the API's default for a new
        one), the API's name limit, the URL's error clear of the priority row."""
        from zmirror.admin.registries import NAME_MAX, REGISTRY_FIELDS

        self.enter()
        seeded = self.api("GET", "/api/registries")["items"]
        self.assertEqual([(r["namespace"], r["priority"]) for r in seeded], [("docker.io", 1)])
        self.open_add_dialog()
        self.assertEqual(self.priority(), "10")  # after Docker Hub's 1, on a round number
        name = self.find(sel("registry-name"))
        self.assertEqual(name.get_attribute("maxlength"), str(NAME_MAX))
        self.check_url_error_clear_of_priority("地址须为 http:// 或 https:// 开头")
        self.shot("registry-dialog-url-error-zh")
        # a namespace without registries: the API's default
        self.pick_preset("ghcr")
        self.wait().until(lambda d: self.priority() == str(REGISTRY_FIELDS["priority"].default),
                          "the API's default priority")
        self.close_dialog()
        # a second one in docker.io goes after the last
        self.api("POST", "/api/registries", {"name": "mirror", "url": self.upstream.url, "priority": 10},
                 status=201)
        self.driver.refresh()
        self.open_add_dialog()
        self.assertEqual(self.priority(), "20")
        self.close_dialog()
        self.to_english()
        self.open_add_dialog()
        self.check_url_error_clear_of_priority("Must start with http:// or https://")
        self.shot("registry-dialog-url-error-en")

    def pick_preset(self, key: str):
        self.click(sel("registry-preset"))
        self.find(f'.el-select-dropdown {sel("registry-preset-" + key)}')
        self.settled()
        self.click(f'.el-select-dropdown {sel("registry-preset-" + key)}')

    def close_dialog(self):
        self.driver.find_element("css selector", ".el-dialog__headerbtn").click()
        self.gone(".el-dialog")


class PhoneLayoutTests(DesktopLayoutTests):
    width, height, mobile = 390, 844, True
