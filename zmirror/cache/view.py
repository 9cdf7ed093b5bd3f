"""What the cache view shows (``GET /api/cache/namespaces|images|tags|stats``):
the shared manifest rows read from the database, the blob sizes from this
node's index in memory, and the nodes' figures (hits, bytes, upstream manifest
GETs avoided) from ``cluster_nodes``, where every heartbeat writes them.

Design: docs/design/cache.md ("The cache view").
"""

from __future__ import annotations

import json
from typing import Any, Optional

from zmirror.cache.purge import namespace_of_name

# the images view reads at most this many tag rows (the most recently fetched)
MAX_SCAN = 5000
FIGURES = ("hits", "misses", "bytes_from_cache", "bytes_from_upstream", "manifest_gets_avoided")
_NODE_COLUMNS = ("node", "last_seen", "stopped_at", "cache_bytes", "cache_blobs", "cache_hits",
                 "cache_misses", "cache_bytes_served", "cache_bytes_fetched", "cache_gets_avoided")


def node_figures(blobs: Any, manifests: Any) -> dict:
    """This node's figures since its start: requests answered from the cache
    (``hits``) or not (``misses``), blob bytes sent from the cache and fetched
    upstream, and manifest requests answered without an upstream GET (fresh
    hits, HEAD revalidations, stale serves: every manifest hit)."""
    b = blobs.stats if blobs is not None else {}
    m = manifests.stats if manifests is not None else {}
    return {
        "hits": int(b.get("hits", 0)) + int(m.get("hits", 0)),
        "misses": int(b.get("misses", 0)) + int(m.get("misses", 0)),
        "bytes_from_cache": int(b.get("bytes_from_cache", 0)),
        "bytes_from_upstream": int(b.get("bytes_from_upstream", 0)),
        "manifest_gets_avoided": int(m.get("hits", 0)),
        "size": int(getattr(blobs, "size", 0) or 0) if blobs is not None else 0,
        "entries": len(blobs.entries) if blobs is not None else 0,
    }


def ratio(hits: int, misses: int) -> Optional[float]:
    return round(hits / (hits + misses), 4) if hits + misses else None


class CacheView:
    """The read side of the cache page; ``db``: the main database (shared
    manifest rows, ``cluster_nodes``), ``blobs``/``manifests``: this node's
    caches, ``node``: its name, ``clock``."""

    def __init__(self, db: Any, clock: Any, *, blobs: Any, manifests: Any = None,
                 node: Optional[str] = "", ttl: Optional[float] = None):
        self.db = db
        self.clock = clock
        self.blobs = blobs
        self.manifests = manifests
        self.node = node  # None: no node of its own (the CLI): the figures are the rows'
        self.ttl = ttl if ttl is not None else getattr(manifests, "ttl", 0.0)

    def _blob_size(self, digest: str) -> int:
        e = self.blobs.entries.get(digest) if self.blobs is not None else None
        return e.size if e is not None else 0

    async def namespaces(self) -> list[dict]:
        tags, manifests = await self.db.read(_per_repository)
        out: dict[str, dict] = {}

        def ns(name: str) -> dict:
            return out.setdefault(name, {"namespace": name, "repositories": set(), "blobs": 0,
                                         "bytes": 0, "manifests": 0, "tags": 0})

        for repo, n in tags:
            row = ns(namespace_of_name(repo))
            row["repositories"].add(repo)
            row["tags"] += n
        for repo, n in manifests:
            row = ns(namespace_of_name(repo))
            row["repositories"].add(repo)
            row["manifests"] += n
        if self.blobs is not None:
            for e in list(self.blobs.entries.values()):
                names = set()
                for r in e.repos:
                    name = namespace_of_name(r)
                    names.add(name)
                    ns(name)["repositories"].add(r)
                for name in names:
                    ns(name)["blobs"] += 1
                    ns(name)["bytes"] += e.size
        return [dict(r, repositories=len(r["repositories"])) for r in
                sorted(out.values(), key=lambda r: (-r["bytes"], r["namespace"]))]

    async def images(self, *, sort: str = "size", namespace: Optional[str] = None,
                     limit: int = 20) -> list[dict]:
        """One row per cached tag (its newest media type), with the bytes of its
        blobs cached on this node; ``sort``: ``size`` (largest first) or
        ``last_pull`` (least recently pulled first)."""
        rows, children = await self.db.read(_images, MAX_SCAN)
        out = []
        for r in rows:
            if namespace is not None and namespace_of_name(r["repository"]) != namespace:
                continue
            digests = set(r["refs"])
            for child in r["children"]:
                digests |= set(children.get(child, ()))
            out.append({
                "repository": r["repository"], "tag": r["tag"], "digest": r["digest"],
                "media_type": r["media_type"], "size": sum(self._blob_size(d) for d in digests),
                "last_pull": r["last_access"], "fetched_at": r["fetched_at"],
            })
        if sort == "last_pull":
            out.sort(key=lambda i: (i["last_pull"] if i["last_pull"] is not None else i["fetched_at"],
                                    i["repository"], i["tag"]))
        else:
            out.sort(key=lambda i: (-i["size"], i["repository"], i["tag"]))
        return out[:limit]

    async def tags(self, repository: str) -> list[dict]:
        rows = await self.db.query(
            "SELECT tag, digest, media_type, fetched_at, last_access FROM cache_tags "
            "WHERE repository = ? ORDER BY tag, fetched_at DESC", (repository,))
        ttl = self.ttl
        now = self.clock.seconds()
        return [{"tag": r["tag"], "digest": r["digest"], "media_type": r["media_type"],
                 "fetched_at": r["fetched_at"], "last_pull": r["last_access"],
                 "fresh": now - float(r["fetched_at"]) < ttl} for r in rows]

    async def stats(self) -> dict:
        """Every node's figures (this one's live, the others' from their last
        heartbeat) and their sum."""
        mine = node_figures(self.blobs, self.manifests)
        now = self.clock.seconds()
        nodes = []
        try:
            rows = await self.db.read(_node_rows)
        except Exception:
            rows = []
        for r in rows:
            if r["node"] == self.node or r["cache_hits"] is None:
                continue
            f = {"hits": r["cache_hits"], "misses": r["cache_misses"] or 0,
                 "bytes_from_cache": r["cache_bytes_served"] or 0,
                 "bytes_from_upstream": r["cache_bytes_fetched"] or 0,
                 "manifest_gets_avoided": r["cache_gets_avoided"] or 0,
                 "size": r["cache_bytes"] or 0, "entries": r["cache_blobs"] or 0}
            nodes.append(_node_out(r["node"], f, r["last_seen"], r["stopped_at"] is not None))
        if self.node is not None:
            nodes.append(_node_out(self.node, mine, now, False))
        nodes.sort(key=lambda n: n["node"])
        total = {k: sum(n[k] for n in nodes) for k in (*FIGURES, "size", "entries")}
        total["hit_ratio"] = ratio(total["hits"], total["misses"])
        total["nodes"] = len(nodes)
        return {"nodes": nodes, "cluster": total}


def _node_out(node: str, f: dict, updated_at: float, stopped: bool) -> dict:
    return {"node": node, **{k: int(f[k]) for k in (*FIGURES, "size", "entries")},
            "hit_ratio": ratio(int(f["hits"]), int(f["misses"])), "updated_at": updated_at,
            "stopped": stopped}


# --- on the database threads ---------------------------------------------------------------


def _per_repository(txn):
    txn.execute("SELECT repository, count(*) FROM cache_tags GROUP BY repository")
    tags = [(r[0], int(r[1])) for r in txn.fetchall()]
    txn.execute("SELECT repository, count(*) FROM cache_manifest_repos GROUP BY repository")
    return tags, [(r[0], int(r[1])) for r in txn.fetchall()]


def _refs(body: Any) -> tuple[list[str], list[str]]:
    """(blob digests, child manifest digests) a manifest body names."""
    try:
        doc = json.loads(bytes(body))
    except (TypeError, ValueError):
        return [], []
    if not isinstance(doc, dict):
        return [], []
    blobs, children = [], []
    for key in ("config",):
        d = doc.get(key)
        if isinstance(d, dict) and isinstance(d.get("digest"), str):
            blobs.append(d["digest"])
    for item in doc.get("layers") or doc.get("fsLayers") or ():
        if isinstance(item, dict):
            d = item.get("digest") or item.get("blobSum")
            if isinstance(d, str):
                blobs.append(d)
    for item in doc.get("manifests") or ():
        if isinstance(item, dict) and isinstance(item.get("digest"), str):
            children.append(item["digest"])
    return blobs, children


def _images(txn, limit: int):
    """The newest ``limit`` tag rows (one per tag: its newest media type) with the
    blobs their manifests name, and the blobs of the child manifests of indexes."""
    txn.execute(
        "SELECT t.repository, t.tag, t.media_type, t.digest, t.fetched_at, t.last_access, m.body "
        "FROM cache_tags t LEFT JOIN cache_manifests m ON m.digest = t.digest "
        "ORDER BY t.fetched_at DESC LIMIT ?", (limit,))
    rows, seen, wanted = [], set(), set()
    for repo, tag, mt, digest, fetched_at, last_access, body in txn.fetchall():
        if (repo, tag) in seen:
            continue
        seen.add((repo, tag))
        refs, children = _refs(body) if body is not None else ([], [])
        wanted |= set(children)
        rows.append({"repository": repo, "tag": tag, "media_type": mt, "digest": digest,
                     "fetched_at": fetched_at, "last_access": last_access, "refs": refs,
                     "children": children})
    children: dict[str, list[str]] = {}
    wanted_list = sorted(wanted)
    for i in range(0, len(wanted_list), 500):
        part = wanted_list[i:i + 500]
        txn.execute(f"SELECT digest, body FROM cache_manifests WHERE digest IN ({','.join('?' * len(part))})",
                    part)
        for digest, body in txn.fetchall():
            children[digest] = _refs(body)[0]
    return rows, children


def _node_rows(txn):
    txn.execute(f"SELECT {', '.join(_NODE_COLUMNS)} FROM cluster_nodes ORDER BY node LIMIT 1000")
    return [dict(zip(_NODE_COLUMNS, r)) for r in txn.fetchall()]


__all__ = ["CacheView", "node_figures", "ratio", "MAX_SCAN"]
