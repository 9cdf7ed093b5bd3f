"""Parsers of the rate-limit headers an upstream answers with: ``ratelimit-limit``
/ ``ratelimit-remaining`` (Docker Hub's ``100;w=21600``, the IETF draft's
``100, 100;w=21600``) and ``Retry-After``.  Hostile values are ignored."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from typing import Optional

from twisted.web.http_headers import Headers

_RL_ITEM = re.compile(r"^\s*([0-9]{1,9})\s*((?:;[^;]*)*)$")  # a count, optional parameters
_RL_WINDOW = re.compile(r"^\s*w\s*=\s*([0-9]{1,9})\s*$", re.I)
_RL_MAX_HEADER = 256  # longer values are not what any registry sends: ignored
_RL_MAX_WINDOW = 30 * 86400


def _rate_limit_value(raw: Optional[list]) -> tuple[Optional[int], Optional[int]]:
    """(count, window seconds) of a ``ratelimit-*`` header, None for what is
    absent or not of the form ``N`` / ``N;w=W`` (hostile values are ignored)."""
    if not raw:
        return None, None
    value = raw[0]
    if not isinstance(value, bytes) or len(value) > _RL_MAX_HEADER:
        return None, None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None, None
    items = text.split(",")
    if len(items) > 8:
        return None, None
    count = window = None
    for i, item in enumerate(items):
        m = _RL_ITEM.match(item)
        if m is None:
            if i == 0:
                return None, None
            continue
        n = int(m.group(1))
        w = None
        for param in m.group(2).split(";")[1:]:
            wm = _RL_WINDOW.match(param)
            if wm is not None:
                w = int(wm.group(1))
        if w is not None and not 0 < w <= _RL_MAX_WINDOW:
            w = None
        if i == 0:
            count, window = n, w
        elif window is None and w is not None and n == count:
            window = w  # "100, 100;w=21600": the policy of the current limit
    return count, window


def parse_rate_limit(headers: Headers) -> tuple[Optional[int], Optional[int], Optional[int]]:
    """``(limit, remaining, window)`` from an answer's ``ratelimit-limit`` /
    ``ratelimit-remaining`` headers; each None when absent or invalid.  A
    remaining count above the limit is a lie: both are dropped then."""
    limit, w1 = _rate_limit_value(headers.getRawHeaders(b"ratelimit-limit"))
    remaining, w2 = _rate_limit_value(headers.getRawHeaders(b"ratelimit-remaining"))
    if limit is not None and remaining is not None and remaining > limit:
        return None, None, None
    return limit, remaining, (w2 if w2 is not None else w1)


_RETRY_DIGITS = re.compile(r"^\s*([0-9]{1,12})\s*$")


def parse_retry_after(raw: Optional[list], now: float) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an
    HTTP date), None when absent or invalid; not capped here."""
    if not raw or not isinstance(raw[0], bytes) or len(raw[0]) > 64:
        return None
    try:
        text = raw[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    m = _RETRY_DIGITS.match(text)
    if m is not None:
        return float(int(m.group(1)))
    try:
        when = parsedate_to_datetime(text.strip())
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


__all__ = ["parse_rate_limit", "parse_retry_after"]
