"""Where a node keeps the index of its own cache.

The cache's files are the node's own ([cache] dir on its disk), so is their
index (the tables ``cache_blobs``, ``cache_blob_repos``, ``cache_manifests``,
``cache_tags``, ``cache_manifest_repos``):

- on SQLite (one node) it stays in the main database, as it always was;
- on PostgreSQL (several nodes share the database) each node keeps it in a
  SQLite file next to the files it describes, ``<[cache] dir>/index.sqlite``
  (:data:`INDEX_FILE`), so no node's index claims another node's files and
  no node's eviction deletes another node's rows.  Nodes on one machine
  therefore each need their own ``[cache] dir``.

The file is created 0600 and migrated like the main SQLite database
(:func:`zmirror.db.migrate`: the same schema; only its cache tables are used).
The cache tables of the PostgreSQL database stay empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the tables of a node's cache index
CACHE_TABLES = ("cache_blobs", "cache_blob_repos", "cache_manifests", "cache_tags",
                "cache_manifest_repos")
INDEX_FILE = "index.sqlite"


def index_path(config: Any) -> Path:
    """The node-local cache index file (used on PostgreSQL)."""
    return config.cache_dir / INDEX_FILE


def open_cache_index(config: Any, db: Any, reactor: Any):
    """The database the caches keep their index in: ``db`` itself on SQLite; on
    PostgreSQL the node-local SQLite file (migrated now: blocking, call at start;
    its pools not started: a :class:`~zmirror.service.DatabaseService` does)."""
    from zmirror.db import Database, is_postgresql, migrate

    if not is_postgresql(config):
        return db
    path = index_path(config)
    migrate(path)
    return Database(path, reactor)


__all__ = ["CACHE_TABLES", "INDEX_FILE", "index_path", "open_cache_index"]
