"""The one parser for registry paths: repository names, tags and digests
(the distribution spec's grammar).

Everything the proxy later decides on (policy, cache keys, upstream URLs) uses
the parsed, normalized values returned here and never the raw path; a raw path
holding a '%' is refused outright.

Design: docs/design/namespaces.md ("Repository names, tags and digests").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from zmirror.oci.errors import RegistryError

NAME_MAX = 255
# Anchored with \Z, not $: "$" also matches before a trailing newline.
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
_DIGEST_SHAPE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")

MANIFEST = "manifest"
BLOB = "blob"
TAGS = "tags"


def parse_name(raw: str) -> str:
    """Validate a repository name and normalize a one-component name to ``library/x``."""
    if not raw or len(raw) > NAME_MAX:
        raise RegistryError("NAME_INVALID", detail={"name": raw[:300]})
    parts = raw.split("/")
    for part in parts:
        if not _COMPONENT.match(part):
            raise RegistryError("NAME_INVALID", detail={"name": raw})
    if len(parts) == 1:
        raw = "library/" + raw
        if len(raw) > NAME_MAX:
            raise RegistryError("NAME_INVALID", detail={"name": raw})
    return raw


def is_digest(ref: str) -> bool:
    return ":" in ref


def parse_digest(raw: str) -> str:
    if not _DIGEST.match(raw):
        if _DIGEST_SHAPE.match(raw) and not raw.startswith(("sha256:", "sha512:")):
            raise RegistryError("DIGEST_INVALID", "unsupported digest algorithm", {"digest": raw[:200]})
        raise RegistryError("DIGEST_INVALID", "invalid digest", {"digest": raw[:200]})
    return raw


def parse_tag(raw: str) -> str:
    if not _TAG.match(raw):
        raise RegistryError("TAG_INVALID", "invalid tag", {"tag": raw[:200]})
    return raw


def parse_reference(raw: str) -> str:
    """A manifest reference: a tag, or a digest if it holds ':'.

    A reference that is neither a tag nor shaped like a digest names no
    manifest: 404 MANIFEST_UNKNOWN, as the distribution spec and its
    conformance suite expect (e.g. ``.INVALID_MANIFEST_NAME``) and as
    distribution answers (its manifest route only matches tag|digest).  A
    digest-shaped reference with a bad or unsupported value stays 400
    DIGEST_INVALID.  Nothing off-grammar ever reaches an upstream.
    """
    if _TAG.match(raw):
        return raw
    if is_digest(raw) and _DIGEST_SHAPE.match(raw):
        return parse_digest(raw)
    raise RegistryError("MANIFEST_UNKNOWN", detail={"reference": raw[:200]})


@dataclass(frozen=True)
class RegistryPath:
    """A parsed ``/v2/<name>/<kind>/<reference>`` request path."""

    kind: str  # MANIFEST | BLOB | TAGS
    name: str  # canonical repository name, e.g. "library/nginx", "ghcr.io/owner/img" (a Repo)
    reference: str = ""  # tag or digest ("" for tags/list)

    @property
    def by_digest(self) -> bool:
        return is_digest(self.reference)


def parse_path(path: bytes | str, resolve: Optional[Callable[[str], str]] = None) -> RegistryPath:
    """Parse the path (no query string) of a request under ``/v2/``.

    ``resolve``: turns the raw repository name into the name the request is
    about (:meth:`zmirror.registry.routing.RoutingTable.resolve`: a
    canonical :class:`~zmirror.oci.names.Repo`); default
    :func:`parse_name` (a docker.io name).

    Raises RegistryError: NAME_INVALID / DIGEST_INVALID for off-grammar
    input (the name is checked first), MANIFEST_UNKNOWN (404) for a manifest
    reference that is neither a tag nor a digest, UNSUPPORTED for push and
    catalog endpoints, NOT_FOUND for anything else.
    """
    if isinstance(path, bytes):
        try:
            path = path.decode("ascii")
        except UnicodeDecodeError:
            raise RegistryError("NAME_INVALID", "non-ASCII characters in path") from None
    if not path.startswith("/v2/"):
        raise RegistryError("NOT_FOUND", status=404)
    rest = path[len("/v2/"):]
    if "%" in rest or "\\" in rest:
        raise RegistryError("NAME_INVALID", "percent-encoded or escaped characters are not allowed")
    if rest in ("_catalog", "_catalog/"):
        raise RegistryError("UNSUPPORTED", "catalog listing is not supported by this proxy")
    segs = rest.split("/")
    parse_name_ = resolve or parse_name
    if len(segs) >= 3 and segs[-2:] == ["tags", "list"]:
        return RegistryPath(TAGS, parse_name_("/".join(segs[:-2])))
    if len(segs) >= 3 and (segs[-2:] == ["blobs", "uploads"] or segs[-3:-1] == ["blobs", "uploads"]):
        raise RegistryError("UNSUPPORTED", "this is a pull-only proxy: pushing is not supported")
    if len(segs) >= 3 and segs[-2] == "manifests":
        name = parse_name_("/".join(segs[:-2]))
        return RegistryPath(MANIFEST, name, parse_reference(segs[-1]))
    if len(segs) >= 3 and segs[-2] == "blobs":
        name = parse_name_("/".join(segs[:-2]))
        return RegistryPath(BLOB, name, parse_digest(segs[-1]))
    raise RegistryError("NOT_FOUND", "unknown registry endpoint", status=404)
