"""Builds the admin side (:class:`~zmirror.admin.api.AdminAPI` and its
:class:`~zmirror.auth.adminaccount.AdminAccount`) from the configuration and the
parts it administers.

:func:`zmirror.wiring.build` mounts the result at ``/api`` and hands its
``account`` to ``/metrics`` and the reloader; the admin test environment
(``tests/fixtures/admin.py``) calls the same builder.
"""

from __future__ import annotations

from typing import Any

from zmirror.admin.api import AdminAPI
from zmirror.auth.adminaccount import AdminAccount
from zmirror.auth.build import AccessControl
from zmirror.config import Config
from zmirror.net import TrustedProxies


def build_admin(config: Config, *, clock: Any, trusted: TrustedProxies, access: AccessControl,
                registries: Any, accesslogs: Any, upstreams: Any = None, accesslog: Any = None,
                cache: Any = None, manifest_cache: Any = None, nodes: Any = None,
                cluster_password: Any = None, cache_purge: Any = None,
                cache_view: Any = None, sync_jobs: Any = None, sync: Any = None,
                retention_store: Any = None, retention: Any = None,
                audit: Any = None) -> AdminAPI:
    """The admin account (``[admin]`` of ``config``, checked against ``access``'s
    passwords and lockout, ``cluster_password`` on PostgreSQL) and ``/api`` over it:
    the registries and access-log stores, ``access``'s users, whitelists, live
    whitelist, accounts and policy, and the optional upstream pool, access-log
    writer, caches and node list."""
    account = AdminAccount(config.admin, config_path=config.config_path, data_dir=config.data_dir,
                           passwords=access.passwords, lockout=access.lockout, users=access.users,
                           cluster_password=cluster_password)
    return AdminAPI(account=account, trusted=trusted, clock=clock, registries=registries,
                    accesslogs=accesslogs, users=access.users, whitelists=access.whitelists,
                    whitelist=access.whitelist, accounts=access.accounts, policy=access.policy,
                    node=config.server.node, upstreams=upstreams, accesslog=accesslog,
                    cache=cache, manifest_cache=manifest_cache, nodes=nodes,
                    lockouts=access.lockout_records, cache_purge=cache_purge,
                    cache_view=cache_view, sync_jobs=sync_jobs, sync=sync,
                    retention_store=retention_store, retention=retention, audit=audit)


__all__ = ["build_admin"]
