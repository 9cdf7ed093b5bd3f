"""The retention pass: gathers what the cache holds (the node's blob index in
memory, the manifest cache's rows in the main database), the rules and the
pins, asks the planner (:mod:`zmirror.cache.retention`) and applies its plan,
or only reports it (the dry run).  Run by :class:`~zmirror.cache.upkeep.CacheUpkeep`
every ``retention_interval`` s and by the admin API.  Docs:
docs/design/cache.md ("Retention")."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from zmirror.cache.pins import InvalidPin, close_over, manifest_refs, parse_pin, repo_namespace
from zmirror.cache.retention import ManifestView, Plan, Rule, Snapshot, TagView, pinned_of, plan
from zmirror.oci.mediatypes import DOCKER_LIST, OCI_INDEX

log = Logger()

_CHUNK = 500


def rule_of(row: dict) -> Rule:
    return Rule(row["namespace"], row.get("max_age_days"), row.get("max_size"),
                bool(row.get("enabled", True)))


def pins_of(rows: list[dict]) -> list:
    out = []
    for r in rows:
        try:
            out.append(parse_pin(r["pattern"]))
        except InvalidPin:
            log.warn("cache pin {id} ({p!r}) is not a valid pattern: ignored", id=r.get("id"),
                     p=str(r.get("pattern"))[:100])
    return out


def _read_rows(txn) -> tuple[list, list, list, list]:
    txn.execute("SELECT t.repository, t.tag, t.media_type, t.digest, t.fetched_at, t.last_access,"
                " length(m.body) FROM cache_tags t LEFT JOIN cache_manifests m ON m.digest = t.digest")
    tags = txn.fetchall()
    txn.execute("SELECT digest, media_type, length(body), last_access FROM cache_manifests")
    manifests = txn.fetchall()
    txn.execute("SELECT digest, repository FROM cache_manifest_repos")
    repos = txn.fetchall()
    txn.execute("SELECT digest, media_type, body FROM cache_manifests WHERE media_type IN (?, ?)",
                (OCI_INDEX, DOCKER_LIST))
    indexes = txn.fetchall()
    return tags, manifests, repos, indexes


def _read_bodies(txn, digests: list) -> list:
    out = []
    for i in range(0, len(digests), _CHUNK):
        part = digests[i:i + _CHUNK]
        txn.execute(f"SELECT digest, media_type, body FROM cache_manifests WHERE digest IN "
                    f"({','.join('?' * len(part))})", part)
        out.extend(txn.fetchall())
    return out


def _apply_rows(txn, tags: list, pairs: list, bodies: list) -> tuple[int, int]:
    """Delete old tag rows, manifest memberships, and bodies nothing references;
    each guarded (a pull written since the plan keeps it).  Returns (tags, bodies) deleted."""
    ntags = nbodies = 0
    for repository, tag, media_type, digest, cutoff in tags:
        txn.execute("DELETE FROM cache_tags WHERE repository = ? AND tag = ? AND media_type = ? "
                    "AND digest = ? AND fetched_at < ? AND (last_access IS NULL OR last_access < ?)",
                    (repository, tag, media_type, digest, cutoff, cutoff))
        ntags += max(txn.rowcount, 0)
    if pairs:
        txn.executemany("DELETE FROM cache_manifest_repos WHERE digest = ? AND repository = ?", pairs)
    for digest, cutoff in bodies:
        txn.execute("DELETE FROM cache_manifests WHERE digest = ? AND last_access < ? AND NOT EXISTS "
                    "(SELECT 1 FROM cache_manifest_repos WHERE digest = ?) AND NOT EXISTS "
                    "(SELECT 1 FROM cache_tags WHERE digest = ?)", (digest, cutoff, digest, digest))
        nbodies += max(txn.rowcount, 0)
    return ntags, nbodies


class RetentionPass:
    """``store``: the rules and pins (:class:`zmirror.db.retention.RetentionStore`);
    ``blobs``: :class:`~zmirror.cache.blobs.CacheBlobs`; ``manifests``:
    :class:`~zmirror.cache.manifests.ManifestCache` (its ``db`` the main database)."""

    def __init__(self, store: Any, blobs: Any, manifests: Any, clock: Any):
        self.store = store
        self.blobs = blobs
        self.manifests = manifests
        self.clock = clock
        self._lock = DeferredLock()  # one pass at a time
        self.last: Optional[dict] = None  # the summary of the last pass that ran
        self._pins_seen: Any = None  # (count, newest id) of cache_pins when last read

    async def _snapshot(self) -> Snapshot:
        """What the main database holds (the blobs are added by the caller, at once
        before it plans: they change on the reactor)."""
        await self.manifests.ready()
        await self.manifests.flush_pulls()  # the pulls recorded so far count
        pins = pins_of(await self.store.pins())
        tags_rows, m_rows, repo_rows, index_rows = await self.manifests.db.read(_read_rows)
        repos: dict[str, set] = {}
        for d, r in repo_rows:
            repos.setdefault(d, set()).add(r)
        manifests = {d: ManifestView(d, mt, int(n or 0), float(la), frozenset(repos.get(d, ())))
                     for d, mt, n, la in m_rows}
        tags = [TagView(r, t, mt, d, max(float(f), float(la)) if la is not None else float(f), int(n or 0))
                for r, t, mt, d, f, la, n in tags_rows]
        refs = {d: manifest_refs(mt, bytes(b)) for d, mt, b in index_rows}
        snap = Snapshot(blobs=[], tags=tags, manifests=manifests, refs=refs, pins=pins)
        if pins:
            # the bodies of pinned manifests (and of their platform manifests)
            seen: set = set()
            while True:
                closure = close_over(pinned_of(snap), refs)
                todo = sorted(d for d in closure.manifests if d not in refs and d not in seen
                              and d in manifests)
                if not todo:
                    break
                seen.update(todo)
                for d, mt, b in await self.manifests.db.read(_read_bodies, todo):
                    refs[d] = manifest_refs(mt, bytes(b))
        return snap

    async def rules(self) -> list[Rule]:
        return [rule_of(r) for r in await self.store.rules()]

    def dry_run(self, rule: Optional[Rule] = None) -> Deferred:
        """Deferred → the summary of what the saved rules (or only ``rule``, saved or
        not) would remove now; nothing is removed."""

        async def go():
            rules = await self.rules() if rule is None else [Rule(rule.namespace, rule.max_age_days,
                                                                   rule.max_size, True)]
            p = await self._plan(rules, global_size=rule is None)
            return p.summary()

        return self._lock.run(lambda: Deferred.fromCoroutine(go()))

    def run(self) -> Deferred:
        """Deferred → the summary of what was removed under the saved rules."""
        return self._lock.run(lambda: Deferred.fromCoroutine(self._run()))

    async def check_pins(self) -> None:
        """Cheap (one aggregate query): when pins were added or removed since they
        were last read (by another node, a sync job, the CLI), read them again."""
        rows = await self.manifests.db.query("SELECT count(*) AS n, max(id) AS top FROM cache_pins")
        seen = (rows[0]["n"], rows[0]["top"]) if rows else None
        if seen != self._pins_seen:
            await self.refresh_pins()

    async def refresh_pins(self) -> None:
        """Read the pins again and hand what they keep to the blob cache's LRU."""
        rows = await self.manifests.db.query("SELECT count(*) AS n, max(id) AS top FROM cache_pins")
        self._pins_seen = (rows[0]["n"], rows[0]["top"]) if rows else None
        snap = await self._snapshot()
        snap.blobs = self.blobs.views()
        self.blobs.pinned = pinned_of(snap)

    async def _plan(self, rules: list, *, global_size: bool) -> Plan:
        snap = await self._snapshot()
        snap.blobs = self.blobs.views()
        snap.max_size = self.blobs.max_size
        return plan(snap, rules, self.clock.seconds(), global_size=global_size)

    async def _run(self) -> dict:
        rules = await self.rules()
        rows = await self.manifests.db.query("SELECT count(*) AS n, max(id) AS top FROM cache_pins")
        self._pins_seen = (rows[0]["n"], rows[0]["top"]) if rows else None
        p = await self._plan(rules, global_size=True)
        self.blobs.pinned = p.pinned
        # at once after the plan (no wait between): the blobs' readers are those it saw
        done = self.blobs.apply_retention(p.blobs)
        now = self.clock.seconds()
        tags, pairs, bodies = [], [], []
        for t in p.tags:
            v = t.tag
            cutoff = p.cutoffs[repo_namespace(v.repository)]
            if not self.manifests.pulled_since(cutoff, tag=(v.repository, v.tag, v.media_type)):
                tags.append((v.repository, v.tag, v.media_type, v.digest, cutoff))
        for m in p.manifests:
            cutoff = min(p.cutoffs[repo_namespace(r)] for r in m.drop)
            if self.manifests.pulled_since(cutoff, digest=m.digest):
                continue
            pairs.extend((m.digest, r) for r in m.drop)
            if m.delete:
                bodies.append((m.digest, cutoff))
        blob_done = await done
        ntags = nbodies = 0
        if tags or pairs or bodies:
            ntags, nbodies = await self.manifests.db.write(_apply_rows, tags, pairs, bodies)
            self.manifests.forget_retained([t[:3] for t in tags], [b[0] for b in bodies])
        summary = p.summary()
        summary.update(blobs=blob_done["blobs"], bytes=blob_done["bytes"],
                       memberships=blob_done["memberships"], tags=ntags, manifests=nbodies)
        self.last = {**summary, "at": now}
        if blob_done["blobs"] or ntags or nbodies:
            log.info("retention: {b} blobs ({n} bytes), {t} tags, {m} manifests removed",
                     b=blob_done["blobs"], n=blob_done["bytes"], t=ntags, m=nbodies)
        return summary


__all__ = ["RetentionPass", "rule_of", "pins_of"]
