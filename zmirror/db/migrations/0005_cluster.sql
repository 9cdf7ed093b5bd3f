-- Several nodes on one database (PostgreSQL): the state every node shares.
-- On SQLite (one node) these tables exist too, so both engines keep one schema.

-- Secrets every node must agree on (name 'token': the token signing secret, base64).
-- The first node that finds the row missing seeds it from its local token-secret file.
CREATE TABLE cluster_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at REAL NOT NULL
);

-- Failed logins, counted by every node for the lockout: keyed digests (hex) of the
-- account or address, never the names themselves.
CREATE TABLE login_failures (
    key  TEXT NOT NULL,
    at   REAL NOT NULL,
    node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX login_failures_key ON login_failures(key, at);
CREATE INDEX login_failures_at ON login_failures(at);

-- Upstream health and rate-limit state as last published by any node (JSON).
CREATE TABLE upstream_state (
    upstream   TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    node       TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);

-- The node that served a request ([server] node).
ALTER TABLE access_logs ADD COLUMN node TEXT NOT NULL DEFAULT '';
