"""``/token``: Docker's token authentication endpoint (``GET`` with optional
Basic credentials, ``POST`` with the OAuth2 password or refresh-token grant).

The grant is the intersection of what was asked and what the caller may do
(``pull`` only; a user's scopes, :mod:`zmirror.auth.scopes`, bound it);
refresh tokens for ``offline_token=true`` / ``access_type=offline`` die with
their user.

Design: docs/design/auth.md ("The token endpoint").
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional
from urllib.parse import parse_qs

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from zmirror.accesslog import AccessRecord
from zmirror.auth.credentials import (
    AdminAccountLogin,
    Authenticator,
    Locked,
    attempted_name,
    auth_scheme,
    parse_basic,
)
from zmirror.auth.tokens import InvalidToken, TokenIssuer
from zmirror.net import TrustedProxies, client_ip
from zmirror.oci.errors import RegistryError
from zmirror.oci.names import canonical_name

log = Logger()

MAX_BODY = 8 * 1024  # also the /token cap of the HTTP channel (zmirror.wiring.body_limits)
MAX_SCOPES = 32
MAX_PARAM = 4096


class TokenError(Exception):
    def __init__(self, status: int, error: str, details: str, headers: Optional[dict] = None,
                 retry_after: Optional[int] = None):
        super().__init__(details)
        self.status = status
        self.error = error
        self.details = details
        self.headers = dict(headers or {})
        self.retry_after = retry_after

    def body(self) -> dict:
        """The JSON answer (``details`` is what the docker CLI prints)."""
        out: dict = {"error": self.error, "error_description": self.details, "details": self.details}
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


def _bad(details: str, error: str = "invalid_request") -> TokenError:
    return TokenError(400, error, details)


def parse_scopes(values: list[str]) -> list[tuple[str, str, list[str]]]:
    """``[(type, name, actions)]`` from scope strings (each may hold several, space-separated).

    Repository names are canonical names (:func:`canonical_name`: ``nginx`` →
    ``library/nginx``, ``docker.io/x/y`` → ``x/y``, ``ghcr.io/owner/img`` as
    is), the names the challenges of ``/v2/`` carry: a grant for
    ``ghcr.io/owner/img`` is no grant for Docker Hub's ``owner/img``.  Raises TokenError (400) for malformed scopes.
    """
    out: list[tuple[str, str, list[str]]] = []
    for value in values:
        for one in value.split(" "):
            if not one:
                continue
            if len(out) >= MAX_SCOPES:
                raise _bad(f"too many scopes (at most {MAX_SCOPES})", "invalid_scope")
            parts = one.split(":")
            if len(parts) < 3:
                raise _bad(f"malformed scope {one[:200]!r}", "invalid_scope")
            typ, actions = parts[0], parts[-1]
            name = ":".join(parts[1:-1])
            acts = [a for a in actions.split(",") if a]
            if typ != "repository":
                # registry:catalog:* and other resource types: never granted
                out.append((typ, name, []))
                continue
            try:
                name = canonical_name(name)
            except RegistryError:
                raise _bad(f"invalid repository name in scope {one[:200]!r}", "invalid_scope") from None
            out.append((typ, name, acts))
    return out


class TokenService:
    def __init__(self, *, tokens: TokenIssuer, authenticator: Authenticator, policy: Any,
                 users: Any, clock: Any, trusted: Optional[TrustedProxies] = None,
                 accesslog: Any = None, metrics: Any = None):
        self.tokens = tokens
        self.authenticator = authenticator
        self.policy = policy
        self.users = users
        self.clock = clock
        self.trusted = trusted or TrustedProxies()
        self.accesslog = accesslog
        self.metrics = metrics  # zmirror.metrics.Metrics (issue/failure counts) or None

    def handle(self, request) -> Deferred:
        return Deferred.fromCoroutine(self._handle(request))

    async def _handle(self, request) -> bytes:
        started = self.clock.seconds()
        rec = AccessRecord(
            created_at=started,
            client_ip=client_ip(request, self.trusted),
            method=request.method.decode("ascii", "replace"),
            kind="token",
            user_agent=(request.getHeader(b"user-agent") or b"").decode("latin-1")[:300],
        )
        try:
            if request.method in (b"GET", b"HEAD"):
                status, body = await self._get(request, rec)
            elif request.method == b"POST":
                status, body = await self._post(request, rec)
            else:
                request.setHeader(b"Allow", b"GET, HEAD, POST")
                raise TokenError(405, "invalid_request", "method not allowed")
        except TokenError as e:
            for k, v in e.headers.items():
                request.setHeader(k, v)
            status = e.status
            body = e.body()
        except CancelledError:
            raise  # the client went away (Klein cancelled us): nothing to answer
        except Exception:
            log.failure("token endpoint failed")
            status, body = 500, {"error": "server_error", "details": "internal error"}
        data = json.dumps(body).encode()
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Pragma", b"no-cache")
        request.setHeader(b"Content-Length", str(len(data)).encode())
        rec.status = status
        rec.bytes = len(data)
        rec.duration_ms = round((self.clock.seconds() - started) * 1000.0, 3)
        if self.accesslog is not None:
            try:
                self.accesslog.record(rec)
            except Exception:
                log.failure("access log record failed")
        return data

    # --- GET ---------------------------------------------------------------

    async def _get(self, request, rec: AccessRecord) -> tuple[int, dict]:
        params = _params(request.args or {})
        scopes = parse_scopes(params.get("scope", []))
        _note_scopes(rec, scopes)
        offline = _one(params, "offline_token").lower() in ("true", "1")
        account = _one(params, "account")
        header = request.getHeader(b"authorization")
        user = None
        if auth_scheme(header) == "basic":
            creds = parse_basic(header)
            if creds is None:
                self._failed("malformed")
                raise TokenError(401, "invalid_client", "malformed Basic credentials",
                                 {b"WWW-Authenticate": b'Basic realm="zmirror"'})
            username, password = creds
            rec.username = attempted_name(username)
            if account and account != username:
                raise _bad("account does not match the credentials")
            user = await self._login(username, password, rec.client_ip)
        return 200, self._grant(scopes, user, rec, refresh=offline and user is not None)

    # --- POST --------------------------------------------------------------

    async def _post(self, request, rec: AccessRecord) -> tuple[int, dict]:
        ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
        if ctype.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            raise _bad("Content-Type must be application/x-www-form-urlencoded")
        content = request.content
        if content is None:
            raw = b""
        else:
            content.seek(0)
            raw = content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise TokenError(413, "invalid_request", f"request body larger than {MAX_BODY} bytes")
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                            max_num_fields=200)
        except (UnicodeDecodeError, ValueError):
            raise _bad("malformed form body") from None
        params = dict(form)
        _check_lengths(params)
        scopes = parse_scopes(params.get("scope", []))
        _note_scopes(rec, scopes)
        grant = _one(params, "grant_type")
        if grant == "password":
            username, password = _one(params, "username"), _one(params, "password")
            rec.username = attempted_name(username)
            if not username or "password" not in params:
                raise _bad("username and password are required")
            user = await self._login(username, password, rec.client_ip)
            offline = _one(params, "access_type").lower() == "offline"
            return 200, self._grant(scopes, user, rec, refresh=offline, post=True)
        if grant == "refresh_token":
            token = _one(params, "refresh_token")
            if not token:
                raise _bad("refresh_token is required")
            user = await self._refresh_user(token)
            rec.username = user["username"]
            return 200, self._grant(scopes, user, rec, refresh=False, post=True)
        if not grant:
            raise _bad("grant_type is required")
        raise _bad("unsupported grant_type", "unsupported_grant_type")

    # --- helpers -------------------------------------------------------------

    async def _login(self, username: str, password: str, ip: str) -> dict:
        """The user's auth row; a :class:`TokenError` for a refused login (the
        access record keeps the attempted name)."""
        try:
            user = await self.authenticator.authenticate(username, password, ip)
        except AdminAccountLogin as e:  # the same answer whatever the password
            self._failed("admin_account")
            raise TokenError(401, "invalid_grant", e.message,
                             {b"WWW-Authenticate": b'Basic realm="zmirror"'}) from None
        except Locked as e:  # locked out, too many at once, or verification queue full
            self._failed(e.reason)
            raise TokenError(429, "too_many_requests", e.message,
                             {b"Retry-After": str(e.retry_after).encode()},
                             retry_after=e.retry_after) from None
        if user is None:
            self._failed("bad_credentials")
            raise TokenError(401, "invalid_grant", "incorrect username or password",
                             {b"WWW-Authenticate": b'Basic realm="zmirror"'})
        return user

    async def _refresh_user(self, token: str) -> dict:
        try:
            uid, fp = self.tokens.verify_refresh(token)
        except InvalidToken:
            self._failed("invalid_refresh_token")
            raise TokenError(401, "invalid_grant", "invalid or expired refresh token") from None
        user = await self.users.auth_user(uid)
        if not self.tokens.fingerprint_matches(user, fp):
            self._failed("stale_refresh_token")
            raise TokenError(401, "invalid_grant",
                             "refresh token no longer valid; log in again")
        return user

    def _grant(self, scopes, user: Optional[dict], rec: AccessRecord, *, refresh: bool,
               post: bool = False) -> dict:
        access = []
        for typ, name, actions in scopes:
            granted: list[str] = []
            if typ == "repository" and ("pull" in actions or "*" in actions):
                # a user's scopes limit the grant, whatever was asked for (a repository
                # outside them is listed with no actions, as distribution's token servers do)
                if self.policy.may_pull(user, name):
                    granted = ["pull"]
            access.append({"type": typ, "name": name, "actions": granted})
        subject = user["username"] if user is not None else ""
        rec.username = subject
        token, issued = self.tokens.issue_access(subject=subject, access=access, user=user)
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.tokens.access_ttl,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued)),
        }
        if post:
            body["scope"] = " ".join(
                f"{t}:{n}:{','.join(a['actions'])}" for (t, n, _), a in zip(scopes, access)
                if a["actions"]
            )
        if refresh and user is not None:
            body["refresh_token"] = self.tokens.issue_refresh(user)
        if self.metrics is not None:
            self.metrics.token_issued(user is not None, refresh=refresh and user is not None)
        return body

    def _failed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_failure("token", reason)


def _params(args: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, values in args.items():
        try:
            key = k.decode("utf-8")
            out[key] = [v.decode("utf-8") for v in values]
        except (UnicodeDecodeError, AttributeError):
            raise _bad("query parameters must be UTF-8") from None
    _check_lengths(out)
    return out


def _check_lengths(params: dict[str, list[str]]) -> None:
    for key, values in params.items():
        if len(values) > MAX_SCOPES:
            raise _bad(f"too many {key[:50]!r} parameters")
        for v in values:
            if len(v) > MAX_PARAM:
                raise _bad(f"parameter {key[:50]!r} is too long")


def _one(params: dict[str, list[str]], key: str) -> str:
    values = params.get(key) or [""]
    return values[0]


def _note_scopes(rec: AccessRecord, scopes) -> None:
    for typ, name, _ in scopes:
        if typ == "repository":
            rec.repository = name
            return


__all__ = ["TokenService", "parse_scopes", "TokenError"]
