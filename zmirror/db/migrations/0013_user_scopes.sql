-- What a registry user may pull: a JSON list of normalized repository patterns
-- (zmirror.oci.patterns; e.g. ["library/*", "ghcr.io/myorg/**"]).  '[]' is everything,
-- so existing users keep pulling what they pulled.  Written by the admin API / CLI only
-- through zmirror.auth.scopes.validate_scopes; a change moves updated_at (tokens die).
ALTER TABLE users ADD COLUMN scopes TEXT NOT NULL DEFAULT '[]';
