"""Blob prefetch in a cluster: each blob is fetched through ``[server] external_url``
(nginx), which sends ``/v2/*/blobs/<digest>`` to the digest's home node by its
consistent hash, so the blob ends up in the cache of the node clients are sent to.
The request carries a short-lived pull token of this cluster
(:class:`~zmirror.auth.tokens.TokenIssuer`, the secret every node shares); the
body is read and dropped here (the home node verifies and stores it).

Where the front refuses the token (a repository anonymous pulls may not read:
the token names no user), the blob is prefetched into this node's cache instead.

Design: docs/design/sync.md ("Cluster placement").
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from zmirror.oci.errors import RegistryError

log = Logger()

SUBJECT = "zmirror-sync"


class FrontBlobs:
    """``http``: a treq-like client (``get``, ``collect``); ``base_url``: the
    cluster's external URL; ``tokens``: the token issuer; ``local``: the
    fallback (:class:`~zmirror.sync.service.LocalBlobs`)."""

    def __init__(self, http: Any, base_url: str, tokens: Any, local: Any, *, collect: Any,
                 timeout: float = 60.0):
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.local = local
        self.collect = collect
        self.timeout = timeout

    async def fetch(self, repo: str, digest: str, size: int, record: Any, on_download: Any = None) -> bool:
        token, _ = self.tokens.issue_access(
            subject=SUBJECT, access=[{"type": "repository", "name": str(repo), "actions": ["pull"]}])
        url = f"{self.base_url}/v2/{repo}/blobs/{digest}"
        resp = await self.http.get(url, headers={b"Authorization": [f"Bearer {token}".encode()]},
                                   timeout=self.timeout, unbuffered=True)
        code = resp.code
        if code == 200:
            received = 0

            def count(chunk: bytes) -> None:
                nonlocal received
                received += len(chunk)

            await self.collect(resp, count)
            if size and received != size:
                raise RegistryError("UPSTREAM_ERROR", f"the front URL sent {received} of {size} bytes",
                                    status=502)
            return True
        await self.collect(resp, lambda _chunk: None)
        if code in (401, 403):
            log.info("sync: the front URL refused a pull token for {repo}; prefetching on this node",
                     repo=repo)
            return await self.local.fetch(repo, digest, size, record)
        if code == 429:
            retry = (resp.headers.getRawHeaders(b"retry-after") or [b"60"])[0]
            raise RegistryError("TOOMANYREQUESTS", "rate limited", headers={b"Retry-After": retry})
        if code == 404:
            raise RegistryError("BLOB_UNKNOWN")
        raise RegistryError("UPSTREAM_ERROR", f"the front URL answered HTTP {code}", status=502)


__all__ = ["FrontBlobs"]
