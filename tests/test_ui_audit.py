"""The Audit page in a real browser (headless Chromium against `twistd -n zmirror`), at
1366 px and 390 px: the changes made through the API listed with actor, action and target,
the action filter, the before/after of a row, a refused filter's error under its field, and
nothing wider than the screen.

Skipped (with the reason) where Chromium/chromedriver/selenium are missing or the UI is not
built (`make ui`); see tests/fixtures/ui_browser.py.
"""

from __future__ import annotations

from tests.fixtures.ui_browser import ADMIN_PASSWORD, ADMIN_USER, BrowserCase, sel

AUTH = (ADMIN_USER, ADMIN_PASSWORD)


class AuditPageCase(BrowserCase):
    def setUp(self):
        super().setUp()
        code, body = self.server.request("POST", "/api/registries", auth=AUTH,
                                         body={"name": "hub", "url": "https://hub.example",
                                               "username": "u", "password": "upstream-Secret-1"})
        self.assertEqual(code, 201, body)
        code, body = self.server.request("POST", "/api/users", auth=AUTH,
                                         body={"username": "carol", "password": "carol-Secret-1"})
        self.assertEqual(code, 201, body)

    def open_audit(self):
        self.driver.get(self.server.base + "/")
        self.login()
        self.find(sel("nav") if not self.mobile else sel("menu-toggle"))
        self.nav("audit")
        self.wait_text(sel("audit-table"), "user.create")

    def no_overflow(self):
        widths = self.driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        self.assertLessEqual(widths[0], widths[1], f"the page is wider than the screen: {widths}")

    def test_changes_listed_filtered_and_detailed(self):
        self.open_audit()
        table = self.find(sel("audit-table"))
        self.assertIn("registry.create", table.text)
        self.assertIn(ADMIN_USER, table.text)
        self.no_overflow()
        self.shot("audit")
        self.type(sel("audit-filter-action"), "registry.")
        self.click(sel("audit-search"))
        self.wait_no_text(sel("audit-table"), "user.create")
        self.wait_text(sel("audit-table"), "registry.create")
        self.click(f"{sel('audit-table')} .el-table__expand-icon")
        after = self.find(sel("audit-after"))
        self.wait().until(lambda d: '"name": "hub"' in after.text, "the row's after")
        self.assertNotIn("upstream-Secret-1", self.driver.page_source)
        self.assertNotIn("carol-Secret-1", self.driver.page_source)
        self.shot("audit-detail")
        self.no_overflow()

    def test_refused_filter_under_its_field(self):
        self.open_audit()
        self.type(sel("audit-filter-action"), "x" * 201)
        self.click(sel("audit-search"))
        self.wait_text(f"{sel('audit-filters')} .el-form-item.is-error .el-form-item__error", "200")
        self.no_overflow()


class PhoneAuditPageTests(AuditPageCase):
    width, height, mobile = 390, 844, True


class DesktopAuditPageTests(AuditPageCase):
    width, height, mobile = 1366, 900, False


del AuditPageCase  # only its sizes run
