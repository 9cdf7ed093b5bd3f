"""One request to one upstream registry: the ``401`` challenge answered (Bearer
token or Basic), tokens cached, redirects followed with ``Authorization``
dropped off the upstream's origin, a deadline for the response headers, and
every URL an upstream hands us checked (design: docs/design/upstream.md)."""

from __future__ import annotations

import json
import re
from typing import Any, Optional
from urllib.parse import urlencode, urljoin, urlsplit

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers

from zmirror.httpbody import DRAIN_TIMEOUT, BodyError, discard, failure_text, read_limited
from zmirror.upstream.auth import TokenCache, parse_headers
from zmirror.upstream.models import Upstream, UpstreamError, checked_url, origin_of, scheme_of

USER_AGENT = b"zmirror/0.1 (+https://github.com/zmirror)"
MAX_REDIRECTS = 5
MAX_TOKEN_BODY = 1 << 20
MAX_TOKEN_LIFETIME = 24 * 3600.0  # an upstream token is never kept longer than this
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]{1,65536}$")


class UpstreamClient:
    """Sends requests to upstream registries, each through the agent of the
    upstream it is made for: ``agents`` (a
    :class:`zmirror.upstream.agents.UpstreamAgents`: ``agent_for(up)`` and
    ``close()``) — the registry, its token realm, the hosts it redirects to
    and the probes all go the upstream's way (its proxy, its TLS settings).

    ``header_timeout``: seconds until an answer's headers; ``body_timeout``:
    reading a token answer (default: the header timeout); ``drain_timeout``:
    reading an unwanted small body (:meth:`discard`)."""

    def __init__(self, agents: Any, clock: Any, *, header_timeout: float = 10.0,
                 body_timeout: Optional[float] = None, drain_timeout: float = DRAIN_TIMEOUT):
        self.agents = agents
        self.clock = clock
        self.header_timeout = header_timeout
        self.body_timeout = header_timeout if body_timeout is None else body_timeout
        self.drain_timeout = drain_timeout
        self.tokens = TokenCache(clock)
        self._draining: set = set()  # discard() Deferreds still reading a body

    # -- unwanted bodies and shutdown ----------------------------------------------

    def discard(self, response) -> "Deferred[bool]":
        """:func:`zmirror.httpbody.discard` with this client's clock: a small
        unwanted body is read to its end so its connection is reused; a big
        one is cut off."""
        d = discard(response, self.clock, timeout=self.drain_timeout)
        if not d.called:
            self._draining.add(d)
            d.addBoth(lambda r: (self._draining.discard(d), r)[1])
        return d

    async def close(self) -> None:
        """Wait for the bodies being drained (each bounded by its timeout), then
        close the agents' pooled idle connections (shutdown, tests)."""
        pending = list(self._draining)
        for d in pending:
            try:
                await d
            except CancelledError:
                pass
        done = self.agents.close()
        if done is not None:
            await done

    # -- requests ------------------------------------------------------------------

    async def request(self, up: Upstream, method: bytes, path: str, *, headers: Optional[dict] = None,
                      scope: Optional[str] = None):
        """Send ``method path`` to ``up`` with auth and redirects; returns the IResponse.

        Raises UpstreamError for connection/TLS/timeout failures.  The caller
        decides what a status means; a final 401 is returned as is.
        """
        url = up.url + path
        hdrs = dict(headers or {})
        auth = self._cached_auth(self._token_key(up, scope))
        resp = await self.send(up, method, url, hdrs, auth)
        if resp.code == 401:
            challenges = parse_headers(resp.headers.getRawHeaders(b"www-authenticate"))
            new_auth = await self.answer_challenge(up, challenges, scope)
            if new_auth is not None and new_auth != auth:
                # the retry goes to the same upstream: let it have this connection
                await self.discard(resp)
                resp = await self.send(up, method, url, hdrs, new_auth)
        return resp

    def _token_key(self, up: Upstream, scope: Optional[str]):
        return (up.id, up.url, up.username, scope or "")

    def _cached_auth(self, key) -> Optional[bytes]:
        tok = self.tokens.peek(key)
        if tok:
            return b"Bearer " + tok.encode()
        return None

    async def answer_challenge(self, up: Upstream, challenges, scope: Optional[str]) -> Optional[bytes]:
        """The ``Authorization`` value answering ``challenges`` (a Bearer token
        fetched for ``scope``, or Basic with the upstream's credentials), or None."""
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
        resp = await self._send_once(up, b"GET", url, hdrs)
        if resp.code != 200:
            self.discard(resp)
            raise UpstreamError(f"token endpoint answered {resp.code}", status=resp.code)
        try:
            body = await read_limited(resp, MAX_TOKEN_BODY, self.body_timeout, self.clock)
        except BodyError as e:
            raise UpstreamError(str(e)) from None
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

    async def send(self, up: Upstream, method: bytes, url: str, hdrs: dict, auth: Optional[bytes]):
        """``method url``, following redirects; ``auth`` goes only to ``up``'s origin."""
        origin = up.origin
        for _hop in range(MAX_REDIRECTS + 1):
            h = dict(hdrs)
            if auth is not None and origin_of(url) == origin:
                h[b"Authorization"] = auth
            resp = await self._send_once(up, method, url, h)
            if resp.code in (301, 302, 303, 307, 308):
                loc = resp.headers.getRawHeaders(b"location")
                self.discard(resp)
                if not loc:
                    raise UpstreamError(f"redirect {resp.code} without Location", status=502)
                try:
                    url = urljoin(url, loc[0].decode("latin-1"))
                except ValueError:
                    raise UpstreamError(f"redirect {resp.code} with an invalid Location", status=502) from None
                if scheme_of(url) not in ("http", "https"):
                    raise UpstreamError("redirect to a non-HTTP URL", status=502)
                url = checked_url(url, "redirect Location")
                if resp.code == 303:
                    method = b"GET" if method != b"HEAD" else b"HEAD"
                continue
            return resp
        raise UpstreamError("too many redirects", status=502)

    def _agent(self, up: Upstream):
        """The agent for requests made for ``up``; settings that cannot be used
        (a PEM that does not load, a proxy URL the agents refuse) are an
        UpstreamError with the reason."""
        try:
            return self.agents.agent_for(up)
        except ValueError as e:
            raise UpstreamError(str(e)[:300]) from None

    async def _send_once(self, up: Upstream, method: bytes, url: str, hdrs: dict):
        """One request for ``up`` (no redirects followed) with the header deadline."""
        agent = self._agent(up)
        headers = Headers({b"User-Agent": [USER_AGENT]})
        for k, v in hdrs.items():
            if isinstance(v, list):
                headers.setRawHeaders(k, v)
            else:
                headers.setRawHeaders(k, [v])
        raw_url = checked_url(url, "URL").encode("ascii")
        try:
            d = agent.request(method, raw_url, headers, None)
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


def _cancelled(e: Exception) -> bool:
    """A cancellation (ours), possibly wrapped by the HTTP client."""
    if isinstance(e, CancelledError):
        return True
    reasons = getattr(e, "reasons", None)
    return bool(reasons) and all(r.check(CancelledError) for r in reasons)


def _describe(e: Exception, url: str) -> UpstreamError:
    from zmirror.upstream.tlsconfig import tls_failure_reason  # the TLS reason, e.g. "certificate verify failed: ..."

    reason = None if isinstance(e, UpstreamError) else tls_failure_reason(e)
    if reason:
        return UpstreamError(f"{_host(url)}: {reason}"[:300])
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


__all__ = ["UpstreamClient", "USER_AGENT", "MAX_REDIRECTS", "MAX_TOKEN_BODY", "MAX_TOKEN_LIFETIME"]
