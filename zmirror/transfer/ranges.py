"""A client's ``Range`` header: the one bytes range we answer, and the one we ask upstream for."""

from __future__ import annotations

from typing import Optional

from werkzeug.http import parse_range_header

from zmirror.oci.errors import RegistryError

UNSATISFIABLE = object()


def resolve_range(value: Optional[str], size: int):
    """A single ``bytes=`` range → (start, end) inclusive; None to send it all
    (no header, several ranges, another unit, or a form werkzeug rejects as
    malformed — ``bytes=5-3``, ``bytes=-0`` — which RFC 9110 lets us ignore);
    UNSATISFIABLE for 416."""
    rng = parse_range_header(value) if value else None
    if rng is None or rng.units != "bytes" or len(rng.ranges) != 1:
        return None
    first, stop = rng.ranges[0]  # stop is exclusive, None for "to the end"
    if first < 0:  # suffix: the last -first bytes
        return (max(size + first, 0), size - 1) if size else UNSATISFIABLE
    if first >= size:
        return UNSATISFIABLE
    return first, size - 1 if stop is None else min(stop - 1, size - 1)


def range_headers(value: Optional[str], size: int) -> tuple[int, int, Optional[int], dict]:
    """``(status, start, end or None, headers)`` to answer ``value`` (a
    client's Range) for a blob of ``size`` bytes; RegistryError RANGE_INVALID
    (416) when it cannot be satisfied."""
    rng = resolve_range(value, size)
    if rng is UNSATISFIABLE:
        raise RegistryError("RANGE_INVALID", headers={b"Content-Range": f"bytes */{size}".encode()})
    if rng is None:
        return 200, 0, None, {b"Content-Length": str(size).encode()}
    start, end = rng
    return 206, start, end, {b"Content-Range": f"bytes {start}-{end}/{size}".encode(),
                             b"Content-Length": str(end - start + 1).encode()}


def single_range(value: Optional[str]) -> Optional[str]:
    """A client's ``Range`` as we send it upstream: one bytes range, respelled;
    None (ask for the whole blob) for anything else."""
    rng = parse_range_header(value) if value else None
    if rng is None or rng.units != "bytes" or len(rng.ranges) != 1:
        return None
    return rng.to_header()
