"""Builds the proxy core: its blob, manifest and tag sources over the upstreams.

The same sub-builder is used by :func:`zmirror.wiring.build` and by the test
environments (``tests/fixtures/proxyenv.py``).
"""

from __future__ import annotations

from typing import Any

from zmirror.registry.blobs import PullThroughBlobs
from zmirror.registry.manifests import PullThroughManifests
from zmirror.registry.proxy import Proxy
from zmirror.upstream.blobs import RemoteBlobs
from zmirror.upstream.pool import UpstreamPool
from zmirror.upstream.failover import Failover
from zmirror.upstream.manifests import RemoteManifests, RemoteTags


def build_proxy(pool: UpstreamPool, clock: Any, *, blobs: Any = None, manifests: Any = None,
                idle_timeout: float = 60.0, resume_attempts: int = 3,
                resume_deadline: float = 300.0, threads: Any = None,
                image_policy: Any = None) -> Proxy:
    """The proxy core over ``pool`` (upstreams tried in priority order, with failover).

    ``blobs``: the blob cache (:class:`~zmirror.cache.blobs.CacheBlobs`) or None;
    ``manifests``: the manifest cache (:class:`~zmirror.cache.manifests.ManifestCache`) or
    None; ``threads``: the transfer threads of upstream blob bodies (default: the
    blob cache's, none without a cache); ``image_policy``: the
    :class:`~zmirror.auth.imagepolicy.ImagePolicy` a tag's resolved digest is checked by."""
    failover = Failover(pool, clock)
    if threads is None and blobs is not None:
        threads = blobs.transfers
    remote_blobs = RemoteBlobs(failover, clock, idle_timeout=idle_timeout, threads=threads,
                               resume_attempts=resume_attempts, resume_deadline=resume_deadline)
    remote_manifests = RemoteManifests(failover, clock, idle_timeout=idle_timeout)
    return Proxy(
        blob_source=PullThroughBlobs(blobs, remote_blobs),
        manifest_source=(remote_manifests if manifests is None
                         else PullThroughManifests(manifests, remote_manifests)),
        tag_source=RemoteTags(failover, clock, idle_timeout=idle_timeout),
        image_policy=image_policy,
    )


__all__ = ["build_proxy"]
