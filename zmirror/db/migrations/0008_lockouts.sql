-- Accounts and addresses locked by the login lockout (zmirror/auth/lockoutrecords.py):
-- the node that locked one writes its row (the attempted account name or the address,
-- sanitized, at most 64 characters); GET /api/lockouts and `zmirror user locked` list
-- them. An unlock sets released_at; every node reads that within 2 s and lifts the lock.
CREATE TABLE lockouts (
    key         TEXT PRIMARY KEY,           -- the lockout's key (hex digest), as in login_failures
    kind        TEXT NOT NULL,              -- account | address
    name        TEXT NOT NULL DEFAULT '',   -- the account name or the address (bucket)
    login       TEXT NOT NULL DEFAULT '',   -- of an account: registry | admin
    failures    INTEGER NOT NULL DEFAULT 0,
    locked_at   REAL NOT NULL,
    until       REAL NOT NULL,
    node        TEXT NOT NULL DEFAULT '',
    released_at REAL                        -- set by an unlock, cleared when it locks again
);
CREATE INDEX lockouts_released ON lockouts(released_at);
CREATE INDEX lockouts_until ON lockouts(until);
