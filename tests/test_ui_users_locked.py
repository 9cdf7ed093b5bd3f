"""The Users page in a real browser (headless Chromium against `twistd -n zmirror`), at
1366 px and 390 px: the password rule of the Users dialog and the API's refusal under the
field (without running into the next row), and the locked accounts with their unlock button.

Skipped (with the reason) where Chromium/chromedriver/selenium are missing or the UI is not
built (`make ui`); see tests/fixtures/ui_browser.py.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

from twisted.trial import unittest

from tests.fixtures import ui_browser
from tests.fixtures.ui_browser import ADMIN_PASSWORD, ADMIN_USER, WAIT, Server

SKIP = ui_browser.skip_reason()


def sel(name: str) -> str:
    return f'[data-test="{name}"]'


class UsersPage(unittest.TestCase):
    """A browser on the Users page of a fresh server, and the helpers its tests use
    (tests/test_ui_user_scopes.py too); no tests of its own."""

    if SKIP:
        skip = SKIP

    width, height, mobile = 1366, 900, False

    def setUp(self):
        self.out = Path(self.mktemp()).resolve()
        self.out.mkdir(parents=True)
        self.server = Server(self.out / "server").start()
        self.addCleanup(self.server.stop)
        self.driver = ui_browser.make_driver(self.out / "profile", self.width, self.height, self.mobile)
        self.addCleanup(self.driver.quit)

    # --- helpers ------------------------------------------------------------------------

    def wait(self, timeout: float = WAIT):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout)

    def find(self, css: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        return self.wait().until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)), f"visible {css}")

    def gone(self, css: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        return self.wait().until(EC.invisibility_of_element_located((By.CSS_SELECTOR, css)), f"hidden {css}")

    def click(self, css: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        el = self.wait().until(EC.element_to_be_clickable((By.CSS_SELECTOR, css)), f"clickable {css}")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
        self.driver.execute_script("arguments[0].click()", el)
        return el

    def type(self, css: str, text: str):
        from selenium.webdriver.common.keys import Keys

        el = self.find(css)
        el.send_keys(Keys.CONTROL, "a")
        el.send_keys(Keys.DELETE)
        el.send_keys(text)
        return el

    def wait_text(self, css: str, text: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        self.wait().until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text),
                          f"{text!r} in {css}")
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def not_cut(self, css: str):
        """The element shows its whole text: nothing clipped or wrapped away."""
        el = self.find(css)
        widths = self.driver.execute_script(
            "return [arguments[0].scrollWidth, arguments[0].clientWidth]", el)
        self.assertLessEqual(widths[0], widths[1], f"{css} is cut: {widths}")

    def shot(self, name: str):
        self.driver.save_screenshot(str(self.out / f"{name}-{self.width}.png"))

    def api(self, method: str, path: str, auth=(ADMIN_USER, ADMIN_PASSWORD)):
        h = {}
        if auth:
            h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req = urllib.request.Request(self.server.base + path, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def open_users(self):
        self.driver.get(self.server.base + "/users")
        self.type(sel("login-username"), ADMIN_USER)
        self.type(sel("login-password"), ADMIN_PASSWORD)
        self.click(sel("login-submit"))
        self.find(sel("users-table"))
        self.find(sel("locked-table"))


class UsersPageCase(UsersPage):
    def test_password_rule_and_the_api_error_under_the_field(self):
        self.open_users()
        self.click(sel("user-add"))
        rule = self.find(sel("user-password-rule"))
        self.assertIn("8", rule.text)
        self.type(sel("user-username"), "carol")
        self.type(sel("user-password"), "x")
        self.click(sel("user-save"))
        error = self.wait_text(".el-dialog .el-form-item.is-error .el-form-item__error", "至少 8 个字符")
        self.shot("user-password-error")
        # the message has its own line: above the next row (Enabled), not over it
        below = self.driver.execute_script(
            "const e = arguments[0].getBoundingClientRect();"
            " const item = arguments[0].closest('.el-form-item');"
            " const next = item.nextElementSibling.getBoundingClientRect();"
            " return [e.bottom, next.top, e.right, item.getBoundingClientRect().right]", error)
        self.assertLessEqual(below[0], below[1] + 0.5, below)
        self.assertLessEqual(below[2], below[3] + 0.5, below)
        self.assertEqual(self.api("GET", "/api/users")[1]["items"], [])
        self.type(sel("user-password"), "carol-password")
        self.click(sel("user-save"))
        self.gone(".el-dialog")
        self.wait_text(sel("users-table"), "carol")

    def test_locked_account_listed_and_unlocked(self):
        for i in range(10):  # [lockout] max_account_failures: 10
            code, _ = self.api("GET", "/token?service=zmirror", auth=("mallory", f"guess-{i}"))
            self.assertEqual(code, 401)
        code, body = self.api("GET", "/token?service=zmirror", auth=("mallory", "guess"))
        self.assertEqual(code, 429, body)
        self.open_users()
        self.wait_text(sel("locked-table"), "mallory")
        name = sel("locked-name-mallory")
        self.not_cut(name)
        self.wait_text(sel("locked-table"), "docker login")
        self.shot("users-locked")
        self.click(sel("locked-unlock-mallory"))
        self.wait().until(lambda d: self.api("GET", "/api/lockouts")[1]["items"] == [],
                          "mallory unlocked")
        self.gone(name)
        code, body = self.api("GET", "/token?service=zmirror", auth=("mallory", "guess"))
        self.assertEqual(code, 401, "no longer locked: the password is checked again")


class PhoneUsersPageTests(UsersPageCase):
    width, height, mobile = 390, 844, True


class DesktopUsersPageTests(UsersPageCase):
    width, height, mobile = 1366, 900, False


del UsersPageCase  # only its sizes run
