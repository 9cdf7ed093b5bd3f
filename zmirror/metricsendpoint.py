"""The HTTP endpoints of the metrics: ``/metrics`` on the main port
(:class:`MetricsEndpoint`, following ``[metrics] access``: the admin's Basic
login, open, or off) and the separate, unauthenticated ``[metrics] listen``
endpoint (:func:`metrics_listen_service`).  The metrics themselves are
:class:`zmirror.metrics.Metrics`; design: docs/design/operations.md.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource

from zmirror.auth.adminaccount import (AccountError, DefaultPasswordInUse, basic_credentials,
                                       refusal_answer)
from zmirror.auth.lockout import Locked
from zmirror.metrics import Metrics
from zmirror.net import TrustedProxies, client_ip

log = Logger()

ACCESS_MODES = ("admin", "open", "off")


def _send(request, status: int, body: bytes, content_type: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


def _json_error(request, status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return _send(request, status, body, b"application/json; charset=utf-8")


def render_metrics(request, metrics: Metrics) -> bytes:
    """The exposition of ``metrics`` as the answer to ``request`` (a JSON 500 if it fails)."""
    try:
        body = metrics.exposition()
    except Exception:
        log.failure("metrics: exposition failed")
        return _json_error(request, 500, "internal error")
    return _send(request, 200, body, CONTENT_TYPE_LATEST.encode())


class MetricsEndpoint:
    """``/metrics`` on the main port (one of ``ZMirrorApp``'s top-level handlers).

    ``admin``: HTTP Basic with the admin ``account``
    (:class:`~zmirror.auth.adminaccount.AdminAccount`, lockout included; the
    client address from ``trusted``); ``open``: no check; ``off``: 404.
    :meth:`reload` switches the mode live.
    """

    def __init__(self, metrics: Metrics, access: str = "admin", account: Any = None,
                 trusted: Any = None):
        if access not in ACCESS_MODES:
            raise ValueError(f"unknown metrics access mode {access!r}")
        self.metrics = metrics
        self.access = access
        self.account = account
        self.trusted = trusted if trusted is not None else TrustedProxies()

    def reload(self, config: Any) -> None:
        self.access = config.metrics.access

    def __call__(self, request):
        if self.access == "off":
            return _json_error(request, 404, "not found")
        if self.access == "open":
            return render_metrics(request, self.metrics)
        if self.account is None:
            return _json_error(request, 404, "not found")
        return Deferred.fromCoroutine(self._admin_only(request))

    async def _admin_only(self, request) -> bytes:
        account = self.account
        try:
            username, password = basic_credentials(request)
            await account.authenticate(username, password, client_ip(request, self.trusted))
            # the same gate as /api: nothing but the password change with the default password
            if account.default_password_in_use(password):
                raise DefaultPasswordInUse()
        except (AccountError, Locked) as e:
            return _refused(request, e)
        return render_metrics(request, self.metrics)


def _refused(request, e: Exception) -> bytes:
    """A refused admin login, answered as the admin API answers it."""
    status, headers, extra = refusal_answer(e)
    for name, value in headers.items():
        request.setHeader(name, value)
    body = json.dumps({"error": e.message, "fields": {}, **extra},
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _send(request, status, body, b"application/json; charset=utf-8")


class MetricsResource(Resource):
    """The separate ``[metrics] listen`` endpoint: ``/metrics`` only, no auth."""

    isLeaf = True

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        if request.path.rstrip(b"/") != b"/metrics":
            return _json_error(request, 404, "not found")
        return render_metrics(request, self.metrics)

    render_HEAD = render_GET


def metrics_listen_service(description: str, metrics: Metrics, reactor: Any):
    """A service listening on ``description`` (a Twisted endpoint string).

    Raises :class:`~zmirror.config.ConfigError` for an invalid description.
    """
    from twisted.application import strports
    from twisted.web.server import Site

    from zmirror.config import ConfigError

    site = Site(MetricsResource(metrics), reactor=reactor)
    site.displayTracebacks = False
    site.log = lambda request: None  # scrapes every few seconds: keep them out of the log
    try:
        return strports.service(description, site, reactor=reactor)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"metrics.listen: invalid endpoint {description!r}: {e}") from None


__all__ = ["ACCESS_MODES", "MetricsEndpoint", "MetricsResource", "metrics_listen_service",
           "render_metrics"]
