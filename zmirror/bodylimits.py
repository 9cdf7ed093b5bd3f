"""Which request bodies the HTTP channel takes, per path, and how it refuses the rest.

The channel (:mod:`zmirror.httpchannel`) decides from the request head alone,
before a byte of the body is read: a body where none is taken is refused, an
announced Content-Length over the cap is refused, a chunked body is counted as
it arrives.  Each :class:`Area` of the URL space has its cap and its error
format; the wiring (:func:`zmirror.wiring.body_limits`) lists them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional, Sequence
from urllib.parse import unquote_to_bytes

Headers = list[tuple[bytes, bytes]]
# (status, message) -> (JSON body, headers of the area's format)
Render = Callable[[int, str], tuple[bytes, Headers]]
# (status, body, headers) of an answer given by the channel itself
Answer = tuple[int, bytes, Headers]

READ_METHODS = (b"GET", b"HEAD")


def plain_error(status: int, message: str) -> tuple[bytes, Headers]:
    """``{"error": message}``: paths of no area, and before the request line is read."""
    return json.dumps({"error": message}).encode(), []


@dataclass(frozen=True)
class Area:
    """``path`` (and, with ``subtree``, everything under it) takes bodies of at most
    ``max_body`` bytes; refusals are rendered by ``render``.  ``method_refusal``:
    the message of a 405 for a body sent where none is taken."""

    name: str
    path: bytes
    max_body: int
    render: Render
    subtree: bool = False
    method_refusal: str = "method not allowed"

    def matches(self, decoded: bytes) -> bool:
        return decoded == self.path or (self.subtree and decoded.startswith(self.path + b"/"))


OTHER = Area("other", b"", 0, plain_error)


class BodyLimits:
    """The areas, tried in order; a path in none of them takes no body."""

    def __init__(self, areas: Sequence[Area] = ()):
        self.areas = tuple(areas)

    def area(self, path: Optional[bytes]) -> Area:
        """The area of a request target (None: not known yet).

        Decided on the percent-decoded path, the way the router sees it; any
        spelling that is not exactly an area's path gets the strictest cap (no body)."""
        if path is None:
            return OTHER
        decoded = unquote_to_bytes(path.split(b"?", 1)[0])
        for area in self.areas:
            if area.matches(decoded):
                return area
        return OTHER

    def body_cap(self, path: bytes) -> tuple[str, int]:
        """``(area name, largest body taken)`` for a request target."""
        area = self.area(path)
        return area.name, area.max_body

    @staticmethod
    def answer(area: Area, status: int, message: str) -> Answer:
        """A refusal in ``area``'s format (never stored by a cache)."""
        headers = [(b"Content-Type", b"application/json; charset=utf-8"),
                   (b"Cache-Control", b"no-store")]
        if status == 405:
            headers.append((b"Allow", b"GET, HEAD"))
        body, own = area.render(status, message)
        return status, body, headers + own

    def refusal_for(self, method: bytes, path: bytes, length: Optional[int]) -> Optional[Answer]:
        """The answer to a request head whose body must not be read, or None.

        ``length`` is the announced Content-Length (0 for no body, None for chunked)."""
        area = self.area(path)
        cap = area.max_body
        if length == 0 or (length is not None and length <= cap) or (length is None and cap):
            return None
        if cap == 0:
            if method not in READ_METHODS:
                return self.answer(area, 405, area.method_refusal)
            return self.answer(area, 413, "this endpoint takes no request body")
        return self.answer(area, 413, f"request body larger than {cap} bytes")


__all__ = ["Area", "BodyLimits", "OTHER", "plain_error"]
