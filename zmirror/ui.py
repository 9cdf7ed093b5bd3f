"""Serves the built web UI (``zmirror/webui``, produced from ``web/`` by Vite).

- ``/assets/<name>-<hash>.<ext>``: the hashed bundle files, cached for a year
  (``immutable``); a precompressed ``.gz`` sibling is served to clients that accept gzip.
- any other existing file (``/favicon.svg``): short caching.
- every other path (client-side routes such as ``/registries``): ``index.html`` with
  ``Cache-Control: no-store`` so a new build is picked up at once.
- a missing asset (a path under ``/assets/`` or with a file extension) is a 404, not
  ``index.html``: a stale page asking for an old bundle must not get HTML back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional
from urllib.parse import unquote

from twisted.web.resource import Resource

WEBUI_DIR = Path(__file__).parent / "webui"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".map": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8",
    ".wasm": "application/wasm",
}
COMPRESSIBLE = {".html", ".js", ".mjs", ".css", ".json", ".map", ".svg", ".txt"}

IMMUTABLE = b"public, max-age=31536000, immutable"
SHORT = b"public, max-age=3600"
NO_STORE = b"no-store"

# Same-origin only: the UI never loads anything from elsewhere. Element Plus and echarts
# set inline style attributes, hence 'unsafe-inline' for styles (not for scripts).
CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    b"object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._~@+=,-]+$")
# NAME_MAX of common file systems: a longer component names no file (stat() would fail
# with ENAMETOOLONG) and no client-side route either
MAX_SEGMENT = 255
READ_METHODS = (b"GET", b"HEAD")


class WebUI(Resource):
    """A leaf resource: it reads ``request.path`` itself, so it works the same whether
    Klein hands it ``/``, ``/registries`` or ``/assets/x.js``."""

    isLeaf = True

    def __init__(self, directory: Path = WEBUI_DIR):
        super().__init__()
        self.directory = Path(directory).resolve()
        # path -> (mtime_ns, size, bytes). The whole build is a couple of MiB: after the
        # first request a file is answered from memory, with one stat() to notice rebuilds.
        self._cache: dict[Path, tuple[int, int, bytes]] = {}

    def _read(self, path: Path) -> Optional[bytes]:
        try:
            st = path.stat()
            cached = self._cache.get(path)
            if cached is not None and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
                return cached[2]
            data = path.read_bytes()
        except OSError:
            self._cache.pop(path, None)
            return None
        self._cache[path] = (st.st_mtime_ns, st.st_size, data)
        return data

    def _relative(self, request) -> Optional[list[str]]:
        raw = request.path.decode("ascii", "replace") if isinstance(request.path, bytes) else request.path
        path = unquote(raw, errors="replace").lstrip("/")
        if not path:
            return []
        parts = path.split("/")
        if any(p in ("", ".", "..") or len(p) > MAX_SEGMENT or not _SAFE_SEGMENT.match(p)
               for p in parts):
            return None
        return parts

    def _file(self, parts: list[str]) -> Optional[Path]:
        if not parts or parts[0].startswith("."):
            return None
        candidate = self.directory.joinpath(*parts)
        try:
            resolved = candidate.resolve()
            if self.directory not in resolved.parents or not resolved.is_file():
                return None
        except (OSError, ValueError):
            # ENAMETOOLONG, EACCES, ...: whatever the file system refuses is not a file here
            return None
        return resolved

    @staticmethod
    def _common_headers(request) -> None:
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"same-origin")

    def _serve(self, request, path: Path, cache_control: bytes):
        suffix = path.suffix.lower()
        data = None
        if suffix in COMPRESSIBLE and _accepts_gzip(request):
            data = self._read(path.with_name(path.name + ".gz"))
            if data is not None:
                request.setHeader(b"Content-Encoding", b"gzip")
        if data is None:
            data = self._read(path)
            if data is None:
                return self._not_found(request)
        self._common_headers(request)
        request.setHeader(b"Content-Type", CONTENT_TYPES.get(suffix, "application/octet-stream").encode())
        request.setHeader(b"Cache-Control", cache_control)
        if suffix in COMPRESSIBLE:
            request.setHeader(b"Vary", b"Accept-Encoding")
        if suffix == ".html":
            request.setHeader(b"Content-Security-Policy", CSP)
            request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(b"Content-Length", str(len(data)).encode())
        return data

    def render(self, request):
        # Klein matches methods case-insensitively: "get" or "Head" arrive here too
        if request.method not in READ_METHODS:
            return self._error(request, 405, "method not allowed", ((b"Allow", b"GET, HEAD"),))
        return super().render(request)

    def render_GET(self, request):
        parts = self._relative(request)
        if parts:
            found = self._file(parts)
            if found is not None:
                if found == self.directory / "index.html":
                    return self._serve(request, found, NO_STORE)
                immutable = parts[0] == "assets"
                return self._serve(request, found, IMMUTABLE if immutable else SHORT)
        if parts is None or (parts and (parts[0] == "assets" or "." in parts[-1])):
            return self._not_found(request)
        return self._serve(request, self.directory / "index.html", NO_STORE)

    def render_HEAD(self, request):
        # Same headers (Content-Length included) as GET, no body.
        self.render_GET(request)
        return b""

    def _not_found(self, request) -> bytes:
        return self._error(request, 404, "not found")

    def _error(self, request, status: int, message: str, headers=()) -> bytes:
        body = json.dumps({"error": message}).encode()
        self._common_headers(request)
        for name, value in headers:
            request.setHeader(name, value)
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", NO_STORE)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body


def _accepts_gzip(request) -> bool:
    values = request.requestHeaders.getRawHeaders(b"accept-encoding") or []
    for value in values:
        for item in value.split(b","):
            name, _, params = item.strip().partition(b";")
            if name.strip().lower() in (b"gzip", b"*"):
                q = params.strip().lower()
                if q.startswith(b"q=") and q[2:].strip() in (b"0", b"0.0", b"0.00", b"0.000"):
                    continue
                return True
    return False


def ui_resource(directory: Path = WEBUI_DIR) -> Optional[Resource]:
    """The UI resource, or None when the UI has not been built (``make ui``)."""
    if not (Path(directory) / "index.html").exists():
        return None
    return WebUI(directory)
