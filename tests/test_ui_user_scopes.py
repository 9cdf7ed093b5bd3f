"""A scoped user created and edited on the Users page in a real browser (headless Chromium
against `twistd -n zmirror`), at 1366 px and 390 px: the scopes field with its grammar hint,
the API's refusal of a bad pattern under the field, and the column / card showing "all" or
the patterns without running off the page.

Skipped like tests/test_ui_users_locked.py when Chromium or the built UI is missing.
"""

from __future__ import annotations

from tests.fixtures.ui_users import UsersPage, sel

PW = "sam-password-1"


class UserScopesPageCase(UsersPage):
    def user(self, name: str) -> dict:
        code, body = self.api("GET", "/api/users")
        self.assertEqual(code, 200, body)
        return next(u for u in body["items"] if u["username"] == name)

    def tags(self, name: str) -> list[str]:
        """The tag texts of the user's scopes, read in one go (the list re-renders after a save)."""
        self.find(sel(f"user-scopes-{name}"))
        return self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent.trim())",
            sel(f"user-scopes-{name}") + " .el-tag")

    def inside_page(self, css: str):
        """Every element of ``css`` ends inside the viewport and the page does not scroll sideways."""
        rights = self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.getBoundingClientRect().right)",
            css)
        width = self.driver.execute_script("return document.documentElement.clientWidth")
        self.assertTrue(rights, css)
        for right in rights:
            self.assertLessEqual(right, width + 0.5, f"{css} runs off the page: {rights} > {width}")
        scroll = self.driver.execute_script("return document.documentElement.scrollWidth")
        self.assertLessEqual(scroll, width, "the page scrolls sideways")

    def test_create_a_scoped_user_then_edit_its_scopes(self):
        self.open_users()
        self.click(sel("user-add"))
        help_text = self.find(sel("user-scopes-help")).text
        self.assertIn("**", help_text)
        self.assertIn("100", help_text)  # the server's max_scopes
        self.type(sel("user-username"), "sam")
        self.type(sel("user-password"), PW)
        self.type(sel("user-scopes"), "docker.io/library/*\n\n  GHCR.io/myorg/**  \n")
        self.click(sel("user-save"))
        self.gone(".el-dialog")
        self.wait_text(sel("users-table"), "sam")
        self.assertEqual(self.user("sam")["scopes"], ["library/*", "ghcr.io/myorg/**"])
        self.assertEqual(self.tags("sam"), ["library/*", "ghcr.io/myorg/**"])
        self.inside_page(sel("user-scopes-sam") + " .el-tag")
        self.shot("user-scopes")

        # a bad pattern: the server's reason under the field, nothing saved
        self.click(sel("user-edit-scopes-sam"))
        field = self.find(sel("user-scopes"))
        self.assertEqual(field.get_attribute("value"), "library/*\nghcr.io/myorg/**")
        self.type(sel("user-scopes"), "library/*\nUpper/Case")
        self.click(sel("user-save"))
        error = self.wait_text(".el-dialog .user-scopes-item .el-form-item__error", "lower case")
        self.assertIn("Upper/Case", error.text)
        self.shot("user-scopes-error")
        self.assertEqual(self.user("sam")["scopes"], ["library/*", "ghcr.io/myorg/**"])
        self.assertFalse(self.driver.find_elements("css selector", sel("user-password")),
                         "the scopes dialog asks for no password")
        self.type(sel("user-scopes"), "quay.io/team/*")
        self.click(sel("user-save"))
        self.gone(".el-dialog")
        self.wait().until(lambda d: self.tags("sam") == ["quay.io/team/*"], "tags updated")
        self.assertEqual(self.user("sam")["scopes"], ["quay.io/team/*"])

        # emptied: everything ("全部")
        self.click(sel("user-edit-scopes-sam"))
        self.type(sel("user-scopes"), " ")
        self.click(sel("user-save"))
        self.gone(".el-dialog")
        self.wait().until(lambda d: self.tags("sam") == ["全部"], "shown as all")
        self.assertEqual(self.user("sam")["scopes"], [])
        self.inside_page(sel("users-table"))


class PhoneUserScopesPageTests(UserScopesPageCase):
    width, height, mobile = 390, 844, True


class DesktopUserScopesPageTests(UserScopesPageCase):
    width, height, mobile = 1366, 900, False


del UserScopesPageCase  # only its sizes run
