-- Per-upstream egress proxy and TLS settings (zmirror/upstream/agents.py, tlsconfig.py).
-- proxy: NULL = the [upstream] proxy (or the environment's), '' = direct, else a proxy URL
-- (its password stored as given, like the upstream password; the admin API masks it).
ALTER TABLE registries ADD COLUMN proxy TEXT;
-- 0: no certificate or host name check for the upstream's own host (a warning everywhere).
ALTER TABLE registries ADD COLUMN tls_verify INTEGER NOT NULL DEFAULT 1;
-- PEM bundle trusted besides the system's CAs.
ALTER TABLE registries ADD COLUMN ca TEXT NOT NULL DEFAULT '';
-- mTLS: PEM certificate (and chain) and its unencrypted PEM key (stored as given, never returned).
ALTER TABLE registries ADD COLUMN client_cert TEXT NOT NULL DEFAULT '';
ALTER TABLE registries ADD COLUMN client_key TEXT NOT NULL DEFAULT '';
-- SNI and the name checked ('' = the URL's host).
ALTER TABLE registries ADD COLUMN server_name TEXT NOT NULL DEFAULT '';
