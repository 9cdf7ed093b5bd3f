-- Purge and invalidate requests (zmirror/cache/purge.py): the node that takes one (admin API)
-- or the `zmirror cache purge|invalidate` CLI writes a row and deletes the shared rows
-- (manifests, tags) in the same transaction; every running node applies the row to what it
-- holds itself (blob files and index, memory copies) when it hears of it on the cluster bus
-- (cache.purge) or finds it in its poll of this table (every 2 s). Also the record of purges.
CREATE TABLE cache_purges (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    action      TEXT NOT NULL,              -- purge | invalidate
    namespace   TEXT,                       -- purge of a whole namespace
    repository  TEXT,                       -- canonical name
    tag         TEXT,
    digest      TEXT,
    origin      TEXT NOT NULL DEFAULT '',   -- the node that took the request, or "cli"
    created_at  REAL NOT NULL,
    manifests   INTEGER NOT NULL DEFAULT 0, -- shared rows deleted (or tags invalidated)
    tags        INTEGER NOT NULL DEFAULT 0
);

-- This node's cache figures since its start, written with the heartbeat (zmirror/nodes.py),
-- so GET /api/cache/stats shows every node and the cluster's sum.
ALTER TABLE cluster_nodes ADD COLUMN cache_hits INTEGER;
ALTER TABLE cluster_nodes ADD COLUMN cache_misses INTEGER;
ALTER TABLE cluster_nodes ADD COLUMN cache_bytes_served INTEGER;
ALTER TABLE cluster_nodes ADD COLUMN cache_bytes_fetched INTEGER;
ALTER TABLE cluster_nodes ADD COLUMN cache_gets_avoided INTEGER;
