"""Where a node keeps the index of its own blob cache.

The blob cache's files are the node's own ([cache] dir on its disk), so is
their index (the tables ``cache_blobs`` and ``cache_blob_repos``,
:data:`BLOB_TABLES`):

- on SQLite (one node) it stays in the main database, as it always was;
- on PostgreSQL (several nodes share the database) each node keeps it in a
  SQLite file next to the files it describes, ``<[cache] dir>/index.sqlite``
  (:data:`INDEX_FILE`), so no node's index claims another node's files and
  no node's eviction deletes another node's rows.  Nodes on one machine
  therefore each need their own ``[cache] dir``.

The file is created 0600 and migrated like the main SQLite database
(:func:`zmirror.db.sqlite.migrate`: the same schema; only its blob tables are used).
The blob tables of the PostgreSQL database stay empty.

The manifest cache (:data:`MANIFEST_TABLES`: ``cache_manifests``,
``cache_tags``, ``cache_manifest_repos``) holds no files: it is kept in the
main database on both engines (:mod:`zmirror.cache.manifests`), so on
PostgreSQL every node serves what one of them fetched.  Manifest rows an
earlier version kept in a node's ``index.sqlite`` are no longer read (nor
deleted): those manifests are simply fetched again.
"""

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
