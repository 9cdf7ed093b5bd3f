"""The audit trail on the admin API: :class:`AuditRecorder` (what the route wrapper of
:class:`zmirror.admin.api.AdminAPI` calls around every successful change — one place
for every route) and :class:`AuditHandlers` (``GET /api/audit``).

A change is a non-GET route whose action is not ``None``.  Its action is the route's
declared ``audit`` name, or one derived from the path and method
(``PUT /registries/<rid>`` → ``registry.update``, ``POST /sync/jobs/<jid>/run`` →
``sync.job.run``, ``PUT /me/password`` → ``admin.password``); its target is the path
with its ids (``registries/3``; a create adds the new row's id); ``before`` is what the
GET route of the same item path (``/registries/<rid>``) answered just before the change, ``after`` the handler's
answer (or the request's body when the answer is not an object).  Secrets are masked
by :func:`zmirror.db.auditlog.mask` before anything is stored.

Design: docs/design/admin.md ("Audit trail").
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional
from urllib.parse import urlencode

from twisted.logger import Logger

from zmirror.admin.http import Route, maybe, route
from zmirror.admin.validate import Invalid, query
from zmirror.db.auditlog import LIMIT_DEFAULT, LIMIT_MAX, AuditFilter

log = Logger()

# path segments → the singular noun of an action
_NOUNS = {"registries": "registry", "users": "user", "whitelists": "whitelist",
          "lockouts": "lockout", "jobs": "job", "runs": "run", "rules": "rule", "pins": "pin",
          "me": "admin"}
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}
# a last path segment that names what a POST/PUT does
_VERB_SEGMENTS = {"run", "cancel", "invalidate", "password", "test", "dry-run"}
# ... and those that change nothing (probes, previews): never recorded
_READ_ONLY = {"test", "dry-run"}
MAX_FIELD = 200


def action_of(spec: Route) -> Optional[str]:
    """The action a route records, or None (reads, probes, previews)."""
    if spec.audit is not None:
        return spec.audit or None
    if set(spec.methods) <= {"GET", "HEAD"}:
        return None
    parts = spec.path.strip("/").split("/")
    if parts[-1] in _VERB_SEGMENTS:
        if parts[-1] in _READ_ONLY:
            return None
        verb, parts = parts[-1], parts[:-1]
    else:
        verb = _VERBS.get(spec.methods[0], spec.methods[0].lower())
    nouns = [_NOUNS.get(p, p) for p in parts if not p.startswith("<")]
    return ".".join(nouns + [verb])


def target_of(spec: Route, kw: dict, request: Any, result: Any) -> str:
    """``registries/3``: the path with its ids, without a trailing verb segment; the new
    row's id on a create; the query string (a purge's scope) when the path has no id."""
    parts = spec.path.strip("/").split("/")
    if parts[-1] in _VERB_SEGMENTS:
        parts = parts[:-1]
    out = [str(kw.get(p[1:-1], p)) if p.startswith("<") else p for p in parts]
    body = result[1] if isinstance(result, tuple) and len(result) == 2 else result
    if not kw and "POST" in spec.methods and isinstance(body, dict) and "id" in body:
        out.append(str(body["id"]))
    target = "/".join(out)
    args = _args(request)
    if args and not kw:
        target += "?" + urlencode(sorted(args.items()))
    return target[:MAX_FIELD * 2]


def _args(request: Any) -> dict:
    out = {}
    for k, values in (getattr(request, "args", None) or {}).items():
        try:
            out[k.decode("utf-8")] = values[-1].decode("utf-8") if values else ""
        except (UnicodeDecodeError, AttributeError):
            continue
    return out


def _body(request: Any) -> Any:
    try:
        request.content.seek(0)
        raw = request.content.read()
        return json.loads(raw) if raw else None
    except Exception:
        return None


class AuditRecorder:
    """Records the admin API's changes in ``store`` (:class:`zmirror.db.auditlog.AuditStore`;
    None: nothing is recorded).  ``getters``: ``{path: GET handler}`` (the before)."""

    def __init__(self, store: Any, getters: dict[str, Callable]):
        self.store = store
        self.getters = getters

    def action(self, spec: Route) -> Optional[str]:
        return action_of(spec) if self.store is not None else None

    async def before(self, spec: Route, request: Any, kw: dict) -> Any:
        """What the GET route of the same path answers now (None without one, or when it
        fails: the change itself then answers the error)."""
        getter = self.getters.get(spec.path)
        if getter is None or not kw or not {"PUT", "PATCH", "DELETE"} & set(spec.methods):
            return None
        try:
            got = await maybe(getter(request, **kw))
        except Exception:
            return None
        return got[1] if isinstance(got, tuple) else got

    async def record(self, *, action: str, spec: Route, request: Any, kw: dict, actor: str,
                     client_ip: str, before: Any, result: Any) -> None:
        """One row; a failure to write it is logged, never turned into the answer."""
        status = result[0] if isinstance(result, tuple) else 200
        if status >= 400:
            return
        body = result[1] if isinstance(result, tuple) else result
        if isinstance(body, dict):
            after = body
        else:  # a delete's answer is its after, if any; a change without one: the request
            after = None if "DELETE" in spec.methods else _body(request)
        try:
            await self.store.append(actor=actor, action=action,
                                    target=target_of(spec, kw, request, result),
                                    before=before, after=after, client_ip=client_ip)
        except Exception:
            log.failure("audit: could not record {action} by {actor}", action=action, actor=actor)


AUDIT_QUERY = ("actor", "action", "target", "since", "until", "limit", "offset")


def _number(value: str, field: str, errors: dict, lo: float, hi: float, integer: bool):
    try:
        n = int(value) if integer else float(value)
    except ValueError:
        errors[field] = "must be an integer" if integer else "must be a Unix time in seconds"
        return None
    if not (lo <= n <= hi):  # NaN too
        errors[field] = f"must be between {lo:g} and {hi:g}"
        return None
    return n


def audit_query(request: Any) -> tuple[AuditFilter, int, int]:
    """The filters, limit and offset of ``GET /api/audit``; a 400 with field errors."""
    q = query(request, AUDIT_QUERY)
    errors: dict[str, str] = {}
    texts = {}
    for field in ("actor", "action", "target"):
        if field in q:
            v = q[field]
            if not v or len(v) > MAX_FIELD or any(ord(c) < 32 for c in v):
                errors[field] = f"must be 1 to {MAX_FIELD} printable characters"
            else:
                texts[field] = v
    since = _number(q["since"], "since", errors, 0, 1e11, False) if "since" in q else None
    until = _number(q["until"], "until", errors, 0, 1e11, False) if "until" in q else None
    limit = _number(q["limit"], "limit", errors, 1, LIMIT_MAX, True) if "limit" in q else None
    offset = _number(q["offset"], "offset", errors, 0, 10**9, True) if "offset" in q else None
    if since is not None and until is not None and until < since:
        errors["until"] = "must not be before since"
    if errors:
        raise Invalid("invalid query", errors)
    return (AuditFilter(since=since, until=until, **texts),
            LIMIT_DEFAULT if limit is None else limit, offset or 0)


class AuditHandlers:
    """``GET /api/audit``: the audit trail, newest first (``store`` None: empty)."""

    def __init__(self, store: Any):
        self.store = store

    @route("/audit", ["GET"])
    async def list_all(self, request):
        flt, limit, offset = audit_query(request)
        if self.store is None:
            return {"entries": [], "total": 0}
        return await maybe(self.store.list(flt, limit, offset))


__all__ = ["AuditRecorder", "AuditHandlers", "action_of", "target_of", "audit_query"]
