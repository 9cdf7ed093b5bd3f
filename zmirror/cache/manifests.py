"""Manifest cache: bodies by digest (kept for good), tags with a fetch time.

Everything needed to answer is in memory (loaded at start, bounded LRU for
bodies with the database as the backing store), so a cached manifest costs
no I/O; changes are written to SQLite through the serialized writer.

A tag maps to one digest per media type, because upstreams answer a tag with
different manifests for different Accept sets (a list or one of its children).
A cached manifest is only served to a client whose Accept admits its type.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from twisted.logger import Logger

from zmirror.cache.gate import LoadGate

log = Logger()


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


def acceptable(media_type: str, accept: list[str]) -> bool:
    """Does a client's merged Accept list admit ``media_type``?"""
    for item in accept:
        t = item.split(";", 1)[0].strip().lower()
        if t == "*/*" or t == media_type.lower():
            return True
    return False


class ManifestCache:
    def __init__(self, db: Any, clock: Any, *, ttl: float = 300.0, memory_limit: int = 64 << 20):
        self.db = db
        self.clock = clock
        self.ttl = ttl
        self.memory_limit = memory_limit
        self.tags: dict[tuple[str, str], dict[str, TagEntry]] = {}
        self._bodies: "OrderedDict[str, Manifest]" = OrderedDict()
        self._body_bytes = 0
        self.repos: dict[str, set[str]] = {}  # digest -> repositories
        self.stats = {"hits": 0, "misses": 0, "stale_served": 0, "revalidated": 0}
        self.loading = LoadGate()  # closed while start() loads the tags: requests wait on it

    async def start(self) -> None:
        self.loading.close()
        try:
            rows = await self.db.query(
                "SELECT repository, tag, media_type, digest, fetched_at FROM cache_tags")
            for r in rows:
                self.tags.setdefault((r["repository"], r["tag"]), {})[r["media_type"]] = TagEntry(**r)
            for r in await self.db.query("SELECT digest, repository FROM cache_manifest_repos"):
                self.repos.setdefault(r["digest"], set()).add(r["repository"])
        finally:
            self.loading.open()

    # -- lookups ------------------------------------------------------------------
    def tag(self, repository: str, tag: str, accept: list[str]) -> Optional[TagEntry]:
        """The most recently fetched entry of this tag that the client accepts."""
        entries = self.tags.get((repository, tag))
        if not entries:
            return None
        ok = [e for e in entries.values() if acceptable(e.media_type, accept)]
        return max(ok, key=lambda e: e.fetched_at) if ok else None

    def fresh(self, entry: TagEntry) -> bool:
        return self.clock.seconds() - entry.fetched_at < self.ttl

    async def get(self, digest: str) -> Optional[Manifest]:
        m = self._bodies.get(digest)
        if m is not None:
            self._bodies.move_to_end(digest)
            return m
        rows = await self.db.query("SELECT media_type, body FROM cache_manifests WHERE digest = ?", (digest,))
        if not rows:
            return None
        m = Manifest(digest, rows[0]["media_type"], bytes(rows[0]["body"]))
        self._remember(m)
        return m

    def _remember(self, m: Manifest) -> None:
        if m.digest in self._bodies:
            return
        self._bodies[m.digest] = m
        self._body_bytes += len(m.body)
        while self._body_bytes > self.memory_limit and len(self._bodies) > 1:
            _, old = self._bodies.popitem(last=False)
            self._body_bytes -= len(old.body)

    # -- updates ------------------------------------------------------------------
    def store(self, repository: str, tag: Optional[str], m: Manifest) -> None:
        now = self.clock.seconds()
        new_repo = repository not in self.repos.get(m.digest, set())
        known = m.digest in self._bodies
        self._remember(m)
        self.repos.setdefault(m.digest, set()).add(repository)
        entry = None
        if tag is not None:
            entry = TagEntry(repository, tag, m.media_type, m.digest, now)
            self.tags.setdefault((repository, tag), {})[m.media_type] = entry
        self._write(_store_rows, m, now, None if known else m, repository if new_repo else None, entry)

    def add_repo(self, digest: str, repository: str) -> None:
        if repository not in self.repos.setdefault(digest, set()):
            self.repos[digest].add(repository)
            self._write(_add_repo, digest, repository)

    def refresh(self, entry: TagEntry) -> None:
        entry.fetched_at = self.clock.seconds()
        self.stats["revalidated"] += 1
        self._write(_refresh_tag, entry.repository, entry.tag, entry.media_type, entry.fetched_at)

    def drop_tag(self, repository: str, tag: str) -> None:
        if self.tags.pop((repository, tag), None) is not None:
            self._write(_drop_tag, repository, tag)

    async def delete(self, *, repository: Optional[str] = None, digest: Optional[str] = None) -> int:
        if digest is not None:
            digests = {digest}
        elif repository is not None:
            digests = {d for d, repos in self.repos.items() if repository in repos}
        else:
            digests = set(self._bodies) | set(self.repos)
        everything = digest is None and repository is None
        for key in list(self.tags):
            entries = self.tags[key]
            for mt in list(entries):
                e = entries[mt]
                if everything or e.digest == digest or (repository is not None and key[0] == repository):
                    del entries[mt]
            if not entries:
                del self.tags[key]
        for d in digests:
            m = self._bodies.pop(d, None)
            if m is not None:
                self._body_bytes -= len(m.body)
            self.repos.pop(d, None)
        n = await self.db.write(_delete_rows, repository, digest)
        return max(n, len(digests))

    def summary(self) -> dict:
        return {"tags": sum(len(v) for v in self.tags.values()), "in_memory": len(self._bodies),
                **self.stats}

    def _write(self, f, *args) -> None:
        d = self.db.write(f, *args)
        d.addErrback(lambda fail: log.failure("manifest cache write failed", fail))


def _store_rows(txn, m: Manifest, now: float, new: Optional[Manifest], repo: Optional[str],
                entry: Optional[TagEntry]):
    if new is not None:
        txn.execute(
            "INSERT OR IGNORE INTO cache_manifests (digest, media_type, body, created_at, last_access) "
            "VALUES (?, ?, ?, ?, ?)", (m.digest, m.media_type, m.body, now, now))
    if repo is not None:
        txn.execute("INSERT OR IGNORE INTO cache_manifest_repos (digest, repository) VALUES (?, ?)",
                    (m.digest, repo))
    if entry is not None:
        txn.execute(
            "INSERT INTO cache_tags (repository, tag, media_type, digest, fetched_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(repository, tag, media_type) DO UPDATE SET digest = excluded.digest, "
            "fetched_at = excluded.fetched_at",
            (entry.repository, entry.tag, entry.media_type, entry.digest, entry.fetched_at))


def _add_repo(txn, digest, repository):
    txn.execute("INSERT OR IGNORE INTO cache_manifest_repos (digest, repository) VALUES (?, ?)",
                (digest, repository))


def _refresh_tag(txn, repository, tag, media_type, fetched_at):
    txn.execute("UPDATE cache_tags SET fetched_at = ? WHERE repository = ? AND tag = ? AND media_type = ?",
                (fetched_at, repository, tag, media_type))


def _drop_tag(txn, repository, tag):
    txn.execute("DELETE FROM cache_tags WHERE repository = ? AND tag = ?", (repository, tag))


def _delete_rows(txn, repository, digest) -> int:
    if digest is not None:
        txn.execute("DELETE FROM cache_tags WHERE digest = ?", (digest,))
        txn.execute("DELETE FROM cache_manifest_repos WHERE digest = ?", (digest,))
        txn.execute("DELETE FROM cache_manifests WHERE digest = ?", (digest,))
        return txn.rowcount
    if repository is not None:
        txn.execute("DELETE FROM cache_tags WHERE repository = ?", (repository,))
        txn.execute(
            "DELETE FROM cache_manifests WHERE digest IN (SELECT digest FROM cache_manifest_repos "
            "WHERE repository = ?) AND digest NOT IN (SELECT digest FROM cache_manifest_repos "
            "WHERE repository != ?)", (repository, repository))
        n = txn.rowcount
        txn.execute("DELETE FROM cache_manifest_repos WHERE repository = ?", (repository,))
        return n
    txn.execute("DELETE FROM cache_tags")
    txn.execute("DELETE FROM cache_manifest_repos")
    txn.execute("DELETE FROM cache_manifests")
    return txn.rowcount
