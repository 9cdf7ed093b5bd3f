"""The read routes of the cache page: ``GET /api/cache/namespaces``,
``/api/cache/images``, ``/api/cache/tags``, ``/api/cache/stats`` and
``/api/cache/purges`` (the record of purges), over
:class:`~zmirror.cache.view.CacheView`."""

from __future__ import annotations

from typing import Any

from zmirror.admin.cache import namespace_param, repository_of
from zmirror.admin.http import need, route
from zmirror.admin.validate import invalid, q_int, query
from zmirror.cache.purge import history

SORTS = ("size", "last_pull")


class CacheViewHandlers:
    """``view``: the :class:`~zmirror.cache.view.CacheView` (None: 503)."""

    def __init__(self, view: Any = None):
        self.view = view

    @route("/cache/namespaces", ["GET"])
    async def namespaces(self, request):
        query(request, ())
        return {"namespaces": await need(self.view, "cache figures").namespaces()}

    @route("/cache/images", ["GET"])
    async def images(self, request):
        params = query(request, ("sort", "namespace", "limit"))
        errors: dict[str, str] = {}
        sort = params.get("sort", "").strip() or "size"
        if sort not in SORTS:
            errors["sort"] = "must be size or last_pull"
        namespace = namespace_param(params.get("namespace"), errors)
        limit = q_int(params, "limit", 20, 1, 500, errors)
        if errors:
            raise invalid(errors, "query")
        view = need(self.view, "cache figures")
        return {"images": await view.images(sort=sort, namespace=namespace, limit=limit)}

    @route("/cache/tags", ["GET"])
    async def tags(self, request):
        params = query(request, ("repository",))
        errors: dict[str, str] = {}
        repository = repository_of(params.get("repository"), errors)
        if repository is None and "repository" not in errors:
            errors["repository"] = "required"
        if errors:
            raise invalid(errors, "query")
        view = need(self.view, "cache figures")
        return {"repository": repository, "tags": await view.tags(repository)}

    @route("/cache/stats", ["GET"])
    async def stats(self, request):
        query(request, ())
        return await need(self.view, "cache figures").stats()

    @route("/cache/purges", ["GET"])
    async def purges(self, request):
        params = query(request, ("limit",))
        errors: dict[str, str] = {}
        limit = q_int(params, "limit", 50, 1, 500, errors)
        if errors:
            raise invalid(errors, "query")
        view = need(self.view, "cache figures")
        return {"purges": await view.db.read(history, limit)}
