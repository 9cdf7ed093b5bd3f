"""The pull-through cache: verified blobs on disk and manifests with a TTL."""

from zmirror.cache.blobs import BlobCache, BlobEntry, Download, FollowerProducer
from zmirror.cache.manifests import ManifestCache

__all__ = ["BlobCache", "BlobEntry", "Download", "FollowerProducer", "ManifestCache"]
