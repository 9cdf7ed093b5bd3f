"""What the upstream layer talks about: an :class:`Upstream` (one enabled
``registries`` row) with its :class:`Health` record, :class:`RateLimit`,
:class:`UpstreamError`, and the URL checks every upstream-supplied URL passes
(design: docs/design/upstream.md)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit


class UpstreamError(Exception):
    """A failed attempt at one upstream (connection, TLS, timeout, bad answer)."""

    def __init__(self, message: str, *, status: Optional[int] = None, retry_after: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class RateLimit:
    """What an upstream last said about its rate limit (``ratelimit-*`` headers)."""

    limit: Optional[int] = None
    remaining: Optional[int] = None
    window: Optional[int] = None  # seconds (``w=``)
    updated_at: Optional[float] = None


@dataclass
class Health:
    """One upstream's health record; :class:`zmirror.upstream.health.UpstreamHealth`
    changes it."""

    state: str = "unknown"  # up | down | cooldown | ratelimited | unknown
    last_error: Optional[str] = None
    last_latency_ms: Optional[float] = None
    last_checked_at: Optional[float] = None
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    rate_limit: Optional[RateLimit] = None  # None until an upstream sent ratelimit-* headers
    ratelimited_until: float = 0.0  # the rate-limit cool-down (separate from failures)
    # while cooling down: "retry-after" (the upstream said how long) or "window" (a guess
    # from w=: a later answer with pulls left ends it early)
    ratelimit_reason: str = ""
    # what the cool-down holds back: "pulls" (manifest GETs) or "all" requests (the
    # upstream answered 429 to one that is no pull, e.g. a HEAD: leave it alone entirely)
    ratelimit_scope: str = "pulls"

    def rate_limited(self, now: float) -> bool:
        return self.ratelimited_until > now

    def skipped(self, now: float, counted: bool) -> bool:
        """In a rate-limit cool-down that holds back this kind of request."""
        return self.rate_limited(now) and (counted or self.ratelimit_scope == "all")

    def as_dict(self, now: float) -> dict:
        state = self.state
        if self.cooldown_until > now:
            state = "cooldown"
        elif self.rate_limited(now):
            state = "ratelimited"
        rl = None
        if self.rate_limit is not None or self.rate_limited(now):
            r = self.rate_limit or RateLimit()
            rl = {"limit": r.limit, "remaining": r.remaining, "window": r.window,
                  "reset_at": self.ratelimited_until if self.rate_limited(now) else None,
                  "updated_at": r.updated_at}
        return {
            "state": state,
            "last_error": self.last_error,
            "last_latency_ms": self.last_latency_ms,
            "last_checked_at": self.last_checked_at,
            "consecutive_failures": self.consecutive_failures,
            "rate_limit": rl,
        }


@dataclass
class Upstream:
    id: int
    name: str
    url: str  # base URL without trailing slash, e.g. https://registry-1.docker.io
    priority: int = 100
    enabled: bool = True
    username: str = ""
    password: str = field(default="", repr=False)
    health: Health = field(default_factory=Health)
    namespace: str = "docker.io"  # the registry host this upstream mirrors

    @property
    def origin(self) -> tuple[str, str, int]:
        return origin_of(self.url)

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)

    def basic_auth(self) -> bytes:
        raw = f"{self.username}:{self.password}".encode()
        return b"Basic " + base64.b64encode(raw)


def origin_of(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``url``; an unparsable URL matches no origin."""
    try:
        u = urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:  # an invalid port or IPv6 literal: matches no origin
        return ("", "", -1)
    return (u.scheme, (u.hostname or "").lower(), port)


def scheme_of(url: str) -> str:
    """The lower-case scheme of ``url`` ("" when it cannot be parsed)."""
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


_URL_CHARS = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: no spaces, controls or non-ASCII


def checked_url(url: str, what: str) -> str:
    """``url`` if it is a plain http(s) URL an agent can request; else UpstreamError
    (the value came from an upstream: a redirect Location, a token realm)."""
    if not _URL_CHARS.match(url):
        raise UpstreamError(f"{what} is not a valid URL (spaces, control or non-ASCII characters)",
                            status=502)
    try:
        u = urlsplit(url)
        u.port  # raises ValueError for a port that is not a number in 0..65535
    except ValueError:
        raise UpstreamError(f"{what} is not a valid URL", status=502) from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UpstreamError(f"{what} is not an http(s) URL with a host", status=502)
    return url


__all__ = ["Health", "RateLimit", "Upstream", "UpstreamError", "checked_url", "origin_of", "scheme_of"]
