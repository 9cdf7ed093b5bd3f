"""Thin Klein-facing handlers for ``/v2/``: parse, authorize, call the proxy core.

Each handler parses the path once (``reference.parse_path``), asks the policy
who may pull it, and hands the parsed request to the proxy core, which answers
with a result object that knows how to send itself.  Errors are rendered in the
registry JSON format; nothing below may leak a traceback to the client.
"""

from __future__ import annotations

import re
from inspect import isawaitable
from dataclasses import dataclass, field
from typing import Any, Optional

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from zmirror.accesslog import AccessRecord
from zmirror.identity import AllowAll, Identity
from zmirror.net import TrustedProxies, client_ip, request_host
from zmirror.oci.errors import API_VERSION_HEADER, RegistryError, render_error
from zmirror.oci.names import namespace_of
from zmirror.registry.interfaces import IPullService
from zmirror.registry.routing import RoutingTable
from zmirror.oci.reference import RegistryPath, parse_path

log = Logger()

READ_METHODS = (b"GET", b"HEAD")


@dataclass
class PullRequest:
    """What the proxy core needs to know about one pull request."""

    path: RegistryPath
    method: bytes
    accept: list[str] = field(default_factory=list)
    range: Optional[str] = None
    query: dict[bytes, list[bytes]] = field(default_factory=dict)
    identity: Identity = field(default_factory=Identity)
    record: Optional[AccessRecord] = None
    base_url: str = ""
    # the repository as the client named it (path and ?ns=), for links back to us
    link_name: str = ""
    link_ns: Optional[str] = None

    @property
    def head(self) -> bool:
        return self.method == b"HEAD"


# an Accept item we pass on to upstreams: a media range (RFC 9110 12.5.1) in printable ASCII
_MEDIA_RANGE = re.compile(
    r"(\*/\*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/(\*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}))"
    r"(\s*;[\x20-\x7e\t]*)?")
MAX_ACCEPT_ITEMS = 64


def merged_accept(request) -> list[str]:
    """All ``Accept`` header lines merged into one ordered, de-duplicated list.

    Only well-formed media ranges are kept (at most ``MAX_ACCEPT_ITEMS``): the
    list is sent on to upstream registries, which must not see a client's junk.
    """
    out: list[str] = []
    for line in request.requestHeaders.getRawHeaders(b"accept") or []:
        for item in line.decode("latin-1").split(","):
            item = item.strip()
            if item and item not in out and _MEDIA_RANGE.fullmatch(item):
                out.append(item)
                if len(out) >= MAX_ACCEPT_ITEMS:
                    return out
    return out


class RegistryRoutes:
    """The ``/v2/`` handlers, bound to a proxy core, a policy and an access log."""

    def __init__(self, proxy: Optional[IPullService], *, policy: Any = None, accesslog: Any = None,
                 clock: Any, trusted: TrustedProxies | None = None, base_url=None,
                 routing: RoutingTable | None = None):
        self.proxy = proxy
        # request → (namespace, repository): path prefix, ?ns=, Host (zmirror.oci.names)
        self.routing = routing or RoutingTable()
        self.policy = policy or AllowAll()
        self.accesslog = accesslog
        self.clock = clock
        self.trusted = trusted or TrustedProxies()
        self._base_url = base_url

    async def ping(self, request) -> bytes:
        request.setHeader(*API_VERSION_HEADER)
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            if request.method not in READ_METHODS:
                raise RegistryError("UNSUPPORTED", "method not allowed", status=405)
            await self.policy.authorize_ping(request)
        except RegistryError as e:
            return render_error(request, e)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"2")
        return b"{}"

    async def handle(self, request):
        """Any path under /v2/ other than the ping."""
        started = self.clock.seconds()
        rec: Optional[AccessRecord] = None
        try:
            raw: list[str] = []
            ns = _ns_arg(request)
            host = request_host(request, self.trusted)

            def resolve(name: str):
                raw.append(name)
                return self.routing.resolve(name, host=host, ns=ns)

            path = parse_path(request.path, resolve)
            rec = self._record(request, path, started)
            if request.method not in READ_METHODS:
                raise RegistryError("UNSUPPORTED", "this is a pull-only proxy", status=405)
            identity = await self.policy.authorize(request, path)
            rec.username = identity.username or ""
            pull = PullRequest(
                path=path,
                method=request.method,
                accept=merged_accept(request),
                range=_header(request, b"range"),
                query=request.args,
                identity=identity,
                record=rec,
                base_url=self._base_url(request) if self._base_url else "",
                # links back to us name the repository as this client addressed it
                link_name=raw[0] if raw and (ns is not None or self.routing.by_host(host)) else path.name,
                link_ns=ns,
            )
            if self.proxy is None:
                raise RegistryError("UNAVAILABLE", "no proxy core configured")
            result = await self.proxy.pull(pull)
            request.setHeader(*API_VERSION_HEADER)
            out = result.send(request)
            if isawaitable(out):
                out = await out
            return out
        except CancelledError:
            raise  # the client went away; Klein cancelled us
        except RegistryError as e:
            if rec is not None and e.status in (401, 403):
                rec.kind = "denied"
            if rec is not None and not rec.username:  # a refused login: the name it tried
                rec.username = getattr(e, "attempted_user", "")
            return render_error(request, e)
        except Exception:
            log.failure("unexpected error handling {method} {path}",
                        method=request.method, path=request.path)
            return render_error(request, RegistryError("UNAVAILABLE", "internal error", status=500))

    def _record(self, request, path: RegistryPath, started: float) -> Optional[AccessRecord]:
        rec = AccessRecord(
            created_at=started,
            client_ip=client_ip(request, self.trusted),
            method=request.method.decode("ascii", "replace"),
            repository=path.name,
            namespace=namespace_of(path.name),
            reference=path.reference,
            kind=path.kind,
            user_agent=(_header(request, b"user-agent") or "")[:300],
        )
        if self.accesslog is not None:
            request.notifyFinish().addBoth(self._finished, request, rec)
        return rec

    def _finished(self, result, request, rec: AccessRecord):
        rec.status = request.code
        rec.bytes = request.sentLength
        rec.duration_ms = round((self.clock.seconds() - rec.created_at) * 1000.0, 3)
        try:
            self.accesslog.record(rec)
        except Exception:
            log.failure("access log record failed")
        return None


def _ns_arg(request) -> Optional[str]:
    """containerd's ``?ns=<registry host>`` (the first one), or None."""
    values = (request.args or {}).get(b"ns")
    if not values:
        return None
    try:
        return values[0].decode("ascii")
    except UnicodeDecodeError:
        raise RegistryError("NAME_INVALID", "invalid ns parameter") from None


def _header(request, name: bytes) -> Optional[str]:
    v = request.getHeader(name)
    return v.decode("latin-1") if v is not None else None


# registry error code of an answer the HTTP channel gives on /v2 without routing
_CHANNEL_CODES = {405: "UNSUPPORTED", 413: "SIZE_INVALID", 429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}


def channel_error(status: int, message: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A refusal of the HTTP channel under ``/v2`` (body too large, read deadline,
    malformed request …) in the registry error format: ``(body, headers)``."""
    err = RegistryError(_CHANNEL_CODES.get(status, "BAD_REQUEST"), message, status=status)
    return err.body(), [API_VERSION_HEADER]


__all__ = ["RegistryRoutes", "PullRequest", "channel_error"]
