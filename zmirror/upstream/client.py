"""Requests to upstream registries: auth, redirects, health and failover order.

One :class:`UpstreamPool` holds the enabled upstreams (refreshed from the
``registries`` table when it changes — never queried per request) and their
health memory.  :meth:`UpstreamPool.request` sends one request to one upstream:

- answers a ``401`` challenge: Bearer (token fetched anonymously or with the
  upstream's credentials, cached per (upstream, realm, service, scope) until
  ``expires_in``, one fetch in flight per key) or Basic (configured credentials);
- follows redirects itself, dropping ``Authorization`` on any hop that leaves
  the upstream's origin (CDN hops), so credentials only ever go to the upstream
  registry and its token realm;
- applies a timeout until the response headers arrive;
- checks every URL it is about to request (the upstream's redirect
  ``Location``, a token ``realm``): an upstream value that is not a plain
  http(s) URL is an :class:`UpstreamError` (a bad answer), never an exception
  that escapes as a 500.

Rate limits (Docker Hub's ``ratelimit-limit: 100;w=21600`` /
``ratelimit-remaining: 76;w=21600``) are kept per upstream in its
:class:`Health` by :meth:`UpstreamPool.note_rate_limit` (called for every
manifest answer).  A 429, or a remaining count of 0, puts the upstream in a
rate-limit cool-down until the window resets (``Retry-After`` when given, else
the ``w=`` window; at most :data:`MAX_RATELIMIT_COOLDOWN`): requests that count
against a pull limit (manifest GETs) skip it, the rest (HEADs, blobs) still go
there.  Being rate-limited is not a failure: it never counts toward the
failures-in-a-row cool-down of a broken upstream.

Several nodes: a pool built with a ``bus`` (:mod:`zmirror.cluster`) tells its
observer (:class:`zmirror.upstream.shared.HealthSharing`) of every health
*transition* the other nodes should follow (:func:`_shared_view`: down / up,
the failure cool-down's deadline, the rate-limit cool-down's deadline and
scope), never of a plain request; the observer stores it in ``upstream_state``
and publishes it, and applies the other nodes' to this pool's health.

Blob bodies are never read here: callers get the :class:`IResponse` and stream
it.  Small bodies (token, manifest, tag list) are read by :func:`read_limited`,
bounded in size and time; a read that times out or is cancelled closes its
connection.  An answer we do not want (a 401 before the retry, a 404, a 5xx, a
redirect) is read to its end by :meth:`UpstreamPool.discard` when it is small
(at most :data:`DRAIN_LIMIT`, within :data:`DRAIN_TIMEOUT`), so its connection
goes back to the pool; a big or unannounced body is cut off.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Optional
from urllib.parse import urlencode, urljoin, urlsplit

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from zmirror.httpbody import DRAIN_TIMEOUT, discard, failure_text
from zmirror.upstream.auth import TokenCache, parse_headers

log = Logger()

USER_AGENT = b"zmirror/0.1 (+https://github.com/zmirror)"
MAX_REDIRECTS = 5
MAX_TOKEN_BODY = 1 << 20
MAX_TOKEN_LIFETIME = 24 * 3600.0  # an upstream token is never kept longer than this
FAILURES_BEFORE_COOLDOWN = 3
# Rate limits: how long an upstream is left alone at most after a 429 or a
# remaining count of 0, and when neither Retry-After nor a window says how long.
MAX_RATELIMIT_COOLDOWN = 6 * 3600.0
DEFAULT_RATELIMIT_COOLDOWN = 60.0


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
        return _origin(self.url)

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)

    def basic_auth(self) -> bytes:
        raw = f"{self.username}:{self.password}".encode()
        return b"Basic " + base64.b64encode(raw)


def _origin(url: str) -> tuple[str, str, int]:
    try:
        u = urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:  # an invalid port or IPv6 literal: matches no origin
        return ("", "", -1)
    return (u.scheme, (u.hostname or "").lower(), port)


_URL_CHARS = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: no spaces, controls or non-ASCII
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]{1,65536}$")


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


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


# ``ratelimit-limit: 100;w=21600`` (Docker Hub; the IETF draft's
# ``RateLimit-Limit: 100, 100;w=21600`` too): a count, optional parameters.
_RL_ITEM = re.compile(r"^\s*([0-9]{1,9})\s*((?:;[^;]*)*)$")
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


class QuietConnectionPool(HTTPConnectionPool):
    """An HTTPConnectionPool whose connection factories do not log.

    Twisted's pool builds one ``_HTTP11ClientFactory`` per new connection, and
    each logs "Starting factory" / "Stopping factory" at info level: two lines
    per upstream connection.  ``_factory`` is the pool's documented hook for
    the factory it connects with; this one is the same, with ``noisy`` off.
    """

    def _factory(self, quiescentCallback, metadata):
        factory = HTTPConnectionPool._factory(quiescentCallback, metadata)
        factory.noisy = False
        return factory


class UpstreamPool:
    """The enabled upstreams in priority order, their health and the HTTP agent."""

    def __init__(self, agent: Any, clock: Any, *, header_timeout: float = 10.0, cooldown: float = 30.0,
                 treq_client: Any = None, metrics: Any = None, body_timeout: Optional[float] = None,
                 connections: Any = None, drain_timeout: float = DRAIN_TIMEOUT,
                 bus: Any = None, db: Any = None):
        self.agent = agent
        # the agent's HTTPConnectionPool when known (closeCachedConnections at shutdown, tests)
        self.connections = connections
        self.drain_timeout = drain_timeout
        self._draining: set = set()  # discard() Deferreds still reading a body
        self.metrics = metrics  # zmirror.metrics.Metrics or None
        self.clock = clock
        self.header_timeout = header_timeout
        # reading a token response's body (small): defaults to the header timeout
        self.body_timeout = header_timeout if body_timeout is None else body_timeout
        self.cooldown = cooldown
        self.tokens = TokenCache(clock)
        self.upstreams: list[Upstream] = []
        self.namespaces: frozenset = frozenset()  # of every registries row (set_registries)
        self._health: dict[int, Health] = {}
        # told of every health change other nodes should follow (see _observed); the
        # zmirror.upstream.shared.HealthSharing of ``bus`` (a zmirror.cluster.IBus; None:
        # this node is alone), which also keeps the upstream_state rows of ``db``
        self.observer: Any = None
        self.sharing: Any = None
        if bus is not None:
            from zmirror.upstream.shared import HealthSharing

            self.sharing = HealthSharing(self, bus, db, clock)
            self.observer = self.sharing

    # -- the registry list -------------------------------------------------
    def set_registries(self, rows: list[dict]) -> None:
        """Replace the upstream list from ``registries`` rows (keeps health by id)."""
        ups = []
        for r in rows:
            if not r.get("enabled", True):
                continue
            uid = int(r["id"])
            health = self._health.setdefault(uid, Health())
            ups.append(Upstream(
                id=uid, name=r.get("name") or r["url"], url=str(r["url"]).rstrip("/"),
                priority=int(r.get("priority", 100)), enabled=True,
                username=r.get("username") or "", password=r.get("password") or "", health=health,
                namespace=r.get("namespace") or "docker.io",
            ))
        ups.sort(key=lambda u: (u.priority, u.id))
        self.upstreams = ups
        # every configured namespace, enabled upstreams or not (the routing table's path prefixes)
        self.namespaces = frozenset(r.get("namespace") or "docker.io" for r in rows)
        live = {u.id for u in ups}
        for uid in list(self._health):
            if uid not in live and uid not in {int(r["id"]) for r in rows}:
                del self._health[uid]

    def candidates(self, namespace: Optional[str] = None, *, counted: bool = False) -> list[Upstream]:
        """Upstreams to try, in order: healthy ones first by priority; ones in
        cool-down are skipped unless every upstream is cooling down.
        ``namespace``: only the upstreams mirroring it (None: all).

        Upstreams in a rate-limit cool-down are left out altogether (see
        :meth:`rate_limited`) for a request that counts against a pull limit
        (``counted``: a manifest GET), and for any request when the upstream
        answered 429 to one that does not count (a HEAD, a blob)."""
        now = self.clock.seconds()
        ups = [u for u in self._of(namespace) if not u.health.skipped(now, counted)]
        ready = [u for u in ups if u.health.cooldown_until <= now]
        if ready:
            return ready
        return sorted(ups, key=lambda u: u.health.cooldown_until)

    def _of(self, namespace: Optional[str]) -> list[Upstream]:
        if namespace is None:
            return self.upstreams
        return [u for u in self.upstreams if u.namespace == namespace]

    def rate_limited(self, namespace: Optional[str] = None, *,
                     counted: bool = False) -> list[tuple[Upstream, float]]:
        """The upstreams (of ``namespace``) :meth:`candidates` leaves out for
        this kind of request (rate-limit cool-down) and the seconds left of
        their cool-down."""
        now = self.clock.seconds()
        return [(u, u.health.ratelimited_until - now) for u in self._of(namespace)
                if u.health.skipped(now, counted)]

    def note_rate_limit(self, up: Upstream, code: int, headers: Headers, *,
                        counted: bool = True) -> Optional[float]:
        before = _shared_view(up.health)
        try:
            return self._note_rate_limit(up, code, headers, counted=counted)
        finally:
            self._observed(up, before)

    def _note_rate_limit(self, up: Upstream, code: int, headers: Headers, *,
                         counted: bool = True) -> Optional[float]:
        """Fold one answer of ``up`` (a manifest answer, or any 429) into its
        rate-limit memory.

        ``ratelimit-limit`` / ``ratelimit-remaining`` (and their ``w=``) are
        recorded when present and valid.  A 429 starts (or moves) a cool-down
        of ``Retry-After`` seconds, else the window, else
        :data:`DEFAULT_RATELIMIT_COOLDOWN`; a remaining count of 0 starts one
        of the window (not moved while it runs: a later answer still saying 0
        does not push the reset back).  A later answer with a remaining count
        above 0 ends a cool-down early unless ``Retry-After`` set it (Docker
        Hub's window slides, and its HEADs, which it does not count, tell).  Every cool-down is at most
        :data:`MAX_RATELIMIT_COOLDOWN`.  A 429 to a request that does not count
        (``counted`` false: a HEAD, a blob) holds back every request to the
        upstream until the reset, not only pulls.  Returns the seconds of
        cool-down left (None when there is none)."""
        h = up.health
        now = self.clock.seconds()
        limit, remaining, window = parse_rate_limit(headers)
        if limit is not None or remaining is not None:
            rl = h.rate_limit if h.rate_limit is not None else RateLimit()
            if limit is not None:
                rl.limit = limit
            if remaining is not None:
                rl.remaining = remaining
            if window is not None:
                rl.window = window
            rl.updated_at = now
            h.rate_limit = rl
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

    def health(self) -> dict[int, dict]:
        now = self.clock.seconds()
        return {uid: h.as_dict(now) for uid, h in self._health.items()}

    def _observed(self, up: Upstream, before: tuple) -> None:
        """Tell the observer when ``up``'s health changed in a way other nodes follow
        (:func:`_shared_view`): a transition, not every request."""
        if self.observer is not None and _shared_view(up.health) != before:
            try:
                self.observer.health_changed(up)
            except Exception:
                log.failure("upstream {name}: sharing its health failed", name=up.name)

    def mark_ok(self, up: Upstream, latency: float) -> None:
        h = up.health
        before = _shared_view(h)
        h.state = "up"
        h.consecutive_failures = 0
        h.cooldown_until = 0.0
        h.last_latency_ms = round(latency * 1000, 1)
        h.last_checked_at = self.clock.seconds()
        self._observed(up, before)

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
        self._observed(up, before)

    def record_probe(self, upstream_id: int, result: dict) -> None:
        """Fold an admin "test connection" result into the health memory."""
        for up in self.upstreams:
            if up.id == upstream_id:
                if result.get("ok"):
                    self.mark_ok(up, (result.get("latency_ms") or 0) / 1000.0)
                else:
                    self.mark_failed(up, result.get("error") or f"/v2/ answered {result.get('status')}")
                return

    # -- requests ----------------------------------------------------------
    def discard(self, response) -> "Deferred[bool]":
        """:func:`discard` with this pool's clock: a small unwanted body is read
        to its end so its connection is reused; a big one is cut off."""
        d = discard(response, self.clock, timeout=self.drain_timeout)
        if not d.called:
            self._draining.add(d)
            d.addBoth(lambda r: (self._draining.discard(d), r)[1])
        return d

    async def close(self) -> None:
        """Wait for the bodies being drained (each bounded by its timeout), then
        close the pooled idle connections (shutdown, tests)."""
        pending = list(self._draining)
        for d in pending:
            try:
                await d
            except CancelledError:
                pass
        if self.connections is not None:
            await self.connections.closeCachedConnections()

    async def request(self, up: Upstream, method: bytes, path: str, *, headers: Optional[dict] = None,
                      scope: Optional[str] = None):
        """:meth:`_request`, timed and counted when metrics are configured."""
        d = self._request(up, method, path, headers=headers, scope=scope)
        if self.metrics is None:
            return await d
        return await self.metrics.time_upstream(up.name, self.clock, d)

    async def _request(self, up: Upstream, method: bytes, path: str, *, headers: Optional[dict] = None,
                       scope: Optional[str] = None):
        """Send ``method path`` to ``up`` with auth and redirects; returns the IResponse.

        Raises UpstreamError for connection/TLS/timeout failures.  The caller
        decides what a status means; a final 401 is returned as is.
        """
        url = up.url + path
        hdrs = dict(headers or {})
        key = self._token_key(up, scope)
        auth = self._cached_auth(up, key)
        resp = await self._send(up, method, url, hdrs, auth)
        if resp.code == 401:
            challenges = parse_headers(resp.headers.getRawHeaders(b"www-authenticate"))
            new_auth = await self._answer_challenge(up, challenges, scope)
            if new_auth is not None and new_auth != auth:
                # the retry goes to the same upstream: let it have this connection
                await self.discard(resp)
                resp = await self._send(up, method, url, hdrs, new_auth)
        return resp

    def _token_key(self, up: Upstream, scope: Optional[str]):
        return (up.id, up.url, up.username, scope or "")

    def _cached_auth(self, up: Upstream, key) -> Optional[bytes]:
        tok = self.tokens.peek(key)
        if tok:
            return b"Bearer " + tok.encode()
        return None

    async def _answer_challenge(self, up: Upstream, challenges, scope: Optional[str]) -> Optional[bytes]:
        for ch in challenges:
            if ch.scheme == "bearer" and ch.get("realm"):
                realm = ch.get("realm")
                if not realm.lower().startswith(("http://", "https://")):
                    continue  # a realm we cannot fetch from: try another challenge
                realm = checked_url(realm, "token realm")
                service = ch.get("service") or ""
                want_scope = scope or ch.get("scope") or ""
                key = self._token_key(up, scope)
                self.tokens.invalidate(key)

                async def fetch(realm=realm, service=service, want_scope=want_scope):
                    return await self._fetch_token(up, realm, service, want_scope)

                token = await self.tokens.get(key, fetch)
                return b"Bearer " + token.encode()
        for ch in challenges:
            if ch.scheme == "basic" and up.has_credentials:
                return up.basic_auth()
        return None

    async def _fetch_token(self, up: Upstream, realm: str, service: str, scope: str) -> tuple[str, float]:
        query = {}
        if service:
            query["service"] = service
        if scope:
            query["scope"] = scope
        if up.username:
            query["account"] = up.username
        sep = "&" if "?" in realm else "?"
        url = realm + (sep + urlencode(query) if query else "")
        hdrs = {}
        if up.has_credentials:
            hdrs[b"Authorization"] = up.basic_auth()
        resp = await self._send_once(b"GET", url, hdrs)
        if resp.code != 200:
            self.discard(resp)
            raise UpstreamError(f"token endpoint answered {resp.code}", status=resp.code)
        body = await read_limited(resp, MAX_TOKEN_BODY, self.body_timeout, self.clock)
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
            expires_in = float(data.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise UpstreamError("token endpoint answered invalid JSON") from None
        if not token or not isinstance(token, str):
            raise UpstreamError("token endpoint answered no token")
        if not _TOKEN_CHARS.match(token):
            raise UpstreamError("token endpoint answered a token that cannot go in a header")
        if expires_in != expires_in:  # NaN
            expires_in = 60.0
        return token, min(max(expires_in, 0.0), MAX_TOKEN_LIFETIME)

    async def _send(self, up: Upstream, method: bytes, url: str, hdrs: dict, auth: Optional[bytes]):
        origin = up.origin
        for _hop in range(MAX_REDIRECTS + 1):
            h = dict(hdrs)
            if auth is not None and _origin(url) == origin:
                h[b"Authorization"] = auth
            resp = await self._send_once(method, url, h)
            if resp.code in (301, 302, 303, 307, 308):
                loc = resp.headers.getRawHeaders(b"location")
                self.discard(resp)
                if not loc:
                    raise UpstreamError(f"redirect {resp.code} without Location", status=502)
                try:
                    url = urljoin(url, loc[0].decode("latin-1"))
                except ValueError:
                    raise UpstreamError(f"redirect {resp.code} with an invalid Location", status=502) from None
                if _scheme(url) not in ("http", "https"):
                    raise UpstreamError("redirect to a non-HTTP URL", status=502)
                url = checked_url(url, "redirect Location")
                if resp.code == 303:
                    method = b"GET" if method != b"HEAD" else b"HEAD"
                continue
            return resp
        raise UpstreamError("too many redirects", status=502)

    async def _send_once(self, method: bytes, url: str, hdrs: dict):
        headers = Headers({b"User-Agent": [USER_AGENT]})
        for k, v in hdrs.items():
            if isinstance(v, list):
                headers.setRawHeaders(k, v)
            else:
                headers.setRawHeaders(k, [v])
        raw_url = checked_url(url, "URL").encode("ascii")
        try:
            d = self.agent.request(method, raw_url, headers, None)
        except Exception as e:  # e.g. an URI the agent cannot parse
            raise _describe(e, url) from None
        timed_out = []

        def on_timeout():
            timed_out.append(True)
            d.cancel()

        timer = self.clock.callLater(self.header_timeout, on_timeout)
        try:
            return await d
        except Exception as e:
            if timed_out:
                raise UpstreamError(f"no response from {_host(url)} within {self.header_timeout:g}s") from None
            if _cancelled(e):
                raise CancelledError() from None  # our client went away: not the upstream's fault
            raise _describe(e, url) from None
        finally:
            if timer.active():
                timer.cancel()


    async def probe(self, row: dict) -> dict:
        """Reachability and auth of ``/v2/`` for the admin's "test connection"."""
        up = Upstream(id=int(row.get("id") or 0), name=row.get("name") or "", url=str(row["url"]).rstrip("/"),
                      username=row.get("username") or "", password=row.get("password") or "")
        started = time.monotonic()
        out: dict = {"ok": False, "status": None, "latency_ms": None, "auth": "none", "error": None}
        try:
            resp = await self._send(up, b"GET", up.url + "/v2/", {}, None)
            if resp.code == 401:
                challenges = parse_headers(resp.headers.getRawHeaders(b"www-authenticate"))
                schemes = {c.scheme for c in challenges}
                out["auth"] = "bearer" if "bearer" in schemes else "basic" if "basic" in schemes else "unknown"
                auth = await self._answer_challenge(up, challenges, None)
                self.discard(resp)
                if auth is not None:
                    resp = await self._send(up, b"GET", up.url + "/v2/", {}, auth)
            out["status"] = resp.code
            out["ok"] = resp.code == 200
            if not out["ok"]:
                out["error"] = f"/v2/ answered {resp.code}"
            self.discard(resp)
        except UpstreamError as e:
            out["error"] = str(e)
        out["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
        return out


def _shared_view(h: Health) -> tuple:
    """What of a Health the other nodes follow: down or not, the failure cool-down's
    deadline, the rate-limit cool-down's deadline and scope.  A change of it is a
    transition worth telling them (:class:`zmirror.upstream.shared.HealthSharing`)."""
    return (h.state == "down", h.cooldown_until, h.ratelimited_until,
            h.ratelimit_scope if h.ratelimited_until else "")


def _cancelled(e: Exception) -> bool:
    """A cancellation (ours), possibly wrapped by the HTTP client."""
    if isinstance(e, CancelledError):
        return True
    reasons = getattr(e, "reasons", None)
    return bool(reasons) and all(r.check(CancelledError) for r in reasons)


def _describe(e: Exception, url: str) -> "UpstreamError":
    try:
        raise e
    except ierror.ConnectError as e:
        return UpstreamError(f"cannot connect to {_host(url)}: {e.__class__.__name__}")
    except ResponseFailed as e:
        return UpstreamError(f"{_host(url)}: response failed: {failure_text(e)[:200]}")
    except (ierror.ConnectionLost, ierror.ConnectionDone) as e:
        return UpstreamError(f"{_host(url)}: connection lost: {e}")
    except UpstreamError as e:
        return e
    except Exception as e:  # TLS errors, DNS errors, ...
        return UpstreamError(f"{_host(url)}: {e.__class__.__name__}: {e}"[:300])


def _host(url: str) -> str:
    u = urlsplit(url)
    return u.netloc.rsplit("@", 1)[-1]


class _LimitedReader(Protocol):
    def __init__(self, limit: int, finished: Deferred):
        self.limit = limit
        self.finished = finished
        self.chunks: list[bytes] = []
        self.size = 0

    def abort(self) -> None:
        """Stop reading and close the connection (the body is not wanted any more)."""
        transport = self.transport
        if transport is not None:
            try:
                transport.stopProducing()
            except Exception:
                pass

    def dataReceived(self, data: bytes):
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.finished.errback(UpstreamError(f"response larger than {self.limit} bytes"))
            self.abort()
            return
        self.chunks.append(data)

    def connectionLost(self, reason):
        if self.finished.called:
            return
        from twisted.web.client import PotentialDataLoss, ResponseDone
        from twisted.web.http import PotentialDataLoss as PDL2

        if reason.check(ResponseDone, PotentialDataLoss, PDL2):
            self.finished.callback(b"".join(self.chunks))
        else:
            self.finished.errback(UpstreamError(f"body read failed: {reason.value}"[:300]))


def read_limited(response, limit: int, timeout: float, clock: Any) -> "Deferred[bytes]":
    """Read a small body (manifest, token, tags list) with a size cap and a deadline.

    Errbacks with UpstreamError when the body is too large, breaks off or is not
    complete within ``timeout`` seconds; then (and when the returned Deferred is
    cancelled: our client went away, CancelledError) the connection is closed, so
    a stalled upstream holds nothing.
    """
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        discard(response)
        return fail(UpstreamError(f"response of {response.length} bytes is over the {limit} byte limit"))
    box: list[_LimitedReader] = []

    def cancel(d: Deferred) -> None:
        d.errback(CancelledError())  # first: closing may report a lost connection at once
        if box:
            box[0].abort()

    d: Deferred = Deferred(cancel)
    reader = _LimitedReader(limit, d)
    box.append(reader)

    def on_timeout() -> None:
        if not d.called:
            d.errback(UpstreamError(f"body not complete within {timeout:g}s"))
            reader.abort()

    timer = clock.callLater(timeout, on_timeout)

    def done(result):
        if timer.active():
            timer.cancel()
        return result

    d.addBoth(done)
    try:
        response.deliverBody(reader)
    except Exception as e:
        if not d.called:
            d.errback(UpstreamError(f"body read failed: {e.__class__.__name__}"))
    return d


