-- Retention rules, one per namespace (docker.io, ghcr.io, ...): evict what was not pulled
-- within max_age_days (NULL: no age limit) and keep the namespace's cached blobs under
-- max_size bytes (NULL: no quota), least recently pulled first. Pins (cache_pins, 0009)
-- are never evicted. The planner: zmirror/cache/retention.py.
CREATE TABLE cache_rules (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace    TEXT NOT NULL UNIQUE,
    max_age_days INTEGER,
    max_size     INTEGER,
    enabled      INTEGER NOT NULL DEFAULT 1,
    note         TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
-- what retention reads: tags by last pull, manifests by last pull
CREATE INDEX cache_manifests_last_access ON cache_manifests(last_access);
