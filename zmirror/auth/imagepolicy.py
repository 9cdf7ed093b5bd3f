"""The image policy: what may be pulled at all, whoever pulls it.

The rules (:class:`zmirror.db.policyrules.PolicyRuleStore`) are ``allow`` or ``deny``
reference patterns (:mod:`zmirror.oci.patterns`), grouped by the namespace their
pattern names (``**`` belongs to every namespace).  For a pull of a repository in
a namespace:

1. a ``deny`` rule that matches refuses it, whatever its position;
2. else, if the namespace has any ``allow`` rule, only what one matches is allowed;
3. else (no rules there) it is allowed.

What a pull tells the rules: a manifest by tag its tag (and, once the tag was
looked up, the digest it resolved to: :meth:`ImagePolicy.check_resolved`); a
manifest by digest its digest; blobs and tag lists only the repository.  A
``deny`` rule decides only what it can see (``*:latest`` never refuses a blob; a
digest-pinned deny refuses that manifest by digest and under any tag that
resolves to it); an ``allow`` rule's tag or digest binds only pulls that carry
one (so a pull by digest or a blob is held to the repository part of the allow
rules, as the issue asks: a digest is served only through a repository the
policy allows).

The reported rule is the first matching one by position (deny first), for the
admin's log and the test endpoint; clients get a generic ``DENIED``.

Design: docs/design/auth.md ("The image policy").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from twisted.logger import Logger

from zmirror.oci.errors import RegistryError
from zmirror.oci.patterns import PatternError, RefPattern, parse_ref_pattern, split_name
from zmirror.oci.reference import BLOB, MANIFEST, RegistryPath, is_digest

log = Logger()

CLIENT_MESSAGE = "pulling this image is not allowed by the mirror's policy"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: Optional[dict]  # the rule that decided (id, action, pattern, note); None: none did
    reason: str  # "deny_rule" | "allow_rule" | "no_allow_rule" | "no_rules"


@dataclass
class _Group:
    denies: list  # [(row, RefPattern)] by position
    allows: list
    digests: bool = False  # a rule pins a digest: a tag pull is checked again once resolved


def _public(row: dict) -> dict:
    return {k: row.get(k) for k in ("id", "action", "pattern", "note")}


def _allow_matches(p: RefPattern, name: str, tag: Optional[str], digest: Optional[str]) -> bool:
    if not p.repo.matches(name):
        return False
    if p.tag is not None and tag is not None and not p.matches(name, tag=tag):
        return False
    if p.digest is not None and digest is not None and digest != p.digest:
        return False
    return True


class ImagePolicy:
    """The enabled rules in memory (following ``store``), and the decision."""

    def __init__(self, store: Any = None, *, metrics: Any = None):
        self.store = store
        self.metrics = metrics  # zmirror.metrics.Metrics (refusals) or None
        self.loaded = store is None
        self._everywhere = _Group([], [])
        self._groups: dict[str, _Group] = {}
        self.count = 0
        if store is not None:
            store.subscribe(self.set_rules)

    async def load(self) -> None:
        await self.store.load()  # → set_rules

    async def ready(self) -> None:
        if not self.loaded:
            await self.load()

    def set_rules(self, rows: list[dict]) -> None:
        """The enabled rules, by position (what the store publishes)."""
        everywhere, groups, n = _Group([], []), {}, 0
        for row in rows:
            if not row.get("enabled", True):
                continue
            try:
                pattern = parse_ref_pattern(row["pattern"])
            except PatternError as e:  # written by hand in the database: skipped, said once
                log.warn("image policy: rule {id} ({pattern!r}) skipped: {e}", id=row.get("id"),
                         pattern=row.get("pattern"), e=str(e))
                continue
            ns = pattern.repo.namespace
            group = everywhere if ns is None else groups.setdefault(ns, _Group([], []))
            (group.denies if row["action"] == "deny" else group.allows).append((row, pattern))
            group.digests = group.digests or pattern.digest is not None
            n += 1
        for g in groups.values():  # "**" rules belong to every namespace
            g.denies = sorted(g.denies + everywhere.denies, key=_order)
            g.allows = sorted(g.allows + everywhere.allows, key=_order)
            g.digests = g.digests or everywhere.digests
        self._everywhere, self._groups, self.count = everywhere, groups, n
        self.loaded = True

    # --- the decision -----------------------------------------------------

    def decide(self, name: str, *, tag: Optional[str] = None,
               digest: Optional[str] = None) -> Decision:
        """Whether ``name`` (a canonical repository name) may be pulled by ``tag``
        and/or manifest ``digest`` (both None: the repository — blobs, tag lists)."""
        group = self._groups.get(split_name(name)[0], self._everywhere)
        for row, p in group.denies:
            if p.matches(name, tag=tag, digest=digest):
                return Decision(False, _public(row), "deny_rule")
        if not group.allows:
            return Decision(True, None, "no_rules")
        for row, p in group.allows:
            if _allow_matches(p, name, tag, digest):
                return Decision(True, _public(row), "allow_rule")
        return Decision(False, None, "no_allow_rule")

    def _pins_digests(self, name: str) -> bool:
        return self._groups.get(split_name(name)[0], self._everywhere).digests

    def check(self, path: RegistryPath) -> None:
        """Before any upstream request: raises DENIED for a pull the rules refuse."""
        if not self.count:
            return
        if path.kind == MANIFEST:
            if is_digest(path.reference):
                self._enforce(path, self.decide(path.name, digest=path.reference))
            else:
                self._enforce(path, self.decide(path.name, tag=path.reference))
        else:  # blobs and tag lists: the repository rules
            self._enforce(path, self.decide(path.name))

    def check_resolved(self, path: RegistryPath, digest: str) -> None:
        """A manifest pulled by tag, once the tag's digest is known (before its body
        is sent): a digest-pinned rule decides it now."""
        if (self.count and path.kind == MANIFEST and not is_digest(path.reference)
                and self._pins_digests(path.name)):
            self._enforce(path, self.decide(path.name, tag=path.reference, digest=digest),
                          digest=digest)

    def _enforce(self, path: RegistryPath, decision: Decision, digest: Optional[str] = None) -> None:
        if decision.allowed:
            return
        if self.metrics is not None:
            self.metrics.policy_refusal(decision.reason)
        internal = {"policy": decision.reason, "rule": decision.rule}
        ref = path.reference + (f" ({digest})" if digest else "")
        log.info("image policy refused {kind} {name} {ref}: {reason} {rule}", kind=path.kind,
                 name=path.name, ref=ref if path.kind != BLOB else path.reference,
                 reason=decision.reason, rule=decision.rule)
        raise RegistryError(
            "DENIED", CLIENT_MESSAGE,
            [{"Type": "repository", "Name": path.name, "Action": "pull"}],
            internal=internal,
        )


def _order(item) -> tuple:
    row = item[0]
    return (row.get("position", 0), row.get("id") or 0)


__all__ = ["CLIENT_MESSAGE", "Decision", "ImagePolicy"]
