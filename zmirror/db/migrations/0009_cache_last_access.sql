-- When a cached tag was last pulled (a hit or a fill), written in batches like the blob
-- index's last_access; NULL until its first pull after this migration (read as fetched_at).
-- cache_manifests.last_access (0002) is the same for manifest bodies.
ALTER TABLE cache_tags ADD COLUMN last_access REAL;
