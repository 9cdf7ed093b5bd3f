"""zmirror.ui: serving the built web UI (content types, caching, SPA fallback, gzip)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from treq.testing import StubTreq
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from zmirror.app import ZMirrorApp
from zmirror.ui import WebUI, ui_resource

INDEX = b"<!doctype html><html><body><div id=app></div><script type=module src=/assets/index-abc123.js></script></body></html>"
JS = b"console.log('zmirror');\n" * 100


def make_build(root: Path) -> Path:
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "favicon.svg").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / "assets" / "index-abc123.js").write_bytes(JS)
    (root / "assets" / "index-abc123.js.gz").write_bytes(gzip.compress(JS))
    (root / "assets" / "index-abc123.css").write_bytes(b"body{margin:0}")
    (root.parent / "secret.txt").write_bytes(b"do not serve")
    return root


class WebUITests(unittest.TestCase):
    timeout = 20

    def setUp(self):
        self.root = make_build(Path(self.mktemp()).resolve() / "webui")
        app = ZMirrorApp(None, ui=WebUI(self.root), extra={"healthz": lambda request: b"ok"})
        self.client = StubTreq(app.resource())

    @inlineCallbacks
    def get(self, path, headers=None, method="GET"):
        # static.File streams with a producer: flush StubTreq's fake transport.
        d = self.client.request(method, "http://zmirror.test" + path, headers=headers or {})
        self.client.flush()
        response = yield d
        d = response.content()
        self.client.flush()
        body = yield d
        return response, body

    @staticmethod
    def header(response, name):
        values = response.headers.getRawHeaders(name) or []
        return values[0] if values else None

    @inlineCallbacks
    def test_index_not_cached(self):
        for path in ("/", "/index.html"):
            response, body = yield self.get(path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(body, INDEX)
            self.assertEqual(self.header(response, "Content-Type"), "text/html; charset=utf-8")
            self.assertEqual(self.header(response, "Cache-Control"), "no-store")
            self.assertIn("default-src 'self'", self.header(response, "Content-Security-Policy"))

    @inlineCallbacks
    def test_client_routes_get_index(self):
        for path in ("/registries", "/logs", "/login?redirect=/users", "/some/deep/route"):
            response, body = yield self.get(path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(body, INDEX, path)
            self.assertEqual(self.header(response, "Cache-Control"), "no-store")

    @inlineCallbacks
    def test_hashed_assets_cached_long(self):
        response, body = yield self.get("/assets/index-abc123.js")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, JS)
        self.assertEqual(self.header(response, "Content-Type"), "text/javascript; charset=utf-8")
        self.assertEqual(self.header(response, "Cache-Control"), "public, max-age=31536000, immutable")
        self.assertEqual(self.header(response, "X-Content-Type-Options"), "nosniff")
        self.assertIsNone(self.header(response, "Content-Encoding"))
        response, body = yield self.get("/assets/index-abc123.css")
        self.assertEqual(self.header(response, "Content-Type"), "text/css; charset=utf-8")
        self.assertEqual(body, b"body{margin:0}")

    def render(self, path, accept_encoding=None, method=b"GET"):
        request = DummyRequest([])
        request.method = method
        request.path = path
        if accept_encoding is not None:
            request.requestHeaders.setRawHeaders(b"accept-encoding", [accept_encoding])
        body = WebUI(self.root).render(request)
        return request, body

    def test_gzip_sibling_served_when_accepted(self):
        request, body = self.render(b"/assets/index-abc123.js", b"gzip, deflate, br")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"text/javascript; charset=utf-8"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"vary"), [b"Accept-Encoding"])
        self.assertEqual(gzip.decompress(body), JS)
        for refused in (b"gzip;q=0", b"identity", None):
            request, body = self.render(b"/assets/index-abc123.js", refused)
            self.assertIsNone(request.responseHeaders.getRawHeaders(b"content-encoding"), refused)
            self.assertEqual(body, JS)
        # no .gz sibling: the plain file
        request, body = self.render(b"/assets/index-abc123.css", b"gzip")
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"content-encoding"))
        self.assertEqual(body, b"body{margin:0}")

    def test_rebuild_picked_up(self):
        ui = WebUI(self.root)
        request = DummyRequest([])
        request.path = b"/"
        self.assertEqual(ui.render(request), INDEX)
        (self.root / "index.html").write_bytes(b"<html>new build</html>")
        request = DummyRequest([])
        request.path = b"/registries"
        self.assertEqual(ui.render(request), b"<html>new build</html>")

    @inlineCallbacks
    def test_other_files_short_cache(self):
        response, body = yield self.get("/favicon.svg")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), "image/svg+xml")
        self.assertEqual(self.header(response, "Cache-Control"), "public, max-age=3600")

    @inlineCallbacks
    def test_missing_asset_is_404_not_index(self):
        for path in ("/assets/index-old999.js", "/assets/", "/missing.png"):
            response, body = yield self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertNotIn(b"<html", body)
            self.assertEqual(self.header(response, "Cache-Control"), "no-store")

    @inlineCallbacks
    def test_no_traversal(self):
        for path in ("/../secret.txt", "/assets/../../secret.txt", "/%2e%2e/secret.txt", "/assets/%2e%2e%2f%2e%2e%2fsecret.txt"):
            response, body = yield self.get(path)
            self.assertNotIn(b"do not serve", body, path)
            self.assertIn(response.code, (200, 404), path)

    def test_head(self):
        request, body = self.render(b"/assets/index-abc123.js", method=b"HEAD")
        self.assertEqual(body, b"")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [str(len(JS)).encode()])

    @inlineCallbacks
    def test_extra_handlers_win(self):
        response, body = yield self.get("/healthz")
        self.assertEqual(body, b"ok")

    def test_ui_resource_none_when_not_built(self):
        empty = Path(self.mktemp())
        empty.mkdir()
        self.assertIsNone(ui_resource(empty))
        self.assertIsInstance(ui_resource(self.root), WebUI)

    @inlineCallbacks
    def test_overlong_names_are_json_404(self):
        # a component over NAME_MAX (255 bytes) must not reach stat() (ENAMETOOLONG, a 500)
        self.flushLoggedErrors()
        for path in ("/" + "a" * 256, "/assets/" + "a" * 300 + ".js", "/" + "a" * 300 + ".png",
                     "/registries/" + "b" * 5000, "/assets/" + "a" * 250 + ".js"):
            response, body = yield self.get(path, headers={"Accept-Encoding": "gzip"})
            self.assertEqual(response.code, 404, path[:40])
            self.assertEqual(json.loads(body), {"error": "not found"})
            self.assertEqual(self.header(response, "Content-Type"), "application/json; charset=utf-8")
        # a deep client route longer than PATH_MAX is no file: the SPA page, not an error
        response, body = yield self.get("/" + "/".join(["c" * 200] * 30))
        self.assertEqual((response.code, body), (200, INDEX))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_lookup_errors_are_404(self):
        # any OSError from the file system (permissions, a name the OS refuses) is a miss
        ui = WebUI(self.root)

        def broken(*a, **kw):
            raise PermissionError(13, "Permission denied")

        self.patch(Path, "is_file", broken)
        self.assertIsNone(ui._file(["favicon.svg"]))
        self.assertIsNone(ui._file(["x" * 1000]))

    def test_other_methods_are_json_405(self):
        # Klein matches methods case-insensitively, so "get" reaches the UI resource,
        # where twisted.web answered 501 with an HTML page
        for method in (b"get", b"Head", b"POST", b"PROPFIND"):
            request, body = self.render(b"/registries", method=method)
            self.assertEqual(request.responseCode, 405, method)
            self.assertEqual(json.loads(body), {"error": "method not allowed"})
            self.assertEqual(request.responseHeaders.getRawHeaders(b"allow"), [b"GET, HEAD"])
            self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                             [b"application/json; charset=utf-8"])

    @inlineCallbacks
    def test_other_methods_through_the_app(self):
        for method in ("POST", "DELETE", "OPTIONS"):
            response, body = yield self.get("/registries", method=method)
            self.assertEqual(response.code, 405, method)
            self.assertIn("error", json.loads(body))
            self.assertEqual(sorted(self.header(response, "Allow").split(", ")), ["GET", "HEAD"])  # kept from Klein
