"""The HTTP surface: one Klein app whose routes delegate to the parts.

- ``/v2/``            registry ping and pull endpoints   (zmirror.registry.routes)
- ``/token``          token service for docker login      (zmirror.auth, access-control issue)
- ``/api/...``        admin API                           (zmirror.admin)
- ``/healthz`` ...    health and metrics                  (operations issue)
- ``/``               the built web UI                    (web/, packaged as zmirror/webui)

Every part is injected; a part left as None answers 404 (or 503 for /v2/).
"""

from __future__ import annotations

import json
from typing import Any, Optional

from klein import Klein
from twisted.web.resource import Resource

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def not_found(request, message: str = "not found") -> bytes:
    body = json.dumps({"error": message}).encode()
    request.setResponseCode(404)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


class ZMirrorApp:
    app = Klein()

    def __init__(
        self,
        registry: Any,
        *,
        token: Any = None,
        admin: Optional[Resource] = None,
        ui: Optional[Resource] = None,
        extra: Optional[dict[str, Any]] = None,
    ):
        self.registry = registry
        self.token = token
        self.admin = admin
        self.ui = ui
        # name -> handler(request) for small top-level endpoints (/healthz, /readyz, /metrics)
        self.extra = dict(extra or {})

    def resource(self) -> Resource:
        return self.app.resource()

    @app.route("/v2", methods=ALL_METHODS)
    @app.route("/v2/", methods=ALL_METHODS)
    def v2_ping(self, request):
        return self.registry.ping(request)

    @app.route("/v2/<path:rest>", methods=ALL_METHODS)
    def v2(self, request, rest):
        # ``rest`` is Klein's decoded view; the registry parses the raw path itself.
        return self.registry.handle(request)

    @app.route("/token", methods=ALL_METHODS)
    def token_endpoint(self, request):
        if self.token is None:
            return not_found(request)
        return self.token.handle(request)

    @app.route("/api", branch=True, methods=ALL_METHODS)
    @app.route("/api/", branch=True, methods=ALL_METHODS)
    def api(self, request):
        if self.admin is None:
            return not_found(request)
        return self.admin

    @app.route("/<string:name>", methods=["GET", "HEAD"])
    def top_level(self, request, name):
        handler = self.extra.get(name)
        if handler is not None:
            return handler(request)
        return self._ui(request)

    @app.route("/", branch=True, methods=["GET", "HEAD"])
    def ui_root(self, request):
        return self._ui(request)

    def _ui(self, request):
        if self.ui is None:
            return not_found(request, "web UI not built")
        return self.ui

    @app.handle_errors(Exception)
    def _unexpected(self, request, failure):
        # Klein's own 404/405 and anything unexpected: JSON, never a traceback page.
        from werkzeug.exceptions import HTTPException

        exc = failure.value
        if isinstance(exc, HTTPException):
            code, message = exc.code or 500, exc.name.lower()
            # keep what the answer needs: Allow on a 405, Location on a redirect
            try:
                extra = exc.get_response().headers
            except Exception:  # pragma: no cover - werkzeug builds these from its own data
                extra = {}
            for name in ("Allow", "Location"):
                value = extra.get(name)
                if value:
                    request.setHeader(name.encode(), value.encode("latin-1", "replace"))
        else:
            from twisted.logger import Logger

            Logger().failure("unhandled error", failure=failure)
            code, message = 500, "internal error"
        body = json.dumps({"error": message}).encode()
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body
