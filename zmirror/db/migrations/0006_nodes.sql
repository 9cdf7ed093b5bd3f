-- The nodes of this database and their heartbeats (zmirror/nodes.py): every node upserts
-- its own row every 10 s; GET /api/nodes derives up / stale / stopped from it. No secrets.
-- On SQLite the one node keeps its row the same way. Types map to PostgreSQL as usual.
CREATE TABLE cluster_nodes (
    node         TEXT PRIMARY KEY,          -- [server] node
    instance     TEXT NOT NULL,             -- random id of the running process (the bus's origin)
    version      TEXT NOT NULL DEFAULT '',  -- zmirror.__version__
    db_schema    INTEGER NOT NULL DEFAULT 0, -- the newest migration this build knows
    address      TEXT NOT NULL DEFAULT '',  -- host:port it listens on, as configured
    hostname     TEXT NOT NULL DEFAULT '',
    pid          INTEGER NOT NULL DEFAULT 0,
    started_at   REAL NOT NULL,
    last_seen    REAL NOT NULL,
    stopped_at   REAL,                      -- set by a clean stop, cleared by the next heartbeat
    bus          TEXT NOT NULL DEFAULT '',  -- connected | disconnected | local
    bus_since    REAL,                      -- when the bus (dis)connected
    cache_bytes  INTEGER,                   -- this node's blob cache (NULL: no cache)
    cache_blobs  INTEGER,
    cache_max_bytes INTEGER,
    conflict_at  REAL                       -- last time another process was seen using this name
);
CREATE INDEX cluster_nodes_last_seen ON cluster_nodes(last_seen);
