"""Purge and invalidate the cache on every node.

A request (:class:`Scope`: a namespace, a repository, one tag of it, a digest,
or everything; ``purge`` or ``invalidate``) becomes a row of ``cache_purges``
written in one transaction with its effect on the shared rows (manifests and
tags, :func:`record`).  The admin API's node then applies it to what it holds
itself (:meth:`CachePurge.apply`: blob files and index, memory copies) and
publishes :data:`PURGE_EVENT`; the other nodes apply it when they hear the
event, and every node polls ``cache_purges`` (every :data:`POLL` s) for rows it
has not applied: those the CLI wrote, or events a node missed.  A node applies
the rows written while it runs (it starts after the newest row).

Blobs: a purge of a repository (or a namespace: its repositories) removes it
from each blob's repositories; a blob goes only when no other cached repository
uses it.  A tag purge deletes that tag's rows only (its blobs stay, the
repository still uses them).  A digest purge deletes that blob or manifest.
A blob being read is unlinked once its last reader closed; a download running
at the time completes (verified) and is cached.

Invalidate: the tag's rows get ``fetched_at = 0`` and every node drops its
memory copies, so the next pull revalidates upstream (HEAD, then GET when the
digest moved); while the upstream fails it is served stale as before.

Design: docs/design/cache.md ("Purge and invalidate").
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from zmirror.cache.manifests import delete_rows
from zmirror.oci.names import DOCKER_HUB, hostlike

log = Logger()

PURGE_EVENT = "cache.purge"  # {"id": row id, "action", "namespace", "repository", "tag", "digest"}
POLL = 2.0  # seconds between two reads of cache_purges for rows this node did not apply
LOOKBACK = 100  # the poll reads from this many ids below the highest applied (late commits)
ACTIONS = ("purge", "invalidate")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")


def namespace_of_name(name: str) -> str:
    """The namespace of a canonical repository name held as a plain string."""
    first, sep, _ = name.partition("/")
    return first if sep and hostlike(first) else DOCKER_HUB


@dataclass(frozen=True)
class Scope:
    """What a purge or invalidation concerns; every field None: everything."""

    action: str = "purge"
    namespace: Optional[str] = None
    repository: Optional[str] = None
    tag: Optional[str] = None
    digest: Optional[str] = None

    @classmethod
    def from_event(cls, data: Any) -> Optional["Scope"]:
        """The scope of an event or row, or None when it is not usable."""
        if not isinstance(data, dict) or data.get("action") not in ACTIONS:
            return None
        fields = {}
        for key in ("namespace", "repository", "tag"):
            v = data.get(key)
            if v is not None and not (isinstance(v, str) and 0 < len(v) <= 300):
                return None
            fields[key] = v
        d = data.get("digest")
        if d is not None and not (isinstance(d, str) and _DIGEST.match(d)):
            return None
        if fields["tag"] is not None and (fields["repository"] is None or not _TAG.match(fields["tag"])):
            return None
        return cls(action=data["action"], digest=d, **fields)


# --- the shared rows (one transaction with the request's row) ---------------------------------


def record(txn, scope: Scope, origin: str, now: float) -> dict:
    """Write the request's row and its effect on the shared rows; returns
    ``{"id", "manifests", "tags"}`` (invalidate: ``tags`` = tags invalidated)."""
    manifests = tags = 0
    if scope.action == "invalidate":
        tags = _invalidate(txn, scope.repository, scope.tag)
    elif scope.tag is not None:
        txn.execute("SELECT count(*) FROM cache_tags WHERE repository = ? AND tag = ?",
                    (scope.repository, scope.tag))
        tags = int(txn.fetchone()[0])
        txn.execute("DELETE FROM cache_tags WHERE repository = ? AND tag = ?",
                    (scope.repository, scope.tag))
    elif scope.digest is not None:
        tags = _count(txn, "SELECT count(*) FROM cache_tags WHERE digest = ?", (scope.digest,))
        manifests = delete_rows(txn, None, scope.digest)[0]
    elif scope.repository is not None or scope.namespace is not None:
        for repo in repositories(txn, scope):
            tags += _count(txn, "SELECT count(*) FROM cache_tags WHERE repository = ?", (repo,))
            manifests += delete_rows(txn, repo, None)[0]
    else:
        tags = _count(txn, "SELECT count(*) FROM cache_tags", ())
        manifests = delete_rows(txn, None, None)[0]
    txn.execute(
        "INSERT INTO cache_purges (action, namespace, repository, tag, digest, origin, created_at, "
        "manifests, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (scope.action, scope.namespace, scope.repository, scope.tag, scope.digest, origin, now,
         manifests, tags))
    return {"id": int(txn.fetchone()[0]), "manifests": max(0, manifests), "tags": tags}


def repositories(txn, scope: Scope) -> list[str]:
    """The repositories of a repository or namespace scope that have shared rows."""
    if scope.repository is not None:
        return [scope.repository]
    txn.execute("SELECT DISTINCT repository FROM cache_tags UNION "
                "SELECT DISTINCT repository FROM cache_manifest_repos")
    return sorted(r[0] for r in txn.fetchall() if namespace_of_name(r[0]) == scope.namespace)


def _count(txn, sql: str, params: tuple) -> int:
    txn.execute(sql, params)
    return int(txn.fetchone()[0])


def _invalidate(txn, repository: str, tag: Optional[str]) -> int:
    """fetched_at = 0 on the tag's rows (every tag of the repository without ``tag``)."""
    where, params = "repository = ?", (repository,)
    if tag is not None:
        where, params = "repository = ? AND tag = ?", (repository, tag)
    n = _count(txn, f"SELECT count(DISTINCT tag) FROM cache_tags WHERE {where}", params)
    txn.execute(f"UPDATE cache_tags SET fetched_at = 0 WHERE {where}", params)
    return n


def _rows_after(txn, after: int, limit: int) -> list[dict]:
    txn.execute("SELECT id, action, namespace, repository, tag, digest FROM cache_purges "
                "WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
    names = ("id", "action", "namespace", "repository", "tag", "digest")
    return [dict(zip(names, r)) for r in txn.fetchall()]


def _newest(txn) -> int:
    txn.execute("SELECT max(id) FROM cache_purges")
    row = txn.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def history(txn, limit: int) -> list[dict]:
    """The newest ``limit`` requests, newest first."""
    txn.execute("SELECT id, action, namespace, repository, tag, digest, origin, created_at, manifests, "
                "tags FROM cache_purges ORDER BY id DESC LIMIT ?", (limit,))
    names = ("id", "action", "namespace", "repository", "tag", "digest", "origin", "created_at",
             "manifests", "tags")
    return [dict(zip(names, r)) for r in txn.fetchall()]


# --- a node ---------------------------------------------------------------------------------


class CachePurge:
    """Purges and invalidations of this node (``blobs``: its
    :class:`~zmirror.cache.blobs.CacheBlobs`, ``manifests``: the
    :class:`~zmirror.cache.manifests.ManifestCache`), heard from the others on
    ``bus`` and found in ``cache_purges`` by a poll every ``interval`` s."""

    def __init__(self, db: Any, clock: Any, *, blobs: Any, manifests: Any = None, bus: Any = None,
                 node: str = "", interval: float = POLL):
        self.db = db
        self.clock = clock
        self.blobs = blobs
        self.manifests = manifests
        self.bus = bus
        self.node = node
        self.interval = interval
        # the newest row at start (those up to it are not applied); None: not read yet
        self._start: Optional[int] = None
        self._highest = 0  # the highest id applied here
        # ids above the poll's floor already applied (events, own requests, polls)
        self._applied: set[int] = set()
        self._loop: Optional[LoopingCall] = None
        self.applied = 0  # requests applied here (counted for tests and the log)
        if bus is not None:
            bus.subscribe(PURGE_EVENT, self._heard)

    # --- requests taken here ---------------------------------------------------------------

    async def purge(self, scope: Scope) -> dict:
        """Delete what ``scope`` names everywhere; ``{"blobs", "manifests", "tags"}``
        (blobs: this node's)."""
        done = await self.db.write(record, scope, self.node, self.clock.seconds())
        blobs = await self._take(done["id"], scope)
        return {"blobs": blobs, "manifests": done["manifests"], "tags": done["tags"]}

    async def invalidate(self, repository: str, tag: Optional[str] = None) -> int:
        """Make the next pull of the tag (every tag of ``repository``) revalidate upstream."""
        scope = Scope(action="invalidate", repository=repository, tag=tag)
        done = await self.db.write(record, scope, self.node, self.clock.seconds())
        await self._take(done["id"], scope)
        return done["tags"]

    async def _take(self, rid: int, scope: Scope) -> int:
        self._applied.add(rid)
        self._highest = max(self._highest, rid)
        if self.bus is not None:  # the others start at once (a failure here: their poll)
            self.bus.publish(PURGE_EVENT, {"id": rid, **asdict(scope)})
        return await self.apply(scope)

    # --- what this node holds --------------------------------------------------------------

    async def apply(self, scope: Scope) -> int:
        """Apply ``scope`` to this node's blobs and memory copies (the shared rows
        are done); returns the number of blobs deleted here."""
        self.applied += 1
        m = self.manifests
        if scope.action == "invalidate" or scope.tag is not None:
            if m is not None:
                if scope.tag is not None:
                    m.forget(repository=scope.repository, tag=scope.tag)
                else:
                    for key in [k for k in m.tags if k[0] == scope.repository]:
                        m.forget(repository=key[0], tag=key[1])
            return 0
        b = self.blobs
        if scope.digest is not None:
            if m is not None:
                m.forget(digest=scope.digest)
            return await b.delete(digest=scope.digest) if b is not None else 0
        if scope.repository is not None or scope.namespace is not None:
            repos = {scope.repository} if scope.repository is not None else self._namespace_repos(
                scope.namespace)
            if m is not None:
                for repo in repos:
                    m.forget(repository=repo)
            return await b.drop_repos(repos) if b is not None and repos else 0
        if m is not None:
            m.forget()
        return await b.delete() if b is not None else 0

    def _namespace_repos(self, namespace: str) -> set[str]:
        repos: set[str] = set()
        if self.blobs is not None:
            for e in self.blobs.entries.values():
                repos |= {r for r in e.repos if namespace_of_name(r) == namespace}
        if self.manifests is not None:
            repos |= {k[0] for k in self.manifests.tags if namespace_of_name(k[0]) == namespace}
            repos |= {k[1] for k in self.manifests._repos if namespace_of_name(k[1]) == namespace}
        return repos

    # --- other nodes' requests -----------------------------------------------------------------

    def _heard(self, data: Any) -> None:
        rid = data.get("id") if isinstance(data, dict) else None
        scope = Scope.from_event(data)
        if scope is None or isinstance(rid, bool) or not isinstance(rid, int):
            log.warn("cache purge: an unusable event from another node was ignored")
            return
        if (self._start is not None and rid <= self._start) or rid in self._applied:
            return
        self._applied.add(rid)
        self._highest = max(self._highest, rid)
        Deferred.fromCoroutine(self.apply(scope)).addErrback(
            lambda f: log.failure("cache purge from another node failed", f))

    async def poll(self) -> int:
        """Apply the rows this node has not applied yet; returns how many.  The
        first poll only notes the newest row (those before this start are done).

        Ids are handed out before their transactions commit, so on PostgreSQL a
        row may appear below one already seen: the poll reads back from
        :data:`LOOKBACK` ids below the highest and skips the ids it applied."""
        if self._start is None:
            self._start = await self.db.read(_newest)
            self._highest = max(self._highest, self._start)
            self._applied = {i for i in self._applied if i > self._start}
            return 0
        n = 0
        after = max(self._start, self._highest - LOOKBACK)
        self._applied = {i for i in self._applied if i > after}
        while True:
            rows = await self.db.read(_rows_after, after, 500)
            for r in rows:
                rid = r.pop("id")
                after = max(after, rid)
                if rid in self._applied:
                    continue
                self._applied.add(rid)
                self._highest = max(self._highest, rid)
                scope = Scope.from_event(r)
                if scope is None:
                    log.warn("cache purge: row {id} of cache_purges is not usable; skipped", id=rid)
                    continue
                await self.apply(scope)
                n += 1
            if len(rows) < 500:
                return n

    def start(self) -> Deferred:
        """Note the newest row, then poll every ``interval`` s."""
        self._start = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("cache purge poll stopped", f))
        return succeed(None)

    def _tick(self):
        return Deferred.fromCoroutine(self.poll()).addErrback(
            lambda f: log.warn("cache purge: reading cache_purges failed ({e})", e=f.getErrorMessage()))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


__all__ = ["CachePurge", "Scope", "PURGE_EVENT", "POLL", "record", "history", "namespace_of_name"]
