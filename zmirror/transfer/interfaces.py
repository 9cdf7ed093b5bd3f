"""What a blob source answers: the interfaces of sources and bodies, and the
Content-Type a blob is sent with (see docs/design/transfer.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from zope.interface import Attribute, Interface


class IBlobBody(Interface):
    """A blob answer that writes itself to a client's request."""

    status = Attribute("HTTP status: 200, or 206 for a range")
    headers = Attribute("dict of the body's own headers (Content-Type, Content-Length, "
                        "Content-Range); the caller adds its own before send()")
    verified = Attribute("True when what is sent is checked against the digest (the whole "
                         "blob, or a range of a verified one); False for an upstream's range")

    def send(request):
        """Write status, headers and body to ``request`` (a coroutine); ends
        when every byte went out, or after the client connection was dropped."""


class IBlobSource(Interface):
    """Where blobs come from: the cache, the upstreams, or both (pull-through)."""

    def stat(repo, digest, *, record=None):
        """(async) :class:`BlobInfo` of ``digest`` in ``repo``; raises
        RegistryError (BLOB_UNKNOWN, ...) or, for a local store, returns None
        when it does not hold it.  ``record``: the access-log record to fill."""

    def open(repo, digest, byte_range, *, record=None):
        """(async) An :class:`IBlobBody` for ``digest`` of ``repo``;
        ``byte_range`` is the client's ``Range`` header value (None: the whole
        blob).  A local store returns None when it does not hold it."""


@dataclass
class BlobInfo:
    size: int
    content_type: bytes = b"application/octet-stream"


OCTET_STREAM = b"application/octet-stream"
# An upstream's blob Content-Type is passed on when it is a media type (RFC 6838
# restricted names) with parameters of printable ASCII, at most this long.
CONTENT_TYPE_MAX = 255
_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_CONTENT_TYPE = re.compile(rf"{_NAME}/{_NAME}(?:[ \t]*;[\x20-\x7e\t]*)?")


def blob_content_type(value: Any) -> bytes:
    """The Content-Type to send with a blob for an upstream's ``value`` (bytes,
    str or None): the value itself when it is a valid media type with printable
    ASCII parameters and at most CONTENT_TYPE_MAX long, else
    ``application/octet-stream``.

    An invalid one is replaced, not treated as a bad answer: the blob's bytes are
    checked against its digest, and registry clients give a blob's Content-Type
    no meaning (the distribution spec's blobs are ``application/octet-stream``),
    so failing over on it would turn a good upstream into an outage."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return OCTET_STREAM
    if not isinstance(value, str):
        return OCTET_STREAM
    value = value.strip(" \t")
    if len(value) > CONTENT_TYPE_MAX or not _CONTENT_TYPE.fullmatch(value):
        return OCTET_STREAM
    return value.encode("ascii")

