-- When a cached tag was last pulled (a hit or a fill), written in batches like the blob
-- index's last_access; NULL until its first pull after this migration (read as fetched_at).
-- cache_manifests.last_access (0002) is the same for manifest bodies.
ALTER TABLE cache_tags ADD COLUMN last_access REAL;

-- What retention never evicts: a canonical repository with a tag or digest
-- (library/nginx:1.27, ghcr.io/o/img@sha256:...) or a repository pattern (ghcr.io/o/**,
-- library/*). source: "admin", or "sync:<job id>" for what a pre-warm job pinned.
CREATE TABLE cache_pins (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pattern    TEXT NOT NULL,
    source     TEXT NOT NULL DEFAULT 'admin',
    note       TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    UNIQUE (pattern, source)
);
