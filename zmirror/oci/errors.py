"""Registry errors in the distribution spec's JSON format.

``{"errors": [{"code": "...", "message": "...", "detail": ...}]}``
Raise :class:`RegistryError` anywhere below the routes; the route layer renders it.

What is rendered goes to anyone who can reach ``/v2/``, anonymous clients
included: ``message`` and ``detail`` may only describe the client's own request
(its name, tag, digest, the access it lacks), never upstream registries (their
names, hosts, ports or answers).  Those go in ``internal``, which is kept for
logs and the admin side and never rendered.
"""

from __future__ import annotations

import json
from typing import Any

API_VERSION_HEADER = (b"Docker-Distribution-API-Version", b"registry/2.0")

# code -> (HTTP status, default message)
CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_INVALID": (400, "blob upload invalid"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "TAG_INVALID": (400, "manifest tag did not match URI"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (405, "The operation is unsupported."),
    "TOOMANYREQUESTS": (429, "too many requests"),
    "RANGE_INVALID": (416, "requested range not satisfiable"),
    "NOT_FOUND": (404, "not found"),
    "UNAVAILABLE": (503, "service unavailable"),
    "UPSTREAM_ERROR": (502, "upstream registry error"),
    "BAD_REQUEST": (400, "bad request"),
}


class RegistryError(Exception):
    """An error answer: status, code, message, optional detail and extra headers."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[bytes, bytes] | None = None,
        internal: Any = None,
    ):
        default_status, default_message = CODES.get(code, (500, code.lower()))
        self.code = code
        self.message = message or default_message
        self.detail = detail  # rendered to the client
        self.internal = internal  # never rendered: what upstreams answered, for logs and admins
        self.status = status or default_status
        self.headers = dict(headers or {})
        super().__init__(f"{self.status} {code}: {self.message}")

    def body(self) -> bytes:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            err["detail"] = self.detail
        return json.dumps({"errors": [err]}).encode()


def render_error(request, err: RegistryError) -> bytes:
    """Set status and headers on ``request`` and return the JSON body."""
    request.setResponseCode(err.status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(*API_VERSION_HEADER)
    request.setHeader(b"Cache-Control", b"no-store")
    for k, v in err.headers.items():
        request.setHeader(k, v)
    body = err.body()
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body
