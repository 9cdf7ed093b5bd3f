"""``WWW-Authenticate`` parsing and the upstream token cache.

The parser follows RFC 7235's grammar closely enough for registries: several
challenges in one header, quoted-string values with escapes and commas
(``scope="repository:a:pull,push"``), and token68 values for Basic.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred, succeed

from zmirror.singleflight import SingleFlight

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME_RE = re.compile(r"\s*(" + _TOKEN + r")")
_PARAM_RE = re.compile(r"\s*(" + _TOKEN + r")\s*=\s*")
_TOKEN_VALUE_RE = re.compile(_TOKEN)
_TOKEN68_RE = re.compile(r"\s*([A-Za-z0-9\-._~+/]+=*)\s*(?:,|$)")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-cased: "bearer", "basic", ...
    params: dict[str, str] = field(default_factory=dict)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name.lower(), default)


class ChallengeParseError(ValueError):
    pass


def _quoted(s: str, i: int) -> tuple[str, int]:
    # s[i] == '"'
    out = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ChallengeParseError("unterminated quoted string")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse one (or a comma-joined list of) ``WWW-Authenticate`` values."""
    challenges: list[Challenge] = []
    i, n = 0, len(header)
    while i < n:
        i = _skip(header, i, " \t,")
        if i >= n:
            break
        m = _SCHEME_RE.match(header, i)
        if not m:
            raise ChallengeParseError(f"expected an auth scheme at {i}")
        scheme = m.group(1).lower()
        i = m.end()
        # token68 (e.g. "Basic abc==") — only if not followed by '='-param syntax
        t68 = _TOKEN68_RE.match(header, i)
        if t68 and not _PARAM_RE.match(header, i):
            challenges.append(Challenge(scheme, {"": t68.group(1)}))
            i = t68.end()
            continue
        params, i = _auth_params(header, i)
        challenges.append(Challenge(scheme, params))
    return challenges


def _skip(s: str, i: int, chars: str) -> int:
    """The index of the first character at or after ``i`` not in ``chars``."""
    while i < len(s) and s[i] in chars:
        i += 1
    return i


def _auth_params(header: str, i: int) -> tuple[dict[str, str], int]:
    """The ``name=value`` parameters of one challenge, from ``i``; and where the
    next challenge (if any) starts."""
    params: dict[str, str] = {}
    n = len(header)
    while i < n:
        save = i
        i = _skip(header, i, " \t")
        pm = _PARAM_RE.match(header, i)
        if not pm:
            return params, save
        name = pm.group(1).lower()
        params[name], i = _param_value(header, pm.end(), name)
        i = _skip(header, i, " \t")
        if i < n and header[i] == ",":
            # the next item is another param, or a new challenge
            j = _skip(header, i + 1, " \t,")
            if _starts_challenge(header, j):
                return params, j
            i += 1
        elif i < n:
            raise ChallengeParseError(f"unexpected character {header[i]!r} at {i}")
    return params, i


def _param_value(header: str, i: int, name: str) -> tuple[str, int]:
    """A parameter's value at ``i`` (a quoted string or a token) and the index after it."""
    if i < len(header) and header[i] == '"':
        return _quoted(header, i)
    vm = _TOKEN_VALUE_RE.match(header, i)
    if not vm:
        raise ChallengeParseError(f"expected a value for {name!r}")
    return vm.group(0), vm.end()


def _starts_challenge(header: str, j: int) -> bool:
    """``header[j:]`` is "scheme param=...", "scheme token68" or a bare "scheme"
    (a new challenge), not "name=value" (another param)."""
    sm = _SCHEME_RE.match(header, j)
    if not sm:
        return False
    after = sm.end()
    return not (after < len(header) and header[after:].lstrip(" \t").startswith("="))


def parse_headers(values: list[bytes] | None) -> list[Challenge]:
    out: list[Challenge] = []
    for v in values or []:
        try:
            out.extend(parse_www_authenticate(v.decode("latin-1")))
        except ChallengeParseError:
            continue
    return out


@dataclass
class CachedToken:
    token: str
    expires_at: float


class TokenCache:
    """Tokens per key until they expire, with one in-flight fetch per key.

    ``get(key, fetch)`` returns a cached token or awaits ``fetch()`` which must
    return ``(token, expires_in_seconds)``; concurrent callers for one key share
    that single fetch.  The fetch belongs to no caller (:class:`SingleFlight`):
    a caller that is cancelled (its client went away) only stops waiting.

    Memory is bounded: expired tokens are purged (a sweep at most every
    ``SWEEP_EVERY`` seconds), and at most ``max_entries`` tokens are kept, the
    least recently used one going first.
    """

    MARGIN = 5.0  # seconds before expiry at which a token is no longer handed out
    SWEEP_EVERY = 60.0

    def __init__(self, clock: Any, *, max_entries: int = 10_000):
        self.clock = clock
        self.max_entries = max(1, max_entries)
        self._tokens: "OrderedDict[Any, CachedToken]" = OrderedDict()
        self._fetches: SingleFlight = SingleFlight()
        self._next_sweep = clock.seconds() + self.SWEEP_EVERY

    def peek(self, key: Any) -> str | None:
        now = self.clock.seconds()
        self._sweep(now)
        t = self._tokens.get(key)
        if t and t.expires_at - self.MARGIN > now:
            self._tokens.move_to_end(key)
            return t.token
        if t:
            del self._tokens[key]
        return None

    def invalidate(self, key: Any) -> None:
        self._tokens.pop(key, None)

    def get(self, key: Any, fetch: Callable[[], Awaitable[tuple[str, float]]]) -> "Deferred[str]":
        """A Deferred with the token; cancelling it detaches only this caller."""
        cached = self.peek(key)
        if cached is not None:
            return succeed(cached)

        async def work() -> str:
            token, expires_in = await fetch()
            self._put(key, token, expires_in)
            return token

        return self._fetches.run(key, work)

    def _put(self, key: Any, token: str, expires_in: float) -> None:
        now = self.clock.seconds()
        self._tokens[key] = CachedToken(token, now + max(expires_in, 0))
        self._tokens.move_to_end(key)
        if len(self._tokens) > self.max_entries:
            self._sweep(now, force=True)
        while len(self._tokens) > self.max_entries:
            self._tokens.popitem(last=False)

    def _sweep(self, now: float, force: bool = False) -> None:
        if not force and now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_EVERY
        for k in [k for k, t in self._tokens.items() if t.expires_at - self.MARGIN <= now]:
            del self._tokens[k]

    @property
    def fetching(self) -> int:
        """Token fetches in flight."""
        return len(self._fetches)

    def __len__(self) -> int:
        return len(self._tokens)
