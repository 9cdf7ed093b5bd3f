"""Manifest cache: bodies by digest (kept for good), tags with a fetch time, in
the main database (shared by the nodes on PostgreSQL) with bounded LRU copies
in memory; a delete is published on the cluster bus (:data:`DELETE_EVENT`).
See docs/design/cache.md."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from zmirror.cache.gate import LoadGate
from zmirror.oci.mediatypes import acceptable, valid_media_type

log = Logger()

# published by a node that deleted cached manifests: {"r": repository or None, "d": digest or None}
DELETE_EVENT = "manifest.delete"
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
# a failed lookup is logged at most once per this many seconds (the database may be down a while)
LOOKUP_LOG_INTERVAL = 60.0


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
                 tag_limit: int = 100_000, repo_limit: int = 100_000, shared: Optional[bool] = None,
                 bus: Any = None):
        self.db = db
        # the other nodes forget what this one deleted (DELETE_EVENT), and it what they did
        self.bus = bus
        if bus is not None:
            bus.subscribe(DELETE_EVENT, self._deleted_elsewhere)
        # other nodes write the same rows (PostgreSQL): memory is not the newest word
        self.shared = getattr(db, "dialect", "sqlite") == "postgresql" if shared is None else shared
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
        # keys with a store or refresh still being written: a row missing there is not gone
        self._writing: dict[tuple[str, str], int] = {}
        self._bodies: "OrderedDict[str, Manifest]" = OrderedDict()
        self._body_bytes = 0
        self._repos: "OrderedDict[tuple[str, str], None]" = OrderedDict()  # (digest, repository)
        self.stats = {"hits": 0, "misses": 0, "stale_served": 0, "revalidated": 0}
        self.loading = LoadGate()  # closed while start() loads the tags: requests wait on it
        self._lookup_logged_at: Optional[float] = None
        self._lookups_failed = 0
        # last pulls (hits and fills) not written yet: (repository, tag, media type) → time,
        # digest → time; written in batches (flush_pulls, by the upkeep), never per request
        self.record_pulls = True
        self._pulled_tags: dict[tuple[str, str, str], float] = {}
        self._pulled_bodies: dict[str, float] = {}

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
        """:meth:`_tag`; a pull of the entry found is recorded (:meth:`flush_pulls`)."""
        entries = self.tags.get((repository, tag))
        if entries is not None:  # the hot path, without the lookup's coroutine
            found = _newest(entries, accept)
            if found is not None and (not self.shared or self.fresh(found)):
                self.tags.move_to_end((repository, tag))
                if self.record_pulls:
                    self._pulled_tags[(repository, tag, found.media_type)] = self.clock.seconds()
                return found
        found = await self._tag(repository, tag, accept)
        if found is not None and self.record_pulls:
            self._pulled_tags[(found.repository, found.tag, found.media_type)] = self.clock.seconds()
        return found

    async def _tag(self, repository: str, tag: str, accept: list[str]) -> Optional[TagEntry]:
        """The most recently fetched entry of this tag that the client accepts
        (from memory, else from the database).

        Shared database: a stale or missing entry is looked up there first
        (another node may have fetched, refreshed or moved it since)."""
        key = (repository, tag)
        entries = self.tags.get(key)
        found = None
        if entries is not None:
            self.tags.move_to_end(key)
            found = _newest(entries, accept)
            if found is not None and (not self.shared or self.fresh(found)):
                return found
            if found is None and not self.shared and key not in self._partial:
                return None  # one node: memory holds every media type of this tag
        if key in self._dropping:
            return None
        # a write of this key in flight now may land after the lookup reads (a store or
        # refresh issued later makes its entry fresh: it cannot be taken for deleted)
        writing = key in self._writing
        rows = await self._lookup(
            "SELECT repository, tag, media_type, digest, fetched_at FROM cache_tags "
            "WHERE repository = ? AND tag = ?", (repository, tag))
        if key in self._dropping:
            return None
        if rows is None:  # the database failed: what memory has (stale or nothing)
            return found
        current = self.tags.get(key, {})
        seen = set()
        for r in rows:
            if not _valid_row(r):
                continue
            seen.add(r["media_type"])
            mine = current.get(r["media_type"])
            # one node: memory is newer than the database; shared: the newer fetch wins
            if mine is None or (self.shared and r["fetched_at"] > mine.fetched_at):
                self._put_tag(TagEntry(**r))
        if self.shared and not writing and key not in self._writing:
            # a stale entry whose row is gone was deleted (or dropped) by another node
            for e in list(self.tags.get(key, {}).values()):
                if e.media_type not in seen and not self.fresh(e):
                    self._forget(e)
        self._partial.discard(key)
        return _newest(self.tags.get(key, {}), accept)

    def fresh(self, entry: TagEntry) -> bool:
        return self.clock.seconds() - entry.fetched_at < self.ttl

    async def get(self, digest: str) -> Optional[Manifest]:
        """The body of ``digest`` (memory, else the database); its pull is recorded."""
        m = self._bodies.get(digest)
        if m is not None:
            self._bodies.move_to_end(digest)
        else:
            rows = await self._lookup("SELECT media_type, body FROM cache_manifests WHERE digest = ?",
                                      (digest,))
            if not rows or not valid_media_type(rows[0]["media_type"]):
                return None
            m = Manifest(digest, rows[0]["media_type"], bytes(rows[0]["body"]))
            self._remember(m)
        if self.record_pulls:
            self._pulled_bodies[digest] = self.clock.seconds()
        return m

    # -- last pulls -----------------------------------------------------------------
    async def flush_pulls(self) -> None:
        """Write the last pulls recorded since the last flush in one transaction
        (a time only moves forward); when the write fails they are kept for the next."""
        if not self._pulled_tags and not self._pulled_bodies:
            return
        tags, self._pulled_tags = self._pulled_tags, {}
        bodies, self._pulled_bodies = self._pulled_bodies, {}
        try:
            await self.db.write(_write_pulls, [(t, *k, t) for k, t in tags.items()],
                                [(t, d, t) for d, t in bodies.items()])
        except BaseException:
            for k, t in tags.items():
                self._pulled_tags[k] = max(t, self._pulled_tags.get(k, t))
            for d, t in bodies.items():
                self._pulled_bodies[d] = max(t, self._pulled_bodies.get(d, t))
            raise

    def pulled_since(self, since: float, *, tag: Optional[tuple] = None,
                     digest: Optional[str] = None) -> bool:
        """Was the tag ``(repository, tag, media type)`` or the body ``digest`` pulled
        at or after ``since`` (recorded, not written yet)?"""
        t = self._pulled_tags.get(tag) if tag is not None else self._pulled_bodies.get(digest)
        return t is not None and t >= since

    def forget_retained(self, tags: list, digests: list) -> None:
        """Drop the memory copies of what retention deleted: tag entries
        ``(repository, tag, media type)`` and manifest bodies."""
        for repository, tag, media_type in tags:
            e = self.tags.get((repository, tag), {}).get(media_type)
            if e is not None:
                self._forget(e)
        gone = set(digests)
        for d in gone:
            m = self._bodies.pop(d, None)
            if m is not None:
                self._body_bytes -= len(m.body)
        if gone:
            for key in [k for k in self._repos if k[0] in gone]:
                del self._repos[key]

    async def has_repo(self, digest: str, repository: str) -> bool:
        """Was ``digest`` seen in ``repository`` (memory, else the database)?"""
        key = (digest, repository)
        if key in self._repos:
            self._repos.move_to_end(key)
            return True
        rows = await self._lookup(
            "SELECT 1 AS found FROM cache_manifest_repos WHERE digest = ? AND repository = ?", key)
        if rows:
            self._remember_repo(digest, repository)
        return bool(rows)

    async def _lookup(self, sql: str, params: tuple) -> Optional[list]:
        """The rows of a lookup, or None when the database failed (logged, at
        most once per LOOKUP_LOG_INTERVAL): the caller counts it as a miss."""
        try:
            return await self.db.query(sql, params)
        except CancelledError:
            raise
        except Exception:
            self._lookups_failed += 1
            now = self.clock.seconds()
            if self._lookup_logged_at is None or now - self._lookup_logged_at >= LOOKUP_LOG_INTERVAL:
                self._lookup_logged_at = now
                log.failure("manifest cache lookup failed ({n} since the last report); "
                            "answering from the upstream", n=self._lookups_failed)
                self._lookups_failed = 0
            return None

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

    def _forget(self, entry: TagEntry) -> None:
        """Drop ``entry`` from memory if it is still there (not replaced since)."""
        key = (entry.repository, entry.tag)
        entries = self.tags.get(key)
        if entries is None or entries.get(entry.media_type) is not entry:
            return
        del entries[entry.media_type]
        self._tag_entries -= 1
        if entries:
            self._partial.add(key)  # the database may hold a newer row of this media type
        else:
            self._pop_tag(key)

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
        """Keep what an upstream answered.  Every row is written (upserts: it may
        already be there, written by this or another node, or deleted since)."""
        now = self.clock.seconds()
        self._remember(m)
        self._remember_repo(m.digest, repository)
        if self.record_pulls:
            self._pulled_bodies[m.digest] = now
        entry = None
        if tag is not None:
            entry = TagEntry(repository, tag, m.media_type, m.digest, now)
            if self.record_pulls:
                self._pulled_tags[(repository, tag, m.media_type)] = now
            key = (repository, tag)
            if key not in self.tags:
                self._partial.add(key)  # the database may hold other media types of it
            self._put_tag(entry)
        self._write(_store_rows, m, now, repository, entry,
                    then=None if entry is None else self._written_later((repository, tag)))

    def add_repo(self, digest: str, repository: str) -> None:
        if self._remember_repo(digest, repository):
            self._write(_add_repo, digest, repository)

    def refresh(self, entry: TagEntry) -> None:
        """An upstream confirmed ``entry``'s digest now.  Shared database: when its
        row is gone (deleted by another node) or newer (another node fetched it
        later), the entry leaves memory, so it is not served past the TTL of
        the shared row; the next lookup reads the row again."""
        entry.fetched_at = self.clock.seconds()
        self.stats["revalidated"] += 1

        done = self._written_later((entry.repository, entry.tag))

        def written(n):
            if self.shared and n == 0:
                self._forget(entry)
            return done(n)

        self._write(_refresh_tag, entry.repository, entry.tag, entry.media_type, entry.digest,
                    entry.fetched_at, then=written)

    def _written_later(self, key: tuple[str, str]):
        """Count a write of ``key``'s row as in flight; returns what ends it."""
        self._writing[key] = self._writing.get(key, 0) + 1

        def written(result):
            n = self._writing.get(key, 0) - 1
            if n > 0:
                self._writing[key] = n
            else:
                self._writing.pop(key, None)
            return result

        return written

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
        n, digests = await self.db.write(delete_rows, repository, digest)
        forgotten = self._forget_deleted(repository, digest, digests)
        if self.bus is not None:
            self.bus.publish(DELETE_EVENT, {"r": repository, "d": digest})
        return max(n, forgotten)

    def _deleted_elsewhere(self, data: Any) -> None:
        """Another node deleted rows of the shared cache: drop this node's memory copies
        (what it cannot tell from memory is looked up in the database, where it is gone)."""
        r = data.get("r") if isinstance(data, dict) else None
        d = data.get("d") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not (r is None or (isinstance(r, str) and 0 < len(r) <= 1000)) \
                or not (d is None or (isinstance(d, str) and _DIGEST.match(d))):
            log.warn("manifest cache: an unusable delete event from another node was ignored")
            return
        digests = {d} if d is not None else set()
        if r is not None:
            # the bodies this node knows to belong to the repository
            digests |= {k[0] for k in self._repos if k[1] == r}
            digests |= {e.digest for key, entries in self.tags.items() if key[0] == r
                        for e in entries.values()}
        self._forget_deleted(r, d, digests)

    def _forget_deleted(self, repository: Optional[str], digest: Optional[str], digests: set) -> int:
        """Drop the memory copies of a delete (everything when both are None)."""
        everything = digest is None and repository is None
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
        return len(digests)

    def forget(self, *, repository: Optional[str] = None, digest: Optional[str] = None,
               tag: Optional[str] = None) -> None:
        """Drop memory copies after a purge or invalidation the database already holds:
        one tag (``repository`` and ``tag``), a repository, a digest, or (none) all;
        the next lookup reads the database."""
        if tag is not None and repository is not None:
            self._pop_tag((repository, tag))
            return
        self._deleted_elsewhere({"r": repository, "d": digest})

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


def _store_rows(txn, m: Manifest, now: float, repo: str, entry: Optional[TagEntry]):
    # the same order in every store (manifest, repository, tag): concurrent ones cannot deadlock
    txn.execute(
        "INSERT INTO cache_manifests (digest, media_type, body, created_at, last_access) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", (m.digest, m.media_type, m.body, now, now))
    txn.execute("INSERT INTO cache_manifest_repos (digest, repository) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING", (m.digest, repo))
    if entry is not None:
        # fetched_at only moves forward: an older fetch (another node's, arriving late) loses
        txn.execute(
            "INSERT INTO cache_tags (repository, tag, media_type, digest, fetched_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (repository, tag, media_type) DO UPDATE SET digest = excluded.digest, "
            "fetched_at = excluded.fetched_at WHERE cache_tags.fetched_at <= excluded.fetched_at",
            (entry.repository, entry.tag, entry.media_type, entry.digest, entry.fetched_at))


def _write_pulls(txn, tags, bodies):
    txn.executemany("UPDATE cache_tags SET last_access = ? WHERE repository = ? AND tag = ? "
                    "AND media_type = ? AND (last_access IS NULL OR last_access < ?)", tags)
    txn.executemany("UPDATE cache_manifests SET last_access = ? WHERE digest = ? AND last_access < ?",
                    bodies)


def _add_repo(txn, digest, repository):
    txn.execute("INSERT INTO cache_manifest_repos (digest, repository) VALUES (?, ?)"
                    " ON CONFLICT DO NOTHING",
                (digest, repository))


def _refresh_tag(txn, repository, tag, media_type, digest, fetched_at) -> int:
    """Rows updated: 0 when the row is gone (a delete is not undone) or newer."""
    txn.execute("UPDATE cache_tags SET digest = ?, fetched_at = ? WHERE repository = ? AND tag = ? "
                "AND media_type = ? AND fetched_at <= ?",
                (digest, fetched_at, repository, tag, media_type, fetched_at))
    return txn.rowcount


def _drop_tag(txn, repository, tag):
    txn.execute("DELETE FROM cache_tags WHERE repository = ? AND tag = ?", (repository, tag))


def delete_rows(txn, repository, digest) -> tuple[int, set[str]]:
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
