"""The pull-through cache: verified blobs on disk and manifests with a TTL."""

from zmirror.cache.blobs import BlobCache, BlobEntry, CacheBlobs
from zmirror.cache.download import CacheUnavailable, Download
from zmirror.cache.manifests import ManifestCache

__all__ = ["BlobCache", "BlobEntry", "CacheBlobs", "CacheUnavailable", "Download", "ManifestCache"]
