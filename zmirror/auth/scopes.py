"""Per-user scopes: the repositories a registry user's credentials may pull.

A scope is a list of repository patterns (:mod:`zmirror.oci.patterns`:
``docker.io/library/*``, ``ghcr.io/myorg/**``); the empty list is everything, so
users created before scopes existed keep pulling what they pulled.  A pattern
list holding ``**`` is stored as the empty list (it is everything too).

:func:`validate_scopes` is the one check of what an admin types (admin API,
CLI): each pattern through :func:`parse_repo_pattern`, stored in its normalized
text, duplicates dropped, at most :data:`MAX_SCOPES`.  :func:`user_scopes` is the
compiled form of a user row's ``scopes`` (kept per distinct list), which the
token service and the Basic-auth path of ``/v2`` ask.

Design: docs/design/auth.md ("Per-user scopes").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

from zmirror.db.errors import InvalidField
from zmirror.oci.patterns import EVERYTHING, PatternError, RepoPattern, parse_repo_pattern

MAX_SCOPES = 100
FIELD = "scopes"


def validate_scopes(raw: Any) -> list[str]:
    """The normalized pattern texts of ``raw`` (a list of strings; None or ``[]``:
    everything, returned as ``[]``).  Raises :class:`InvalidField` (``scopes``)
    naming the first bad pattern and why."""
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise InvalidField(FIELD, "must be a list of repository patterns")
    if len(raw) > MAX_SCOPES:
        raise InvalidField(FIELD, f"at most {MAX_SCOPES} patterns")
    out: list[str] = []
    for i, item in enumerate(raw):
        try:
            pattern = parse_repo_pattern(item)
        except PatternError as e:
            shown = ascii(item[:60]) if isinstance(item, str) else f"item {i + 1}"
            raise InvalidField(FIELD, f"{shown}: {e}") from None
        if pattern.text == EVERYTHING:
            return []
        if pattern.text not in out:
            out.append(pattern.text)
    return out


class Scopes:
    """A user's compiled scopes: ``allows(name)`` for a canonical repository name."""

    __slots__ = ("texts", "patterns", "everything")

    def __init__(self, texts: tuple[str, ...]):
        self.texts = texts
        self.everything = not texts
        patterns: list[RepoPattern] = []
        for text in texts:
            try:
                patterns.append(parse_repo_pattern(text))
            except PatternError:
                continue  # a damaged stored pattern names nothing (never everything)
        self.patterns = tuple(patterns)

    def allows(self, name: str) -> bool:
        if self.everything:
            return True
        return any(p.matches(name) for p in self.patterns)

    def __repr__(self) -> str:
        return f"Scopes({list(self.texts)!r})"


@lru_cache(maxsize=4096)
def compile_scopes(texts: tuple[str, ...]) -> Scopes:
    return Scopes(texts)


def user_scopes(user: Mapping[str, Any]) -> Scopes:
    """The compiled scopes of a user row (its ``scopes`` list; missing: everything)."""
    texts = user.get("scopes") or ()
    return compile_scopes(tuple(texts))


__all__ = ["MAX_SCOPES", "Scopes", "compile_scopes", "user_scopes", "validate_scopes"]
