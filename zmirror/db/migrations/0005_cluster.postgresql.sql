-- 0005_cluster.sql on PostgreSQL, plus the triggers that tell every node (LISTEN
-- zmirror_changes) that users / whitelists / registries changed, whoever wrote them
-- (a node's admin API, the zmirror CLI, hand-made SQL). The payload is the table name;
-- PostgreSQL folds identical notifications of one transaction into one. A login only
-- sets users.last_login_at: that is no change any node must re-read.
CREATE TABLE cluster_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE login_failures (
    key  TEXT NOT NULL,
    at   DOUBLE PRECISION NOT NULL,
    node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX login_failures_key ON login_failures(key, at);
CREATE INDEX login_failures_at ON login_failures(at);

CREATE TABLE upstream_state (
    upstream   TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    node       TEXT NOT NULL DEFAULT '',
    updated_at DOUBLE PRECISION NOT NULL
);

ALTER TABLE access_logs ADD COLUMN node TEXT NOT NULL DEFAULT '';

CREATE FUNCTION zmirror_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('zmirror_changes', TG_TABLE_NAME); RETURN NULL; END $$;

CREATE TRIGGER users_changed AFTER INSERT OR DELETE OR TRUNCATE ON users FOR EACH STATEMENT EXECUTE FUNCTION zmirror_notify_change();
CREATE TRIGGER users_updated AFTER UPDATE ON users FOR EACH ROW WHEN (OLD.username IS DISTINCT FROM NEW.username OR OLD.password_hash IS DISTINCT FROM NEW.password_hash OR OLD.enabled IS DISTINCT FROM NEW.enabled OR OLD.updated_at IS DISTINCT FROM NEW.updated_at) EXECUTE FUNCTION zmirror_notify_change();
CREATE TRIGGER whitelists_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON whitelists FOR EACH STATEMENT EXECUTE FUNCTION zmirror_notify_change();
CREATE TRIGGER registries_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON registries FOR EACH STATEMENT EXECUTE FUNCTION zmirror_notify_change();
