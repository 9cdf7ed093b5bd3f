"""The admin API behind the web UI (contract: docs/api.md).

``AdminAPI`` is a class-bound Klein app whose routes are relative to ``/api``:
:class:`zmirror.app.ZMirrorApp` mounts ``AdminAPI.resource()`` as the ``/api``
branch.  Handlers stay thin: authenticate, validate, call a store, render JSON.
Every error is a JSON ``{"error", "fields"}`` answer, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import re
from inspect import isawaitable
from typing import Any, Callable, Optional

from klein import Klein
from twisted.internet.defer import CancelledError, DeferredLock
from twisted.logger import Logger

import twisted
from zmirror import __version__
from zmirror.app import is_routing_redirect, no_redirects
from zmirror.admin.validate import (
    ApiError,
    Field,
    Invalid,
    boolean,
    check,
    identifier,
    integer,
    json_body,
    path_id,
    q_int,
    q_time,
    query,
    string,
)
from zmirror.auth.credentials import parse_basic
from zmirror.auth.adminsecret import Unavailable
from zmirror.auth.lockout import Locked, NullAttempt
from zmirror.auth.passwords import AdminCredentials, Passwords, hash_admin_password, same_text
from zmirror.auth.users import UserAccounts, validate_password
from zmirror.auth.whitelist import Whitelist, validate_prefix
from zmirror.config import (
    DEFAULT_ADMIN_PASSWORD,
    ConfigError,
    admin_password_problem,
    node_name_problem,
    update_admin_password,
)
from zmirror.db.accesslogs import (
    KINDS,
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    LogFilter,
    parse_status,
)
from zmirror.db.errors import Conflict, NotFound
from zmirror.db.registries import normalize_url
from zmirror.db.users import validate_username
from zmirror.db.whitelists import validate_note
from zmirror.net import TrustedProxies, client_ip
from zmirror.singleflight import Flight

log = Logger()

REALM = b'Basic realm="zmirror-admin"'
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

UNKNOWN_HEALTH = {"state": "unknown", "last_error": None, "last_latency_ms": None,
                  "last_checked_at": None, "consecutive_failures": 0}
RATE_LIMIT_KEYS = ("limit", "remaining", "window", "reset_at", "updated_at")
PROBE_KEYS = {"ok": False, "status": None, "latency_ms": None, "auth": "unknown", "error": None}

DEFAULT_PASSWORD_ERROR = "change the default admin password first"

_app = no_redirects(Klein())  # /api//x is a 404, never a redirect built from the Host header


def api_route(path: str, methods: list[str], *, with_default_password: bool = False):
    """A route that requires the admin and answers JSON (handler returns
    ``obj`` → 200, ``(status, obj)``, or ``None`` → 204).

    While the admin password is still the well-known default, only the routes
    marked ``with_default_password`` (the session check and the password
    change) answer; every other one is a 403."""

    def deco(f):
        f.with_default_password = with_default_password
        @_app.route(path, methods=methods)
        @functools.wraps(f)
        async def handler(self, request, **kw):
            return await self._serve(request, f, kw)

        return handler

    return deco


# --- registries -----------------------------------------------------------------------


def _url(x: Any) -> str:
    return normalize_url(x)


def _namespace(x: Any) -> str:
    from zmirror.oci.names import normalize_namespace

    return normalize_namespace(x)


_NO_COLON = re.compile(r"^[^:\x00-\x1f\x7f]*$")

REGISTRY_FIELDS = {
    "name": Field(string(1, 100), required=True),
    "url": Field(_url, required=True),
    # the registry host this upstream mirrors; index.docker.io / registry-1.docker.io mean docker.io
    "namespace": Field(_namespace, default="docker.io"),
    "priority": Field(integer(0, 1_000_000), default=100),
    "enabled": Field(boolean, default=True),
    "username": Field(string(0, 255, pattern=_NO_COLON,
                             pattern_msg="must not contain ':' or control characters"), default=""),
    "password": Field(string(0, 4096, strip=False), default=""),
}
REGISTRY_UPDATE_FIELDS = {"id": Field(identifier), **REGISTRY_FIELDS}

# --- the admin's own password -----------------------------------------------------------


def _new_admin_password(x: Any) -> str:
    problem = admin_password_problem(x)
    if problem is not None:
        raise ValueError(problem)
    return x


ADMIN_PASSWORD_FIELDS = {
    "current_password": Field(string(1, 1024, strip=False), required=True),
    "new_password": Field(_new_admin_password, required=True),
}

# --- users and whitelists: the validators of the layers the handlers call ---------------
# usernames and notes: the stores' own constraints; passwords: zmirror.auth.users, which
# hashes them; prefixes: zmirror.auth.whitelist, the matcher's syntax


USER_FIELDS = {
    "username": Field(validate_username, required=True),  # the admin's name: the handler
    "password": Field(validate_password, required=True),
    "enabled": Field(boolean, default=True),
}
USER_UPDATE_FIELDS = {
    "id": Field(identifier),
    "password": Field(validate_password),
    "enabled": Field(boolean),
}
WHITELIST_FIELDS = {
    "prefix": Field(validate_prefix, required=True),
    "enabled": Field(boolean, default=True),
    "note": Field(validate_note, default=""),
}
WHITELIST_UPDATE_FIELDS = {
    "id": Field(identifier),
    "prefix": Field(validate_prefix),
    "enabled": Field(boolean),
    "note": Field(validate_note),
}


async def _maybe(x):
    return (await x) if isawaitable(x) else x


def _too_many(e: Locked) -> ApiError:
    """429 for a lockout, too many logins at once, or a full password-check queue."""
    return ApiError(429, e.message, headers={b"Retry-After": str(e.retry_after).encode()},
                    extra={"retry_after": e.retry_after})


def _parse_basic(request) -> Optional[tuple[str, str]]:
    return parse_basic(request.getHeader(b"authorization"))


class AdminAPI:
    """``/api/*``.  Collaborators are injected; the optional ones may be None
    (their routes then answer 503 / the health shows "unknown")."""

    app = _app

    def __init__(
        self,
        config: Any,
        *,
        clock: Any,
        registries: Any,
        accesslogs: Any,
        users: Any = None,
        whitelists: Any = None,
        whitelist: Any = None,
        accounts: Any = None,
        lockout: Any = None,
        upstreams: Any = None,
        passwords: Any = None,
        trusted: Optional[TrustedProxies] = None,
        cache: Any = None,
        accesslog: Any = None,
        manifest_cache: Any = None,
    ):
        self.config = config
        self.clock = clock
        self.registries = registries
        self.accesslogs = accesslogs
        self.users = users  # the stores: rows
        self.whitelists = whitelists
        self.lockout = lockout
        self.upstreams = upstreams
        self.passwords = passwords if passwords is not None else Passwords(clock=clock)
        # the auth layer above the stores: the live whitelist (match tester) and user
        # create/update (passwords hashed before the store is called); made here from
        # the stores unless the wiring shares its own
        if whitelist is None and whitelists is not None:
            whitelist = Whitelist(whitelists)
        self.whitelist = whitelist
        if accounts is None and users is not None:
            accounts = UserAccounts(users, self.passwords)
        self.accounts = accounts
        self.trusted = trusted or TrustedProxies()
        self.cache = cache
        self.manifest_cache = manifest_cache
        self.accesslog = accesslog  # the batched writer (queue depth in /api/stats)
        # called with the new AdminConfig after PUT /api/me/password (zmirror.ops.Reloader)
        self.on_admin_change: Optional[Callable[[Any], None]] = None
        # PostgreSQL: the cluster's admin password, which overrides [admin] password
        # (zmirror.auth.adminsecret.ClusterAdminPassword; set by zmirror.ops.attach)
        self.admin_secret: Any = None
        self._password_lock = DeferredLock()

    def resource(self):
        return self.app.resource()

    # --- plumbing ----------------------------------------------------------------------

    async def _serve(self, request, f: Callable, kw: dict):
        try:
            await self._authenticate(request)
            if not getattr(f, "with_default_password", False) and self._default_password_in_use(request):
                raise ApiError(403, DEFAULT_PASSWORD_ERROR)
            result = await _maybe(f(self, request, **kw))
        except CancelledError:
            raise
        except ApiError as e:
            return self._error(request, e)
        except Locked as e:
            # the password-check queue is full while a handler verifies a password
            # (the password change); at login _authenticate already made it an ApiError
            return self._error(request, _too_many(e))
        except NotFound:
            return self._error(request, ApiError(404, "not found"))
        except Conflict as e:
            return self._error(request, ApiError(409, f"{e.field} already exists",
                                                 {e.field: "already exists"}))
        except Exception:
            log.failure("admin API: unexpected error on {method} {path}",
                        method=request.method, path=request.path)
            return self._error(request, ApiError(500, "internal error"))
        if result is None:
            return self._send(request, 204, None)
        if isinstance(result, tuple):
            return self._send(request, *result)
        return self._send(request, 200, result)

    def _send(self, request, status: int, obj: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if obj is None:
            request.setHeader(b"Content-Length", b"0")
            return b""
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body

    def _error(self, request, e: ApiError) -> bytes:
        for k, v in e.headers.items():
            request.setHeader(k, v)
        return self._send(request, e.status, e.body())

    @_app.handle_errors(Exception)
    def _klein_error(self, request, failure):
        # Klein's own 404/405 (unknown route or method) and anything unexpected.
        from werkzeug.exceptions import HTTPException

        exc = failure.value
        if is_routing_redirect(exc):
            status, message = 404, "not found"
        elif isinstance(exc, HTTPException):
            status, message = exc.code or 500, exc.name.lower()
        else:
            log.failure("admin API: unhandled error", failure=failure)
            status, message = 500, "internal error"
        return self._send(request, status, {"error": message, "fields": {}})

    # --- authentication ------------------------------------------------------------------

    async def _authenticate(self, request) -> str:
        creds = _parse_basic(request)
        if creds is None:
            raise ApiError(401, "authentication required", headers={b"WWW-Authenticate": REALM})
        username, password = creds
        ip = client_ip(request, self.trusted)
        try:
            return await self._check_login(username, password, ip)
        except Locked as e:
            raise _too_many(e) from None

    async def _check_login(self, username: str, password: str, ip: str) -> str:
        """The admin's name, or ApiError 401/403; Locked → 429 (nothing verified)."""
        lockout = self.lockout
        secret = self.admin_secret
        if secret is not None and not secret.loaded:
            # never fall back to config.toml's password when the cluster's may replace it
            raise ApiError(503, "the admin account is not available: the database cannot be read"
                                " (see the server log)", headers={b"Retry-After": b"5"})
        admin = self._admin_credentials()
        if lockout is not None:
            lockout.enforce(username, ip)
        if admin.cached(username, password):  # verified a moment ago: no slot, not in flight
            if lockout is not None:
                lockout.success(username, ip)
            return username
        # in flight until the outcome is recorded; leaving the block ends it
        with (lockout.attempt(username, ip) if lockout is not None else NullAttempt()) as attempt:
            if await admin.check(username, password):
                attempt.success()
                return username
            try:
                registry_user = await self._is_registry_user(username, password)
            except Locked:
                # the admin password was checked (and wrong): that counts, or a
                # full queue would hide every wrong guess from the lockout
                attempt.failure()
                raise
            if registry_user:
                raise ApiError(403, "this account may pull images but not administer ZMirror")
            attempt.failure()
        log.info("admin API: failed login for {user!r} from {ip}", user=username[:64], ip=ip)
        raise ApiError(401, "invalid username or password", headers={b"WWW-Authenticate": REALM})

    def _admin_password(self) -> str:
        """The admin password in force: the cluster's hash when there is one
        (PostgreSQL), else ``[admin] password`` of config.toml."""
        secret = self.admin_secret
        if secret is not None and secret.value is not None:
            return secret.value
        return self.config.admin.password

    def _admin_credentials(self) -> AdminCredentials:
        return AdminCredentials(self.config.admin.username, self._admin_password(), self.passwords)

    async def _is_registry_user(self, username: str, password: str) -> bool:
        """Valid credentials of an enabled registry user (→ 403, not 401)."""
        if self.users is None:
            return False
        try:
            row = await _maybe(self.users.get_by_username(username))
        except NotFound:
            row = None
        stored = (row or {}).get("password_hash") or ""
        if not row or not stored:
            await self.passwords.dummy_verify(password)
            return False
        ok, _new = await self.passwords.verify(password, stored, account=username)
        return bool(ok) and bool(row.get("enabled", True))

    # --- session -----------------------------------------------------------------------------

    def _default_password_in_use(self, request) -> bool:
        """The admin password is the well-known default: configured as plain text,
        or (a hash of it) the password this authenticated request carries."""
        secret = self.admin_secret
        overridden = secret is not None and secret.value is not None  # a hash, never plain
        if not overridden and getattr(self.config, "admin_password_is_default", False):
            return True
        creds = _parse_basic(request)
        return creds is not None and same_text(creds[1], DEFAULT_ADMIN_PASSWORD)

    def _me(self, request) -> dict:
        return {"username": self.config.admin.username,
                "default_password": self._default_password_in_use(request)}

    @api_route("/me", ["GET"], with_default_password=True)
    def me(self, request):
        return self._me(request)

    @api_route("/me/password", ["PUT"], with_default_password=True)
    async def me_password(self, request):
        """Change the admin password, applied at once: a passlib hash in config.toml
        (SQLite), or in the database for every node (PostgreSQL)."""
        values = check(json_body(request), ADMIN_PASSWORD_FIELDS)
        # Owned by no caller: a client that hangs up while the file is being written
        # cannot leave the file and the running server disagreeing.
        flight = Flight.start(lambda: self._change_password(values["current_password"],
                                                            values["new_password"]))
        await flight.wait()
        return {"username": self.config.admin.username, "default_password": False}

    async def _change_password(self, current: str, new: str) -> None:
        # one change at a time: a second request waits, then must know the new password
        await self._password_lock.acquire()
        try:
            admin = self.config.admin
            secret = self.admin_secret
            configured = admin.password
            if secret is not None:
                # checked against the row as it is now, not this node's copy of it
                try:
                    expected, in_db = await secret.fresh()
                except Unavailable as e:
                    log.error("admin API: cannot change the admin password: {error}", error=str(e))
                    raise ApiError(503, "the database cannot be reached (see the server log)") from None
                if in_db is not None:
                    configured = in_db
            creds = AdminCredentials(admin.username, configured, self.passwords)
            if not await creds.check(admin.username, current):
                raise Invalid("invalid input: current_password is not the current password",
                              {"current_password": "is not the current password"})
            if same_text(new, current):
                raise Invalid("invalid input: new_password must differ from the current password",
                              {"new_password": "must differ from the current password"})
            hashed = await self.passwords.run(hash_admin_password, new)
            if secret is not None:
                await self._change_cluster_password(secret, expected, hashed)
                return
            path = self.config.config_path
            try:
                await self.passwords.run(functools.partial(
                    update_admin_password, path, hashed, data_dir=self.config.data_dir))
            except ConfigError as e:
                log.error("admin API: cannot change the admin password: {error}", error=str(e))
                raise ApiError(409, "config.toml cannot be updated (see the server log);"
                                    " fix the file or use `zmirror admin-password`") from None
            except OSError as e:
                log.error("admin API: cannot write {path}: {error}", path=str(path),
                          error=e.strerror or type(e).__name__)
                raise ApiError(503, "config.toml cannot be written (see the server log)") from None
            self._set_admin(dataclasses.replace(admin, password=hashed))
            log.info("admin API: the admin password was changed (config.toml updated)")
        finally:
            self._password_lock.release()

    async def _change_cluster_password(self, secret: Any, expected: Optional[str], hashed: str) -> None:
        """PostgreSQL: the hash goes into the database (every node applies it within
        2 s); config.toml is left alone (it may be read-only, and the other nodes'
        files could not follow)."""
        try:
            written = await secret.replace(expected, hashed)
        except Unavailable as e:
            log.error("admin API: cannot change the admin password: {error}", error=str(e))
            raise ApiError(503, "the database cannot be reached (see the server log)") from None
        if not written:
            raise ApiError(409, "the admin password was changed meanwhile (on another node or "
                                "with `zmirror admin-password`); log in with the new one")
        log.info("admin API: the admin password was changed (in the database, for every node)")

    def _set_admin(self, admin: Any) -> None:
        """The running server uses ``admin`` from now on (the next login check)."""
        self.config = dataclasses.replace(self.config, admin=admin)
        forget = getattr(self.passwords, "forget_admin", None)
        if forget is not None:
            forget()
        if self.on_admin_change is not None:
            self.on_admin_change(admin)

    @api_route("/version", ["GET"])
    def version(self, request):
        return {"version": __version__, "python": platform.python_version(),
                "twisted": twisted.__version__}

    # --- registries --------------------------------------------------------------------------

    def _health(self) -> dict:
        if self.upstreams is None:
            return {}
        try:
            return dict(self.upstreams.health.report() or {})
        except Exception:
            log.failure("admin API: upstream health failed")
            return {}

    @staticmethod
    def _registry_out(row: dict, health: dict) -> dict:
        h = dict(UNKNOWN_HEALTH)
        got = health.get(row["id"])
        rate_limit = None
        if isinstance(got, dict):
            h.update({k: got[k] for k in UNKNOWN_HEALTH if k in got})
            rl = got.get("rate_limit")
            if isinstance(rl, dict):
                # what the upstream last said (ratelimit-* headers) and, while it is
                # skipped for pulls (state "ratelimited"), when that ends
                rate_limit = {k: rl.get(k) for k in RATE_LIMIT_KEYS}
        return {
            "id": row["id"], "name": row["name"], "url": row["url"],
            "namespace": row.get("namespace") or "docker.io",
            "priority": row["priority"], "enabled": bool(row["enabled"]),
            "username": row["username"], "has_password": bool(row["password"]),
            "created_at": row["created_at"], "updated_at": row["updated_at"],
            "health": h, "rate_limit": rate_limit,
        }

    @api_route("/registries", ["GET"])
    async def registries_list(self, request):
        rows = await self.registries.list()
        health = self._health()
        return {"items": [self._registry_out(r, health) for r in rows]}

    @api_route("/registries", ["POST"])
    async def registries_create(self, request):
        values = check(json_body(request), REGISTRY_FIELDS)
        row = await self.registries.create(**values)
        return 201, self._registry_out(row, self._health())

    @api_route("/registries", ["PUT"])
    async def registries_update_body(self, request):
        body = json_body(request)
        values = check(body, REGISTRY_UPDATE_FIELDS, partial=True)
        if "id" not in values:
            raise Invalid("invalid input: id required", {"id": "required"})
        return await self._registry_update(values.pop("id"), values)

    @api_route("/registries/<rid>", ["GET"])
    async def registries_get(self, request, rid):
        row = await self.registries.get(path_id(rid))
        return self._registry_out(row, self._health())

    @api_route("/registries/<rid>", ["PUT"])
    async def registries_update(self, request, rid):
        rid = path_id(rid)
        values = check(json_body(request), REGISTRY_UPDATE_FIELDS, partial=True)
        _same_id(values, rid)
        return await self._registry_update(rid, values)

    async def _registry_update(self, rid: int, values: dict):
        if not values:
            raise Invalid("nothing to update", {})
        row = await self.registries.update(rid, **values)
        return self._registry_out(row, self._health())

    @api_route("/registries/<rid>", ["DELETE"])
    async def registries_delete(self, request, rid):
        await self.registries.delete(path_id(rid))
        return None

    @api_route("/registries/<rid>/test", ["POST"])
    async def registries_test(self, request, rid):
        row = await self.registries.get(path_id(rid))
        if self.upstreams is None:
            raise ApiError(503, "the proxy core is not available")
        try:
            result = await _maybe(self.upstreams.probe(row))
        except CancelledError:
            raise
        except Exception as e:
            log.failure("admin API: probe of registry {id} failed", id=row["id"])
            result = {"ok": False, "error": f"probe failed: {type(e).__name__}"}
        out = dict(PROBE_KEYS)
        if isinstance(result, dict):
            out.update({k: result[k] for k in PROBE_KEYS if k in result})
        record = getattr(getattr(self.upstreams, "health", None), "record_probe", None)
        if record is not None:
            record(row["id"], out)  # the health column shows what the test found
        return out

    # --- whitelists --------------------------------------------------------------------------

    def _need(self, part: Any, what: str):
        if part is None:
            raise ApiError(503, f"{what} are not available")
        return part

    @staticmethod
    def _whitelist_out(row: dict) -> dict:
        return {"id": row["id"], "prefix": row["prefix"], "enabled": bool(row["enabled"]),
                "note": row.get("note", ""), "created_at": row["created_at"],
                "updated_at": row["updated_at"]}

    @api_route("/whitelists", ["GET"])
    async def whitelists_list(self, request):
        rows = await _maybe(self._need(self.whitelists, "whitelists").list())
        return {"items": [self._whitelist_out(r) for r in rows]}

    @api_route("/whitelists", ["POST"])
    async def whitelists_create(self, request):
        store = self._need(self.whitelists, "whitelists")
        values = check(json_body(request), WHITELIST_FIELDS)
        row = await _store_call(store.create, values, "prefix")
        return 201, self._whitelist_out(row)

    @api_route("/whitelists/match", ["GET"])
    async def whitelists_match(self, request):
        whitelist = self._need(self.whitelist, "whitelists")
        params = query(request, ("repository",))
        repo = params.get("repository", "").strip()
        if not repo:
            raise Invalid("invalid query: repository required", {"repository": "required"})
        from zmirror.oci.errors import RegistryError
        from zmirror.oci.names import canonical_name

        try:
            name = canonical_name(repo)
        except RegistryError:
            raise Invalid("invalid query: repository is not a valid repository name",
                          {"repository": "is not a valid repository name"}) from None
        await whitelist.ready()
        matched = whitelist.match(name)
        mode = self.config.access.anonymous
        if mode == "all":
            allowed = True
        elif mode == "none":
            allowed = False
        else:
            allowed = matched is not None
        return {
            "repository": name,
            "allowed": allowed,
            "matched": ({"id": matched.id, "prefix": matched.prefix}
                        if matched is not None else None),
            "mode": mode,
        }

    @api_route("/whitelists/<wid>", ["GET"])
    async def whitelists_get(self, request, wid):
        store = self._need(self.whitelists, "whitelists")
        return self._whitelist_out(await _maybe(store.get(path_id(wid))))

    @api_route("/whitelists/<wid>", ["PUT"])
    async def whitelists_update(self, request, wid):
        store = self._need(self.whitelists, "whitelists")
        wid = path_id(wid)
        values = check(json_body(request), WHITELIST_UPDATE_FIELDS, partial=True)
        _same_id(values, wid)
        if not values:
            raise Invalid("nothing to update", {})
        row = await _store_call(functools.partial(store.update, wid), values, "prefix")
        return self._whitelist_out(row)

    @api_route("/whitelists/<wid>", ["DELETE"])
    async def whitelists_delete(self, request, wid):
        store = self._need(self.whitelists, "whitelists")
        await _maybe(store.delete(path_id(wid)))
        return None

    # --- users --------------------------------------------------------------------------------

    @staticmethod
    def _user_out(row: dict) -> dict:
        return {"id": row["id"], "username": row["username"], "enabled": bool(row["enabled"]),
                "created_at": row["created_at"], "updated_at": row["updated_at"],
                "last_login_at": row.get("last_login_at")}

    @api_route("/users", ["GET"])
    async def users_list(self, request):
        rows = await _maybe(self._need(self.users, "users").list())
        return {"items": [self._user_out(r) for r in rows]}

    @api_route("/users", ["POST"])
    async def users_create(self, request):
        accounts = self._need(self.accounts, "users")
        values = check(json_body(request), USER_FIELDS)
        if values["username"].lower() == self.config.admin.username.lower():
            raise Invalid("invalid input: username is the admin account's name",
                          {"username": "is the admin account's name, which cannot be a"
                                       " registry user"})
        row = await _store_call(accounts.create, values, "password")
        return 201, self._user_out(row)

    @api_route("/users/<uid>", ["GET"])
    async def users_get(self, request, uid):
        store = self._need(self.users, "users")
        return self._user_out(await _maybe(store.get(path_id(uid))))

    @api_route("/users/<uid>", ["PUT"])
    async def users_update(self, request, uid):
        accounts = self._need(self.accounts, "users")
        uid = path_id(uid)
        values = check(json_body(request), USER_UPDATE_FIELDS, partial=True)
        _same_id(values, uid)
        if not values:
            raise Invalid("nothing to update", {})
        row = await _store_call(functools.partial(accounts.update, uid), values, "password")
        return self._user_out(row)

    @api_route("/users/<uid>", ["DELETE"])
    async def users_delete(self, request, uid):
        store = self._need(self.users, "users")
        await _maybe(store.delete(path_id(uid)))
        return None

    # --- access logs and stats ------------------------------------------------------------------

    @api_route("/logs", ["GET"])
    async def logs_list(self, request):
        params = query(request, ("page", "page_size", "from", "to", "username", "client_ip",
                                 "repository", "status", "kind", "namespace", "node"))
        errors: dict[str, str] = {}
        page = q_int(params, "page", 1, 1, 10**9, errors)
        page_size = q_int(params, "page_size", PAGE_SIZE_DEFAULT, 1, PAGE_SIZE_MAX, errors,
                          clamp=True)
        since = q_time(params, "from", errors)
        until = q_time(params, "to", errors)
        status = status_class = None
        if params.get("status", "").strip():
            try:
                status, status_class = parse_status(params["status"])
            except ValueError as e:
                errors["status"] = str(e)
        kind = params.get("kind", "").strip() or None
        if kind is not None and kind not in KINDS:
            errors["kind"] = "must be one of " + ", ".join(KINDS)
        texts = {}
        if params.get("namespace", "").strip():
            from zmirror.oci.names import normalize_namespace

            try:
                texts["namespace"] = normalize_namespace(params["namespace"])
            except ValueError as e:
                errors["namespace"] = str(e)
        if params.get("node", "").strip():
            problem = node_name_problem(params["node"].strip())
            if problem is not None:
                errors["node"] = problem
            texts["node"] = params["node"].strip()
        for key in ("username", "client_ip", "repository"):
            v = params.get(key)
            if v is not None and v.strip():
                if len(v) > 255:
                    errors[key] = "must be at most 255 characters"
                texts[key] = v.strip()
        if errors:
            raise Invalid("invalid query: " + ", ".join(f"{k} {v}" for k, v in errors.items()),
                          errors)
        flt = LogFilter(since=since, until=until, status=status, status_class=status_class,
                        kind=kind, **texts)
        return await self.accesslogs.list(flt, page, page_size)

    @api_route("/logs", ["DELETE"])
    async def logs_delete(self, request):
        params = query(request, ("before",))
        errors: dict[str, str] = {}
        before = q_time(params, "before", errors)
        if "before" in params and before is None and not errors:
            errors["before"] = "must be a Unix time in seconds"
        if errors:
            raise Invalid("invalid query: before must be a Unix time in seconds", errors)
        n = await self.accesslogs.delete(before)
        return {"deleted": n}

    @api_route("/stats", ["GET"])
    async def stats(self, request):
        params = query(request, ("tz_offset",))
        errors: dict[str, str] = {}
        tz = 0
        raw = params.get("tz_offset", "").strip()
        if raw:
            try:
                tz = int(raw)
                if not -840 <= tz <= 840:
                    raise ValueError
            except ValueError:
                errors["tz_offset"] = "must be minutes east of UTC between -840 and 840"
        if errors:
            raise Invalid("invalid query: tz_offset out of range", errors)
        out = await self.accesslogs.stats(tz)
        if self.cache is not None:
            try:
                out["cache"] = await self._cache_stats()
            except Exception:
                log.failure("admin API: cache stats failed")
        if self.accesslog is not None:
            out["log_queue"] = getattr(self.accesslog, "queue_depth", 0)
        return out


    # --- pull-through cache -------------------------------------------------------------------

    @api_route("/cache", ["GET"])
    async def cache_get(self, request):
        query(request, ())
        if self.cache is None:
            return {"enabled": False}
        blobs = self.cache.summary()
        manifests = self.manifest_cache.summary() if self.manifest_cache is not None else {}
        hits = blobs["hits"] + manifests.get("hits", 0)
        misses = blobs["misses"] + manifests.get("misses", 0)
        return {
            "enabled": True,
            "size": blobs["size"],
            "max_size": blobs["max_size"],
            "entries": blobs["entries"],
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "bytes_from_cache": blobs["bytes_from_cache"],
            "bytes_from_upstream": blobs["bytes_from_upstream"],
            # False for a while after the cache disk failed a write: misses are relayed uncached
            "storing": blobs.get("storing", True),
            "store_error": blobs.get("store_error"),
            "blobs": blobs,
            "manifests": manifests,
        }

    @api_route("/cache", ["DELETE"])
    async def cache_delete(self, request):
        """Empty the cache, or drop one repository (``?repository=``) or one digest (``?digest=``)."""
        from zmirror.oci.errors import RegistryError
        from zmirror.oci.names import canonical_name
        from zmirror.oci.reference import parse_digest

        params = query(request, ("repository", "digest"))
        if self.cache is None:
            raise Invalid("the cache is disabled", {})
        repository = digest = None
        errors: dict[str, str] = {}
        if params.get("repository", "").strip():
            try:
                repository = canonical_name(params["repository"].strip())
            except RegistryError:
                errors["repository"] = "not a valid repository name"
        if params.get("digest", "").strip():
            try:
                digest = parse_digest(params["digest"].strip())
            except RegistryError:
                errors["digest"] = "not a valid digest (sha256:<64 hex>)"
        if repository is not None and digest is not None:
            errors["digest"] = "give either repository or digest, not both"
        if errors:
            raise Invalid("invalid query: " + ", ".join(f"{k} {v}" for k, v in errors.items()), errors)
        blobs = await self.cache.delete(digest=digest, repository=repository)
        manifests = 0
        if self.manifest_cache is not None:
            manifests = await self.manifest_cache.delete(repository=repository, digest=digest)
        return {"deleted": {"blobs": blobs, "manifests": manifests}}

    async def _cache_stats(self) -> dict:
        """The cache's counters (``stats`` dict or method) plus its size and fill."""
        cache = self.cache
        stats = getattr(cache, "stats", None)
        if callable(stats):
            stats = await _maybe(stats())
        out = dict(stats or {})
        size, max_size = getattr(cache, "size", None), getattr(cache, "max_size", None)
        if isinstance(size, int):
            out.setdefault("bytes", size)
        if isinstance(max_size, int):
            out.setdefault("max_bytes", max_size)
        entries = getattr(cache, "entries", None)
        if entries is not None and hasattr(entries, "__len__"):
            out.setdefault("blobs", len(entries))
        return out

    # --- the nodes sharing the database --------------------------------------------------------

    nodes: Any = None  # the zmirror.nodes.NodeHeartbeat (set by zmirror.wiring)

    @api_route("/nodes", ["GET"])
    async def nodes_list(self, request):
        """Every node's heartbeat row with its state (up / stale / stopped), by name."""
        query(request, ())
        if self.nodes is None:  # built without a heartbeat: nothing is known
            server = getattr(self.config, "server", None)
            return {"items": [], "self": getattr(server, "node", ""), "now": self.clock.seconds(),
                    "heartbeat": None, "stale_after": None, "total": 0, "truncated": False}
        return await self.nodes.listing()


def _same_id(values: dict, rid: int) -> None:
    if "id" in values:
        if values.pop("id") != rid:
            raise Invalid("invalid input: id does not match the URL",
                          {"id": "does not match the URL"})


async def _store_call(method: Callable, values: dict, field_for_value_error: str):
    """Call a store method; a ValueError from the store's own validation → 400 on a field."""
    try:
        return await _maybe(method(**values))
    except ValueError as e:
        field = getattr(e, "field", None) or field_for_value_error
        raise Invalid(f"invalid input: {field} {e}", {field: str(e)}) from None


__all__ = ["AdminAPI", "REALM"]
