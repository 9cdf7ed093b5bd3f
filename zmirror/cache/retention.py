"""The retention planner: pure functions from what the cache holds (a
:class:`Snapshot`), the rules, the pins and the time to a :class:`Plan` of what
to evict and why.  Nothing here reads a database, a file or a clock: the pass
that gathers the snapshot and applies the plan is
:mod:`zmirror.cache.retentionpass`.  Semantics: docs/design/cache.md
("Retention").

In short, per namespace (the rules: ``max_age_days``, ``max_size``):

- a blob belongs to the repositories it was pulled through; a rule drops the
  memberships of its namespace (not pulled within N days; over the quota,
  least recently pulled first) and the file goes only when no membership is
  left (a blob shared with a namespace that keeps it stays);
- tags not pulled within N days go; a manifest body goes when no kept tag, no
  kept index and no pin references it and every namespace it was seen in lets
  it go (by age);
- the global ``[cache] max_size`` evicts least recently pulled blobs, whole;
- pinned tags, manifests and blobs, and blobs being read or downloaded, are
  never selected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from zmirror.cache.pins import Pin, Pinned, close_over, pinned_roots, repo_namespace

DAY = 86400.0
ITEMS_MAX = 200  # items a plan's summary lists (largest first)

AGE, QUOTA, SIZE = "age", "quota", "size"


@dataclass(frozen=True)
class Rule:
    namespace: str
    max_age_days: Optional[int] = None
    max_size: Optional[int] = None
    enabled: bool = True

    def cutoff(self, now: float) -> Optional[float]:
        """Last pulls before this time are too old (None: no age limit)."""
        return None if self.max_age_days is None else now - self.max_age_days * DAY


@dataclass(frozen=True)
class BlobView:
    digest: str
    size: int
    last_access: float
    repos: frozenset
    busy: bool = False  # read by a client or being downloaded: never selected


@dataclass(frozen=True)
class TagView:
    repository: str
    tag: str
    media_type: str
    digest: str
    last_pull: float  # cache_tags.last_access, or fetched_at before its first recorded pull
    size: int = 0  # the manifest body's length


@dataclass(frozen=True)
class ManifestView:
    digest: str
    media_type: str
    size: int
    last_access: float
    repos: frozenset


@dataclass
class Snapshot:
    """What the cache holds, as the planner sees it.  ``refs``: digest →
    (child manifests, blobs) of the manifest bodies read (indexes, pinned ones)."""

    blobs: list
    tags: list = field(default_factory=list)
    manifests: dict = field(default_factory=dict)
    refs: dict = field(default_factory=dict)
    pins: list = field(default_factory=list)
    max_size: Optional[int] = None  # the global [cache] max_size (None: not applied)


@dataclass
class BlobAction:
    digest: str
    size: int
    drop: frozenset  # the memberships (repositories) that go
    delete: bool  # the file goes (no membership left)
    why: str  # AGE, QUOTA or SIZE
    reason: str
    repository: str  # the repository it is listed under


@dataclass
class TagAction:
    tag: TagView
    reason: str


@dataclass
class ManifestAction:
    digest: str
    drop: frozenset
    delete: bool
    reason: str


@dataclass
class Plan:
    blobs: list = field(default_factory=list)
    tags: list = field(default_factory=list)
    manifests: list = field(default_factory=list)
    cutoffs: dict = field(default_factory=dict)  # namespace → cutoff of its age rule
    pinned: Optional[Pinned] = None

    @property
    def freed(self) -> int:
        return sum(a.size for a in self.blobs if a.delete)

    def summary(self, items_max: int = ITEMS_MAX) -> dict:
        """The answer of the dry run and the run (docs/api.md)."""
        items = [{"kind": "blob", "repository": a.repository, "tag": None, "digest": a.digest,
                  "size": a.size, "reason": a.reason, "why": a.why}
                 for a in self.blobs if a.delete]
        items += [{"kind": "tag", "repository": t.tag.repository, "tag": t.tag.tag,
                   "digest": t.tag.digest, "size": t.tag.size, "reason": t.reason, "why": AGE}
                  for t in self.tags]
        items.sort(key=lambda i: (-i["size"], i["kind"], i["repository"], i["tag"] or "", i["digest"]))
        return {"blobs": sum(1 for a in self.blobs if a.delete), "bytes": self.freed,
                "tags": len(self.tags),
                "manifests": sum(1 for m in self.manifests if m.delete),
                "memberships": sum(len(a.drop) for a in self.blobs if not a.delete),
                "items": items[:items_max]}


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def _age_reason(rule: Rule) -> str:
    return f"not pulled within {rule.max_age_days} days"


def _quota_reason(rule: Rule) -> str:
    return f"{rule.namespace} over its quota of {human_size(rule.max_size or 0)}"


def pinned_of(snapshot: Snapshot) -> Pinned:
    """What the snapshot's pins keep (tags, manifests, blobs, whole repositories)."""
    repos: set = set()
    for b in snapshot.blobs:
        repos |= b.repos
    repos |= {t.repository for t in snapshot.tags}
    for m in snapshot.manifests.values():
        repos |= m.repos
    roots = pinned_roots(snapshot.pins, snapshot.tags,
                         {d: m.repos for d, m in snapshot.manifests.items()}, repos)
    return close_over(roots, snapshot.refs)


def plan(snapshot: Snapshot, rules: Iterable[Rule], now: float, *, global_size: bool = True) -> Plan:
    """What to evict from ``snapshot`` under ``rules`` (the disabled ones are
    ignored) at ``now``; ``global_size``: also what the global max_size evicts."""
    by_ns = {r.namespace: r for r in rules if r.enabled}
    out = Plan(pinned=pinned_of(snapshot))
    pinned = out.pinned
    for ns, r in by_ns.items():
        c = r.cutoff(now)
        if c is not None:
            out.cutoffs[ns] = c

    # -- blobs: memberships by age, then by quota; files whose last membership went
    left: dict[str, set] = {}  # digest → memberships kept
    why: dict[str, tuple[str, str, str]] = {}  # digest → (why, reason, repository) of the first drop
    selectable = {b.digest: not b.busy and not pinned.keeps_blob(b.digest, b.repos) for b in snapshot.blobs}
    for b in snapshot.blobs:
        keep = set(b.repos)
        if selectable[b.digest]:
            for repo in sorted(b.repos):
                r = by_ns.get(repo_namespace(repo))
                c = out.cutoffs.get(r.namespace) if r is not None else None
                if c is not None and b.last_access < c:
                    keep.discard(repo)
                    why.setdefault(b.digest, (AGE, _age_reason(r), repo))
        left[b.digest] = keep
    for ns, r in sorted(by_ns.items()):
        if r.max_size is None:
            continue
        members = [b for b in snapshot.blobs if any(repo_namespace(x) == ns for x in left[b.digest])]
        usage = sum(b.size for b in members)
        for b in sorted(members, key=lambda b: (b.last_access, b.digest)):
            if usage <= r.max_size:
                break
            if not selectable[b.digest]:
                continue
            mine = {x for x in left[b.digest] if repo_namespace(x) == ns}
            left[b.digest] -= mine
            usage -= b.size
            why.setdefault(b.digest, (QUOTA, _quota_reason(r), sorted(mine)[0]))
    deleted: set = set()
    for b in snapshot.blobs:
        if b.digest not in why:
            continue
        drop = frozenset(b.repos - left[b.digest])
        delete = not left[b.digest]
        w, reason, repo = why[b.digest]
        out.blobs.append(BlobAction(b.digest, b.size, drop, delete, w, reason, repo))
        if delete:
            deleted.add(b.digest)
    if global_size and snapshot.max_size is not None:
        total = sum(b.size for b in snapshot.blobs if b.digest not in deleted)
        for b in sorted(snapshot.blobs, key=lambda b: (b.last_access, b.digest)):
            if total <= snapshot.max_size:
                break
            if b.digest in deleted or not selectable[b.digest]:
                continue
            deleted.add(b.digest)
            total -= b.size
            repo = sorted(b.repos)[0] if b.repos else ""
            out.blobs = [a for a in out.blobs if a.digest != b.digest]
            out.blobs.append(BlobAction(b.digest, b.size, frozenset(b.repos), True, SIZE,
                                        "cache over its max_size", repo))

    # -- tags not pulled within their namespace's age
    kept_digests: set = set()
    for t in snapshot.tags:
        c = out.cutoffs.get(repo_namespace(t.repository))
        if c is not None and t.last_pull < c and (t.repository, t.tag) not in pinned.tags:
            out.tags.append(TagAction(t, _age_reason(by_ns[repo_namespace(t.repository)])))
        else:
            kept_digests.add(t.digest)

    # -- manifest bodies nothing kept references, old in every namespace they were seen in
    referenced = set(kept_digests)
    todo = list(kept_digests)
    while todo:
        children, _blobs = snapshot.refs.get(todo.pop(), ((), ()))
        for ch in children:
            if ch not in referenced:
                referenced.add(ch)
                todo.append(ch)
    for d, m in sorted(snapshot.manifests.items()):
        if d in referenced or d in pinned.manifests or not m.repos:
            continue
        drop = set()
        reason = ""
        for repo in m.repos:
            ns = repo_namespace(repo)
            c = out.cutoffs.get(ns)
            if c is not None and m.last_access < c:
                drop.add(repo)
                reason = reason or _age_reason(by_ns[ns])
        if drop:
            out.manifests.append(ManifestAction(d, frozenset(drop), drop == set(m.repos), reason))
    return out


__all__ = ["Rule", "BlobView", "TagView", "ManifestView", "Snapshot", "Plan", "BlobAction", "TagAction",
           "ManifestAction", "plan", "pinned_of", "human_size", "DAY", "ITEMS_MAX", "Pin"]
