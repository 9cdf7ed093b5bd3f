"""The read routes of the cache page: ``GET /api/cache/namespaces``,
``/api/cache/images``, ``/api/cache/tags``, ``/api/cache/stats`` and
``/api/cache/purges`` (the record of purges), over
:class:`~zmirror.cache.view.CacheView`."""

from __future__ import annotations

from typing import Any

from zmirror.admin.cache import namespace_param, repository_of
from zmirror.admin.http import route
from zmirror.admin.validate import invalid, q_int, query
from zmirror.cache.purge import history
from zmirror.cache.view import FIGURES

SORTS = ("size", "last_pull")


class CacheViewHandlers:
    """``view``: the :class:`~zmirror.cache.view.CacheView` (None: the cache is
    disabled; the lists are empty, the figures zero)."""

    def __init__(self, view: Any = None):
        self.view = view

    @route("/cache/namespaces", ["GET"])
    async def namespaces(self, request):
        query(request, ())
        return {"namespaces": await self.view.namespaces() if self.view is not None else []}

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
        if self.view is None:
            return {"images": []}
        return {"images": await self.view.images(sort=sort, namespace=namespace, limit=limit)}

    @route("/cache/tags", ["GET"])
    async def tags(self, request):
        params = query(request, ("repository",))
        errors: dict[str, str] = {}
        repository = repository_of(params.get("repository"), errors)
        if repository is None and "repository" not in errors:
            errors["repository"] = "required"
        if errors:
            raise invalid(errors, "query")
        tags = await self.view.tags(repository) if self.view is not None else []
        return {"repository": repository, "tags": tags}

    @route("/cache/stats", ["GET"])
    async def stats(self, request):
        query(request, ())
        if self.view is None:
            return {"nodes": [], "cluster": {**dict.fromkeys((*FIGURES, "size", "entries", "nodes"), 0),
                                             "hit_ratio": None}}
        return await self.view.stats()

    @route("/cache/purges", ["GET"])
    async def purges(self, request):
        params = query(request, ("limit",))
        errors: dict[str, str] = {}
        limit = q_int(params, "limit", 50, 1, 500, errors)
        if errors:
            raise invalid(errors, "query")
        if self.view is None:
            return {"purges": []}
        return {"purges": await self.view.db.read(history, limit)}
