"""Helpers for the browser tests: a `twistd -n zmirror` on a temp data dir and a headless
Chromium driven by Selenium (Debian's /usr/bin/chromium + /usr/bin/chromedriver).

Nothing here downloads anything: Selenium gets explicit browser and driver paths, so its
"selenium-manager" is never asked to fetch a browser.
"""

from __future__ import annotations

import json
import os
import shutil

import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from tests.helpers import REPO, free_port, start_twistd, stop, wait_port

WEBUI_INDEX = REPO / "zmirror" / "webui" / "index.html"
ADMIN_USER = "admin"
DEFAULT_PASSWORD = "admin123"  # the generated config's default: the API refuses work with it
ADMIN_PASSWORD = "Browser-admin-pw-1"  # what Server writes into the config unless told otherwise
WAIT = 20  # seconds for explicit waits

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-default-browser-check",
    "--password-store=basic",
    "--lang=zh-CN",
]


def _find(env: str, name: str, fallback: str) -> Optional[str]:
    """An executable from $env, else on PATH, else at `fallback`; None when none exists."""
    for candidate in (os.environ.get(env), shutil.which(name), fallback):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def chromium_path() -> Optional[str]:
    return _find("ZMIRROR_CHROMIUM", "chromium", "/usr/bin/chromium")


def chromedriver_path() -> Optional[str]:
    return _find("ZMIRROR_CHROMEDRIVER", "chromedriver", "/usr/bin/chromedriver")


def skip_reason() -> Optional[str]:
    """Why the browser tests cannot run here, or None."""
    if not chromium_path():
        return "browser test skipped: Chromium not installed (Debian: apt-get install chromium chromium-driver)"
    if not chromedriver_path():
        return "browser test skipped: chromedriver not installed (Debian: apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "browser test skipped: selenium not installed (pip install -e '.[test]')"
    if not WEBUI_INDEX.exists():
        return "browser test skipped: web UI not built (run `make ui`)"
    return None


class Server:
    """`twistd -n zmirror` on a free port with its own data directory."""

    def __init__(self, workdir: Path, admin_password: Optional[str] = ADMIN_PASSWORD):
        """``admin_password``: written into the generated config before the start;
        None leaves the generated default (``admin123``)."""
        self.workdir = workdir
        self.data = workdir / "data"
        self.admin_password = admin_password
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.proc = None
        self.output = b""

    @property
    def config_path(self) -> Path:
        return self.data / "config.toml"

    def start(self) -> "Server":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.admin_password is not None and not self.config_path.exists():
            from zmirror.config import DEFAULT_CONFIG

            self.data.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(DEFAULT_CONFIG.replace(
                f'password = "{DEFAULT_PASSWORD}"', f'password = "{self.admin_password}"'))
            os.chmod(self.config_path, 0o600)
        self.proc = start_twistd(
            self.workdir,
            "zmirror",
            "--data",
            str(self.data),
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
        )
        try:
            wait_port(self.port, timeout=60, proc=self.proc)
        except RuntimeError:
            self.stop()
            raise RuntimeError("twistd did not start:\n" + self.output.decode("utf-8", "replace"))
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.output = stop(self.proc)
            self.proc = None
            (self.workdir / "twistd.log").write_bytes(self.output)

    def request(self, method: str, path: str, auth: Optional[tuple[str, str]] = None,
                body: Optional[dict] = None, headers: Optional[dict] = None) -> tuple[int, bytes]:
        """A plain HTTP request (urllib); returns (status, body) also for 4xx/5xx."""
        import base64

        h = dict(headers or {})
        data = None
        if auth:
            h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


def make_driver(profile_dir: Path, width: int, height: int, mobile: bool = False):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path()
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver_path(), log_output=str(profile_dir.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    set_viewport(driver, width, height, mobile)
    return driver


def set_viewport(driver, width: int, height: int, mobile: bool = False) -> None:
    """An exact CSS viewport (screenshots are width x height pixels)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )




class FakeUpstream:
    """A registry upstream on 127.0.0.1 in a thread (the browser test blocks the reactor, so
    no Twisted server here): ``/v2/`` answers 200; every manifest request answers with
    Docker Hub's rate-limit headers, ``404 MANIFEST_UNKNOWN`` while pulls are left, or
    ``429`` with ``Retry-After`` when ``limited``. ``paths`` records what was asked."""

    def __init__(self, limit: int = 100, remaining: int = 76, window: int = 21600,
                 limited: bool = False, retry_after: int = 3600):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading

        self.paths: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, code: int, body: dict, headers: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_GET(self):
                fake.paths.append(self.path)
                if self.path.split("?")[0] in ("/v2/", "/v2"):
                    return self._answer(200, {}, {})
                if "/manifests/" in self.path:
                    left = 0 if limited else remaining
                    headers = {"ratelimit-limit": f"{limit};w={window}",
                               "ratelimit-remaining": f"{left};w={window}"}
                    if limited:
                        headers["Retry-After"] = str(retry_after)
                        return self._answer(429, {"errors": [{"code": "TOOMANYREQUESTS",
                                                              "message": "rate limited"}]}, headers)
                    return self._answer(404, {"errors": [{"code": "MANIFEST_UNKNOWN",
                                                          "message": "manifest unknown"}]}, headers)
                return self._answer(404, {"errors": [{"code": "NAME_UNKNOWN", "message": "unknown"}]}, {})

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
