-- Pull-through cache index: blobs live as files named by digest under [cache] dir;
-- manifests are small and kept here; tags map to manifest digests with a fetch time.
CREATE TABLE cache_blobs (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    last_access REAL NOT NULL
);
CREATE INDEX cache_blobs_last_access ON cache_blobs(last_access);

CREATE TABLE cache_blob_repos (
    digest     TEXT NOT NULL,
    repository TEXT NOT NULL,
    PRIMARY KEY (digest, repository)
);
CREATE INDEX cache_blob_repos_repository ON cache_blob_repos(repository);

CREATE TABLE cache_manifests (
    digest      TEXT PRIMARY KEY,
    media_type  TEXT NOT NULL,
    body        BLOB NOT NULL,
    created_at  REAL NOT NULL,
    last_access REAL NOT NULL
);

CREATE TABLE cache_tags (
    repository TEXT NOT NULL,
    tag        TEXT NOT NULL,
    media_type TEXT NOT NULL,
    digest     TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (repository, tag, media_type)
);

CREATE TABLE cache_manifest_repos (
    digest     TEXT NOT NULL,
    repository TEXT NOT NULL,
    PRIMARY KEY (digest, repository)
);

