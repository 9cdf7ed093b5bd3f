"""``/api/cache``: the pull-through cache's fill and counters, purging it
(``DELETE /api/cache``) and invalidating tags (``POST /api/cache/invalidate``)
on every node (:class:`~zmirror.cache.purge.CachePurge`).  The read routes of
the cache page: :mod:`zmirror.admin.cacheview`."""

from __future__ import annotations

import re
from typing import Any, Optional

from zmirror.admin.http import need, route
from zmirror.admin.validate import Invalid, invalid, json_body, query
from zmirror.cache.purge import Scope
from zmirror.oci.errors import RegistryError
from zmirror.oci.names import canonical_name, normalize_namespace
from zmirror.oci.reference import parse_digest

TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")


def summary(blobs: dict, manifests: dict) -> dict:
    """``GET /api/cache`` from the two caches' summaries."""
    hits = blobs["hits"] + manifests.get("hits", 0)
    misses = blobs["misses"] + manifests.get("misses", 0)
    return {
        "enabled": True,
        "size": blobs["size"],
        "max_size": blobs["max_size"],
        "entries": blobs["entries"],
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "bytes_from_cache": blobs["bytes_from_cache"],
        "bytes_from_upstream": blobs["bytes_from_upstream"],
        # manifest requests answered without an upstream GET (what Docker Hub's quota counts)
        "manifest_gets_avoided": manifests.get("hits", 0),
        # False for a while after the cache disk failed a write: misses are relayed uncached
        "storing": blobs.get("storing", True),
        "store_error": blobs.get("store_error"),
        "blobs": blobs,
        "manifests": manifests,
    }


def repository_of(raw: Any, errors: dict, key: str = "repository") -> Optional[str]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        errors[key] = "must be a string"
        return None
    try:
        return canonical_name(raw.strip())
    except RegistryError:
        errors[key] = "not a valid repository name"
        return None


def tag_of(raw: Any, errors: dict, key: str = "tag") -> Optional[str]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str) or not TAG.match(raw.strip()):
        errors[key] = "not a valid tag"
        return None
    return raw.strip()


def namespace_param(raw: Any, errors: dict, key: str = "namespace") -> Optional[str]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        return normalize_namespace(raw)
    except ValueError as e:
        errors[key] = str(e)
        return None


def purge_scope(params: dict) -> Scope:
    """The scope of ``DELETE /api/cache`` (raises :class:`Invalid` with field errors)."""
    errors: dict[str, str] = {}
    namespace = namespace_param(params.get("namespace"), errors)
    repository = repository_of(params.get("repository"), errors)
    tag = tag_of(params.get("tag"), errors)
    digest = None
    if params.get("digest", "").strip():
        try:
            digest = parse_digest(params["digest"].strip())
        except RegistryError:
            errors["digest"] = "not a valid digest (sha256:<64 hex>)"
    if tag is not None and repository is None and "repository" not in errors:
        errors["tag"] = "needs repository"
    given = [k for k, v in (("namespace", namespace), ("repository", repository), ("digest", digest))
             if v is not None]
    if len(given) > 1:
        errors[given[-1]] = "give one of namespace, repository or digest"
    if errors:
        raise invalid(errors, "query")
    return Scope(namespace=namespace, repository=repository, tag=tag, digest=digest)


class CacheHandlers:
    """``cache``: the blob cache (None: the cache is disabled); ``manifest_cache``:
    the manifest cache, or None; ``purge``: the
    :class:`~zmirror.cache.purge.CachePurge` (None: the routes answer 503)."""

    def __init__(self, cache: Any = None, manifest_cache: Any = None, purge: Any = None):
        self.cache = cache
        self.manifest_cache = manifest_cache
        self.purge = purge

    @route("/cache", ["GET"])
    async def get(self, request):
        query(request, ())
        if self.cache is None:
            return {"enabled": False}
        manifests = self.manifest_cache.summary() if self.manifest_cache is not None else {}
        return summary(self.cache.summary(), manifests)

    @route("/cache", ["DELETE"], audit="cache.purge")
    async def delete(self, request):
        """Empty the cache, or drop a namespace, a repository (one tag of it) or a
        digest, on every node."""
        scope = purge_scope(query(request, ("namespace", "repository", "tag", "digest")))
        if self.cache is None:
            raise Invalid("the cache is disabled", {})
        return {"deleted": await need(self.purge, "cache purges").purge(scope)}

    @route("/cache/invalidate", ["POST"])
    async def invalidate(self, request):
        """``{"repository", "tag"}`` (no tag: every tag): the next pull revalidates upstream."""
        query(request, ())
        body = json_body(request)
        if not isinstance(body, dict):
            raise Invalid("the request body must be a JSON object", {})
        errors: dict[str, str] = {}
        for key in body:
            if key not in ("repository", "tag"):
                errors[str(key)[:100]] = "unknown field"
        repository = repository_of(body.get("repository"), errors)
        if repository is None and "repository" not in errors:
            errors["repository"] = "required"
        tag = tag_of(body.get("tag"), errors)
        if errors:
            raise invalid(errors)
        if self.cache is None and self.manifest_cache is None:
            raise Invalid("the cache is disabled", {})
        n = await need(self.purge, "cache purges").invalidate(repository, tag)
        return {"invalidated": n}
