"""Where a node keeps the index of its own blob cache (:data:`BLOB_TABLES`):
the main database on SQLite, the node-local ``<[cache] dir>/index.sqlite``
(:data:`INDEX_FILE`) on PostgreSQL; the manifest cache (:data:`MANIFEST_TABLES`)
always uses the main database.  See docs/design/cache.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the tables of a node's own blob index (node-local on PostgreSQL)
BLOB_TABLES = ("cache_blobs", "cache_blob_repos")
# the manifest cache's tables (always in the main database: shared on PostgreSQL)
MANIFEST_TABLES = ("cache_manifests", "cache_tags", "cache_manifest_repos")
# every cache table
CACHE_TABLES = BLOB_TABLES + MANIFEST_TABLES
INDEX_FILE = "index.sqlite"


def index_path(config: Any) -> Path:
    """The node-local blob index file (used on PostgreSQL)."""
    return config.cache_dir / INDEX_FILE


def open_cache_index(config: Any, db: Any, reactor: Any):
    """The database the blob cache keeps its index in: ``db`` itself on SQLite;
    on PostgreSQL the node-local SQLite file (migrated now: blocking, call at
    start; its pools not started: a :class:`~zmirror.service.DatabaseService`
    does).  The manifest cache always uses ``db``."""
    from zmirror.db.engine import is_postgresql
    from zmirror.db.sqlite import Database, migrate

    if not is_postgresql(config):
        return db
    path = index_path(config)
    migrate(path)
    return Database(path, reactor)


__all__ = ["BLOB_TABLES", "MANIFEST_TABLES", "CACHE_TABLES", "INDEX_FILE", "index_path",
           "open_cache_index"]
