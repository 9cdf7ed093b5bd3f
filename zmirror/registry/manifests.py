"""Manifest sources: one interface, so the proxy never knows whether it proxies.

A :class:`ManifestSource` answers ``get(repository, reference, accept, head=...)``
with a :class:`~zmirror.upstream.manifests.ManifestResult`: the upstreams
(:class:`~zmirror.upstream.manifests.RemoteManifests`) or
:class:`PullThroughManifests`, a local store in front of them (by digest:
served for good once confirmed in the repository; by tag: a TTL, HEAD
revalidation, stale copies on 429/502/503).

Design: docs/design/pull-path.md ("Manifests").
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from twisted.logger import Logger

from zmirror.cache.manifests import Manifest, TagEntry
from zmirror.oci.errors import RegistryError
from zmirror.oci.mediatypes import DEFAULT_ACCEPT, acceptable
from zmirror.oci.reference import is_digest
from zmirror.upstream.manifests import ManifestResult

log = Logger()

STALE_WARNING = '110 - "Response is Stale"'
# the upstreams' answers that let a stale manifest be served (rate-limited, broken, unavailable)
STALE_STATUSES = (429, 502, 503)


class ManifestSource(Protocol):
    async def get(self, repository: str, reference: str, accept: list[str], *, head: bool = False,
                  record: Any = None) -> ManifestResult:
        """The manifest ``reference`` (a tag or digest) of ``repository`` in a
        media type ``accept`` admits (an empty list: our defaults).  ``head``:
        the body may be left out.  ``record``: the pull's access-log record
        (its ``upstream`` is set when an upstream answered).  Raises
        RegistryError (e.g. 404 MANIFEST_UNKNOWN) when there is no answer."""
        ...


class LocalManifests(Protocol):
    """What :class:`PullThroughManifests` needs of its local store
    (:class:`~zmirror.cache.manifests.ManifestCache`; a fake in tests)."""

    async def ready(self) -> None: ...
    async def get(self, digest: str) -> Optional[Manifest]: ...
    async def has_repo(self, digest: str, repository: str) -> bool: ...
    async def tag(self, repository: str, tag: str, accept: list[str]) -> Optional[TagEntry]: ...
    def fresh(self, entry: TagEntry) -> bool: ...
    def add_repo(self, digest: str, repository: str) -> None: ...
    def refresh(self, entry: TagEntry) -> None: ...
    def store(self, repository: str, tag: Optional[str], m: Manifest) -> None: ...
    def drop_tag(self, repository: str, tag: str) -> None: ...
    def count_hit(self, *, stale: bool = False) -> None: ...
    def count_miss(self) -> None: ...


class PullThroughManifests:
    def __init__(self, local: LocalManifests, remote: ManifestSource):
        self.local = local
        self.remote = remote

    async def get(self, repository: str, reference: str, accept: list[str], *, head: bool = False,
                  record: Any = None) -> ManifestResult:
        local = self.local
        await local.ready()  # the tags are being loaded at start
        accept = accept or DEFAULT_ACCEPT
        if is_digest(reference):
            m = await local.get(reference)
            if m is not None and acceptable(m.media_type, accept):
                if not await local.has_repo(reference, repository):
                    # known from another repository only: confirm it exists in this one
                    await self.remote.get(repository, reference, accept, head=True, record=record)
                    local.add_repo(reference, repository)
                return self._hit(m)
            return await self._fill(repository, reference, accept, None, record)

        entry = await local.tag(repository, reference, accept)
        cached = await local.get(entry.digest) if entry is not None else None
        if cached is not None and local.fresh(entry):
            return self._hit(cached)
        if cached is not None:
            # stale: revalidate with a HEAD (it does not count as a pull on Docker Hub)
            try:
                current = await self.remote.get(repository, reference, accept, head=True, record=record)
            except RegistryError as e:
                return self._stale_or_raise(repository, reference, cached, e)
            if current.digest == cached.digest:
                local.refresh(entry)
                return self._hit(cached)
        try:
            return await self._fill(repository, reference, accept, reference, record)
        except RegistryError as e:
            if cached is None:
                raise
            return self._stale_or_raise(repository, reference, cached, e)

    async def _fill(self, repository: str, reference: str, accept: list[str], tag: Optional[str],
                    record: Any) -> ManifestResult:
        m = await self.remote.get(repository, reference, accept, head=False, record=record)
        self.local.count_miss()
        self.local.store(repository, tag, Manifest(m.digest, m.media_type, m.body))
        return ManifestResult(m.digest, m.media_type, m.body, m.length, cache_hit=False)

    def _hit(self, m: Manifest, *, stale: bool = False) -> ManifestResult:
        self.local.count_hit(stale=stale)
        return ManifestResult(m.digest, m.media_type, m.body, len(m.body), cache_hit=True,
                              warning=STALE_WARNING if stale else None)

    def _stale_or_raise(self, repository: str, tag: str, m: Manifest, err: RegistryError) -> ManifestResult:
        if err.status == 404 and err.code == "MANIFEST_UNKNOWN":
            self.local.drop_tag(repository, tag)  # the tag is gone upstream
            raise err
        if err.status in STALE_STATUSES:
            log.info("serving stale manifest {name}:{ref}: {err}", name=repository, ref=tag, err=err.message)
            return self._hit(m, stale=True)
        raise err


__all__ = ["ManifestSource", "LocalManifests", "PullThroughManifests", "STALE_WARNING"]
