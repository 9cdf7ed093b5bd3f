-- The audit trail: one row per change made through the admin API or the CLI
-- (zmirror.db.auditlog).  actor: the admin's username, or "cli:<os user>"; node: the
-- [server] node that made it; action: "registry.update", "user.create", "cache.purge", ...;
-- target: what it changed ("registries/3"); before/after: JSON with secrets masked
-- ("****"), NULL when there is nothing to show.  Pruned by [log] retention_days.
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    actor     TEXT NOT NULL,
    node      TEXT NOT NULL DEFAULT '',
    client_ip TEXT NOT NULL DEFAULT '',
    action    TEXT NOT NULL,
    target    TEXT NOT NULL DEFAULT '',
    before    TEXT,
    after     TEXT
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_actor ON audit_log(actor);
CREATE INDEX audit_log_action ON audit_log(action);
