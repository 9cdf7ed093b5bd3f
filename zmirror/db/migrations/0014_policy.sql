-- The image policy (zmirror.auth.imagepolicy): what may be pulled at all, whoever pulls.
-- action: allow | deny; pattern: a normalized reference pattern (zmirror.oci.patterns,
-- e.g. "library/*", "*:latest", "ghcr.io/org/**", "library/nginx@sha256:..."); position:
-- the order the admin lists them in (deny rules win whatever their position; the first
-- matching rule by position is the one reported).
CREATE TABLE policy_rules (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    action     TEXT NOT NULL CHECK (action IN ('allow', 'deny')),
    pattern    TEXT NOT NULL,
    enabled    INTEGER NOT NULL DEFAULT 1,
    note       TEXT NOT NULL DEFAULT '',
    position   INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (action, pattern)
);
CREATE INDEX policy_rules_position ON policy_rules(position, id);
