"""``/api/logs`` and ``/api/stats``: the access log, its filters, and the statistics."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from zmirror.admin.http import maybe, route
from zmirror.admin.validate import invalid, q_int, q_time, query
from zmirror.config import node_name_problem
from zmirror.db.accesslogs import KINDS, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, LogFilter, parse_status
from zmirror.oci.names import normalize_namespace

log = Logger()

LIST_PARAMS = ("page", "page_size", "from", "to", "username", "client_ip", "repository", "status",
               "kind", "namespace", "node")


def _texts(params: dict, errors: dict[str, str]) -> dict[str, str]:
    """The text filters: namespace, node, username, client address, repository."""
    texts = {}
    if params.get("namespace", "").strip():
        try:
            texts["namespace"] = normalize_namespace(params["namespace"])
        except ValueError as e:
            errors["namespace"] = str(e)
    if params.get("node", "").strip():
        problem = node_name_problem(params["node"].strip())
        if problem is not None:
            errors["node"] = problem
        texts["node"] = params["node"].strip()
    for key in ("username", "client_ip", "repository"):
        v = params.get(key)
        if v is not None and v.strip():
            if len(v) > 255:
                errors[key] = "must be at most 255 characters"
            texts[key] = v.strip()
    return texts


def log_filter(params: dict, errors: dict[str, str]) -> LogFilter:
    """The filter of ``GET /api/logs``; problems go to ``errors``."""
    since = q_time(params, "from", errors)
    until = q_time(params, "to", errors)
    status = status_class = None
    if params.get("status", "").strip():
        try:
            status, status_class = parse_status(params["status"])
        except ValueError as e:
            errors["status"] = str(e)
    kind = params.get("kind", "").strip() or None
    if kind is not None and kind not in KINDS:
        errors["kind"] = "must be one of " + ", ".join(KINDS)
    texts = _texts(params, errors)
    if since is not None and until is not None and until < since:
        errors["to"] = "must not be before from"
    return LogFilter(since=since, until=until, status=status, status_class=status_class,
                     kind=kind, **texts)


class LogHandlers:
    """``accesslogs``: the queries (:class:`zmirror.db.accesslogs.AccessLogStore`);
    ``cache`` (blob cache) and ``accesslog`` (the batched writer, its queue
    depth): what ``/api/stats`` adds when they are there."""

    def __init__(self, accesslogs: Any, cache: Any = None, accesslog: Any = None):
        self.accesslogs = accesslogs
        self.cache = cache
        self.accesslog = accesslog

    @route("/logs", ["GET"])
    async def list_page(self, request):
        params = query(request, LIST_PARAMS)
        errors: dict[str, str] = {}
        page = q_int(params, "page", 1, 1, 10**9, errors)
        page_size = q_int(params, "page_size", PAGE_SIZE_DEFAULT, 1, PAGE_SIZE_MAX, errors,
                          clamp=True)
        flt = log_filter(params, errors)
        if errors:
            raise invalid(errors, "query")
        return await self.accesslogs.list(flt, page, page_size)

    @route("/logs", ["DELETE"])
    async def delete(self, request):
        params = query(request, ("before",))
        errors: dict[str, str] = {}
        before = q_time(params, "before", errors)
        if "before" in params and before is None and not errors:
            # "?before=" (empty) would otherwise mean "everything"
            errors["before"] = "must be a Unix time in seconds (leave it out to delete all)"
        if errors:
            raise invalid(errors, "query")
        n = await self.accesslogs.delete(before)
        return {"deleted": n}

    @route("/stats", ["GET"])
    async def stats(self, request):
        params = query(request, ("tz_offset",))
        errors: dict[str, str] = {}
        tz = q_int(params, "tz_offset", 0, -840, 840, errors)
        if "tz_offset" in errors:
            errors["tz_offset"] += " (minutes east of UTC)"
        if errors:
            raise invalid(errors, "query")
        out = await self.accesslogs.stats(tz)
        if self.cache is not None:
            try:
                out["cache"] = await self._cache_stats()
            except Exception:
                log.failure("admin API: cache stats failed")
        if self.accesslog is not None:
            out["log_queue"] = getattr(self.accesslog, "queue_depth", 0)
        return out

    async def _cache_stats(self) -> dict:
        """The cache's counters (``stats`` dict or method) plus its size and fill."""
        cache = self.cache
        stats = getattr(cache, "stats", None)
        if callable(stats):
            stats = await maybe(stats())
        out = dict(stats or {})
        size, max_size = getattr(cache, "size", None), getattr(cache, "max_size", None)
        if isinstance(size, int):
            out.setdefault("bytes", size)
        if isinstance(max_size, int):
            out.setdefault("max_bytes", max_size)
        entries = getattr(cache, "entries", None)
        if entries is not None and hasattr(entries, "__len__"):
            out.setdefault("blobs", len(entries))
        return out
