"""The upstreams' health memory: failures in a row and their cool-down, the
rate-limit book (``ratelimit-*`` numbers, the rate-limit cool-down and what it
holds back, the brief backoff after 429s that say nothing and its probe), the
order requests try the upstreams in, and the transitions other nodes follow
(design: docs/design/upstream.md)."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

from twisted.logger import Logger
from twisted.web.http_headers import Headers

from zmirror.upstream.headers import parse_rate_limit, parse_retry_after
from zmirror.upstream.models import BACKOFF_FIRST, BACKOFF_MAX_STEPS, BACKOFF_MEMORY, Health, RateLimit, Upstream

log = Logger()

FAILURES_BEFORE_COOLDOWN = 3
# Rate limits: how long an upstream is left alone at most after a 429 or a
# remaining count of 0, and when neither Retry-After nor a window says how long.
MAX_RATELIMIT_COOLDOWN = 6 * 3600.0
DEFAULT_RATELIMIT_COOLDOWN = 60.0  # also the longest backoff (BACKOFF_FIRST doubled)


def _shared_view(h: Health) -> tuple:
    """What of a Health the other nodes follow: down or not, the failure cool-down's
    deadline, the rate-limit cool-down's deadline and scope, the backoff's deadline and
    when one was last ended.  A change of it is a transition the subscribers are told
    of (:meth:`UpstreamHealth.subscribe`)."""
    return (h.state == "down", h.cooldown_until, h.ratelimited_until,
            h.ratelimit_scope if h.ratelimited_until else "", h.backoff_until, h.backoff_cleared_at)


def backoff_rest(steps: int) -> float:
    """The rest after ``steps`` 429s in a row that said nothing: 2, 4, 8 … 60 s."""
    return min(BACKOFF_FIRST * 2 ** (max(steps, 1) - 1), DEFAULT_RATELIMIT_COOLDOWN)


class UpstreamHealth:
    """One :class:`~zmirror.upstream.models.Health` record per ``registries`` id,
    kept while its row exists; ``cooldown``: seconds an upstream is skipped after
    :data:`FAILURES_BEFORE_COOLDOWN` failures in a row; ``metrics``: a
    :class:`zmirror.metrics.Metrics` counting failures, or None."""

    def __init__(self, clock: Any, *, cooldown: float = 30.0, metrics: Any = None):
        self.clock = clock
        self.cooldown = cooldown
        self.metrics = metrics
        self.upstreams: list[Upstream] = []  # the enabled ones, as the pool last set them
        self._records: dict[int, Health] = {}
        self._subscribers: list[Callable[[Upstream], Any]] = []
        self._probes = 0  # the last probe token handed out

    def subscribe(self, callback: Callable[[Upstream], Any]) -> None:
        """Call ``callback(upstream)`` at every change of an upstream's health the
        other nodes follow (:func:`_shared_view`): a transition, not every request."""
        self._subscribers.append(callback)

    # -- the upstreams it keeps records of ---------------------------------------

    def record_of(self, upstream_id: int) -> Health:
        """The health record of a registries id (a new one the first time)."""
        return self._records.setdefault(upstream_id, Health())

    def set_upstreams(self, upstreams: list[Upstream], row_ids: Iterable[int]) -> None:
        """The enabled upstreams now; records of ids no longer among ``row_ids``
        (every registries row, enabled or not) are dropped."""
        self.upstreams = list(upstreams)
        keep = set(row_ids)
        for uid in list(self._records):
            if uid not in keep:
                del self._records[uid]

    def upstream(self, upstream_id: Any, url: Any = None) -> Optional[Upstream]:
        """The enabled upstream of that id (and, when given, that URL), or None."""
        for up in self.upstreams:
            if up.id == upstream_id and (url is None or up.url == url):
                return up
        return None

    def report(self) -> dict[int, dict]:
        """Every record as the admin API, /readyz and /metrics show it, by id."""
        now = self.clock.seconds()
        return {uid: h.as_dict(now) for uid, h in self._records.items()}

    # -- the order requests try them in -------------------------------------------

    def candidates(self, upstreams: list[Upstream], *, counted: bool = False) -> list[Upstream]:
        """Of ``upstreams`` (in priority order), the ones to try, in order: healthy
        ones first; ones in cool-down are skipped unless every one is cooling down.

        Upstreams in a rate-limit cool-down are left out altogether (see
        :meth:`rate_limited`) for a request that counts against a pull limit
        (``counted``: a manifest GET), and for any request when the upstream
        answered 429 to one that does not count (a HEAD, a blob); so are upstreams
        in a backoff rest, and on probation with the probe out (:meth:`sending`)."""
        now = self.clock.seconds()
        ups = [u for u in upstreams if not u.health.skipped(now, counted)]
        ready = [u for u in ups if u.health.cooldown_until <= now]
        if ready:
            return ready
        return sorted(ups, key=lambda u: u.health.cooldown_until)

    def rate_limited(self, upstreams: list[Upstream], *,
                     counted: bool = False) -> list[tuple[Upstream, float]]:
        """Of ``upstreams``, the ones :meth:`candidates` leaves out for this kind of
        request (rate-limit cool-down, backoff, probe out) and the seconds until a
        request may go there."""
        now = self.clock.seconds()
        waits = [(u, u.health.wait(now, counted)) for u in upstreams]
        return [(u, wait) for u, wait in waits if wait > 0]

    # -- one request at a time after a backoff -------------------------------------

    def sending(self, up: Upstream) -> Optional[int]:
        """Before a request goes to ``up``: None when it must not (a backoff rest, or
        the probe of another request is out), else a token for :meth:`sent`: 0 for
        an ordinary request, a number for the probe (the first request after a
        backoff rest ran out; the others are held back until it is answered)."""
        h = up.health
        now = self.clock.seconds()
        if h.backing_off(now):
            return None
        if not h.on_probation(now):
            return 0
        if h.probing(now):
            return None
        self._probes += 1
        h.probe, h.probe_at = self._probes, now
        return h.probe

    def sent(self, up: Upstream, token: Optional[int]) -> None:
        """The request of ``token`` is over (answered, failed or cancelled)."""
        if token and up.health.probe == token:
            up.health.probe = 0

    def answered(self, up: Upstream, code: int) -> None:
        """Any answer of ``up``: one that is no 429 ends a backoff."""
        if code != 429:
            before = _shared_view(up.health)
            self._end_backoff(up)
            self._tell(up, before)

    # -- what the upstreams answered ----------------------------------------------

    def mark_ok(self, up: Upstream, latency: float) -> None:
        h = up.health
        before = _shared_view(h)
        self._end_backoff(up)
        h.state = "up"
        h.consecutive_failures = 0
        h.cooldown_until = 0.0
        h.last_latency_ms = round(latency * 1000, 1)
        h.last_checked_at = self.clock.seconds()
        self._tell(up, before)

    def mark_failed(self, up: Upstream, message: str) -> None:
        h = up.health
        before = _shared_view(h)
        h.state = "down"
        h.last_error = message[:300]
        h.last_checked_at = self.clock.seconds()
        h.consecutive_failures += 1
        if h.consecutive_failures >= FAILURES_BEFORE_COOLDOWN and self.cooldown > 0:
            h.cooldown_until = self.clock.seconds() + self.cooldown
            log.warn("upstream {name} failed {n} times in a row ({err}); skipping it for {s}s",
                     name=up.name, n=h.consecutive_failures, err=h.last_error, s=self.cooldown)
        if self.metrics is not None:
            self.metrics.upstream_failed(up.name)
        self._tell(up, before)

    def record_probe(self, upstream_id: int, result: dict) -> None:
        """Fold an admin "test connection" result into the health memory."""
        up = self.upstream(upstream_id)
        if up is None:
            return
        if result.get("ok"):
            self.mark_ok(up, (result.get("latency_ms") or 0) / 1000.0)
        else:
            self.mark_failed(up, result.get("error") or f"/v2/ answered {result.get('status')}")

    def note_rate_limit(self, up: Upstream, code: int, headers: Headers, *,
                        counted: bool = True, probe: bool = False) -> Optional[float]:
        """Fold one answer of ``up`` (a manifest answer, or any 429) into its
        rate-limit memory; the seconds of cool-down left (None when there is none).

        ``ratelimit-limit`` / ``ratelimit-remaining`` (and their ``w=``) are
        recorded when present and valid.  A 429 starts (or moves) a cool-down
        of ``Retry-After`` seconds, else the window, else
        :data:`DEFAULT_RATELIMIT_COOLDOWN`; a remaining count of 0 starts one
        of the window (not moved while it runs: a later answer still saying 0
        does not push the reset back).  A later answer with a remaining count
        above 0 ends a cool-down early unless ``Retry-After`` set it (Docker
        Hub's window slides, and its HEADs, which it does not count, tell).
        Every cool-down is at most :data:`MAX_RATELIMIT_COOLDOWN`.  A 429 to a
        request that does not count (``counted`` false: a HEAD, a blob) holds
        back every request to the upstream until the reset, not only pulls.

        A 429 to a request that does not count and says nothing (no valid
        ``Retry-After``, no ``ratelimit-*`` numbers) is a backoff instead
        (:meth:`_backoff`; ``probe``: the request was the probe after one)."""
        before = _shared_view(up.health)
        try:
            if code == 429 and not counted and _says_nothing(headers, self.clock.seconds()):
                return self._backoff(up, probe)
            return self._note_rate_limit(up, code, headers, counted=counted)
        finally:
            self._tell(up, before)

    def _note_rate_limit(self, up: Upstream, code: int, headers: Headers, *,
                         counted: bool) -> Optional[float]:
        h = up.health
        now = self.clock.seconds()
        limit, remaining, window = parse_rate_limit(headers)
        _record_numbers(h, limit, remaining, window, now)
        known_window = window if window is not None else (h.rate_limit.window if h.rate_limit else None)
        was_limited = h.rate_limited(now)
        if code == 429:
            wait = parse_retry_after(headers.getRawHeaders(b"retry-after"), now)
            h.ratelimit_reason = "retry-after"
            if wait is None:
                wait = known_window if known_window is not None else DEFAULT_RATELIMIT_COOLDOWN
                h.ratelimit_reason = "window"
            h.ratelimited_until = now + min(max(float(wait), 1.0), MAX_RATELIMIT_COOLDOWN)
            h.ratelimit_scope = "all" if not counted or (was_limited and h.ratelimit_scope == "all") else "pulls"
        elif remaining == 0:
            if not was_limited:
                wait = known_window if known_window is not None else DEFAULT_RATELIMIT_COOLDOWN
                h.ratelimited_until = now + min(float(wait), MAX_RATELIMIT_COOLDOWN)
                h.ratelimit_reason = "window"
                h.ratelimit_scope = "pulls"
        elif remaining is not None and was_limited and h.ratelimit_reason == "window":
            h.ratelimited_until = 0.0  # pulls are left again before the window we guessed ran out
            h.ratelimit_reason = ""
            log.info("upstream {name} has pulls left again ({n}); using it again", name=up.name, n=remaining)
            return None
        if not h.rate_limited(now):
            return None
        left = h.ratelimited_until - now
        if not was_limited:
            log.warn("upstream {name} is rate-limiting us ({why}); no pulls from it for {s}s",
                     name=up.name, why="HTTP 429" if code == 429 else "no pulls left",
                     s=int(math.ceil(left)))
        return left

    def _backoff(self, up: Upstream, probe: bool) -> float:
        """A 429 that said nothing: the upstream rests :func:`backoff_rest` of the
        429s in a row, every request held back.  The first starts the row; the
        probe's (sent after the rest ran out) doubles the rest; one to a request
        sent before (the same burst) changes nothing during the rest and starts it
        again, as long, after it.  A row is forgotten :data:`BACKOFF_MEMORY`
        seconds after its rest ran out; the seconds of rest left."""
        h = up.health
        now = self.clock.seconds()
        if h.backoff and now >= h.backoff_until + BACKOFF_MEMORY:
            h.backoff = 0
        if h.backoff and not probe and h.backing_off(now):
            return h.backoff_until - now  # sent before this rest began: nothing new
        if h.backoff == 0 or probe:
            h.backoff = min(h.backoff + 1, BACKOFF_MAX_STEPS)
        rest = backoff_rest(h.backoff)
        h.backoff_until = max(h.backoff_until, now + rest)
        h.backoff_at = now
        log.info("upstream {name} answered 429 without saying how long ({n} in a row);"
                 " leaving it alone for {s}s", name=up.name, n=h.backoff, s=int(math.ceil(rest)))
        return h.backoff_until - now

    def _end_backoff(self, up: Upstream) -> None:
        h = up.health
        if h.backoff or h.backoff_until:
            if h.backoff_until > self.clock.seconds():
                log.info("upstream {name} answered again; its backoff is over", name=up.name)
            h.backoff, h.backoff_until = 0, 0.0
            h.backoff_cleared_at = self.clock.seconds()

    def _tell(self, up: Upstream, before: tuple) -> None:
        """Tell the subscribers when ``up``'s health changed in a way other nodes
        follow (:func:`_shared_view`)."""
        if _shared_view(up.health) == before:
            return
        for callback in self._subscribers:
            try:
                callback(up)
            except Exception:
                log.failure("upstream {name}: sharing its health failed", name=up.name)


def _says_nothing(headers: Headers, now: float) -> bool:
    """A 429's headers say neither how long (a valid ``Retry-After``) nor how many
    (valid ``ratelimit-*`` numbers)."""
    limit, remaining, _window = parse_rate_limit(headers)
    return (limit is None and remaining is None
            and parse_retry_after(headers.getRawHeaders(b"retry-after"), now) is None)


def _record_numbers(h: Health, limit: Optional[int], remaining: Optional[int], window: Optional[int],
                    now: float) -> None:
    """Keep the ``ratelimit-*`` numbers of an answer that sent any."""
    if limit is None and remaining is None:
        return
    rl = h.rate_limit if h.rate_limit is not None else RateLimit()
    if limit is not None:
        rl.limit = limit
    if remaining is not None:
        rl.remaining = remaining
    if window is not None:
        rl.window = window
    rl.updated_at = now
    h.rate_limit = rl


__all__ = ["UpstreamHealth", "FAILURES_BEFORE_COOLDOWN", "MAX_RATELIMIT_COOLDOWN",
           "DEFAULT_RATELIMIT_COOLDOWN", "BACKOFF_FIRST", "backoff_rest"]
