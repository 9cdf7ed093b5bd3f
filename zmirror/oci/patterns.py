"""Repository patterns: what a user's scope, a policy rule or a pin names.

A pattern is written like an image reference, with wildcards::

    library/nginx             one repository (docker.io; ``nginx`` is the same)
    docker.io/library/*       ``*`` matches within one component
    ghcr.io/myorg/**          ``**`` (a whole component) matches one or more components
    **                        every repository of every namespace
    *:latest                  a tag glob after ':' (``*`` matches any characters of a tag)
    library/nginx@sha256:...  one manifest of a repository

The repository part is read the way a name is (:func:`zmirror.oci.names.canonical_name`):
a first component that reads as a host (``ghcr.io``, ``registry:5000``, ``localhost``) is
the namespace, anything else is Docker Hub's, whose aliases are dropped; Docker Hub's
``library/`` rule applies to a one-component pattern there (``*`` is ``library/*``) and
nowhere else.  Namespaces are case-insensitive (lower-cased), path components must be
lower case like names, tags are case-sensitive.  A pattern never grants beyond itself:
``*`` stops at '/', ``**`` stays inside its namespace, and a namespace is matched whole
(``ghcr.io/**`` never matches ``ghcr.io.example.com/x``).

Design: docs/design/namespaces.md ("Repository patterns").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from zmirror.oci.names import DOCKER_ALIASES, DOCKER_HUB, LIBRARY, hostlike, normalize_namespace

PATTERN_MAX = 400
EVERYTHING = "**"
# a component with '*' wildcards: the name grammar's characters and '*'
_GLOB_COMPONENT = re.compile(r"^[a-z0-9*]+(?:(?:\.|_|__|-+)[a-z0-9*]+)*\Z")
_TAG_GLOB = re.compile(r"^[A-Za-z0-9_*][A-Za-z0-9_.*-]{0,127}\Z")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")


class PatternError(ValueError):
    """A pattern that can never be valid; ``str(e)`` is a one-line reason."""


def _component_regex(part: str) -> str:
    if part == EVERYTHING:
        return r"[^/]+(?:/[^/]+)*"
    return "[^/]*".join(re.escape(p) for p in part.split("*"))


def _glob_regex(glob: str) -> "re.Pattern[str]":
    return re.compile(".*".join(re.escape(p) for p in glob.split("*")) + r"\Z", re.S)


def split_name(name: str) -> tuple[str, str]:
    """(namespace, path) of a canonical repository name: ``ghcr.io/o/img`` →
    (``ghcr.io``, ``o/img``); ``library/nginx`` → (``docker.io``, ``library/nginx``)."""
    ns = getattr(name, "namespace", None)
    if ns is not None:
        return ns, getattr(name, "remote")
    first, sep, rest = name.partition("/")
    if sep and hostlike(first):
        return first, rest
    return DOCKER_HUB, name


@dataclass(frozen=True)
class RepoPattern:
    """A parsed repository pattern; ``text`` is its normalized form (what is stored
    and shown), ``namespace`` None only for :data:`EVERYTHING`."""

    text: str
    namespace: Optional[str]
    path: str  # the components inside the namespace, '/'-joined, wildcards kept

    def __post_init__(self):
        regex = None if self.namespace is None else re.compile(
            "/".join(_component_regex(p) for p in self.path.split("/")) + r"\Z")
        object.__setattr__(self, "_regex", regex)

    @property
    def literal(self) -> bool:
        """Whether it names exactly one repository (no wildcard)."""
        return self.namespace is not None and "*" not in self.path

    def matches(self, name: str) -> bool:
        """Whether the canonical repository ``name`` is one the pattern names."""
        if self.namespace is None:
            return True
        ns, path = split_name(name)
        return ns == self.namespace and self._regex.match(path) is not None  # type: ignore[attr-defined]


def parse_repo_pattern(raw: object) -> RepoPattern:
    """A repository pattern as an admin writes it (see the module's text).
    Raises :class:`PatternError`."""
    if not isinstance(raw, str):
        raise PatternError("must be a string")
    text = raw.strip()
    if not text:
        raise PatternError("must not be empty")
    if len(text) > PATTERN_MAX:
        raise PatternError(f"must be at most {PATTERN_MAX} characters")
    if text == EVERYTHING:
        return RepoPattern(EVERYTHING, None, EVERYTHING)
    parts = text.split("/")
    namespace = DOCKER_HUB
    if len(parts) > 1 and (hostlike(parts[0]) or parts[0].lower() in DOCKER_ALIASES):
        if "*" in parts[0]:
            raise PatternError("the registry host cannot hold '*' (write one pattern per namespace)")
        try:
            namespace = normalize_namespace(parts[0])
        except ValueError as e:
            raise PatternError(f"registry host {e}") from None
        parts = parts[1:]
        if namespace == DOCKER_HUB and len(parts) > 1 and hostlike(parts[0]):
            raise PatternError("names two registry hosts")
    elif "*" in parts[0] and ("." in parts[0] or ":" in parts[0]) and len(parts) > 1:
        raise PatternError("the registry host cannot hold '*' (write one pattern per namespace)")
    for part in parts:
        if part == EVERYTHING:
            continue
        if "**" in part:
            raise PatternError("'**' must be a whole component (e.g. ghcr.io/org/**)")
        if part != part.lower():
            raise PatternError("repository names are lower case")
        if not part:
            raise PatternError("has an empty component (a '/' too many)")
        if not _GLOB_COMPONENT.match(part):
            raise PatternError(f"{ascii(part[:60])} is not a repository name component "
                               "(lower-case letters, digits, '.', '_', '-', and '*')")
    if namespace == DOCKER_HUB and len(parts) == 1 and parts[0] != EVERYTHING:
        parts = [LIBRARY.rstrip("/")] + parts  # Docker Hub's rule: nginx is library/nginx
    path = "/".join(parts)
    text = path if namespace == DOCKER_HUB else f"{namespace}/{path}"
    return RepoPattern(text, namespace, path)


@dataclass(frozen=True)
class RefPattern:
    """A repository pattern with an optional tag glob or digest."""

    repo: RepoPattern
    tag: Optional[str] = None  # a glob over tags; None: any
    digest: Optional[str] = None  # one manifest; None: any

    @property
    def text(self) -> str:
        if self.digest:
            return f"{self.repo.text}@{self.digest}"
        if self.tag:
            return f"{self.repo.text}:{self.tag}"
        return self.repo.text

    def __post_init__(self):
        object.__setattr__(self, "_tag", _glob_regex(self.tag) if self.tag else None)

    def matches(self, name: str, *, tag: Optional[str] = None, digest: Optional[str] = None) -> bool:
        """Whether a pull of ``name`` by ``tag`` or by ``digest`` is one the pattern
        names.  A tag glob only matches pulls by a matching tag; a digest only the
        manifest with that digest (by digest, or a tag that resolved to it)."""
        if not self.repo.matches(name):
            return False
        if self.tag is not None and (tag is None or not self._tag.match(tag)):  # type: ignore[attr-defined]
            return False
        if self.digest is not None and digest != self.digest:
            return False
        return True


def parse_ref_pattern(raw: object) -> RefPattern:
    """``<repository pattern>[:<tag glob>|@<digest>]``.  Raises :class:`PatternError`."""
    if not isinstance(raw, str):
        raise PatternError("must be a string")
    text = raw.strip()
    if len(text) > PATTERN_MAX:
        raise PatternError(f"must be at most {PATTERN_MAX} characters")
    tag = digest = None
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        if not _DIGEST.match(digest):
            raise PatternError("the part after '@' is not a digest (sha256:<64 hex>)")
    else:
        last = text.rsplit("/", 1)[-1]
        if ":" in last:
            head, _, tag = text.rpartition(":")
            # "registry:5000" alone is a host, not a tag: a tag follows a repository
            if not head or head.endswith("/"):
                raise PatternError("has no repository before ':'")
            text = head
            if not _TAG_GLOB.match(tag):
                raise PatternError("the part after ':' is not a tag or tag pattern "
                                   "(letters, digits, '_', '.', '-', '*'; at most 128)")
    return RefPattern(parse_repo_pattern(text), tag, digest)


__all__ = ["EVERYTHING", "PatternError", "RefPattern", "RepoPattern", "parse_ref_pattern",
           "parse_repo_pattern", "split_name"]
