-- ZMirror schema v1: registry users, upstream registries, anonymous whitelist, access log.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    last_login_at REAL
);

CREATE TABLE registries (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    url        TEXT NOT NULL,
    priority   INTEGER NOT NULL DEFAULT 100,
    enabled    INTEGER NOT NULL DEFAULT 1,
    username   TEXT NOT NULL DEFAULT '',
    password   TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX registries_priority ON registries(priority, id);

CREATE TABLE whitelists (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    prefix     TEXT NOT NULL UNIQUE,
    enabled    INTEGER NOT NULL DEFAULT 1,
    note       TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE access_logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at  REAL NOT NULL,
    client_ip   TEXT NOT NULL DEFAULT '',
    username    TEXT NOT NULL DEFAULT '',
    method      TEXT NOT NULL DEFAULT '',
    repository  TEXT NOT NULL DEFAULT '',
    reference   TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL DEFAULT '',
    status      INTEGER NOT NULL DEFAULT 0,
    bytes       INTEGER NOT NULL DEFAULT 0,
    duration_ms REAL NOT NULL DEFAULT 0,
    upstream    TEXT NOT NULL DEFAULT '',
    cache_hit   INTEGER,
    user_agent  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX access_logs_created_at ON access_logs(created_at);
CREATE INDEX access_logs_username ON access_logs(username, created_at);
CREATE INDEX access_logs_repository ON access_logs(repository, created_at);
CREATE INDEX access_logs_status ON access_logs(status, created_at);

INSERT INTO registries (name, url, priority, enabled, created_at, updated_at)
VALUES ('Docker Hub', 'https://registry-1.docker.io', 1, 1, strftime('%s','now'), strftime('%s','now'));
