-- Pre-warm and sync jobs (zmirror/sync, zmirror/db/syncjobs.py).
-- spec: the job's JSON (images, newest, platforms, schedule, pin, concurrency).
-- next_run_at: the next schedule tick (NULL: manual only); the node that moves it on
-- (compare-and-set) queues the tick's run. lease_node/lease_until: the node running the
-- job's run, renewed while it runs; free when NULL or expired.
CREATE TABLE sync_jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    enabled     INTEGER NOT NULL DEFAULT 1,
    spec        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    next_run_at REAL,
    lease_node  TEXT,
    lease_until REAL
);

-- One row per run: queued (by the API, the CLI or a schedule tick), then claimed by one
-- node. progress: the run JSON's figures (images, manifests, blobs, bytes, current,
-- errors, upstream_requests), written while it runs and at its end.
CREATE TABLE sync_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      INTEGER NOT NULL,
    node        TEXT NOT NULL DEFAULT '',
    run_trigger TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  REAL NOT NULL,
    finished_at REAL,
    pause_reason TEXT,
    resume_at   REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX sync_runs_job ON sync_runs(job_id, id);
CREATE INDEX sync_runs_state ON sync_runs(state);
