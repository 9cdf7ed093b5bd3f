"""Builds the object graph from a validated :class:`~zmirror.config.Config`.

Called only through :func:`zmirror.tap.makeService`, the one wiring point
shared by the twistd plugin and ``zmirror.tac``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from zmirror import auth
from zmirror.app import ZMirrorApp
from zmirror.config import Config
from zmirror.db import Database, migrate
from zmirror.net import TrustedProxies, base_url
from zmirror.registry.proxy import Proxy
from zmirror.registry.routes import RegistryRoutes
from zmirror.upstream.client import UpstreamPool
from zmirror.service import DatabaseService, DrainService, InflightTracker


def build(config: Config, reactor: Any) -> dict:
    migrate(config.database_path)
    db = Database(config.database_path, reactor)
    trusted = TrustedProxies(config.server.trusted_proxies)

    upstreams = _upstream_pool(config, reactor)
    upstreams.set_registries(_registry_rows(config.database_path))
    proxy = Proxy(upstreams, reactor, idle_timeout=config.upstream.idle_timeout)

    access = auth.build(config, db, reactor, trusted=trusted)

    registry = RegistryRoutes(
        proxy,
        policy=access.policy,
        clock=reactor,
        trusted=trusted,
        base_url=lambda request: base_url(request, trusted, config.server.external_url),
    )
    # token requests go to the same access log as pulls
    access.token_service.accesslog = registry.accesslog
    app = ZMirrorApp(registry, token=access.token_service, ui=_ui_resource())
    root = InflightTracker(app.resource())
    site = Site(root, reactor=reactor)
    site.displayTracebacks = False
    services = [DatabaseService(db), *access.services, DrainService(root, reactor)]
    return {
        "config": config,
        "db": db,
        "app": app,
        "site": site,
        "root": root,
        "services": services,
        "upstreams": upstreams,
        "proxy": proxy,
        "access": access,
        "users": access.users,
        "whitelists": access.whitelists,
        "lockout": access.lockout,
        "admin_credentials": access.admin_credentials,
    }


def _upstream_pool(config: Config, reactor: Any) -> UpstreamPool:
    """The HTTP agent for upstreams: persistent connections, connect timeout.

    A plain ``Agent`` (not treq's HTTPClient, which adds gzip decoding): the
    bytes relayed must be exactly the upstream's, digests included.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    pool.cachedConnectionTimeout = 120
    agent = Agent(reactor, pool=pool, connectTimeout=config.upstream.connect_timeout)
    return UpstreamPool(agent, reactor, header_timeout=config.upstream.connect_timeout,
                        cooldown=config.upstream.cooldown)


def _registry_rows(path) -> list[dict]:
    """Registry rows read once at start (before the reactor runs)."""
    conn = sqlite3.connect(str(path))
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM registries ORDER BY priority, id")]
    finally:
        conn.close()


def _ui_resource():
    from zmirror.ui import ui_resource

    return ui_resource()
