"""What a sync job says: its fields' validators (the admin API's and the CLI's),
the image reference grammar (``repo:tag``, ``repo@digest``, ``repo:pattern``),
tag selection (fnmatch-style ``*``/``?``, "the newest N" in natural version
order) and platform selection in an index.

Design: docs/design/sync.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Iterable, Optional

from croniter import croniter

from zmirror.oci.errors import RegistryError
from zmirror.oci.names import DOCKER_HUB, Repo, canonical_name, hostlike
from zmirror.oci.reference import parse_digest, parse_tag

NAME_MAX = 100
IMAGES_MAX = 100
IMAGE_MAX = 400
NEWEST_MAX = 1000
PLATFORMS_MAX = 32
INTERVAL_MIN = 60
INTERVAL_MAX = 366 * 86400
CRON_MAX = 120
CONCURRENCY_MAX = 8

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:-]*\Z")
# a tag pattern: tag characters plus the wildcards * and ?
_TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.*?-]{1,128}\Z")
_PLATFORM_PART = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}\Z")


@dataclass(frozen=True)
class ImageRef:
    """One entry of a job's ``images``: a canonical ``repository`` and exactly one
    of ``tag`` (a tag), ``pattern`` (a tag pattern) or ``digest``."""

    repository: str
    tag: Optional[str] = None
    pattern: Optional[str] = None
    digest: Optional[str] = None

    def __str__(self) -> str:
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag or self.pattern}"


def parse_image(raw: Any) -> ImageRef:
    """``library/nginx:1.27``, ``nginx`` (tag ``latest``), ``ghcr.io/o/img@sha256:…``,
    ``library/python:3.13-*``.  Raises ValueError with a one-line reason."""
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    text = raw.strip()
    if not text:
        raise ValueError("must not be empty")
    if len(text) > IMAGE_MAX:
        raise ValueError(f"must be at most {IMAGE_MAX} characters")
    digest = tag = None
    if "@" in text:
        text, digest = text.split("@", 1)
        try:
            digest = parse_digest(digest)
        except RegistryError:
            raise ValueError("has an invalid digest (sha256:<64 hex> or sha512:<128 hex>)") from None
    else:
        slash = text.rfind("/")
        colon = text.rfind(":")
        if colon > slash:
            text, tag = text[:colon], text[colon + 1:]
    try:
        repository = canonical_name(text)
    except RegistryError:
        raise ValueError("is not a valid repository name (lower case, e.g. library/nginx:1.27)") from None
    if digest is not None:
        return ImageRef(repository, digest=digest)
    tag = tag if tag is not None else "latest"
    if "*" in tag or "?" in tag:
        if not _TAG_PATTERN.match(tag):
            raise ValueError("has an invalid tag pattern (tag characters and * or ?)")
        return ImageRef(repository, pattern=tag)
    try:
        return ImageRef(repository, tag=parse_tag(tag))
    except RegistryError:
        raise ValueError("has an invalid tag") from None


def repo_of(name: str) -> Repo:
    """The :class:`Repo` of a canonical name (its namespace: the host in front, else docker.io)."""
    first, _, rest = name.partition("/")
    if rest and hostlike(first):
        return Repo(first, rest)
    return Repo(DOCKER_HUB, name)


# --- field validators: value → converted value, or ValueError(reason) ---------------------


def job_name(x: Any) -> str:
    if not isinstance(x, str):
        raise ValueError("must be a string")
    x = x.strip()
    if not x:
        raise ValueError("must not be empty")
    if len(x) > NAME_MAX:
        raise ValueError(f"must be at most {NAME_MAX} characters")
    if not _NAME.match(x):
        raise ValueError("may hold letters, digits, spaces and _ . : - (starting with a letter or digit)")
    return x


def images(x: Any) -> list[str]:
    """The list of image references, each normalized (``nginx`` → ``library/nginx:latest``);
    the first bad entry's index is named."""
    if not isinstance(x, list):
        raise ValueError("must be a list of image references")
    if not x:
        raise ValueError("must not be empty")
    if len(x) > IMAGES_MAX:
        raise ValueError(f"must hold at most {IMAGES_MAX} images")
    out: list[str] = []
    for i, item in enumerate(x):
        try:
            ref = str(parse_image(item))
        except ValueError as e:
            raise ValueError(f"entry {i + 1} {e}") from None
        if ref not in out:
            out.append(ref)
    return out


def newest(x: Any) -> Optional[int]:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError("must be null or an integer")
    if not 1 <= x <= NEWEST_MAX:
        raise ValueError(f"must be between 1 and {NEWEST_MAX}")
    return x


def parse_platform(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    parts = raw.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(_PLATFORM_PART.match(p) for p in parts):
        raise ValueError("must be os/architecture or os/architecture/variant (e.g. linux/arm/v7)")
    return "/".join(parts)


def platforms(x: Any) -> list[str]:
    if isinstance(x, str):  # "linux/amd64,linux/arm64" as the CLI writes it
        x = [p for p in x.split(",") if p.strip()]
    if not isinstance(x, list):
        raise ValueError("must be a list such as [\"linux/amd64\", \"linux/arm64\"] ([] = all)")
    if len(x) > PLATFORMS_MAX:
        raise ValueError(f"must hold at most {PLATFORMS_MAX} platforms")
    out: list[str] = []
    for i, item in enumerate(x):
        try:
            p = parse_platform(item)
        except ValueError as e:
            raise ValueError(f"entry {i + 1} {e}") from None
        if p not in out:
            out.append(p)
    return out


def schedule(x: Any) -> Optional[dict]:
    """null, ``{"interval": seconds}`` (at least 60) or ``{"cron": "m h dom mon dow"}`` (UTC)."""
    if x is None:
        return None
    if not isinstance(x, dict) or len(x) != 1 or next(iter(x)) not in ("interval", "cron"):
        raise ValueError('must be null, {"interval": seconds} or {"cron": "m h dom mon dow"}')
    if "interval" in x:
        v = x["interval"]
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("interval must be an integer number of seconds")
        if not INTERVAL_MIN <= v <= INTERVAL_MAX:
            raise ValueError(f"interval must be between {INTERVAL_MIN} and {INTERVAL_MAX} seconds")
        return {"interval": v}
    expr = x["cron"]
    if not isinstance(expr, str):
        raise ValueError("cron must be a string")
    expr = " ".join(expr.split())
    if not expr or len(expr) > CRON_MAX or len(expr.split(" ")) != 5 or not expr.isascii():
        raise ValueError('cron must have five fields: minute hour day-of-month month day-of-week')
    try:
        ok = croniter.is_valid(expr)
    except Exception:  # croniter raises more than it documents on hostile input
        ok = False
    if not ok:
        raise ValueError("cron is not a valid cron expression")
    return {"cron": expr}


def concurrency(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError("must be an integer")
    if not 1 <= x <= CONCURRENCY_MAX:
        raise ValueError(f"must be between 1 and {CONCURRENCY_MAX}")
    return x


def boolean(x: Any) -> bool:
    if not isinstance(x, bool):
        raise ValueError("must be true or false")
    return x


# --- selection ----------------------------------------------------------------------------

_CHUNK = re.compile(r"[0-9]+|[^0-9]+")


def version_key(tag: str) -> tuple:
    """Natural version order: digit runs compare as numbers (``1.10`` > ``1.9``)."""
    return tuple((1, int(c), "") if c.isdigit() else (0, 0, c) for c in _CHUNK.findall(tag))


def select_tags(tags: Iterable[str], pattern: str, newest_n: Optional[int]) -> list[str]:
    """The tags ``pattern`` matches (all of them, or the ``newest_n`` highest in
    version order), highest first."""
    matched = sorted({t for t in tags if isinstance(t, str) and fnmatchcase(t, pattern)},
                     key=version_key, reverse=True)
    return matched[:newest_n] if newest_n else matched


def platform_matches(platform: Any, wanted: list[str]) -> bool:
    """Whether an index entry's ``platform`` is one of ``wanted`` ([] = every entry).
    A wanted platform without a variant matches every variant of its architecture."""
    if not wanted:
        return True
    if not isinstance(platform, dict):
        return False
    os_ = str(platform.get("os", "")).lower()
    arch = str(platform.get("architecture", "")).lower()
    variant = str(platform.get("variant", "") or "").lower()
    for w in wanted:
        parts = w.split("/")
        if parts[0] == os_ and parts[1] == arch and (len(parts) == 2 or parts[2] == variant):
            return True
    return False


__all__ = ["ImageRef", "parse_image", "repo_of", "job_name", "images", "newest", "platforms", "parse_platform",
           "schedule", "concurrency", "boolean", "version_key", "select_tags", "platform_matches"]
