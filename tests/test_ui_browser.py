"""The web UI in a real browser: headless Chromium (Selenium) against `twistd -n zmirror`.

Desktop (1366x768) and phone (390x844): log in (a wrong password first), add a registry, a
whitelist entry and a user (with client-side and server-side field errors), see registry
requests appear in the access logs, use the how-to page, switch the language (Element Plus
too), log out; a lockout shows its wait time. Screenshots go to the test's temp directory
(`_trial_temp/tests.test_ui_browser/...`), one per page, size and language.

Skipped (with the reason) only where Chromium/chromedriver/selenium are missing or the UI
is not built (`make ui`).
"""

from __future__ import annotations

import base64
import json
import os
import stat

from twisted.trial import unittest

from tests.fixtures import ui_browser
from tests.fixtures.ui_browser import ADMIN_PASSWORD, ADMIN_USER, DEFAULT_PASSWORD, BrowserCase, sel

class DesktopTests(BrowserCase):
    width, height, mobile = 1366, 768, False

    def test_admin_flow(self):
        d = self.driver
        base, host = self.server.base, self.server.host

        # --- login: redirected, wrong password, then the right one ---------------------
        d.get(base + "/registries")
        self.find(sel("login-username"))
        self.assertIn("/login", d.current_url)
        self.assertIn("管理员登录", d.find_element("css selector", ".login-card").text)
        self.login("wrong-password")
        self.wait_text(sel("login-error"), "用户名或密码错误")
        self.assertIsNone(self.storage("sessionStorage", "zmirror.auth"))
        self.shot("login-error-zh")
        self.login()
        # back to the page asked for first
        self.find(sel("registries-table"))
        self.assertTrue(d.current_url.endswith("/registries"), d.current_url)
        self.assertIsNotNone(self.storage("sessionStorage", "zmirror.auth"))
        self.assertIsNone(self.storage("localStorage", "zmirror.auth"))
        self.assertFalse(d.find_elements("css selector", sel("password-dialog")))  # not the default

        # --- registries: client-side URL check, add, server-side duplicate, test -------------
        self.click(sel("registry-add"))
        self.type(sel("registry-name"), "hub-test")
        self.type(sel("registry-url"), "ftp://example.com")
        self.click(sel("registry-save"))
        self.wait_field_error("http://")
        self.type(sel("registry-url"), "http://127.0.0.1:9")
        self.type(sel("registry-username"), "puller")
        self.type(sel("registry-password"), "s3cret")
        self.click(sel("registry-save"))
        self.message("已保存")
        self.wait_text(sel("registries-table"), "hub-test")
        self.wait_text(sel("registries-table"), "已设置密码")
        status, body = self.server.request("GET", "/api/registries", auth=(ADMIN_USER, ADMIN_PASSWORD))
        items = {r["name"]: r for r in json.loads(body)["items"]}
        self.assertEqual((items["hub-test"]["url"], items["hub-test"]["username"], items["hub-test"]["has_password"]),
                         ("http://127.0.0.1:9", "puller", True))
        self.assertNotIn(b"s3cret", body)

        self.click(sel("registry-add"))
        self.type(sel("registry-name"), "hub-test")
        self.type(sel("registry-url"), "http://127.0.0.1:10")
        self.click(sel("registry-save"))
        self.wait_field_error("已存在")  # 409 {"fields": {"name": "already exists"}} next to the name
        self.shot("registry-field-error-zh", toasts=True)
        self.driver.find_element("css selector", ".el-dialog__headerbtn").click()
        self.gone(".el-dialog")

        self.click(sel("registry-test-hub-test"))
        self.message("hub-test")  # nothing listens on port 9: a clear failure message
        self.find(sel("registries-table") + " .test-result.fail")  # and it stays in the row

        # the enable switch: turn off the seeded upstreams (no test traffic to the Internet)
        others = [name for name in items if name != "hub-test"]
        for name in others:
            self.click(sel(f"registry-enabled-{name}"))
        self.wait().until(lambda d: all(not r["enabled"] for r in self.api_registries() if r["name"] != "hub-test"),
                          "seeded registries disabled")
        self.shot("registries-zh")

        # --- whitelists: the tester, then a rule that makes it match --------------------------
        self.nav("whitelists")
        self.type(sel("match-input"), "nginx")
        self.click(sel("match-check"))
        self.wait_text(sel("match-result"), "library/nginx")
        self.find(sel("match-result") + ' [data-allowed="false"]')
        self.click(sel("whitelist-add"))
        self.type(sel("whitelist-prefix"), "library/nginx")
        self.type(sel("whitelist-note"), "browser test")
        self.click(sel("whitelist-save"))
        self.wait_text(sel("whitelists-table"), "library/nginx")
        self.find(sel("match-result") + ' [data-allowed="true"]')
        self.shot("whitelists-zh")

        # --- users: the admin's name is refused next to the field; then alice ----------------
        self.nav("users")
        self.click(sel("user-add"))
        self.type(sel("user-username"), "admin")
        self.type(sel("user-password"), "alice-password")
        self.click(sel("user-save"))
        self.wait_field_error("与管理员账号同名")  # the API's 400 {"fields": {"username": ...}}
        self.type(sel("user-username"), "alice")
        self.click(sel("user-save"))
        self.wait_text(sel("users-table"), "alice")
        self.gone(".el-dialog")
        self.shot("users-zh")
        self.click(sel("user-enabled-alice"))
        self.wait().until(lambda d: not self.api_items("/api/users")[0]["enabled"], "alice disabled")
        self.click(sel("user-add"))  # a second user, deleted again (with a confirmation)
        self.type(sel("user-username"), "bob")
        self.type(sel("user-password"), "bob-password")
        self.click(sel("user-save"))
        self.wait_text(sel("users-table"), "bob")
        self.gone(".el-dialog")
        self.click(sel("user-delete-bob"))
        self.confirm()
        self.wait_no_text(sel("users-table"), "bob")
        self.assertEqual([u["username"] for u in self.api_items("/api/users")], ["alice"])

        # --- access logs: registry requests show up (auto refresh), filters, pagination ------
        self.nav("logs")
        self.find(sel("logs-table"))
        self.assertIn("共 0 条", self.find(sel("logs-pager")).text)  # Element Plus zh-CN
        self.click(sel("logs-auto-refresh"))
        for repo in ("library/nginx", "library/redis"):
            status, _ = self.server.request("GET", f"/v2/{repo}/manifests/latest",
                                            headers={"User-Agent": "ui-browser-test"})
            self.assertGreaterEqual(status, 400)  # no upstream answers; still logged
        self.wait_text(sel("logs-table"), "library/nginx", timeout=30)
        self.wait_text(sel("logs-table"), "library/redis", timeout=30)
        self.click(sel("logs-auto-refresh"))
        from zmirror.config import default_node_name  # the node column: [server] node

        self.wait_text(sel("log-node"), default_node_name())
        self.type(sel("filter-node"), "other-node")
        self.click(sel("logs-search"))
        self.wait_no_text(sel("logs-table"), "library/redis")
        self.type(sel("filter-node"), "")
        self.type(sel("filter-repository"), "nginx")
        self.click(sel("logs-search"))
        self.wait_no_text(sel("logs-table"), "library/redis")
        self.assertIn("library/nginx", self.find(sel("logs-table")).text)
        self.type(sel("filter-status"), "abc")
        self.click(sel("logs-search"))
        self.wait_text(".filters .el-form-item__error", "4xx")
        self.type(sel("filter-status"), "")
        self.type(sel("filter-repository"), "")
        self.click(sel("logs-search"))
        self.wait_text(sel("logs-table"), "library/redis")
        self.shot("logs-zh")

        # --- nodes: this node's heartbeat row (SQLite: the one node) ---------------------------
        self.nav("nodes")
        node = default_node_name()
        self.wait_text(sel(f"node-row-{node}"), node)
        self.wait_text(sel(f"node-state-{node}"), "在线")
        self.assertEqual(self.find(sel(f"node-state-{node}")).get_attribute("data-state"), "up")
        table = self.find(sel("nodes-table")).text
        from zmirror import __version__

        self.assertIn(__version__, table)
        self.assertIn("当前节点", table)
        self.assertIn("单节点", self.find(sel(f"node-bus-{node}")).text)  # no bus on SQLite
        self.wait_text(sel("nodes-summary"), "共 1 个节点：1 个在线")
        self.shot("nodes-zh")

        # --- how to use: snippets carry this server's address -------------------------------
        self.nav("help")
        self.wait_text(sel("snippet-docker.io-pull"), f"docker pull {host}/library/nginx")
        self.wait_text(sel("snippet-login"), f"docker login {host}")
        self.wait_text(sel("snippet-docker.io-docker"), "registry-mirrors")
        self.wait_text(sel("snippet-docker.io-containerd"), f'[host."{base}"]')
        self.wait_text(sel("snippet-docker.io-podman"), f'location = "{host}"')
        self.shot("help-zh")

        # --- dashboard --------------------------------------------------------------------
        self.nav("dashboard")
        self.wait_text(sel("upstream-health"), "hub-test")
        status, body = self.server.request("GET", "/api/stats", auth=(ADMIN_USER, ADMIN_PASSWORD))
        if json.loads(body).get("cache"):
            self.find(sel("cache-card"))  # cache usage, when the cache exists
        self.charts_drawn()
        self.shot("dashboard-zh")
        self.shot_bottom("dashboard-bottom-zh")

        # --- English, remembered; Element Plus in English too -------------------------------
        self.click(sel("lang-toggle"))
        self.wait_text(sel("page-title"), "Dashboard")
        self.assertEqual(self.storage("localStorage", "zmirror.lang"), "en")
        self.charts_drawn()
        self.shot("dashboard-en")
        self.shot_bottom("dashboard-bottom-en")
        self.nav("logs")
        self.wait_text(sel("logs-pager"), "Total")
        self.shot("logs-en")
        d.refresh()
        self.wait_text(sel("page-title"), "Access logs")  # still English and still logged in
        self.nav("registries")
        self.click(sel("registry-edit-hub-test"))
        self.find(sel("registry-name"))
        self.shot("registry-dialog-en")
        self.driver.find_element("css selector", ".el-dialog__headerbtn").click()
        self.gone(".el-dialog")
        self.nav("help")
        self.wait_text(sel("page-title"), "How to use")
        self.shot("help-en")

        # --- clear the access logs (with a confirmation) ------------------------------------
        self.nav("logs")
        self.wait_text(sel("logs-table"), "library/nginx")
        self.click(sel("logs-clear"))
        self.click(sel("logs-clear-all"))
        self.confirm()
        self.message("rows deleted")
        self.wait_text(sel("logs-table"), "No data")
        self.assertEqual(self.api_items("/api/logs"), [])

        # --- log out: credentials gone, pages need a login again ----------------------------
        self.click(sel("logout"))
        self.find(sel("login-username"))
        self.assertIsNone(self.storage("sessionStorage", "zmirror.auth"))
        self.assertIn("Admin login", d.find_element("css selector", ".login-card").text)
        self.shot("login-en")
        d.get(base + "/users")
        self.find(sel("login-username"))
        self.assertIn("/login", d.current_url)

        # --- stale credentials (a 401 on an API call) go back to the login page --------------
        d.execute_script(
            "sessionStorage.setItem('zmirror.auth', JSON.stringify({token: btoa('admin:stale'), username: 'admin'}))"
        )
        d.get(base + "/whitelists")
        self.find(sel("login-username"))
        self.message("Your session has ended")
        self.assertIsNone(self.storage("sessionStorage", "zmirror.auth"))


class PhoneTests(BrowserCase):
    width, height, mobile = 390, 844, True

    def test_phone_layout(self):
        d = self.driver
        base = self.server.base
        # some content for the pages
        auth = (ADMIN_USER, ADMIN_PASSWORD)
        for r in self.api_registries():  # no test traffic to the Internet
            self.assertEqual(self.server.request("PUT", f"/api/registries/{r['id']}", auth=auth,
                                                 body={"enabled": False})[0], 200)
        self.assertEqual(self.server.request("POST", "/api/registries", auth=auth,
                                             body={"name": "local-mirror", "url": "http://127.0.0.1:9"})[0], 201)
        self.assertEqual(self.server.request("POST", "/api/whitelists", auth=auth,
                                             body={"prefix": "library", "note": "official images"})[0], 201)
        self.assertEqual(self.server.request("POST", "/api/users", auth=auth,
                                             body={"username": "bob", "password": "bob-password"})[0], 201)
        self.server.request("GET", "/v2/library/alpine/manifests/3.20")

        d.get(base + "/")
        self.find(sel("login-username"))
        self.shot("login-zh")
        self.login()
        self.find(sel("stat-requests"))
        # no side menu on a phone: the drawer
        self.assertFalse(d.find_elements("css selector", ".aside"))
        self.charts_drawn()
        self.shot("dashboard-zh")
        self.shot_bottom("dashboard-bottom-zh")
        self.click(sel("menu-toggle"))
        self.find(".nav-drawer " + sel("nav-logs"))
        self.shot("menu-zh")
        self.click(".nav-drawer " + sel("nav-logs"))
        self.gone(".nav-drawer")
        self.wait_text(sel("logs-table"), "library/alpine", timeout=30)
        self.shot("logs-zh")
        self.nav("registries")
        self.wait_text(sel("registries-table"), "local-mirror")
        self.shot("registries-zh")
        self.click(sel("registry-add"))
        self.click(sel("registry-save"))
        self.wait_field_error("请输入名称")
        self.shot("registry-dialog-zh")
        self.driver.find_element("css selector", ".el-dialog__headerbtn").click()
        self.gone(".el-dialog")
        self.nav("whitelists")
        self.wait_text(sel("whitelists-table"), "official images")
        self.type(sel("match-input"), "alpine")
        self.click(sel("match-check"))
        self.find(sel("match-result") + ' [data-allowed="true"]')
        self.shot("whitelists-zh")
        self.nav("users")
        self.wait_text(sel("users-table"), "bob")
        self.shot("users-zh")
        self.nav("nodes")  # cards on a phone, no wider than it
        from zmirror.config import default_node_name

        node = default_node_name()
        self.wait_text(sel(f"node-state-{node}"), "在线")
        self.wait_text(sel("nodes-table"), node)
        self.assertIn("当前节点", self.find(sel("nodes-table")).text)
        self.assertFalse(d.find_elements("css selector", sel("nodes-table") + " .el-table"))
        widths = d.execute_script("const m = document.querySelector('.main');"
                                  " return [document.documentElement.scrollWidth, m.scrollWidth, m.clientWidth]")
        self.assertLessEqual(widths[0], self.width, widths)
        self.assertLessEqual(widths[1], widths[2], widths)
        self.shot("nodes-zh")
        self.nav("help")
        self.find(sel("snippet-docker.io-docker"))
        self.shot("help-zh")

        self.click(sel("lang-toggle"))
        self.wait_text(sel("page-title"), "How to use")
        self.shot("help-en")
        self.nav("dashboard")
        self.find(sel("stat-requests"))
        self.charts_drawn()
        self.shot("dashboard-en")
        self.shot_bottom("dashboard-bottom-en")
        self.nav("logs")
        self.wait_text(sel("logs-pager"), "Total")
        self.shot("logs-en")
        self.nav("users")
        self.click(sel("user-password-bob"))
        self.find(sel("user-password"))
        self.shot("user-password-en")
        self.type(sel("user-password"), "new-bob-password")
        self.click(sel("user-save"))
        self.message("Password changed")
        self.click(sel("logout"))
        self.find(sel("login-username"))
        self.assertIsNone(self.storage("sessionStorage", "zmirror.auth"))

    def test_lockout_shows_wait_time(self):
        # ten failed logins lock the account (zmirror.auth.lockout); the next try is a 429
        for _ in range(10):
            status, _ = self.server.request("GET", "/api/me", auth=(ADMIN_USER, "nope"))
            self.assertEqual(status, 401)
        self.driver.get(self.server.base + "/login")
        self.login()
        error = self.wait_text(sel("login-error"), "秒后重试")
        self.assertRegex(error.text, r"\d+ 秒后重试")
        self.assertIsNotNone(self.find(sel("login-submit")).get_attribute("disabled"))
        self.assertIsNone(self.storage("sessionStorage", "zmirror.auth"))
        self.shot("login-locked-zh")


GATED = {"error": "change the default admin password first", "fields": {}}


def comment_lines(text: str) -> list:
    return [ln for ln in text.splitlines() if ln.lstrip().startswith("#")]


class DefaultPasswordTests(BrowserCase):
    """The generated config (admin / admin123): the first login has to set a new password."""

    width, height, mobile = 1366, 768, False
    admin_password = None

    def press_escape(self):
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ActionChains(self.driver).send_keys(Keys.ESCAPE).perform()

    def click_outside(self):
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).move_by_offset(5, 5).click().perform()  # the dialog's mask

    def set_new_password(self, new: str):
        self.type(sel("password-new"), new)
        self.type(sel("password-confirm"), new)
        self.click(sel("password-save"))

    def test_first_login_forces_a_new_password(self):
        from zmirror.auth.passwords import is_hash, verify_admin_sync
        from zmirror.config import load_config

        d = self.driver
        base = self.server.base
        config = self.server.config_path
        before = config.read_text()
        self.assertIn(f'password = "{DEFAULT_PASSWORD}"', before)
        status, body = self.server.request("GET", "/api/registries", auth=(ADMIN_USER, DEFAULT_PASSWORD))
        self.assertEqual((status, json.loads(body)), (403, GATED))

        # --- log in with the default: the dialog, and nothing else, until it is changed ---
        d.get(base + "/registries")
        self.find(sel("login-username"))
        self.login(DEFAULT_PASSWORD)
        self.find(sel("password-forced"))
        self.find(sel("password-new"))
        self.assertFalse(d.find_elements("css selector", sel("password-current")))  # it is the default
        self.assertFalse([e for e in d.find_elements("css selector", ".el-dialog .el-dialog__headerbtn")
                          if e.is_displayed()])
        self.assertFalse(d.find_elements("css selector", sel("registries-table")))
        self.shot("default-password-dialog-zh")
        self.press_escape()
        self.click_outside()
        self.find(sel("password-forced"))  # still there
        self.assertFalse(d.find_elements("css selector", ".el-message--error"))  # no 403 toasts

        # --- the dialog's own checks, then a good password -------------------------------
        self.set_new_password("short")
        self.wait_field_error("至少 8 个字符")
        self.set_new_password(DEFAULT_PASSWORD)
        self.wait_field_error("不能使用默认密码")
        self.type(sel("password-new"), "Fresh-admin-pw-1")
        self.type(sel("password-confirm"), "Fresh-admin-pw-2")
        self.click(sel("password-save"))
        self.wait_field_error("两次输入的密码不一致")
        self.shot("default-password-errors-zh")
        self.set_new_password("Fresh-admin-pw-1")
        self.message("管理员密码已修改")
        self.gone(sel("password-forced"))
        # the app goes on with the new credentials: the page asked for loads
        self.wait_text(sel("registries-table"), "Docker Hub")
        self.assertTrue(d.current_url.endswith("/registries"), d.current_url)
        stored = json.loads(self.storage("sessionStorage", "zmirror.auth"))
        self.assertEqual(stored["token"], base64.b64encode(b"admin:Fresh-admin-pw-1").decode())
        self.shot("registries-after-change-zh")

        # --- config.toml: a hash, every comment, mode 0600 -------------------------------
        after = config.read_text()
        self.assertNotIn("Fresh-admin-pw-1", after)
        self.assertNotIn(f'password = "{DEFAULT_PASSWORD}"', after)
        self.assertEqual(comment_lines(after), comment_lines(before))
        self.assertEqual(stat.S_IMODE(os.stat(config).st_mode), 0o600)
        cfg = load_config(self.server.data)
        self.assertTrue(is_hash(cfg.admin.password))
        self.assertTrue(verify_admin_sync("Fresh-admin-pw-1", cfg.admin.password))
        self.assertEqual(self.server.request("GET", "/api/me", auth=(ADMIN_USER, DEFAULT_PASSWORD))[0], 401)
        status, body = self.server.request("GET", "/api/me", auth=(ADMIN_USER, "Fresh-admin-pw-1"))
        self.assertEqual((status, json.loads(body)["default_password"]), (200, False))

        # --- still logged in after a reload; no dialog -----------------------------------
        d.refresh()
        self.wait_text(sel("registries-table"), "Docker Hub")
        self.assertFalse(d.find_elements("css selector", sel("password-forced")))

        # --- "change password" in the header: the server's field error, then success ------
        self.click(sel("change-password"))
        self.type(sel("password-current"), "Not-the-password-1")
        self.set_new_password("Second-admin-pw-2")
        self.wait_field_error("当前密码不正确")  # 400 {"fields": {"current_password": ...}}
        self.shot("change-password-error-zh", toasts=True)
        self.type(sel("password-current"), "Fresh-admin-pw-1")
        self.click(sel("password-save"))
        self.message("管理员密码已修改")
        self.gone(".el-dialog")
        self.nav("users")
        self.find(sel("users-table"))
        self.assertEqual(self.server.request("GET", "/api/me", auth=(ADMIN_USER, "Fresh-admin-pw-1"))[0], 401)
        self.assertEqual(self.server.request("GET", "/api/users", auth=(ADMIN_USER, "Second-admin-pw-2"))[0], 200)
        # this one can be closed
        self.click(sel("change-password"))
        self.find(sel("password-current"))
        self.press_escape()
        self.gone(".el-dialog")

        # --- log out and in again with the new password: straight to the app --------------
        self.click(sel("logout"))
        self.find(sel("login-username"))
        self.login("Second-admin-pw-2")
        self.find(sel("stat-requests"))
        self.assertFalse(d.find_elements("css selector", sel("password-forced")))
        self.assertEqual(comment_lines(config.read_text()), comment_lines(before))
        self.assertEqual(stat.S_IMODE(os.stat(config).st_mode), 0o600)


class DefaultPasswordPhoneTests(DefaultPasswordTests):
    width, height, mobile = 390, 844, True

    def test_first_login_forces_a_new_password(self):
        d = self.driver
        d.get(self.server.base + "/")
        self.find(sel("login-username"))
        self.click(sel("lang-toggle"))
        self.login(DEFAULT_PASSWORD)
        self.find(sel("password-forced"))
        self.assertIn("Set a new admin password", self.find(".el-dialog").text)
        self.shot("default-password-dialog-en")
        # the forced dialog's way out is logging out
        self.click(sel("password-logout"))
        self.find(sel("login-username"))
        self.assertIsNone(self.storage("sessionStorage", "zmirror.auth"))
        self.login(DEFAULT_PASSWORD)
        self.set_new_password("Phone-admin-pw-1")
        self.message("Admin password changed")
        self.find(sel("stat-requests"))
        self.charts_drawn()
        self.shot("dashboard-after-change-en")


class NamespaceTests(BrowserCase):
    """Several registries: upstreams grouped by namespace with their presets and rate limits,
    the how-to page's snippets per namespace, whitelist entries and access logs with their
    namespace. Two fake upstreams on 127.0.0.1: ghcr.io (pulls left) and quay.io (429)."""

    width, height, mobile = 1366, 768, False

    def setUp(self):
        super().setUp()
        self.ghcr = ui_browser.FakeUpstream(limit=100, remaining=76, window=21600)
        self.addCleanup(self.ghcr.stop)
        self.quay = ui_browser.FakeUpstream(limited=True, retry_after=3600)
        self.addCleanup(self.quay.stop)
        self.auth = (ADMIN_USER, ADMIN_PASSWORD)
        for r in self.api_registries():  # no test traffic to the Internet
            self.assertEqual(self.server.request("PUT", f"/api/registries/{r['id']}", auth=self.auth,
                                                 body={"enabled": False})[0], 200)

    def value(self, css: str) -> str:
        return self.find(css).get_attribute("value")

    def pick_preset(self, key: str):
        self.click(sel("registry-preset"))
        self.find(f'.el-select-dropdown {sel("registry-preset-" + key)}')
        self.settled()  # the list opens and scrolls to the current choice
        self.click(f'.el-select-dropdown {sel("registry-preset-" + key)}')

    def close_dialog(self):
        self.driver.find_element("css selector", ".el-dialog__headerbtn").click()
        self.gone(".el-dialog")

    def pull(self, path: str) -> int:
        status, _ = self.server.request("GET", path, headers={"User-Agent": "ui-browser-test"})
        return status

    def add_ghcr_from_preset(self):
        """The ghcr.io preset fills namespace, name, URL and the auth hint; the URL is then
        pointed at the fake upstream. The new upstream shows up in a ghcr.io group."""
        self.nav("registries")
        self.find(sel("registry-group-docker.io"))
        self.click(sel("registry-add"))
        self.assertEqual(self.value(sel("registry-namespace")), "docker.io")  # the default
        self.pick_preset("ghcr")
        self.wait().until(lambda d: self.value(sel("registry-namespace")) == "ghcr.io", "namespace filled")
        self.assertEqual(self.value(sel("registry-name")), "GitHub (ghcr.io)")
        self.assertEqual(self.value(sel("registry-url")), "https://ghcr.io")
        self.wait_text(sel("registry-auth-hint"), "read:packages")
        self.shot("registry-preset-zh")
        # the namespace is checked next to its field (a bare word is a Docker Hub user)
        self.type(sel("registry-namespace"), "nginx")
        self.click(sel("registry-url"))
        self.wait_field_error("须为仓库主机名")
        self.type(sel("registry-namespace"), "GHCR.IO")
        self.type(sel("registry-url"), self.ghcr.url)
        self.click(sel("registry-save"))
        self.message("已保存")
        self.gone(".el-dialog")
        group = sel("registry-group-ghcr.io")
        self.wait_text(group, "GitHub (ghcr.io)")
        self.assertIn("ghcr.io", self.find(group + " " + sel("registry-group-name")).text)
        # not in the docker.io group
        self.assertNotIn("GitHub (ghcr.io)", self.find(sel("registry-group-docker.io")).text)
        got = {r["name"]: r for r in self.api_registries()}["GitHub (ghcr.io)"]
        self.assertEqual((got["namespace"], got["url"], got["enabled"]), ("ghcr.io", self.ghcr.url, True))

        # nvcr.io: the username it needs, and its hint
        self.click(sel("registry-add"))
        self.pick_preset("nvcr")
        self.wait().until(lambda d: self.value(sel("registry-username")) == "$oauthtoken", "username filled")
        self.assertEqual(self.value(sel("registry-namespace")), "nvcr.io")
        self.assertEqual(self.value(sel("registry-url")), "https://nvcr.io")
        self.wait_text(sel("registry-auth-hint"), "$oauthtoken")
        self.wait_text(sel("registry-auth-hint"), "API Key")
        self.pick_preset("quay")  # another preset: the nvcr username goes again
        self.wait().until(lambda d: self.value(sel("registry-username")) == "", "username cleared")
        self.assertEqual(self.value(sel("registry-namespace")), "quay.io")
        self.close_dialog()

    def match(self, name: str, canonical: str):
        """The tester's answer for `name`, once it shows `canonical` as the normalized name."""
        self.type(sel("match-input"), name)
        self.click(sel("match-check"))
        self.wait().until(
            lambda d: d.find_element("css selector", sel("match-result") + " code").text == canonical,
            f"{name} normalized to {canonical}")
        return self.find(sel("match-result"))

    def whitelist_ghcr_owner(self):
        """A whitelist entry ghcr.io/owner shows its namespace; the tester takes canonical
        names: ghcr.io/owner/img is open, Docker Hub's owner/img is not."""
        self.nav("whitelists")
        self.click(sel("whitelist-add"))
        self.type(sel("whitelist-prefix"), "ghcr.io/owner")
        self.wait_text(sel("whitelist-form-namespace"), "ghcr.io")
        self.click(sel("whitelist-save"))
        self.gone(".el-dialog")
        tag = self.wait_text(sel("whitelist-ns-ghcr.io/owner"), "ghcr.io")
        self.assertEqual(tag.get_attribute("data-namespace"), "ghcr.io")
        self.assertNotIn("el-tag--warning", tag.get_attribute("class"))  # a configured namespace
        status, body = self.server.request("POST", "/api/whitelists", auth=self.auth, body={"prefix": "library"})
        self.assertEqual(status, 201, body)
        status, body = self.server.request("POST", "/api/whitelists", auth=self.auth, body={"prefix": "nvcr.io/nvidia"})
        self.assertEqual(status, 201, body)
        self.click(".toolbar .el-button:nth-child(2)")  # refresh
        self.wait_text(sel("whitelist-ns-library"), "docker.io")
        unknown = self.wait_text(sel("whitelist-ns-nvcr.io/nvidia"), "nvcr.io")
        self.assertIn("el-tag--warning", unknown.get_attribute("class"))  # no nvcr.io upstream

        result = self.match("ghcr.io/owner/img", "ghcr.io/owner/img")
        self.find(sel("match-result") + ' [data-allowed="true"]')
        self.assertIn("ghcr.io/owner", result.text)  # the matched entry
        self.wait_text(sel("match-namespace"), "ghcr.io")
        self.shot("whitelists-namespaces-zh")
        self.match("owner/img", "owner/img")  # the same name on Docker Hub
        self.find(sel("match-result") + ' [data-allowed="false"]')
        self.wait_text(sel("match-namespace"), "docker.io")
        self.match("docker.io/owner/img", "owner/img")  # Docker Hub's names are bare
        self.find(sel("match-result") + ' [data-allowed="false"]')

    def test_namespaces(self):
        d = self.driver
        d.get(self.server.base + "/registries")
        self.find(sel("login-username"))
        self.login()
        self.find(sel("registries-table"))
        self.add_ghcr_from_preset()
        # a quay.io upstream that answers 429, through the API
        status, body = self.server.request("POST", "/api/registries", auth=self.auth, body={
            "name": "quay-limited", "url": self.quay.url, "namespace": "quay.io"})
        self.assertEqual(status, 201, body)
        self.whitelist_ghcr_owner()
        self.assertEqual(self.server.request("POST", "/api/whitelists", auth=self.auth,
                                             body={"prefix": "quay.io/org"})[0], 201)

        # --- rate limits: what the upstreams said on a pull through each namespace ---------
        self.assertEqual(self.pull("/v2/ghcr.io/owner/img/manifests/1"), 404)
        self.assertIn("/v2/owner/img/manifests/1", self.ghcr.paths)  # asked without its host
        self.assertGreaterEqual(self.pull("/v2/quay.io/org/app/manifests/1"), 400)
        self.assertTrue(any("/v2/org/app/manifests/1" in p for p in self.quay.paths), self.quay.paths)
        regs = {r["name"]: r for r in self.api_registries()}
        self.assertEqual({k: regs["GitHub (ghcr.io)"]["rate_limit"][k] for k in ("limit", "remaining", "window")},
                         {"limit": 100, "remaining": 76, "window": 21600})
        self.assertEqual(regs["quay-limited"]["health"]["state"], "ratelimited")
        self.assertIsNotNone(regs["quay-limited"]["rate_limit"]["reset_at"])
        self.nav("registries")
        rl = self.wait_text(sel("registry-ratelimit-GitHub (ghcr.io)"), "76 / 100")
        self.assertIn("每 6 小时", rl.text)
        limited = self.wait_text(sel("registry-ratelimit-quay-limited"), "限流至")
        self.assertRegex(limited.text, r"限流至 (\d\d:\d\d:\d\d|\d\d-\d\d \d\d:\d\d)")
        self.assertIn("0 / 100", limited.text)
        self.wait_text(sel("registry-group-quay.io"), "限流中")  # the health tag
        self.shot("registries-namespaces-zh")
        self.click(sel("registry-group-toggle-quay.io"))  # a group folds away
        self.gone(sel("registries-table-quay.io"))
        self.click(sel("registry-group-toggle-quay.io"))
        self.find(sel("registries-table-quay.io"))

        # --- how to use: the snippets of each namespace for this server -----------------------
        host, base = self.server.host, self.server.base
        self.nav("help")
        for ns in ("docker.io", "ghcr.io", "quay.io"):
            self.find(sel(f"help-tab-{ns}"))
        self.wait_text(sel("snippet-docker.io-pull"), f"docker pull {host}/library/nginx")
        self.wait_text(sel("snippet-docker.io-docker"), '"registry-mirrors"')
        self.click(sel("help-tab-ghcr.io"))
        pull = self.wait_text(sel("snippet-ghcr.io-pull"), f"docker pull {host}/ghcr.io/")
        self.assertIn(f"podman pull {host}/ghcr.io/", pull.text)
        containerd = self.find(sel("snippet-ghcr.io-containerd")).text
        self.assertIn('server = "https://ghcr.io"', containerd)
        self.assertIn(f'[host."{base}"]', containerd)
        self.assertIn('capabilities = ["pull", "resolve"]', containerd)
        self.assertIn("/etc/containerd/certs.d/ghcr.io/hosts.toml", self.find(sel("help-ghcr.io-containerd")).text)
        podman = self.find(sel("snippet-ghcr.io-podman")).text
        self.assertIn('prefix = "ghcr.io"', podman)
        self.assertIn(f'location = "{host}/ghcr.io"', podman)
        self.assertIn("[[registry.mirror]]", podman)
        k3s = self.find(sel("snippet-ghcr.io-k3s")).text
        self.assertIn('"ghcr.io":', k3s)
        self.assertIn(f'- "{base}"', k3s)
        self.assertIn("containerdConfigPatches", self.find(sel("snippet-ghcr.io-kind")).text)
        # no daemon.json for ghcr.io (registry-mirrors is Docker Hub's only): the prefixed name
        self.assertFalse(self.driver.find_elements("css selector", sel("snippet-ghcr.io-docker")))
        self.assertIn(f"{host}/ghcr.io/", self.find(sel("help-ghcr.io-docker")).text)
        self.click(sel("help-ghcr.io-containerd") + " .copy-btn")
        self.wait_text(sel("help-ghcr.io-containerd") + " .copy-btn", "已复制")
        self.shot("help-ghcr-zh")
        self.click(sel("help-tab-quay.io"))
        self.wait_text(sel("snippet-quay.io-pull"), f"docker pull {host}/quay.io/")

        # --- access logs: the namespace of each row, and the filter by namespace -------------
        self.assertGreaterEqual(self.pull("/v2/library/busybox/manifests/1"), 400)  # docker.io
        wanted = {"ghcr.io/owner/img", "quay.io/org/app", "library/busybox"}
        self.wait().until(lambda d: wanted <= {r["repository"] for r in self.api_items("/api/logs")},
                          "the pulls in the access log")  # written in batches
        self.nav("logs")
        table = sel("logs-table")
        self.wait_text(table, "ghcr.io/owner/img")
        self.wait_text(table, "library/busybox")
        headers = [h.text for h in self.driver.find_elements("css selector", table + " th")]
        self.assertIn("命名空间", headers)
        rows = self.driver.find_elements("css selector", table + " .el-table__body tr.el-table__row")
        by_repo = {}
        for row in rows:
            cells = row.find_elements("css selector", "td")
            ns = row.find_element("css selector", sel("log-namespace")).text
            by_repo[next(c.text for c in cells if "/" in c.text and "sha256" not in c.text)] = ns
        self.assertEqual(by_repo.get("ghcr.io/owner/img"), "ghcr.io", by_repo)
        self.assertEqual(by_repo.get("quay.io/org/app"), "quay.io", by_repo)
        self.assertEqual(by_repo.get("library/busybox"), "docker.io", by_repo)
        api_rows = self.api_items("/api/logs?namespace=ghcr.io")
        self.assertTrue(api_rows and all(r["namespace"] == "ghcr.io" for r in api_rows), api_rows)
        self.click(sel("filter-namespace"))
        self.click(f'.el-select-dropdown {sel("filter-namespace-ghcr.io")}')
        self.click(sel("logs-search"))
        self.wait_no_text(table, "library/busybox")
        self.wait_no_text(table, "quay.io/org/app")
        self.assertIn("ghcr.io/owner/img", self.find(table).text)
        self.assertIn(f"共 {len(api_rows)} 条", self.find(sel("logs-pager")).text)
        self.shot("logs-namespace-zh")
        self.click(".filter-buttons .el-button:nth-child(2)")  # reset
        self.wait_text(table, "library/busybox")

        # --- English texts of the new parts --------------------------------------------------
        self.click(sel("lang-toggle"))
        self.wait().until(lambda d: "Namespace" in [h.text for h in d.find_elements("css selector", table + " th")],
                          "English column header")
        self.nav("registries")
        self.wait_text(sel("registry-ratelimit-quay-limited"), "limited until")
        self.wait_text(sel("registry-ratelimit-GitHub (ghcr.io)"), "per 6 h")
        self.wait_text(sel("registry-group-quay.io"), "Rate limited")
        self.shot("registries-namespaces-en")
        self.click(sel("registry-group-add-ghcr.io"))  # "add" in a group: its namespace
        self.wait().until(lambda d: self.value(sel("registry-namespace")) == "ghcr.io", "group namespace")
        self.pick_preset("nvcr")
        self.wait_text(sel("registry-auth-hint"), "$oauthtoken")
        self.shot("registry-preset-en")
        self.close_dialog()
        self.nav("help")
        self.click(sel("help-tab-ghcr.io"))
        self.wait_text(sel("help-ghcr.io-docker"), "Docker Hub only")
        self.shot("help-ghcr-en")


class PhoneNamespaceTests(NamespaceTests):
    """The new parts at 390 px: namespace groups and rate limits on the registry cards, the
    preset dialog, the how-to tabs, namespace tags on whitelist entries and log cards; no
    page is wider than the phone."""

    width, height, mobile = 390, 844, True

    def no_overflow(self, what: str):
        widths = self.driver.execute_script(
            "const m = document.querySelector('.main');"
            " return [document.documentElement.scrollWidth, m.scrollWidth, m.clientWidth]")
        self.assertLessEqual(widths[0], self.width, f"{what}: page wider than the phone {widths}")
        self.assertLessEqual(widths[1], widths[2], f"{what}: content wider than the page {widths}")

    def test_namespaces(self):
        auth = self.auth
        for body in ({"name": "ghcr-phone", "url": self.ghcr.url, "namespace": "ghcr.io"},
                     {"name": "quay-limited", "url": self.quay.url, "namespace": "quay.io"}):
            status, text = self.server.request("POST", "/api/registries", auth=auth, body=body)
            self.assertEqual(status, 201, text)
        for prefix in ("ghcr.io/owner", "quay.io/org"):
            self.assertEqual(self.server.request("POST", "/api/whitelists", auth=auth, body={"prefix": prefix})[0], 201)
        self.assertEqual(self.pull("/v2/ghcr.io/owner/img/manifests/1"), 404)
        self.assertGreaterEqual(self.pull("/v2/quay.io/org/app/manifests/1"), 400)
        self.wait().until(lambda d: {"ghcr.io/owner/img", "quay.io/org/app"}
                          <= {r["repository"] for r in self.api_items("/api/logs")}, "logged")

        self.driver.get(self.server.base + "/registries")
        self.find(sel("login-username"))
        self.login()
        self.wait_text(sel("registry-group-ghcr.io"), "ghcr-phone")
        self.wait_text(sel("registry-ratelimit-ghcr-phone"), "76 / 100")
        self.wait_text(sel("registry-ratelimit-quay-limited"), "限流至")
        self.no_overflow("registries")
        self.shot("registries-namespaces-zh")
        self.driver.execute_script("const m = document.querySelector('.main'); m.scrollTop = m.scrollHeight")
        self.shot("registries-namespaces-bottom-zh")
        self.driver.execute_script("document.querySelector('.main').scrollTop = 0")
        self.click(sel("registry-add"))
        self.pick_preset("nvcr")
        self.wait_text(sel("registry-auth-hint"), "$oauthtoken")
        self.assertEqual(self.value(sel("registry-namespace")), "nvcr.io")
        self.shot("registry-preset-zh")
        self.close_dialog()

        self.nav("help")
        self.click(sel("help-tab-ghcr.io"))
        self.wait_text(sel("snippet-ghcr.io-pull"), f"docker pull {self.server.host}/ghcr.io/")
        self.wait_text(sel("snippet-ghcr.io-containerd"), 'server = "https://ghcr.io"')
        self.no_overflow("help")
        self.shot("help-ghcr-zh")

        self.nav("whitelists")
        self.wait_text(sel("whitelist-ns-ghcr.io/owner"), "ghcr.io")
        self.match("ghcr.io/owner/img", "ghcr.io/owner/img")
        self.wait_text(sel("match-namespace"), "ghcr.io")
        self.no_overflow("whitelists")
        self.shot("whitelists-namespaces-zh")

        self.nav("logs")
        self.wait_text(sel("logs-table"), "ghcr.io/owner/img")
        tags = {e.text for e in self.driver.find_elements("css selector", sel("logs-table") + " " + sel("log-namespace"))}
        self.assertEqual(tags, {"ghcr.io", "quay.io"})
        self.click(sel("logs-filter-toggle"))
        self.click(sel("filter-namespace"))
        self.click(f'.el-select-dropdown {sel("filter-namespace-quay.io")}')
        self.click(sel("logs-search"))
        self.wait_no_text(sel("logs-table"), "ghcr.io/owner/img")
        self.assertIn("quay.io/org/app", self.find(sel("logs-table")).text)
        self.no_overflow("logs")
        self.shot("logs-namespace-zh")

        self.click(sel("lang-toggle"))
        self.nav("registries")
        self.wait_text(sel("registry-ratelimit-quay-limited"), "limited until")
        self.no_overflow("registries en")
        self.shot("registries-namespaces-en")


# Answers the page's fetch() gets instead of the server's for the requests that match
# (window.__stubs: [{method, path (a RegExp source), status, body}]); every request the
# page makes is noted in window.__sent ({method, path, body}).
STUB_FETCH = """
if (!window.__realFetch) {
  window.__realFetch = window.fetch.bind(window);
  window.__sent = [];
  window.fetch = (input, init) => {
    const url = new URL(typeof input === 'string' ? input : input.url, location.href);
    const method = ((init && init.method) || 'GET').toUpperCase();
    let body = null;
    try { body = init && init.body ? JSON.parse(init.body) : null } catch (e) { body = init.body }
    window.__sent.push({method, path: url.pathname, body});
    for (const s of window.__stubs || []) {
      if (s.method === method && new RegExp(s.path).test(url.pathname)) {
        const answer = s.body === '__echo__' ? body : s.body;
        return Promise.resolve(new Response(JSON.stringify(answer),
          {status: s.status, headers: {'Content-Type': 'application/json'}}));
      }
    }
    return window.__realFetch(input, init);
  };
}
window.__stubs = arguments[0];
"""

PEM_CA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIGHfake\n-----END PRIVATE KEY-----\n"
TLS_FAIL = "certificate verify failed: self-signed certificate in certificate chain"


def steps(*names_ok):
    """A test answer's steps: ("dns", True), ... with made-up times and details."""
    return [{"step": n, "ok": ok, "ms": round(1.5 * (i + 1), 1),
             "detail": TLS_FAIL if not ok and n == "tls" else f"{n} detail"}
            for i, (n, ok) in enumerate(names_ok)]


class ConnectionCase(BrowserCase):
    """The registry dialog's connection section: its helpers."""

    def setUp(self):
        super().setUp()
        self.auth = (ADMIN_USER, ADMIN_PASSWORD)
        for r in self.api_registries():  # no test traffic to the Internet
            self.assertEqual(self.server.request("PUT", f"/api/registries/{r['id']}", auth=self.auth,
                                                 body={"enabled": False})[0], 200)

    # --- helpers ----------------------------------------------------------------------------

    def value(self, css: str) -> str:
        return self.find(css).get_attribute("value")

    def stub(self, *stubs):
        self.driver.execute_script(STUB_FETCH, list(stubs))

    def sent(self, method: str, pattern: str) -> list:
        import re

        return [s["body"] for s in self.driver.execute_script("return window.__sent || []")
                if s["method"] == method and re.search(pattern, s["path"])]

    def open_section(self):
        self.click(sel("registry-conn-toggle") + " .el-collapse-item__header")
        self.find(sel("registry-proxy-mode"))
        self.settled()

    def close_dialog(self):
        self.click(".el-dialog__headerbtn")
        self.gone(".el-dialog")

    def field_error(self, field_css: str, text: str):
        """The form-item error under the field `field_css` contains `text`."""
        from selenium.webdriver.common.by import By

        def found(d):
            item = d.find_element(By.CSS_SELECTOR, field_css).find_element(
                By.XPATH, "ancestor::div[contains(@class, 'el-form-item')][1]")
            errs = item.find_elements(By.CSS_SELECTOR, ".el-form-item__error")
            return errs[0] if errs and text in errs[0].text else False

        return self.wait().until(found, f"{text!r} under {field_css}")

    def step_states(self, root: str) -> list:
        """(step, data-ok, first failed) of each step shown under `root`."""
        from selenium.webdriver.common.by import By

        out = []
        for li in self.driver.find_elements(By.CSS_SELECTOR, root + " li.step"):
            out.append((li.get_attribute("data-test").removeprefix("test-step-"), li.get_attribute("data-ok"),
                        "first-fail" in li.get_attribute("class")))
        return out


class ConnectionTests(ConnectionCase):
    """The registry dialog's connection section (proxy, TLS verification, CA, client
    certificate and key, server name), the "test connection" steps and the rows' TLS-off and
    proxy markers.

    test_dialog_and_steps gives the page canned API answers for the new fields (stubbed
    fetch): it checks what the page shows and what it sends, whatever the server knows.
    test_against_the_api does the same against the real admin API and a TLS upstream signed
    by a test CA, test_proxy_against_the_api through tinyproxy; both skip while the API has no
    connection fields (and the latter without tinyproxy)."""

    width, height, mobile = 1366, 768, False

    # --- the page with canned answers ----------------------------------------------------------

    def test_dialog_and_steps(self):
        d = self.driver
        d.get(self.server.base + "/registries")
        self.find(sel("login-username"))
        self.login()
        self.find(sel("registries-table"))
        seeded = self.api_registries()
        first = seeded[0]
        second = dict(first, id=max(r["id"] for r in seeded) + 1, name="direct-up", priority=first["priority"] + 1)

        # --- add: the section starts folded; presets still fill the form -------------------
        self.click(sel("registry-add"))
        self.click(sel("registry-preset"))
        self.find(f'.el-select-dropdown {sel("registry-preset-ghcr")}')
        self.settled()
        self.click(f'.el-select-dropdown {sel("registry-preset-ghcr")}')
        self.wait().until(lambda d: self.value(sel("registry-namespace")) == "ghcr.io", "preset applied")
        self.assertEqual(self.value(sel("registry-url")), "https://ghcr.io")
        self.assertFalse(d.find_element("css selector", sel("registry-proxy-mode")).is_displayed())  # folded
        self.open_section()
        self.wait_text(sel("registry-proxy-help"), "HTTPS_PROXY")  # "default": config or environment
        self.assertFalse(d.find_elements("css selector", sel("registry-proxy")))
        self.assertFalse(d.find_elements("css selector", sel("registry-tls-warning")))
        self.click(sel("registry-proxy-custom"))
        self.find(sel("registry-proxy"))
        self.click(sel("registry-save"))
        self.field_error(sel("registry-proxy"), "请输入代理地址")
        self.type(sel("registry-proxy"), "ftp://proxy.corp:3128")
        self.click(sel("registry-server-name"))
        self.field_error(sel("registry-proxy"), "socks5h://")
        self.type(sel("registry-proxy"), "http://corp:pw@127.0.0.1:3128")
        self.click(sel("registry-tls-verify"))
        self.wait_text(sel("registry-tls-warning"), "冒充")
        self.find(sel("registry-ca")).send_keys(PEM_CA)
        self.type(sel("registry-server-name"), "registry.internal")
        self.shot("registry-connection-zh")

        # --- "test" in the dialog: the unsaved form goes to POST /api/registries/test -------
        self.stub({"method": "POST", "path": "^/api/registries/test$", "status": 200,
                   "body": {"ok": True, "status": 401, "latency_ms": 12.5, "auth": "bearer", "error": None,
                            "steps": steps(("dns", True), ("tcp", True), ("proxy", True), ("tls", True), ("v2", True))}})
        self.click(sel("registry-form-test"))
        result = sel("registry-form-test-result")
        self.wait_text(result, "连接成功")
        self.assertEqual(self.step_states(result), [(n, "true", False) for n in ("dns", "tcp", "proxy", "tls", "v2")])
        for label in ("DNS 解析", "TCP 连接", "代理", "TLS 握手", "/v2/ 接口", "tls detail", "7.5 ms"):
            self.assertIn(label, self.find(result).text)
        body = self.sent("POST", "^/api/registries/test$")[-1]
        self.assertEqual({k: body.get(k) for k in ("name", "url", "namespace", "proxy", "tls_verify", "ca", "server_name")},
                         {"name": "GitHub (ghcr.io)", "url": "https://ghcr.io", "namespace": "ghcr.io",
                          "proxy": "http://corp:pw@127.0.0.1:3128", "tls_verify": False, "ca": PEM_CA,
                          "server_name": "registry.internal"})
        self.assertNotIn("client_key", body)
        self.assertNotIn("id", body)
        self.shot("registry-form-test-zh")

        # --- the server's field errors go under their fields ----------------------------------
        self.stub({"method": "POST", "path": "^/api/registries$", "status": 400,
                   "body": {"error": "invalid input", "fields": {"ca": "is not a PEM certificate",
                                                                  "server_name": "is not a host name"}}})
        self.click(sel("registry-save"))
        self.field_error(sel("registry-ca"), "is not a PEM certificate")
        self.field_error(sel("registry-server-name"), "is not a host name")
        created = self.sent("POST", "^/api/registries$")[-1]
        self.assertEqual((created["proxy"], created["tls_verify"]), ("http://corp:pw@127.0.0.1:3128", False))
        self.close_dialog()

        # --- a new registry with the defaults sends no connection fields -----------------------
        self.stub({"method": "POST", "path": "^/api/registries$", "status": 201, "body": "__echo__"})
        self.click(sel("registry-add"))
        self.type(sel("registry-name"), "plain")
        self.type(sel("registry-url"), "http://127.0.0.1:9")
        self.click(sel("registry-save"))
        self.message("已保存")
        plain = self.sent("POST", "^/api/registries$")[-1]
        self.assertFalse({"proxy", "tls_verify", "ca", "client_cert", "client_key", "server_name"} & set(plain), plain)

        # --- the list: TLS-off warning, proxy and direct tags ----------------------------------
        rows = [dict(first), dict(second)]
        for r in rows:
            r.update({"proxy": None, "tls_verify": True, "ca": "", "client_cert": "", "has_client_key": False,
                      "server_name": ""})
        rows[0].update({"proxy": "http://corp:****@127.0.0.1:3128", "tls_verify": False, "ca": PEM_CA,
                        "client_cert": PEM_CA, "has_client_key": True, "server_name": "registry.internal"})
        rows[1].update({"proxy": ""})
        self.stub({"method": "GET", "path": "^/api/registries$", "status": 200, "body": {"items": rows}},
                  {"method": "PUT", "path": "^/api/registries/\\d+$", "status": 200, "body": rows[0]},
                  {"method": "POST", "path": "^/api/registries/\\d+/test$", "status": 200,
                   "body": {"ok": False, "status": None, "latency_ms": None, "auth": "unknown", "error": TLS_FAIL,
                            "steps": steps(("dns", True), ("tcp", True), ("proxy", True), ("tls", False))}},
                  {"method": "POST", "path": "^/api/registries/test$", "status": 200,
                   "body": {"ok": False, "status": None, "latency_ms": None, "auth": "unknown",
                            "error": "dns: no address", "steps": [{"step": "dns", "ok": False, "ms": None,
                                                                   "detail": "no address for registry.invalid"}]}})
        self.click(".toolbar .el-button:nth-child(2)")  # refresh
        self.wait_text(sel(f"registry-tls-off-{first['name']}"), "未校验证书")
        self.find(sel(f"registry-proxy-tag-{first['name']}"))
        self.find(sel(f"registry-direct-tag-{second['name']}"))
        self.assertFalse(d.find_elements("css selector", sel(f"registry-tls-off-{second['name']}")))
        self.assertFalse(d.find_elements("css selector", sel(f"registry-proxy-tag-{second['name']}")))

        # --- "test connection" on a row: the summary, the failed step, every step --------------
        self.click(sel(f"registry-test-{first['name']}"))
        self.message("certificate verify failed")  # the summary, as before
        marker = sel("registries-table") + ' .test-result[data-failed-step="tls"]'
        self.wait_text(marker, "TLS 握手")
        self.click(marker)
        popover = ".test-popover " + sel("test-steps")
        self.wait_text(popover, "在此步失败")
        self.assertEqual(self.step_states(popover), [("dns", "true", False), ("tcp", "true", False),
                                                     ("proxy", "true", False), ("tls", "false", True)])
        self.assertIn(TLS_FAIL, self.find(popover + " .first-fail").text)
        self.assertIn("连接失败", self.find(popover + " " + sel("test-summary")).text)
        self.shot("registry-test-steps-zh")
        self.click(sel("registries-table") + " .ns-name")  # the popover closes on a click elsewhere
        self.gone(popover)

        # --- edit: the section opens with the stored settings; unchanged values go back --------
        self.click(sel(f"registry-edit-{first['name']}"))
        self.wait().until(lambda d: self.value(sel("registry-proxy")) == "http://corp:****@127.0.0.1:3128",
                          "masked proxy shown")
        self.assertIn("is-checked", self.find(sel("registry-proxy-custom")).get_attribute("class"))
        self.assertNotIn("is-checked", self.find(sel("registry-tls-verify")).get_attribute("class"))
        self.find(sel("registry-tls-warning"))
        self.assertEqual(self.value(sel("registry-ca")), PEM_CA)
        self.assertEqual(self.value(sel("registry-server-name")), "registry.internal")
        self.assertEqual(self.value(sel("registry-client-key")), "")  # write-only
        self.assertIn("留空则保持不变", self.find(sel("registry-client-key")).get_attribute("placeholder"))
        self.wait_text(sel("registry-client-key-set"), "已保存私钥")
        self.shot("registry-edit-connection-zh")
        self.click(sel("registry-form-test"))  # the unsaved form with the id: a DNS failure
        self.wait_text(sel("registry-form-test-result"), "no address for registry.invalid")
        self.assertEqual(self.step_states(sel("registry-form-test-result")), [("dns", "false", True)])
        self.assertEqual(self.sent("POST", "^/api/registries/test$")[-1]["id"], first["id"])
        self.click(sel("registry-save"))
        self.gone(".el-dialog")
        put = self.sent("PUT", f"^/api/registries/{first['id']}$")[-1]
        self.assertEqual({k: put.get(k) for k in ("proxy", "tls_verify", "ca", "client_cert", "server_name")},
                         {"proxy": "http://corp:****@127.0.0.1:3128", "tls_verify": False, "ca": PEM_CA,
                          "client_cert": PEM_CA, "server_name": "registry.internal"})
        self.assertNotIn("client_key", put)  # kept

        self.click(sel(f"registry-edit-{first['name']}"))  # clear the key, turn verification on
        self.click(sel("registry-client-key-clear"))
        self.click(sel("registry-tls-verify"))
        self.gone(sel("registry-tls-warning"))
        self.click(sel("registry-proxy-default"))
        self.gone(sel("registry-proxy"))
        self.click(sel("registry-save"))
        self.gone(".el-dialog")
        put = self.sent("PUT", f"^/api/registries/{first['id']}$")[-1]
        self.assertEqual((put["client_key"], put["tls_verify"], put["proxy"]), ("", True, None))

        self.click(sel(f"registry-edit-{second['name']}"))  # "direct"; a new key
        self.wait().until(lambda d: "is-checked" in self.find(sel("registry-proxy-direct")).get_attribute("class"),
                          "direct checked")
        self.assertFalse(d.find_elements("css selector", sel("registry-client-key-set")))
        self.find(sel("registry-client-key")).send_keys(PEM_KEY)
        self.click(sel("registry-save"))
        self.gone(".el-dialog")
        put = self.sent("PUT", f"^/api/registries/{second['id']}$")[-1]
        self.assertEqual((put["proxy"], put["client_key"]), ("", PEM_KEY))

        # --- English ----------------------------------------------------------------------------
        self.click(sel("lang-toggle"))
        self.wait_text(sel(f"registry-tls-off-{first['name']}"), "TLS verify off")
        self.wait_text(sel(f"registry-proxy-tag-{first['name']}"), "proxy")
        self.click(sel(f"registry-test-{first['name']}"))
        self.wait_text(sel("registries-table") + ' .test-result[data-failed-step="tls"]', "TLS handshake")
        self.click(sel("registry-add"))
        self.wait_text(sel("registry-conn"), "Connection")
        self.open_section()
        self.click(sel("registry-tls-verify"))
        self.wait_text(sel("registry-tls-warning"), "tampered")
        self.shot("registry-connection-en")
        self.close_dialog()

    # --- the real admin API ---------------------------------------------------------------------

    def db_proxy(self, name: str) -> str:
        """The proxy URL stored for the registry `name` (with its password), from the database."""
        import sqlite3

        path = next(self.server.data.rglob("*.db"))
        with sqlite3.connect(path) as db:
            return db.execute("SELECT proxy FROM registries WHERE name = ?", (name,)).fetchone()[0]

    def need_api(self):
        if "tls_verify" not in self.api_registries()[0]:
            raise unittest.SkipTest("the admin API has no registry connection fields yet")

    def test_against_the_api(self):
        self.need_api()
        d = self.driver
        ca = ui_browser.make_test_ca(self.out / "ca")
        upstream = ui_browser.FakeUpstream(tls=ca["context"])
        self.addCleanup(upstream.stop)

        d.get(self.server.base + "/registries")
        self.find(sel("login-username"))
        self.login()
        self.find(sel("registries-table"))

        # --- a TLS upstream signed by a private CA: "test" fails, with the CA it works --------
        self.click(sel("registry-add"))
        self.type(sel("registry-name"), "private-tls")
        self.type(sel("registry-url"), upstream.url)
        self.open_section()
        self.click(sel("registry-form-test"))
        result = sel("registry-form-test-result")
        self.wait_text(result, "连接失败", timeout=30)
        self.assertEqual(self.step_states(result), [("dns", "true", False), ("tcp", "true", False),
                                                    ("tls", "false", True)])
        self.assertIn("certificate verify failed", self.find(result + " li.step.first-fail").text)
        self.shot("registry-form-test-cafail-zh")
        self.find(sel("registry-ca")).send_keys(ca["ca"])
        self.click(sel("registry-form-test"))
        self.wait_text(result, "连接成功", timeout=30)
        self.assertEqual(self.step_states(result), [(n, "true", False) for n in ("dns", "tcp", "tls", "v2")])
        self.assertIn("zmirror test CA", self.find(sel("test-step-tls")).text)  # the issuer in the detail
        self.click(sel("registry-save"))
        self.gone(".el-dialog")
        regs = {r["name"]: r for r in self.api_registries()}
        self.assertEqual(regs["private-tls"]["ca"].strip(), ca["ca"].strip())
        self.assertEqual((regs["private-tls"]["tls_verify"], regs["private-tls"]["proxy"],
                          regs["private-tls"]["has_client_key"]), (True, None, False))
        self.assertFalse(d.find_elements("css selector", sel("registry-tls-off-private-tls")))
        self.click(sel("registry-test-private-tls"))
        self.wait_text(sel("registries-table") + " .test-result.ok", "ms", timeout=30)

        # --- mutual TLS: the key is write-only; clearing it with its certificate ------------------
        self.click(sel("registry-edit-private-tls"))
        self.find(sel("registry-client-cert")).send_keys(ca["cert"])
        self.find(sel("registry-client-key")).send_keys(ca["key"])
        self.click(sel("registry-save"))
        self.gone(".el-dialog")
        regs = {r["name"]: r for r in self.api_registries()}
        self.assertTrue(regs["private-tls"]["has_client_key"])
        self.assertNotIn("PRIVATE KEY", json.dumps(regs["private-tls"]))
        self.click(sel("registry-edit-private-tls"))
        self.wait_text(sel("registry-client-key-set"), "已保存私钥")
        self.assertEqual(self.value(sel("registry-client-key")), "")
        self.click(sel("registry-client-key-clear"))
        self.click(sel("registry-save"))
        self.field_error(sel("registry-client-key"), "填写客户端证书时必填")  # the API's "required with client_cert"
        self.type(sel("registry-client-cert"), " ")
        self.click(sel("registry-save"))
        self.gone(".el-dialog")
        regs = {r["name"]: r for r in self.api_registries()}
        self.assertEqual((regs["private-tls"]["has_client_key"], regs["private-tls"]["client_cert"]), (False, ""))

        # --- the API's field errors under the fields ---------------------------------------------
        self.click(sel("registry-edit-private-tls"))
        self.type(sel("registry-ca"), "not a certificate")
        self.click(sel("registry-proxy-custom"))
        self.type(sel("registry-proxy"), "http://proxy.corp:99999")  # the port is the server's to check
        self.click(sel("registry-save"))
        self.field_error(sel("registry-proxy"), "不是有效的地址")  # the field checks come first
        self.shot("registry-api-field-errors-zh")
        self.click(sel("registry-proxy-default"))
        self.click(sel("registry-save"))
        self.field_error(sel("registry-ca"), "未找到 PEM 证书")  # then what the PEMs hold
        self.close_dialog()
        regs = {r["name"]: r for r in self.api_registries()}
        self.assertEqual((regs["private-tls"]["ca"].strip(), regs["private-tls"]["proxy"]),
                         (ca["ca"].strip(), None))  # nothing saved

    def test_proxy_against_the_api(self):
        """An upstream with TLS verification off behind tinyproxy (Basic proxy auth): the
        row's markers, every step through the proxy, the masked proxy password kept on an
        unchanged save (the next test still gets through), a wrong password fails at "proxy"."""
        from tests.fixtures import proxies

        self.need_api()
        if proxies.missing_proxies():
            raise unittest.SkipTest(proxies.missing_proxies())
        proxy = proxies.start_tinyproxy(self)
        ca = ui_browser.make_test_ca(self.out / "ca")
        upstream = ui_browser.FakeUpstream(tls=ca["context"])
        self.addCleanup(upstream.stop)
        status, body = self.server.request("POST", "/api/registries", auth=self.auth, body={
            "name": "via-proxy", "url": upstream.url, "tls_verify": False, "proxy": proxy.url()})
        self.assertEqual(status, 201, body)
        masked = f"http://{proxies.PROXY_USER}:****@127.0.0.1:{proxy.port}"
        self.assertEqual(json.loads(body)["proxy"], masked)

        self.driver.get(self.server.base + "/registries")
        self.find(sel("login-username"))
        self.login()
        self.wait_text(sel("registry-tls-off-via-proxy"), "未校验证书")
        self.find(sel("registry-proxy-tag-via-proxy"))
        marker = sel("registries-table") + " .test-result"
        popover = ".test-popover " + sel("test-steps")

        def test_row():
            self.click(sel("registry-test-via-proxy"))
            self.message("via-proxy")
            self.wait_text(marker + ".ok", "ms", timeout=30)
            self.click(marker)
            self.wait_text(popover, "连接成功")
            self.assertEqual(self.step_states(popover), [(n, "true", False) for n in ("dns", "tcp", "proxy", "tls", "v2")])
            self.assertIn("verification off", self.find(popover + " " + sel("test-step-tls")).text)
            self.click(sel("registries-table") + " .ns-name")
            self.gone(popover)

        test_row()
        proxies.wait_log(proxy, f"CONNECT 127.0.0.1:{upstream.url.rsplit(':', 1)[1]}")
        self.shot("registry-test-proxy-steps-zh")

        # an unchanged save sends the masked URL back: the password stays, the proxy still lets us in
        self.click(sel("registry-edit-via-proxy"))
        self.wait().until(lambda d: self.value(sel("registry-proxy")) == masked, "masked proxy shown")
        self.click(sel("registry-save"))
        self.gone(".el-dialog")
        self.assertEqual(self.db_proxy("via-proxy"), proxy.url())
        self.click(".toolbar .el-button:nth-child(2)")  # refresh: the row's old result goes
        test_row()

        # a wrong proxy password, tested in the dialog before saving: the "proxy" step fails
        self.click(sel("registry-edit-via-proxy"))
        self.type(sel("registry-proxy"), proxy.url(password="wrong-password"))
        self.click(sel("registry-form-test"))
        result = sel("registry-form-test-result")
        self.wait_text(result, "refused CONNECT", timeout=30)  # tinyproxy says 401, others 407
        self.assertEqual(self.step_states(result), [("dns", "true", False), ("tcp", "true", False),
                                                    ("proxy", "false", True)])
        self.assertNotIn("wrong-password", self.find(result).text)
        self.shot("registry-form-test-proxy-refused-zh")
        self.close_dialog()
        self.assertEqual(self.db_proxy("via-proxy"), proxy.url())  # not saved


class PhoneConnectionTests(ConnectionCase):
    """The connection section, the markers and the steps at 390 px (canned answers): cards
    show the markers, the steps' popover and the full-screen dialog fit the phone."""

    width, height, mobile = 390, 844, True

    def no_overflow(self, what: str):
        widths = self.driver.execute_script(
            "const m = document.querySelector('.main');"
            " return [document.documentElement.scrollWidth, m.scrollWidth, m.clientWidth]")
        self.assertLessEqual(widths[0], self.width, f"{what}: page wider than the phone {widths}")
        self.assertLessEqual(widths[1], widths[2], f"{what}: content wider than the page {widths}")

    def test_dialog_and_steps(self):
        self.driver.get(self.server.base + "/registries")
        self.find(sel("login-username"))
        self.login()
        self.find(sel("registries-table"))
        row = dict(self.api_registries()[0], proxy="socks5h://127.0.0.1:1080", tls_verify=False, ca="",
                   client_cert="", has_client_key=False, server_name="")
        self.stub({"method": "GET", "path": "^/api/registries$", "status": 200, "body": {"items": [row]}},
                  {"method": "POST", "path": "^/api/registries/\\d+/test$", "status": 200,
                   "body": {"ok": False, "status": None, "latency_ms": None, "auth": "unknown", "error": TLS_FAIL,
                            "steps": steps(("dns", True), ("tcp", True), ("proxy", True), ("tls", False))}})
        self.click(".toolbar .el-button:nth-child(2)")  # refresh
        self.wait_text(sel(f"registry-tls-off-{row['name']}"), "未校验证书")
        self.find(sel(f"registry-proxy-tag-{row['name']}"))
        self.click(sel(f"registry-test-{row['name']}"))
        marker = sel("registries-table") + ' .test-result[data-failed-step="tls"]'
        self.click(marker)
        popover = ".test-popover " + sel("test-steps")
        self.wait_text(popover, "在此步失败")
        right = self.driver.execute_script(
            "return document.querySelector('.test-popover').getBoundingClientRect().right")
        self.assertLessEqual(right, self.width)
        self.no_overflow("registries")
        self.shot("registry-test-steps-zh")
        self.click(sel("registries-table") + " .ns-name")
        self.gone(popover)

        self.click(sel(f"registry-edit-{row['name']}"))
        self.wait().until(lambda d: self.value(sel("registry-proxy")) == "socks5h://127.0.0.1:1080", "proxy shown")
        self.find(sel("registry-tls-warning"))
        self.settled()
        self.shot("registry-connection-zh")
        self.close_dialog()
