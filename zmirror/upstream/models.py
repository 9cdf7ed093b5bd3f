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

from zmirror.upstream.tlsconfig import TLSSettings


class UpstreamError(Exception):
    """A failed attempt at one upstream (connection, TLS, timeout, bad answer)."""

    def __init__(self, message: str, *, status: Optional[int] = None, retry_after: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


# The brief rest after a 429 that did not say how long (no Retry-After, no ratelimit-*)
# to a request that does not count against a pull limit (a blob, a HEAD): BACKOFF_FIRST
# seconds, doubled for each further one in a row (see UpstreamHealth.note_rate_limit).
BACKOFF_FIRST = 2.0
BACKOFF_MAX_STEPS = 16  # no more doublings are counted (the rest is capped long before)
# How long after a rest ran out a 429 still continues the row (and requests go one at a
# time, the first of them the probe); later the row is forgotten.
BACKOFF_MEMORY = 60.0
PROBE_TIMEOUT = 30.0  # a probe not answered by then no longer holds the others back
PROBE_WAIT = 1.0  # the Retry-After of a request refused while a probe is out


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
    # the backoff (apart from the cool-down above; it holds back every request): 429s that
    # said nothing in a row (0: none), the end of the rest, when its length was last set,
    # and when an answer that was no 429 last ended one
    backoff: int = 0
    backoff_until: float = 0.0
    backoff_at: float = 0.0
    backoff_cleared_at: float = 0.0
    # the request sent as the probe once the backoff rest ran out (0: none out) and since when
    probe: int = 0
    probe_at: float = 0.0

    def rate_limited(self, now: float) -> bool:
        return self.ratelimited_until > now

    def backing_off(self, now: float) -> bool:
        """In the rest of a backoff."""
        return self.backoff_until > now

    def on_probation(self, now: float) -> bool:
        """A backoff rest ran out a short while ago and no answer but 429s came since:
        requests go one at a time (the first one is the probe)."""
        return self.backoff > 0 and self.backoff_until <= now < self.backoff_until + BACKOFF_MEMORY

    def probing(self, now: float) -> bool:
        """A probe is out (and not overdue)."""
        return self.probe != 0 and now < self.probe_at + PROBE_TIMEOUT

    def skipped(self, now: float, counted: bool) -> bool:
        """In a rate-limit cool-down that holds back this kind of request, in a backoff
        rest, or on probation with the probe out: a request of this kind must wait."""
        return self.wait(now, counted) > 0

    def wait(self, now: float, counted: bool) -> float:
        """Seconds until a request of this kind may go to the upstream (0: now)."""
        waits = [0.0]
        if self.rate_limited(now) and (counted or self.ratelimit_scope == "all"):
            waits.append(self.ratelimited_until - now)
        if self.backing_off(now):
            waits.append(self.backoff_until - now)
        elif self.on_probation(now) and self.probing(now):
            waits.append(PROBE_WAIT)
        return max(waits)

    def reset_at(self, now: float) -> Optional[float]:
        """The later deadline of a rate-limit cool-down and a backoff rest in force."""
        deadlines = [t for t in (self.ratelimited_until, self.backoff_until) if t > now]
        return max(deadlines) if deadlines else None

    def as_dict(self, now: float) -> dict:
        state = self.state
        reset_at = self.reset_at(now)
        if self.cooldown_until > now:
            state = "cooldown"
        elif reset_at is not None:
            state = "ratelimited"
        rl = None
        if self.rate_limit is not None or reset_at is not None:
            r = self.rate_limit or RateLimit()
            rl = {"limit": r.limit, "remaining": r.remaining, "window": r.window,
                  "reset_at": reset_at, "updated_at": r.updated_at}
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
    # the egress proxy URL for this upstream: None = the [upstream] default (or the
    # environment's), "" = direct (zmirror.upstream.egress)
    proxy: Optional[str] = field(default=None, repr=False)
    tls: TLSSettings = field(default_factory=TLSSettings)  # zmirror.upstream.tlsconfig

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


__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX_STEPS", "BACKOFF_MEMORY", "PROBE_TIMEOUT", "PROBE_WAIT",
           "Health", "RateLimit", "Upstream", "UpstreamError", "checked_url", "origin_of", "scheme_of"]
