"""``/api/cache``: the pull-through cache's fill and counters, and emptying it."""

from __future__ import annotations

from typing import Any

from zmirror.admin.http import route
from zmirror.admin.validate import Invalid, invalid, query
from zmirror.oci.errors import RegistryError
from zmirror.oci.names import canonical_name
from zmirror.oci.reference import parse_digest


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
        # False for a while after the cache disk failed a write: misses are relayed uncached
        "storing": blobs.get("storing", True),
        "store_error": blobs.get("store_error"),
        "blobs": blobs,
        "manifests": manifests,
    }


class CacheHandlers:
    """``cache``: the blob cache (None: the cache is disabled); ``manifest_cache``:
    the manifest cache, or None."""

    def __init__(self, cache: Any = None, manifest_cache: Any = None):
        self.cache = cache
        self.manifest_cache = manifest_cache

    @route("/cache", ["GET"])
    async def get(self, request):
        query(request, ())
        if self.cache is None:
            return {"enabled": False}
        manifests = self.manifest_cache.summary() if self.manifest_cache is not None else {}
        return summary(self.cache.summary(), manifests)

    @route("/cache", ["DELETE"])
    async def delete(self, request):
        """Empty the cache, or drop one repository (``?repository=``) or one digest (``?digest=``)."""
        params = query(request, ("repository", "digest"))
        if self.cache is None:
            raise Invalid("the cache is disabled", {})
        repository = digest = None
        errors: dict[str, str] = {}
        if params.get("repository", "").strip():
            try:
                repository = canonical_name(params["repository"].strip())
            except RegistryError:
                errors["repository"] = "not a valid repository name"
        if params.get("digest", "").strip():
            try:
                digest = parse_digest(params["digest"].strip())
            except RegistryError:
                errors["digest"] = "not a valid digest (sha256:<64 hex>)"
        if repository is not None and digest is not None:
            errors["digest"] = "give either repository or digest, not both"
        if errors:
            raise invalid(errors, "query")
        blobs = await self.cache.delete(digest=digest, repository=repository)
        manifests = 0
        if self.manifest_cache is not None:
            manifests = await self.manifest_cache.delete(repository=repository, digest=digest)
        return {"deleted": {"blobs": blobs, "manifests": manifests}}
