"""The pull-through cache: verified blobs on disk and manifests with a TTL
(see docs/design/cache.md)."""
