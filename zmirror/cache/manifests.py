"""Manifest cache: bodies by digest (kept for good), tags with a fetch time.

The local store of :class:`zmirror.registry.manifests.PullThroughManifests`
(which decides hit, miss, revalidation and stale serving); this module only
stores and looks up, and keeps the counters ``GET /api/cache`` reports
(changed only by its own methods: :meth:`ManifestCache.count_hit`,
:meth:`~ManifestCache.count_miss`, :meth:`~ManifestCache.refresh`).

The database is the backing store of everything; memory holds bounded LRU
copies so that a hot manifest costs no I/O: bodies (up to ``memory_limit``
bytes), tag entries (up to ``tag_limit``; the most recently fetched ones are
loaded at start) and which repositories a digest was seen in (up to
``repo_limit`` pairs).  Whatever is not in memory is looked up in the database
before it counts as a miss.  Changes are written through the serialized
writer of the node's own cache index (:mod:`zmirror.cache.index`).

A tag maps to one digest per media type, because upstreams answer a tag with
different manifests for different Accept sets (a list or one of its children).
A cached manifest is only served to a client whose Accept admits its type.
Only valid media types and digests are cached: rows that are not (written by
an older version) are ignored.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from twisted.logger import Logger

from zmirror.cache.gate import LoadGate
from zmirror.registry.mediatypes import acceptable, content_media_type, valid_media_type  # noqa: F401

log = Logger()

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")


@dataclass
class TagEntry:
    repository: str
    tag: str
    media_type: str
    digest: str
    fetched_at: float


@dataclass
class Manifest:
    digest: str
    media_type: str
    body: bytes


def _valid_row(r: dict) -> bool:
    return valid_media_type(r.get("media_type")) and bool(_DIGEST.match(r.get("digest") or ""))


class ManifestCache:
    def __init__(self, db: Any, clock: Any, *, ttl: float = 300.0, memory_limit: int = 64 << 20,
                 tag_limit: int = 100_000, repo_limit: int = 100_000):
        self.db = db
        self.clock = clock
        self.ttl = ttl
        self.memory_limit = memory_limit
        self.tag_limit = max(1, tag_limit)  # tag entries (repository, tag, media type) in memory
        self.repo_limit = max(1, repo_limit)  # (digest, repository) pairs in memory
        # (repository, tag) -> {media type: entry}; LRU order
        self.tags: "OrderedDict[tuple[str, str], dict[str, TagEntry]]" = OrderedDict()
        self._tag_entries = 0
        # keys of self.tags whose dict may lack media types the database has
        # (stored while the key was not in memory)
        self._partial: set[tuple[str, str]] = set()
        # keys whose deletion is still being written: the database must not bring them back
        self._dropping: dict[tuple[str, str], int] = {}
        self._bodies: "OrderedDict[str, Manifest]" = OrderedDict()
        self._body_bytes = 0
        self._repos: "OrderedDict[tuple[str, str], None]" = OrderedDict()  # (digest, repository)
        self.stats = {"hits": 0, "misses": 0, "stale_served": 0, "revalidated": 0}
        self.loading = LoadGate()  # closed while start() loads the tags: requests wait on it

    async def start(self) -> None:
        self.loading.close()
        try:
            rows = await self.db.query(
                "SELECT repository, tag, media_type, digest, fetched_at FROM cache_tags "
                "ORDER BY fetched_at DESC LIMIT ?", (self.tag_limit,))
            truncated = len(rows) >= self.tag_limit
            for r in reversed(rows):  # the most recently fetched end up most recently used
                if _valid_row(r):
                    self._put_tag(TagEntry(**r))
                    if truncated:  # older media types of this tag may have been left out
                        self._partial.add((r["repository"], r["tag"]))
        finally:
            self.loading.open()

    async def ready(self) -> None:
        """Returns once the tags are loaded (at once, except while start() runs)."""
        if self.loading.closed:
            await self.loading.wait()

    # -- lookups ------------------------------------------------------------------
    async def tag(self, repository: str, tag: str, accept: list[str]) -> Optional[TagEntry]:
        """The most recently fetched entry of this tag that the client accepts
        (from memory, else from the database)."""
        key = (repository, tag)
        entries = self.tags.get(key)
        if entries is not None:
            self.tags.move_to_end(key)
            found = _newest(entries, accept)
            if found is not None or key not in self._partial:
                return found
        if key in self._dropping:
            return None
        rows = await self.db.query(
            "SELECT repository, tag, media_type, digest, fetched_at FROM cache_tags "
            "WHERE repository = ? AND tag = ?", (repository, tag))
        if key in self._dropping:
            return None
        current = self.tags.get(key, {})
        for r in rows:
            if _valid_row(r) and r["media_type"] not in current:  # memory is newer than the database
                self._put_tag(TagEntry(**r))
        self._partial.discard(key)
        return _newest(self.tags.get(key, {}), accept)

    def fresh(self, entry: TagEntry) -> bool:
        return self.clock.seconds() - entry.fetched_at < self.ttl

    async def get(self, digest: str) -> Optional[Manifest]:
        m = self._bodies.get(digest)
        if m is not None:
            self._bodies.move_to_end(digest)
            return m
        rows = await self.db.query("SELECT media_type, body FROM cache_manifests WHERE digest = ?", (digest,))
        if not rows or not valid_media_type(rows[0]["media_type"]):
            return None
        m = Manifest(digest, rows[0]["media_type"], bytes(rows[0]["body"]))
        self._remember(m)
        return m

    async def has_repo(self, digest: str, repository: str) -> bool:
        """Was ``digest`` seen in ``repository`` (memory, else the database)?"""
        key = (digest, repository)
        if key in self._repos:
            self._repos.move_to_end(key)
            return True
        rows = await self.db.query(
            "SELECT 1 AS found FROM cache_manifest_repos WHERE digest = ? AND repository = ?", key)
        if rows:
            self._remember_repo(digest, repository)
        return bool(rows)

    def _remember(self, m: Manifest) -> None:
        if m.digest in self._bodies:
            return
        self._bodies[m.digest] = m
        self._body_bytes += len(m.body)
        while self._body_bytes > self.memory_limit and len(self._bodies) > 1:
            _, old = self._bodies.popitem(last=False)
            self._body_bytes -= len(old.body)

    def _remember_repo(self, digest: str, repository: str) -> bool:
        """Note the pair in memory; True if it was not there."""
        key = (digest, repository)
        if key in self._repos:
            self._repos.move_to_end(key)
            return False
        self._repos[key] = None
        while len(self._repos) > self.repo_limit:
            self._repos.popitem(last=False)
        return True

    def _put_tag(self, entry: TagEntry) -> None:
        key = (entry.repository, entry.tag)
        entries = self.tags.get(key)
        if entries is None:
            entries = self.tags[key] = {}
        else:
            self.tags.move_to_end(key)
        if entry.media_type not in entries:
            self._tag_entries += 1
        entries[entry.media_type] = entry
        while self._tag_entries > self.tag_limit and len(self.tags) > 1:
            old_key, old = self.tags.popitem(last=False)
            self._tag_entries -= len(old)
            self._partial.discard(old_key)

    def _pop_tag(self, key: tuple[str, str]) -> None:
        old = self.tags.pop(key, None)
        if old is not None:
            self._tag_entries -= len(old)
        self._partial.discard(key)

    # -- counters -----------------------------------------------------------------
    def count_hit(self, *, stale: bool = False) -> None:
        """A pull answered from here (``stale``: past its TTL, upstreams failing)."""
        self.stats["hits"] += 1
        if stale:
            self.stats["stale_served"] += 1

    def count_miss(self) -> None:
        """A pull answered from an upstream (and stored here)."""
        self.stats["misses"] += 1

    # -- updates ------------------------------------------------------------------
    def store(self, repository: str, tag: Optional[str], m: Manifest) -> None:
        now = self.clock.seconds()
        known = m.digest in self._bodies
        self._remember(m)
        new_repo = self._remember_repo(m.digest, repository)  # (INSERT OR IGNORE if in the database)
        entry = None
        if tag is not None:
            entry = TagEntry(repository, tag, m.media_type, m.digest, now)
            key = (repository, tag)
            if key not in self.tags:
                self._partial.add(key)  # the database may hold other media types of it
            self._put_tag(entry)
        self._write(_store_rows, m, now, None if known else m, repository if new_repo else None, entry)

    def add_repo(self, digest: str, repository: str) -> None:
        if self._remember_repo(digest, repository):
            self._write(_add_repo, digest, repository)

    def refresh(self, entry: TagEntry) -> None:
        entry.fetched_at = self.clock.seconds()
        self.stats["revalidated"] += 1
        self._write(_refresh_tag, entry.repository, entry.tag, entry.media_type, entry.fetched_at)

    def drop_tag(self, repository: str, tag: str) -> None:
        key = (repository, tag)
        self._pop_tag(key)  # the database may hold it even when memory does not: always delete there
        self._dropping[key] = self._dropping.get(key, 0) + 1

        def written(result):
            n = self._dropping.get(key, 0) - 1
            if n > 0:
                self._dropping[key] = n
            else:
                self._dropping.pop(key, None)
            return result

        self._write(_drop_tag, repository, tag, then=written)

    async def delete(self, *, repository: Optional[str] = None, digest: Optional[str] = None) -> int:
        everything = digest is None and repository is None
        n, digests = await self.db.write(_delete_rows, repository, digest)
        for key in list(self.tags):
            entries = self.tags[key]
            for mt in list(entries):
                e = entries[mt]
                if everything or e.digest == digest or (repository is not None and key[0] == repository):
                    del entries[mt]
                    self._tag_entries -= 1
            if not entries:
                self._pop_tag(key)
        if everything:
            digests = digests | set(self._bodies)
            self._repos.clear()
        for d in digests:
            m = self._bodies.pop(d, None)
            if m is not None:
                self._body_bytes -= len(m.body)
        for key in list(self._repos):
            if key[0] in digests or key[1] == repository:
                del self._repos[key]
        return max(n, len(digests))

    def summary(self) -> dict:
        """Counts of what is in memory (the database may hold more)."""
        return {"tags": self._tag_entries, "tag_limit": self.tag_limit, "in_memory": len(self._bodies),
                **self.stats}

    def _write(self, f, *args, then=None) -> None:
        d = self.db.write(f, *args)
        if then is not None:
            d.addBoth(then)
        d.addErrback(lambda fail: log.failure("manifest cache write failed", fail))


def _newest(entries: dict[str, TagEntry], accept: list[str]) -> Optional[TagEntry]:
    ok = [e for e in entries.values() if acceptable(e.media_type, accept)]
    return max(ok, key=lambda e: e.fetched_at) if ok else None


def _store_rows(txn, m: Manifest, now: float, new: Optional[Manifest], repo: Optional[str],
                entry: Optional[TagEntry]):
    if new is not None:
        txn.execute(
            "INSERT INTO cache_manifests (digest, media_type, body, created_at, last_access) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (m.digest, m.media_type, m.body, now, now))
    if repo is not None:
        txn.execute("INSERT INTO cache_manifest_repos (digest, repository) VALUES (?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (m.digest, repo))
    if entry is not None:
        txn.execute(
            "INSERT INTO cache_tags (repository, tag, media_type, digest, fetched_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(repository, tag, media_type) DO UPDATE SET digest = excluded.digest, "
            "fetched_at = excluded.fetched_at",
            (entry.repository, entry.tag, entry.media_type, entry.digest, entry.fetched_at))


def _add_repo(txn, digest, repository):
    txn.execute("INSERT INTO cache_manifest_repos (digest, repository) VALUES (?, ?)"
                    " ON CONFLICT DO NOTHING",
                (digest, repository))


def _refresh_tag(txn, repository, tag, media_type, fetched_at):
    txn.execute("UPDATE cache_tags SET fetched_at = ? WHERE repository = ? AND tag = ? AND media_type = ?",
                (fetched_at, repository, tag, media_type))


def _drop_tag(txn, repository, tag):
    txn.execute("DELETE FROM cache_tags WHERE repository = ? AND tag = ?", (repository, tag))


def _delete_rows(txn, repository, digest) -> tuple[int, set[str]]:
    """Delete from the database; returns (manifests deleted, the digests concerned)."""
    if digest is not None:
        txn.execute("DELETE FROM cache_tags WHERE digest = ?", (digest,))
        txn.execute("DELETE FROM cache_manifest_repos WHERE digest = ?", (digest,))
        txn.execute("DELETE FROM cache_manifests WHERE digest = ?", (digest,))
        return txn.rowcount, {digest}
    if repository is not None:
        txn.execute("SELECT DISTINCT digest FROM cache_manifest_repos WHERE repository = ?", (repository,))
        digests = {r[0] for r in txn.fetchall()}
        txn.execute("DELETE FROM cache_tags WHERE repository = ?", (repository,))
        txn.execute(
            "DELETE FROM cache_manifests WHERE digest IN (SELECT digest FROM cache_manifest_repos "
            "WHERE repository = ?) AND digest NOT IN (SELECT digest FROM cache_manifest_repos "
            "WHERE repository != ?)", (repository, repository))
        n = txn.rowcount
        txn.execute("DELETE FROM cache_manifest_repos WHERE repository = ?", (repository,))
        return n, digests
    txn.execute("SELECT digest FROM cache_manifests")
    digests = {r[0] for r in txn.fetchall()}
    txn.execute("DELETE FROM cache_tags")
    txn.execute("DELETE FROM cache_manifest_repos")
    txn.execute("DELETE FROM cache_manifests")
    return txn.rowcount, digests
