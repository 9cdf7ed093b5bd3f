"""Manifest media types: the ones we ask upstreams for, and the checks of any we pass on.

Shared by the upstream side (:mod:`zmirror.upstream.manifests`: what an upstream
answered) and the cache (:mod:`zmirror.cache.manifests`: what the database
holds), so that neither imports the other.  Only a bare RFC 6838 media type is
ever sent to a client as ``Content-Type`` or kept in the cache.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
# what we ask for when a client sent no Accept
DEFAULT_ACCEPT = [DOCKER_V2, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX]

# RFC 6838 section 4.2: type-name "/" subtype-name, each a restricted-name
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(rf"^{_RESTRICTED_NAME}/{_RESTRICTED_NAME}\Z")
_PARAMETERS = re.compile(r"^[\x20-\x7e\t]*\Z")


def valid_media_type(value: Any) -> bool:
    """Is ``value`` a bare RFC 6838 media type (``type/subtype``, no parameters)?"""
    return isinstance(value, str) and bool(_MEDIA_TYPE.match(value))


def content_media_type(value: Optional[str]) -> Optional[str]:
    """The media type of a ``Content-Type`` value (parameters dropped), or None
    if it is missing or not a valid media type."""
    if not value:
        return None
    base, _, params = value.partition(";")
    base = base.strip(" \t")
    if not valid_media_type(base) or not _PARAMETERS.match(params):
        return None
    return base


def acceptable(media_type: str, accept: list[str]) -> bool:
    """Does a client's merged Accept list admit ``media_type``?"""
    for item in accept:
        t = item.split(";", 1)[0].strip().lower()
        if t == "*/*" or t == media_type.lower():
            return True
    return False


def sniff_media_type(body: bytes) -> Optional[str]:
    """The media type a manifest body declares (for an answer without
    ``Content-Type``); None if it declares one that is not a valid media type."""
    try:
        doc = json.loads(body)
        mt = doc.get("mediaType")
        if isinstance(mt, str) and mt:
            return mt if valid_media_type(mt) else None
        if mt is not None and not isinstance(mt, str):
            return None
        if doc.get("schemaVersion") == 1:
            return DOCKER_V1_SIGNED
    except (ValueError, AttributeError, RecursionError):
        pass
    return OCI_MANIFEST


__all__ = ["OCI_MANIFEST", "OCI_INDEX", "DOCKER_V2", "DOCKER_LIST", "DEFAULT_ACCEPT", "valid_media_type",
           "content_media_type", "acceptable", "sniff_media_type"]
