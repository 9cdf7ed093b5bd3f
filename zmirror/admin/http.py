"""The admin API's HTTP plumbing: route declarations, JSON answers, and the
error answers (``{"error", "fields"}``) of the stores' and the admin account's
refusals.  The route groups (session, registries, …) only declare routes and
return plain values; :class:`zmirror.admin.api.AdminAPI` serves them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any, Callable, Iterator, Optional

from twisted.logger import Logger

from zmirror.admin.validate import ApiError, Invalid, check, invalid, json_body
from zmirror.app import klein_failure
from zmirror.auth.adminaccount import AccountError, PasswordRefused, refusal_answer
from zmirror.auth.lockout import Locked

log = Logger()


@dataclass(frozen=True)
class Route:
    path: str  # relative to /api
    methods: tuple[str, ...]
    # answers while the admin password is still the default (every other route: 403)
    with_default_password: bool = False
    # the audit trail's action of a change (None: derived from path and method, "": not
    # recorded; zmirror.admin.audit.action_of)
    audit: Optional[str] = None


def route(path: str, methods: list[str], *, with_default_password: bool = False,
          audit: Optional[str] = None):
    """Declares a handler method of a route group: a route that requires the admin
    and answers JSON (the handler returns ``obj`` → 200, ``(status, obj)``, or
    ``None`` → 204); ``audit``: the action a successful change records."""

    def mark(f: Callable) -> Callable:
        f.admin_route = Route(path, tuple(methods), with_default_password, audit)
        return f

    return mark


def routes_of(group: Any) -> Iterator[tuple[Route, Callable]]:
    """``(route, bound handler)`` of every method of ``group`` marked by :func:`route`,
    in the order of their definition."""
    for name, f in vars(type(group)).items():
        spec = getattr(f, "admin_route", None)
        if isinstance(spec, Route):
            yield spec, getattr(group, name)


async def maybe(x: Any) -> Any:
    return (await x) if isawaitable(x) else x


def need(part: Any, what: str) -> Any:
    """``part``, or a 503 when the API was built without it."""
    if part is None:
        raise ApiError(503, f"{what} are not available")
    return part


def update_values(request: Any, fields: Any, rid: Optional[int] = None) -> tuple[int, dict]:
    """``(id, values)`` of an update's JSON body: ``id`` is the URL's ``rid`` (the body's
    ``id``, if any, must match it), or, without ``rid``, the body's (required); the other
    fields must not be empty."""
    values = check(json_body(request), fields, partial=True)
    if rid is None:
        if "id" not in values:
            raise Invalid("invalid input: id required", {"id": "required"})
        rid = values.pop("id")
    elif "id" in values and values.pop("id") != rid:
        raise Invalid("invalid input: id does not match the URL",
                      {"id": "does not match the URL"})
    if not values:
        raise Invalid("nothing to update", {})
    return rid, values


async def store_call(method: Callable, values: dict, field_for_value_error: str) -> Any:
    """Call a store method; a ValueError from the store's own validation → 400 on a field."""
    try:
        return await maybe(method(**values))
    except ValueError as e:
        field = getattr(e, "field", None) or field_for_value_error
        raise invalid({field: str(e)}) from None


# --- answers ------------------------------------------------------------------------------


def send(request: Any, status: int, obj: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    if obj is None:
        request.setHeader(b"Content-Length", b"0")
        return b""
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


def answer(request: Any, result: Any) -> bytes:
    """A handler's result: ``obj`` → 200, ``(status, obj)``, ``None`` → 204."""
    if result is None:
        return send(request, 204, None)
    if isinstance(result, tuple):
        return send(request, *result)
    return send(request, 200, result)


def error(request: Any, e: ApiError) -> bytes:
    for k, v in e.headers.items():
        request.setHeader(k, v)
    return send(request, e.status, e.body())


def account_refusal(e: AccountError | Locked) -> ApiError:
    """The answer to a refusal of the admin account (:class:`AccountError`) or to a
    :class:`Locked` login."""
    if isinstance(e, PasswordRefused):
        return Invalid(e.message, {e.field: e.reason})
    status, headers, extra = refusal_answer(e)
    return ApiError(status, e.message, headers=headers, extra=extra)


def klein_error(request: Any, failure: Any) -> bytes:
    """Klein's own 404/405 (unknown route or method) and anything unexpected."""
    status, message = klein_failure(failure, log, "admin API: unhandled error")
    return send(request, status, {"error": message, "fields": {}})
