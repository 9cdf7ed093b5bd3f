"""Who may pull what: the policy behind ``RegistryRoutes``.

``[access] anonymous`` is ``whitelist`` (default), ``all`` or ``none``; ``/v2/``
takes our Bearer tokens or a user's Basic credentials, never downgrades bad
credentials to anonymous, answers 401 with Docker's challenge or 429 with
``Retry-After``, and marks a pull that anonymous users may not make private.

Design: docs/design/auth.md ("Who may pull what").
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from zmirror.auth.credentials import (
    AdminAccountLogin,
    Authenticator,
    Locked,
    attempted_name,
    auth_scheme,
    parse_basic,
)
from zmirror.auth.scopes import user_scopes
from zmirror.auth.tokens import Claims, InvalidToken, TokenIssuer
from zmirror.identity import Identity
from zmirror.net import TrustedProxies, base_url, client_ip
from zmirror.oci.errors import RegistryError
from zmirror.oci.reference import RegistryPath

MODES = ("whitelist", "all", "none")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AccessPolicy:
    def __init__(self, *, whitelist: Any, users: Any, tokens: TokenIssuer,
                 authenticator: Authenticator, mode: str = "whitelist",
                 trusted: Optional[TrustedProxies] = None, external_url: str = "",
                 realm: Optional[Callable[[Any], str]] = None, metrics: Any = None,
                 image_policy: Any = None):
        if mode not in MODES:
            raise ValueError(f"unknown anonymous access mode {mode!r}")
        self.whitelist = whitelist  # zmirror.auth.whitelist.Whitelist
        self.users = users
        self.tokens = tokens
        self.authenticator = authenticator
        self.mode = mode
        self.trusted = trusted or TrustedProxies()
        self.external_url = external_url
        self._realm = realm
        self.metrics = metrics  # zmirror.metrics.Metrics (auth failure counts) or None
        # zmirror.auth.imagepolicy.ImagePolicy: what may be pulled at all (None: everything)
        self.image_policy = image_policy

    def reload(self, config: Any) -> None:
        """Apply ``[access] anonymous`` from a re-read configuration (SIGHUP)."""
        mode = config.access.anonymous
        if mode not in MODES:
            raise ValueError(f"unknown anonymous access mode {mode!r}")
        self.mode = mode

    def _failed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_failure("registry", reason)

    # --- decisions --------------------------------------------------------

    def anonymous_allows(self, name: str) -> bool:
        """Whether anonymous users may pull ``name`` (a parsed, normalized name)."""
        if self.mode == "all":
            return True
        if self.mode == "none":
            return False
        return self.whitelist.matcher.allows(name)

    def may_pull(self, user: Optional[dict], name: str) -> bool:
        """Whether ``user`` (an auth row; None: anonymous) may pull ``name``: what
        anonymous users may pull, plus what the user's scopes name (none: everything)."""
        if user is not None and user_scopes(user).allows(name):
            return True
        return self.anonymous_allows(name)

    async def ready(self) -> None:
        if self.mode == "whitelist" and not self.whitelist.loaded:
            await self.whitelist.ready()
        if self.image_policy is not None and not self.image_policy.loaded:
            await self.image_policy.ready()

    def realm(self, request) -> str:
        if self._realm is not None:
            return self._realm(request)
        return base_url(request, self.trusted, self.external_url) + "/token"

    def challenge(self, request, name: Optional[str] = None, error: Optional[str] = None) -> bytes:
        parts = [f"realm={_quote(self.realm(request))}", f"service={_quote(self.tokens.service)}"]
        if name:
            parts.append(f'scope="repository:{name}:pull"')
        if error:
            parts.append(f"error={_quote(error)}")
        return ("Bearer " + ",".join(parts)).encode("latin-1", "replace")

    def _unauthorized(self, request, name: Optional[str], message: str,
                      error: Optional[str] = None) -> RegistryError:
        detail = [{"Type": "repository", "Name": name, "Action": "pull"}] if name else None
        return RegistryError(
            "UNAUTHORIZED", message, detail,
            headers={b"WWW-Authenticate": self.challenge(request, name, error)},
        )

    @staticmethod
    def _locked(e: Locked) -> RegistryError:
        # locked out, too many logins of the account / address at once, or the
        # password-verification queue is full (e.reason)
        return RegistryError(
            "TOOMANYREQUESTS", e.message,
            headers={b"Retry-After": str(e.retry_after).encode()},
        )

    # --- the policy interface used by RegistryRoutes ----------------------

    async def authorize_ping(self, request) -> Identity:
        identity = await self._credentials(request, None)
        if identity is None:
            raise self._unauthorized(request, None, "authentication required")
        return identity

    async def authorize(self, request, path: RegistryPath) -> Identity:
        await self.ready()
        name = path.name
        identity = await self._credentials(request, name)
        public = self.anonymous_allows(name)
        if identity is None:
            if not public:
                raise self._unauthorized(request, name, "authentication required")
            identity = Identity()
        else:
            identity.private = not public
        if self.image_policy is not None:
            self.image_policy.check(path)  # DENIED before any upstream request
        return identity

    # --- credentials ------------------------------------------------------

    async def _credentials(self, request, name: Optional[str]) -> Optional[Identity]:
        """The caller's identity from its Authorization header; None when it sent none.

        Raises RegistryError for credentials that are present but not good enough.
        """
        header = request.getHeader(b"authorization")
        scheme = auth_scheme(header)
        if scheme == "bearer":
            token = header.strip()[len("bearer"):].strip().decode("latin-1")
            return await self._bearer(request, token, name)
        if scheme == "basic":
            return await self._basic(request, header, name)
        return None  # no (or an unknown kind of) credentials: anonymous

    async def _bearer(self, request, token: str, name: Optional[str]) -> Identity:
        try:
            claims: Claims = self.tokens.verify_access(token)
        except InvalidToken:
            self._failed("invalid_token")
            raise self._unauthorized(request, name, "invalid or expired token", "invalid_token")
        if not claims.anonymous:
            user = await self.users.auth_user(claims.uid)
            if not self.tokens.fingerprint_matches(user, claims.fp):
                self._failed("stale_token")
                raise self._unauthorized(request, name, "the token's user is no longer valid",
                                         "invalid_token")
            username: Optional[str] = user["username"]
        else:
            username = None
        if name is not None:
            if not claims.allows(name, "pull"):
                raise self._unauthorized(request, name, "the token does not grant pull access to "
                                         "this repository", "insufficient_scope")
            if username is None:
                await self.ready()
                if not self.anonymous_allows(name):
                    raise self._unauthorized(request, name, "authentication required",
                                             "insufficient_scope")
        return Identity(username=username)

    async def _basic(self, request, header: bytes, name: Optional[str]) -> Identity:
        creds = parse_basic(header)
        ip = client_ip(request, self.trusted)
        if creds is None:
            self._failed("malformed")
            raise self._unauthorized(request, name, "malformed Basic credentials")
        username, password = creds
        try:
            user = await self.authenticator.authenticate(username, password, ip)
        except AdminAccountLogin as e:  # the same answer whatever the password
            self._failed("admin_account")
            raise _attempted(self._unauthorized(request, name, e.message), username) from None
        except Locked as e:
            self._failed(e.reason)
            raise _attempted(self._locked(e), username) from None
        if user is None:
            self._failed("bad_credentials")
            raise _attempted(self._unauthorized(request, name, "incorrect username or password"),
                             username)
        if name is not None:
            await self.ready()
            if not self.may_pull(user, name):
                # the same answer a token without this repository gets (distribution: 401,
                # error="insufficient_scope"); the repository is never looked up
                raise self._unauthorized(request, name, "the user's scopes do not include this "
                                         "repository", "insufficient_scope")
        return Identity(username=user["username"])


def _attempted(error: RegistryError, username: str) -> RegistryError:
    """``error`` carrying the account name a refused Basic login tried
    (``attempted_user``: the access log records it, sanitized and bounded)."""
    error.attempted_user = attempted_name(username)  # type: ignore[attr-defined]
    return error


__all__ = ["AccessPolicy", "MODES"]
