"""The Users page in a real browser (headless Chromium against `twistd -n zmirror`), at
1366 px and 390 px: the password rule of the Users dialog and the API's refusal under the
field (without running into the next row), and the locked accounts with their unlock button.

Skipped (with the reason) where Chromium/chromedriver/selenium are missing or the UI is not
built (`make ui`); see tests/fixtures/ui_browser.py.
"""

from __future__ import annotations

from tests.fixtures.ui_users import UsersPage, sel


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
