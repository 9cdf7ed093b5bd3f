"""Pin patterns: what retention never evicts (``cache_pins``, docs/design/cache.md
"Retention").  Parsing and validation (:func:`parse_pin`), matching against
canonical repository names (:meth:`Pin.matches_repo`), and what a set of pins
keeps of the cache (:func:`pinned_closure`): the tags and manifests the pins
name, every platform manifest of a pinned index, every blob (config, layers)
of a pinned manifest, and every blob cached for a pinned repository.

A pattern is ``<repo>:<tag>``, ``<repo>@<digest>`` or ``<repo>``; the
repository part is a canonical name as clients write it (``nginx`` is
``library/nginx``, ``docker.io/`` is dropped) in which a component may be
``*`` (exactly one component; ``py*`` a part of one) or ``**`` (any number of
components).  A pattern that begins with a wildcard matches across
namespaces (``**`` pins everything); otherwise its namespace is its first
component when that is a host (``ghcr.io/o/**``), else docker.io.  A tag may
hold ``*`` (``3.13-*``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from zmirror.oci.errors import RegistryError
from zmirror.oci.names import DOCKER_ALIASES, DOCKER_HUB, LIBRARY, canonical_name, hostlike

PATTERN_MAX = 300
_TAG = re.compile(r"^[A-Za-z0-9_*][A-Za-z0-9_.*-]{0,127}\Z")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
_WILD_COMPONENT = re.compile(r"^[a-z0-9*]+(?:(?:\.|_|__|-+)[a-z0-9*]+)*\Z")


class InvalidPin(ValueError):
    """A pattern that is not one; ``str(e)`` says why (one line)."""


def repo_namespace(name: str) -> str:
    """The namespace of a canonical repository name as stored (a plain string):
    its first component when that is a host, else docker.io."""
    first, sep, _rest = name.partition("/")
    return first if sep and hostlike(first) else DOCKER_HUB


def full_name(name: str) -> str:
    """``namespace/path`` of a canonical name (``library/nginx`` →
    ``docker.io/library/nginx``): what repository patterns match."""
    ns = repo_namespace(name)
    return name if ns != DOCKER_HUB else f"{DOCKER_HUB}/{name}"


@dataclass(frozen=True)
class Pin:
    pattern: str  # normalized, as stored and shown
    repo: str  # the repository part, canonical (wildcards kept)
    tag: Optional[str] = None
    digest: Optional[str] = None
    wild: bool = False  # the repository part holds * or **

    @property
    def whole_repo(self) -> bool:
        """Pins every tag, manifest and blob of the repositories it matches."""
        return self.tag is None and self.digest is None

    def matches_repo(self, name: str) -> bool:
        if not self.wild:
            return name == self.repo
        return _repo_regex(self.repo).match(full_name(name)) is not None

    def matches_tag(self, tag: str) -> bool:
        if self.tag is None:
            return True
        if "*" not in self.tag:
            return tag == self.tag
        return _tag_regex(self.tag).match(tag) is not None


_regex_cache: dict[str, re.Pattern] = {}


def _repo_regex(repo: str) -> re.Pattern:
    rx = _regex_cache.get(repo)
    if rx is None:
        parts = _pattern_parts(repo)
        src, glue = "", ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "**":
                if i == 0:
                    # any number of leading components: none before what follows
                    src += "[^/]+(?:/[^/]+)*" if last else "(?:[^/]+/)*"
                    glue = "" if not last else glue
                    continue
                src += "(?:/[^/]+)*"
                continue
            src += glue + "".join("[^/]*" if c == "*" else re.escape(c) for c in part)
            glue = "/"
        rx = _regex_cache[repo] = re.compile("^" + src + r"\Z")
        if len(_regex_cache) > 10_000:
            _regex_cache.clear()
    return rx


def _pattern_parts(repo: str) -> list[str]:
    """The components of a pattern's repository part, the namespace first."""
    parts = repo.split("/")
    if parts[0] in ("*", "**") or "*" in parts[0]:
        return parts
    if len(parts) > 1 and hostlike(parts[0]):
        return parts
    return [DOCKER_HUB] + parts


def _tag_regex(tag: str) -> re.Pattern:
    return re.compile("^" + "".join(".*" if c == "*" else re.escape(c) for c in tag) + r"\Z")


def parse_pin(raw: object) -> Pin:
    """The :class:`Pin` of a pattern as an admin writes it, normalized; raises
    :class:`InvalidPin` with a reason."""
    if not isinstance(raw, str):
        raise InvalidPin("must be a string")
    text = raw.strip()
    if not text:
        raise InvalidPin("must not be empty")
    if len(text) > PATTERN_MAX:
        raise InvalidPin(f"must be at most {PATTERN_MAX} characters")
    if any(c.isspace() or ord(c) < 32 for c in text):
        raise InvalidPin("must not contain spaces or control characters")
    repo, tag, digest = text, None, None
    if "@" in repo:
        repo, digest = repo.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidPin("has an invalid digest (sha256:<64 hex>)")
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = repo[: len(repo) - len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]
        if not _TAG.match(tag):
            raise InvalidPin("has an invalid tag")
    if tag is not None and digest is not None:
        raise InvalidPin("give a tag or a digest, not both")
    if not repo:
        raise InvalidPin("needs a repository (e.g. library/nginx:1.27, ghcr.io/o/**)")
    wild = "*" in repo
    if wild:
        if digest is not None:
            raise InvalidPin("a digest needs a repository without wildcards")
        repo = _normalize_wild(repo)
    else:
        try:
            repo = canonical_name(repo)
        except RegistryError:
            raise InvalidPin("is not a valid repository name (lower case; e.g. library/nginx)") from None
    pattern = repo + (f":{tag}" if tag is not None else "") + (f"@{digest}" if digest else "")
    return Pin(pattern, repo, tag, digest, wild)


def _normalize_wild(repo: str) -> str:
    parts = repo.split("/")
    if len(parts) > 1 and parts[0].lower() in DOCKER_ALIASES:
        parts = parts[1:]
    if len(repo) > 255:
        raise InvalidPin("is not a valid repository pattern (too long)")
    for i, p in enumerate(parts):
        if p in ("*", "**"):
            continue
        if i == 0 and len(parts) > 1 and hostlike(p) and "*" not in p:
            parts[0] = p.lower()
            continue
        if "**" in p or not _WILD_COMPONENT.match(p):
            raise InvalidPin("is not a valid repository pattern (components: lower case, * or **)")
    if len(parts) == 1 and parts[0] not in ("*", "**"):
        parts = [LIBRARY.rstrip("/"), parts[0]]  # "py*" is library/py* on Docker Hub
    return "/".join(parts)


# -- what the pins keep ----------------------------------------------------------------

def manifest_refs(media_type: str, body: bytes) -> tuple[list[str], list[str]]:
    """``(child manifests, blobs)`` a manifest body references: an index's
    platform manifests; an image manifest's config and layers (schema 1: its
    fsLayers).  A body that is not JSON references nothing."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return [], []
    if not isinstance(doc, dict):
        return [], []
    children, blobs = [], []
    for m in doc.get("manifests") or ():
        if isinstance(m, dict) and isinstance(m.get("digest"), str) and _DIGEST.match(m["digest"]):
            children.append(m["digest"])
    cfg = doc.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("digest"), str) and _DIGEST.match(cfg["digest"]):
        blobs.append(cfg["digest"])
    for key, field in (("layers", "digest"), ("fsLayers", "blobSum")):
        for layer in doc.get(key) or ():
            if isinstance(layer, dict) and isinstance(layer.get(field), str) and _DIGEST.match(layer[field]):
                blobs.append(layer[field])
    return children, blobs


@dataclass
class Pinned:
    """What a set of pins keeps: tag keys ``(repository, tag)``, manifest
    digests, blob digests, and the repositories pinned whole (their blobs are
    kept through their membership)."""

    tags: set
    manifests: set
    blobs: set
    repos: set

    def keeps_blob(self, digest: str, repos: Iterable[str]) -> bool:
        return digest in self.blobs or any(r in self.repos for r in repos)


def pinned_roots(pins: list[Pin], tags: Iterable, manifest_repos: dict[str, set],
                 repositories: Iterable[str]) -> Pinned:
    """The tags, manifests and whole repositories ``pins`` name directly (no
    manifest body read yet).  ``tags``: rows with ``repository``, ``tag``,
    ``digest``; ``manifest_repos``: digest → repositories it was seen in;
    ``repositories``: every repository the cache knows (blobs, tags, manifests)."""
    out = Pinned(set(), set(), set(), set())
    if not pins:
        return out
    whole = [p for p in pins if p.whole_repo]
    for name in repositories:
        if any(p.matches_repo(name) for p in whole):
            out.repos.add(name)
    for t in tags:
        repo, tag = t.repository, t.tag
        if repo in out.repos or any(p.tag is not None and p.matches_repo(repo) and p.matches_tag(tag)
                                    for p in pins):
            out.tags.add((repo, tag))
            out.manifests.add(t.digest)
    for p in pins:
        if p.digest is not None:
            out.manifests.add(p.digest)
    for digest, repos in manifest_repos.items():
        if any(r in out.repos for r in repos):
            out.manifests.add(digest)
    return out


def close_over(pinned: Pinned, refs: dict[str, tuple[list[str], list[str]]]) -> Pinned:
    """Add to ``pinned`` the platform manifests and blobs its manifests reference
    (``refs``: digest → :func:`manifest_refs` of the bodies read)."""
    todo = list(pinned.manifests)
    while todo:
        d = todo.pop()
        children, blobs = refs.get(d, ((), ()))
        pinned.blobs.update(blobs)
        for c in children:
            if c not in pinned.manifests:
                pinned.manifests.add(c)
                todo.append(c)
    return pinned


__all__ = ["InvalidPin", "Pin", "Pinned", "parse_pin", "repo_namespace", "full_name", "manifest_refs",
           "pinned_roots", "close_over"]
