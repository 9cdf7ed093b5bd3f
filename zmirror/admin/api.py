"""The admin API behind the web UI (contract: docs/api.md).

:class:`AdminAPI` serves the route groups of this package (session,
registries, whitelists, users, logs, cache, nodes) on one Klein app whose
routes are relative to ``/api``: :class:`zmirror.app.ZMirrorApp` mounts
``AdminAPI.resource()`` as the ``/api`` branch.  Every route requires the admin
(:class:`zmirror.auth.adminaccount.AdminAccount`); every error is a JSON
``{"error", "fields"}`` answer, never a traceback.
"""

from __future__ import annotations

from typing import Any, Callable

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from zmirror.admin.audit import AuditHandlers, AuditRecorder
from zmirror.admin.cache import CacheHandlers
from zmirror.admin.cacheview import CacheViewHandlers
from zmirror.admin.http import (
    Route,
    account_refusal,
    answer,
    error,
    klein_error,
    maybe,
    routes_of,
)
from zmirror.admin.logs import LogHandlers
from zmirror.admin.nodes import NodeHandlers
from zmirror.admin.policy import PolicyHandlers
from zmirror.admin.registries import RegistryHandlers
from zmirror.admin.retention import RetentionHandlers
from zmirror.admin.session import SessionHandlers
from zmirror.admin.sync import SyncHandlers
from zmirror.admin.lockouts import LockoutHandlers
from zmirror.admin.users import UserHandlers
from zmirror.admin.validate import ApiError
from zmirror.admin.whitelists import WhitelistHandlers
from zmirror.app import no_redirects
from zmirror.auth.adminaccount import (
    AccountError,
    AdminAccount,
    DefaultPasswordInUse,
    basic_credentials,
)
from zmirror.auth.lockout import Locked
from zmirror.db.errors import Conflict, NotFound
from zmirror.net import TrustedProxies, client_ip

log = Logger()


class AdminAPI:
    """``/api/*``.  Every collaborator comes in here; the optional ones may be
    None (their routes then answer 503, the health shows "unknown", the node
    list is empty).

    ``account``: the admin; ``trusted``: whose ``X-Forwarded-For`` gives the
    client address the lockout counts; ``registries``, ``accesslogs``,
    ``users``, ``whitelists``: the stores; ``whitelist``: the live matcher;
    ``accounts``: registry user create/update
    (:class:`zmirror.auth.users.UserAccounts`); ``policy``: the access policy
    (its anonymous mode); ``upstreams``: the proxy core's pool; ``cache``,
    ``manifest_cache``, ``accesslog`` (the batched writer); ``cache_purge``,
    ``cache_view`` (:mod:`zmirror.cache.purge`, :mod:`zmirror.cache.view`); ``nodes``: this
    node's heartbeat, ``node`` its name; ``lockouts``: the lockout's locks
    (:class:`zmirror.auth.lockoutrecords.LockoutRecords`); ``sync_jobs``, ``sync``:
    the sync jobs' store and this node's scheduler; ``clock``; ``audit``: the audit
    trail's store (:class:`zmirror.db.auditlog.AuditStore`; None: nothing recorded).
    """

    def __init__(self, *, account: AdminAccount, trusted: TrustedProxies, clock: Any,
                 registries: Any, accesslogs: Any, users: Any, whitelists: Any, whitelist: Any,
                 accounts: Any, policy: Any, node: str, upstreams: Any = None,
                 cache: Any = None, manifest_cache: Any = None, accesslog: Any = None,
                 nodes: Any = None, lockouts: Any = None, cache_purge: Any = None,
                 cache_view: Any = None, sync_jobs: Any = None, sync: Any = None,
                 retention_store: Any = None, retention: Any = None, audit: Any = None):
        self.account = account
        self.trusted = trusted
        self.registries = registries
        self.accesslogs = accesslogs
        self.users = users
        self.whitelists = whitelists
        self.whitelist = whitelist
        self.accounts = accounts
        self.policy = policy
        self.upstreams = upstreams
        self.cache = cache
        self.manifest_cache = manifest_cache
        self.accesslog = accesslog
        self.nodes = nodes
        self.groups = (
            SessionHandlers(account),
            RegistryHandlers(registries, upstreams),
            WhitelistHandlers(whitelists, whitelist, policy),
            UserHandlers(users, accounts, account),
            LockoutHandlers(lockouts),
            LogHandlers(accesslogs, cache, accesslog),
            CacheHandlers(cache, manifest_cache, cache_purge),
            CacheViewHandlers(cache_view),
            RetentionHandlers(retention_store, retention, getattr(cache, "max_size", None)),
            NodeHandlers(nodes, node=node, clock=clock),
            SyncHandlers(sync_jobs, sync, clock),
            PolicyHandlers(policy, users),
            AuditHandlers(audit),
        )
        getters = {spec.path: handler for group in self.groups
                   for spec, handler in routes_of(group) if "GET" in spec.methods}
        self.audit = AuditRecorder(audit, getters)
        # /api//x is a 404, never a redirect built from the Host header
        self.app = no_redirects(Klein())
        for group in self.groups:
            for spec, handler in routes_of(group):
                self._mount(spec, handler, f"{type(group).__name__}.{handler.__name__}")
        self.app.handle_errors(Exception)(klein_error)

    def resource(self):
        return self.app.resource()

    def _mount(self, spec: Route, handler: Callable, name: str) -> None:
        async def endpoint(request, **kw):
            return await self._serve(request, spec, handler, kw)

        self.app.route(spec.path, methods=list(spec.methods), endpoint=name)(endpoint)

    async def _serve(self, request, spec: Route, handler: Callable, kw: dict) -> bytes:
        try:
            actor = await self._admin_only(request, spec.with_default_password)
            action = self.audit.action(spec)
            before = None if action is None else await self.audit.before(spec, request, kw)
            result = await maybe(handler(request, **kw))
            if action is not None:
                await self.audit.record(action=action, spec=spec, request=request, kw=kw,
                                        actor=actor, client_ip=client_ip(request, self.trusted),
                                        before=before, result=result)
        except CancelledError:
            raise
        except ApiError as e:
            return error(request, e)
        except (AccountError, Locked) as e:
            # Locked: a lockout, too many logins at once, or a full password-check
            # queue (at login, or while the password change verifies the current one)
            return error(request, account_refusal(e))
        except NotFound:
            return error(request, ApiError(404, "not found"))
        except Conflict as e:
            return error(request, ApiError(409, f"{e.field} already exists",
                                           {e.field: "already exists"}))
        except Exception:
            log.failure("admin API: unexpected error on {method} {path}",
                        method=request.method, path=request.path)
            return error(request, ApiError(500, "internal error"))
        return answer(request, result)

    async def _admin_only(self, request, with_default_password: bool) -> str:
        """The admin's username, after their credentials and (unless
        ``with_default_password``) not the default password; raises the account's refusals."""
        username, password = basic_credentials(request)
        await self.account.authenticate(username, password, client_ip(request, self.trusted))
        if not with_default_password and self.account.default_password_in_use(password):
            raise DefaultPasswordInUse()
        return username


__all__ = ["AdminAPI"]
