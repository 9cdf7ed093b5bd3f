"""The Cache page and the dashboard's cache tiles in a real browser (headless Chromium
against `twistd -n zmirror` pulling from an upstream on 127.0.0.1), at 1366 px and 390 px:
after pulls the figures are non-zero; a tag invalidated from the page is revalidated
upstream (a HEAD) at its next pull; a repository purged from the page is gone.

Skipped (with the reason) where Chromium/chromedriver/selenium are missing or the UI is
not built (`make ui`); see tests/fixtures/ui_browser.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fixtures.ui_browser import ADMIN_PASSWORD, ADMIN_USER, BrowserCase

MT = "application/vnd.docker.distribution.manifest.v2+json"


def sel(name: str) -> str:
    return f'[data-test="{name}"]'


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = b'{"architecture": "amd64", "os": "linux"}'
LAYER = bytes(range(256)) * 64  # 16 KiB
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": MT,
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digest_of(CONFIG),
               "size": len(CONFIG)},
    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": digest_of(LAYER),
                "size": len(LAYER)}]}).encode()


class Upstream:
    """One image (library/app:v1) on 127.0.0.1, in a thread; ``requests`` records
    (method, path)."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        blobs = {digest_of(CONFIG): CONFIG, digest_of(LAYER): LAYER}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code, body, ctype, digest=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                if digest:
                    self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?")[0]
                fake.requests.append((self.command, path))
                if path in ("/v2/", "/v2"):
                    return self.send(200, b"{}", "application/json")
                if path in ("/v2/library/app/manifests/v1", f"/v2/library/app/manifests/{digest_of(MANIFEST)}"):
                    return self.send(200, MANIFEST, MT, digest_of(MANIFEST))
                if "/blobs/" in path and path.rsplit("/", 1)[-1] in blobs:
                    d = path.rsplit("/", 1)[-1]
                    return self.send(200, blobs[d], "application/octet-stream", d)
                return self.send(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}',
                                 "application/json")

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def manifest_requests(self) -> list[str]:
        return [m for m, p in self.requests if "/manifests/" in p]


class CachePageCase(BrowserCase):
    width, height, mobile = 1366, 900, False

    def setUp(self):
        super().setUp()
        self.auth = (ADMIN_USER, ADMIN_PASSWORD)
        self.upstream = Upstream()
        self.addCleanup(self.upstream.stop)

    def api(self, method: str, path: str, body=None, status: int = 200):
        code, data = self.server.request(method, path, auth=self.auth, body=body)
        self.assertEqual(code, status, data)
        return json.loads(data) if data else None

    def pull(self, path: str) -> bytes:
        code, body = self.server.request("GET", path)
        self.assertEqual(code, 200, body[:200])
        return body

    def seed(self):
        for r in self.api("GET", "/api/registries")["items"]:
            self.api("PUT", f"/api/registries/{r['id']}", {"enabled": False})
        self.api("POST", "/api/registries", {"name": "local", "url": self.upstream.url, "priority": 10},
                 status=201)
        self.api("POST", "/api/whitelists", {"prefix": "library"}, status=201)
        for _ in range(2):  # a miss, then a hit
            self.assertEqual(self.pull("/v2/library/app/manifests/v1"), MANIFEST)
        for blob in (CONFIG, LAYER):
            self.assertEqual(self.pull(f"/v2/library/app/blobs/{digest_of(blob)}"), blob)
        self.wait().until(lambda d: self.api("GET", "/api/cache")["entries"] == 2, "both blobs cached")
        for blob in (CONFIG, LAYER):  # from the cache
            self.assertEqual(self.pull(f"/v2/library/app/blobs/{digest_of(blob)}"), blob)
        self.assertEqual(self.upstream.manifest_requests(), ["GET"])

    def not_cut(self, css: str):
        """The element shows its whole text (nothing clipped or ellipsized)."""
        el = self.find(css)
        widths = self.driver.execute_script("return [arguments[0].scrollWidth, arguments[0].clientWidth]", el)
        self.assertLessEqual(widths[0], widths[1], f"{css} is cut at {self.width} px: {widths}")

    def value(self, css: str) -> str:
        return self.find(f"{css} [data-test=value]").text.strip()

    def test_figures_invalidate_and_purge(self):
        self.seed()
        self.driver.get(self.server.base + "/")
        self.login()
        # the dashboard's tiles: hit ratio, bytes saved, pulls saved (GETs avoided)
        self.find(sel("cache-tiles"))
        self.wait().until(lambda d: self.value(sel("stat-pulls-saved")) == "1", "one manifest GET avoided")
        ratio = self.value(sel("stat-cache-hit-ratio"))
        self.assertRegex(ratio, r"^[0-9.]+ %$")
        self.assertNotEqual(ratio.split()[0].strip("0."), "")
        self.assertRegex(self.value(sel("stat-bytes-saved")), r"^[0-9.]+ KiB$")  # 16 KiB + config, sent twice
        for key in ("cache-hit-ratio", "bytes-saved", "pulls-saved"):
            self.not_cut(f"{sel('stat-' + key)} [data-test=value]")
            self.not_cut(f"{sel('stat-' + key)} .stat-label")
        self.shot("dashboard-cache-tiles")

        self.nav("cache")
        self.find(sel("cache-page"))
        self.wait().until(lambda d: self.value(sel("cache-view-gets-avoided")) == "1", "figures")
        self.assertNotEqual(self.value(sel("cache-view-hit-ratio")), "-")
        self.assertNotEqual(self.value(sel("cache-view-from-cache")), "0 B")
        self.wait_text(sel("cache-namespaces"), "docker.io")
        self.wait_text(sel("cache-images"), "library/app:v1")
        self.click(sel("sort-last-pull"))  # least recently pulled first: the same one image here
        self.wait_text(sel("cache-images"), "library/app:v1")
        self.click(sel("sort-size"))
        from selenium.webdriver.common.by import By

        # the retention rules stay on the page, at its bottom
        self.assertEqual(len(self.driver.find_elements(By.CSS_SELECTOR, f"{sel('cache-page')} > {sel('cache-rules')}:last-child")), 1)
        self.shot("cache-page")

        # a tag of the repository: invalidated from the page, revalidated at the next pull
        self.click(sel("image-library/app:v1"))
        self.wait_text(sel("cache-tags-repository"), "library/app")
        state = sel("tag-state-v1")
        self.wait().until(lambda d: self.find(state).get_attribute("data-fresh") == "true", "fresh")
        self.click(sel("invalidate-v1"))
        self.wait().until(lambda d: self.find(state).get_attribute("data-fresh") == "false", "invalidated")
        self.message("1")
        self.not_cut(f"{state}")
        self.shot("cache-tag-invalidated")
        self.assertEqual(self.pull("/v2/library/app/manifests/v1"), MANIFEST)
        self.assertEqual(self.upstream.manifest_requests(), ["GET", "HEAD"])  # revalidated, not fetched

        # the repository purged from the page: blobs, manifests and tags gone
        self.click(sel("purge-repo"))
        self.confirm()
        self.wait().until(lambda d: self.api("GET", "/api/cache")["entries"] == 0, "blobs purged")
        self.assertEqual(self.api("GET", "/api/cache/tags?repository=library/app")["tags"], [])
        self.wait().until(lambda d: "v1" not in self.find(sel("cache-tags")).text, "tag list emptied")
        self.shot("cache-repository-purged")
        self.assertEqual(self.pull("/v2/library/app/manifests/v1"), MANIFEST)
        self.assertEqual(self.upstream.manifest_requests(), ["GET", "HEAD", "GET"])  # fetched again
        purges = self.api("GET", "/api/cache/purges")["purges"]
        self.assertEqual([(p["action"], p["repository"]) for p in purges],
                         [("purge", "library/app"), ("invalidate", "library/app")])


class DesktopCachePageTests(CachePageCase):
    width, height, mobile = 1366, 900, False


class PhoneCachePageTests(CachePageCase):
    width, height, mobile = 390, 844, True


del CachePageCase  # only its sizes run
