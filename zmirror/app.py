"""The HTTP surface: one Klein app whose routes delegate to the parts.

- ``/v2/``            registry ping and pull endpoints   (zmirror.registry.routes)
- ``/token``          token service for docker login      (zmirror.auth.tokenservice)
- ``/api/...``        admin API                           (zmirror.admin)
- ``/healthz`` ...    health and metrics                  (zmirror.health, zmirror.metricsendpoint)
- ``/``               the built web UI                    (web/, packaged as zmirror/webui)

Every part is injected; a part left as None answers 404 (or 503 for /v2/).
"""

from __future__ import annotations

import json
from typing import Any, Optional

from klein import Klein
from twisted.logger import Logger
from twisted.web.resource import Resource

log = Logger()

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def no_redirects(app: Klein) -> Klein:
    """Stop werkzeug's merge_slashes redirects on ``app``.

    With ``merge_slashes`` werkzeug answers ``/v2//x`` with a 308 to ``/v2/x``,
    its ``Location`` built from the client's Host header (bypassing
    ``external_url`` and ``trusted_proxies``); without it such a path is an
    ordinary 404 (or 405).  The other routing redirect (``strict_slashes``:
    ``/a`` to ``/a/`` when only ``/a/`` is a rule) is answered 404 by the error
    handlers (:func:`is_routing_redirect`)."""
    app.url_map.merge_slashes = False
    return app


def is_routing_redirect(exc: Exception) -> bool:
    from werkzeug.routing import RequestRedirect

    return isinstance(exc, RequestRedirect)


def klein_failure(failure: Any, logger: Logger, what: str) -> tuple[int, str]:
    """``(status, message)`` for what a Klein error handler got: Klein's own 404/405,
    a routing redirect as a 404 (never a Location built from the Host header: an
    unknown path), anything else logged on ``logger`` as ``what`` and a 500."""
    from werkzeug.exceptions import HTTPException

    exc = failure.value
    if is_routing_redirect(exc):
        return 404, "not found"
    if isinstance(exc, HTTPException):
        return exc.code or 500, exc.name.lower()
    logger.failure(what, failure=failure)
    return 500, "internal error"


def not_found(request, message: str = "not found") -> bytes:
    body = json.dumps({"error": message}).encode()
    request.setResponseCode(404)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


class ZMirrorApp:
    app = no_redirects(Klein())

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
        # /v2//x and /api//x match no route of theirs (a path converter takes no leading
        # slash) and land here: they get their own area's answer, not the UI's
        path = request.path or b""
        if path.startswith(b"/v2/"):
            return self.registry.handle(request)
        if path.startswith(b"/api/"):
            body = not_found(request)
            body = json.dumps({**json.loads(body), "fields": {}}).encode()
            request.setHeader(b"Content-Length", str(len(body)).encode())
            return body
        return self._ui(request)

    def _ui(self, request):
        if self.ui is None:
            return not_found(request, "web UI not built")
        return self.ui

    @app.handle_errors(Exception)
    def _unexpected(self, request, failure):
        # Klein's own 404/405 and anything unexpected: JSON, never a traceback page.
        from werkzeug.exceptions import HTTPException

        code, message = klein_failure(failure, log, "unhandled error")
        exc = failure.value
        if isinstance(exc, HTTPException) and not is_routing_redirect(exc):
            # keep what the answer needs: Allow on a 405
            try:
                extra = exc.get_response().headers
            except Exception:  # pragma: no cover - werkzeug builds these from its own data
                extra = {}
            value = extra.get("Allow")
            if value:
                request.setHeader(b"Allow", value.encode("latin-1", "replace"))
        path = request.path or b""
        if path == b"/v2" or path.startswith(b"/v2/"):
            # under /v2 (e.g. /v2//x, no route matches): the registry error format
            from zmirror.oci.errors import RegistryError, render_error

            reg_code = {404: "NOT_FOUND", 405: "UNSUPPORTED"}.get(code, "UNAVAILABLE" if code >= 500
                                                                else "BAD_REQUEST")
            return render_error(request, RegistryError(reg_code, message, status=code))
        doc: dict[str, Any] = {"error": message}
        if path == b"/api" or path.startswith(b"/api/"):
            doc["fields"] = {}  # the admin API's error format (e.g. /api//x)
        body = json.dumps(doc).encode()
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body
