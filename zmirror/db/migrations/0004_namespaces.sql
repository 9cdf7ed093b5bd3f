-- Namespaces: the registry host each upstream mirrors; existing upstreams are Docker Hub copies.
ALTER TABLE registries ADD COLUMN namespace TEXT NOT NULL DEFAULT 'docker.io';
CREATE INDEX registries_namespace ON registries(namespace, priority, id);
-- The namespace of the repository an access-log row is about ('' for token requests and old rows).
ALTER TABLE access_logs ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
-- Until now every pull was a Docker Hub pull.
UPDATE access_logs SET namespace = 'docker.io' WHERE repository != '' AND kind != 'token';
