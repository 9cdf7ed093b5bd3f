"""Builds the caches from a validated :class:`~zmirror.config.Config`: the
directory lock, the blob index's database, :class:`CacheBlobs`,
:class:`ManifestCache` and their :class:`CacheUpkeep`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from zmirror.cache.blobs import CacheBlobs
from zmirror.cache.dirlock import CacheDirLock
from zmirror.cache.index import open_cache_index
from zmirror.cache.manifests import ManifestCache
from zmirror.cache.retentionpass import RetentionPass
from zmirror.cache.upkeep import CacheUpkeep
from zmirror.config import Config


@dataclass
class CacheParts:
    blobs: CacheBlobs
    manifests: ManifestCache
    index_db: Any  # the node's own blob index: the main db on SQLite, a local file on PostgreSQL
    upkeep: CacheUpkeep  # run by a service: index loads, access-time writes, the last write at stop
    dir_lock: CacheDirLock
    retention: Optional[RetentionPass] = None  # rules, quotas, pins (run by the upkeep)


def build_cache(config: Config, db: Any, reactor: Any, *, bus: Any = None,
                retention_store: Any = None) -> Optional[CacheParts]:
    """The caches of ``config`` (None when ``[cache] enabled`` is false); ``db``:
    the main database, ``bus``: where manifest deletes are published,
    ``retention_store``: the rules and pins (:class:`zmirror.db.retention.RetentionStore`;
    None: no retention pass).  Blocking
    (the directory lock, the index file): at start, before the reactor runs."""
    if not config.cache.enabled:
        return None
    dir_lock = CacheDirLock.take(config.cache_dir)  # one process per [cache] dir, or exit
    index_db = open_cache_index(config, db, reactor)
    blobs = CacheBlobs(config.cache_dir, index_db, reactor, max_size=config.cache.max_size,
                       idle_timeout=config.upstream.idle_timeout,
                       transfer_threads=config.cache.transfer_threads,
                       max_temp_bytes=config.cache.max_temp_size,
                       max_orphans=config.cache.max_orphans,
                       max_orphan_bytes=config.cache.max_orphan_size,
                       dir_lock=dir_lock)
    # no files: in the main database, shared by every node on PostgreSQL
    manifests = ManifestCache(db, reactor, ttl=config.cache.manifest_ttl,
                              tag_limit=config.cache.manifest_tags_in_memory, bus=bus)
    retention = None
    if retention_store is not None:
        retention = RetentionPass(retention_store, blobs, manifests, reactor)
    upkeep = CacheUpkeep(blobs, manifests, reactor, retention=retention)
    return CacheParts(blobs, manifests, index_db, upkeep, dir_lock, retention)
