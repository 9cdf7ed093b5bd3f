"""Builds the object graph from a validated :class:`~zmirror.config.Config`.

Called only through :func:`zmirror.tap.makeService`, the one wiring point
shared by the twistd plugin and ``zmirror.tac``.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from zmirror import auth
from zmirror.accesslog import BatchedAccessLog
from zmirror.admin import AdminAPI
from zmirror.app import ZMirrorApp
from zmirror.cache.build import CacheParts, build_cache
from zmirror.config import Config
from zmirror.db.engine import connect_config, migrate_config, open_database
from zmirror.db.accesslogs import AccessLogStore, RetentionService
from zmirror.db.registries import RegistryStore
from zmirror.metrics import Metrics
from zmirror.net import TrustedProxies, base_url
from zmirror.nodes import NodeHeartbeat, endpoint_address
from zmirror.ops import instrument
from zmirror.registry.routing import RoutingTable
from zmirror.registry.proxy import Proxy
from zmirror.registry.routes import RegistryRoutes
from zmirror.upstream.build import build_upstreams
from zmirror.service import (CallbackService, DatabaseService, DrainService, InflightTracker,
                             LimitedSite)

log = Logger()


def build(config: Config, reactor: Any) -> dict:
    migrate_config(config)
    db = open_database(config, reactor)
    bus = _bus(config, db, reactor)
    trusted = TrustedProxies(config.server.trusted_proxies)

    metrics = Metrics()
    upstream_parts = build_upstreams(config, reactor, bus=bus, db=db, metrics=metrics)
    upstreams = upstream_parts.pool
    upstreams.set_registries(_registry_rows(config))
    cache = build_cache(config, db, reactor, bus=bus)  # None: [cache] enabled = false
    blob_cache = cache.blobs if cache is not None else None
    manifest_cache = cache.manifests if cache is not None else None
    cache_db = cache.index_db if cache is not None else db  # the node's own blob index
    proxy = Proxy(upstreams, reactor, idle_timeout=config.upstream.idle_timeout,
                  blobs=blob_cache, manifests=manifest_cache,
                  resume_attempts=config.upstream.resume_attempts,
                  resume_deadline=config.upstream.resume_deadline)
    # admin changes to registries reach the proxy core's in-memory list at once
    registries = RegistryStore(db, reactor)
    registries.subscribe(upstreams.set_registries)
    # access log: batched writer (queue → one transaction per batch) and queries
    accesslog = BatchedAccessLog(db, reactor, node=config.server.node)
    accesslogs = AccessLogStore(db, reactor)

    access = auth.build(config, db, reactor, trusted=trusted, bus=bus)

    # path prefix | ?ns= | Host → (namespace, repository); the namespaces are the registries'
    routing = RoutingTable(lambda: upstreams.namespaces, dict(config.routing.hosts))
    registry = RegistryRoutes(
        proxy,
        policy=access.policy,
        accesslog=accesslog,
        clock=reactor,
        trusted=trusted,
        base_url=lambda request: base_url(request, trusted, config.server.external_url),
        routing=routing,
    )
    # token requests go to the same access log as pulls
    access.token_service.accesslog = registry.accesslog
    admin = AdminAPI(
        config,
        clock=reactor,
        registries=registries,
        accesslogs=accesslogs,
        users=access.users,
        whitelists=access.whitelists,
        whitelist=access.whitelist,
        accounts=access.accounts,
        lockout=access.lockout,
        upstreams=upstreams,
        passwords=access.passwords,
        trusted=trusted,
        accesslog=accesslog,
        cache=blob_cache,
        manifest_cache=manifest_cache,
    )
    # this node's row in cluster_nodes (GET /api/nodes): a heartbeat every 10 s
    nodes = NodeHeartbeat(db, reactor, node=config.server.node, bus=bus, cache=blob_cache,
                          address=endpoint_address(config.listen_endpoint()))
    admin.nodes = nodes
    app = ZMirrorApp(registry, token=access.token_service, admin=admin.resource(),
                     ui=_ui_resource())
    root = InflightTracker(app.resource())
    # PlainHTTPChannel (TLS probe answer, body limits, read deadline, header limits) and
    # LimitedRequest (body refusals, reason phrases); at most max_connections open
    site = LimitedSite(root, reactor=reactor, max_connections=config.server.max_connections,
                       read_timeout=config.server.read_timeout)
    site.displayTracebacks = False
    # Services stop in reverse order: the access-log queue is written before the
    # DatabaseService closes the pools.
    services = [
        DatabaseService(db),
        *([DatabaseService(cache_db)] if cache_db is not db else []),
        *_cache_services(cache),
        CallbackService(stop=accesslog.stop),
        *_bus_services(bus, upstream_parts.sharing),
        RetentionService(accesslogs, reactor, config.log.retention_days, config.log.max_rows),
        nodes,
        *access.services,
        DrainService(root, reactor),
    ]
    # health, metrics and /metrics (zmirror.ops.instrument)
    components = instrument(config, reactor, {
        "config": config,
        "db": db,
        "cache_db": cache_db,
        "bus": bus,
        "app": app,
        "site": site,
        "root": root,
        "services": services,
        "upstreams": upstreams,
        "upstream_sharing": upstream_parts.sharing,
        "metrics": metrics,
        "routing": routing,
        "proxy": proxy,
        "blob_cache": blob_cache,
        "manifest_cache": manifest_cache,
        "registries": registries,
        "accesslog": accesslog,
        "accesslogs": accesslogs,
        "admin": admin,
        "nodes": nodes,
        "access": access,
        "users": access.users,
        "whitelists": access.whitelists,
        "lockout": access.lockout,
        "admin_credentials": access.admin_credentials,
    })
    metrics.gauge("zmirror_http_connections", "Open client connections",
                  lambda: site.open_connections)
    metrics.gauge("zmirror_http_connections_refused", "Client connections refused (503) "
                  "over [server] max_connections since start", lambda: site.refused_connections)
    return components


def _bus(config: Config, db: Any, reactor: Any):
    """What this node tells the others (:mod:`zmirror.cluster`): nobody on SQLite;
    on PostgreSQL the other nodes of the database (LISTEN/NOTIFY,
    :class:`~zmirror.db.listen.PostgresBus`)."""
    if getattr(db, "dialect", "sqlite") == "postgresql":
        from zmirror.db.listen import PostgresBus

        return PostgresBus(db.url, db, reactor)
    from zmirror.cluster import LocalBus

    return LocalBus()


def _bus_services(bus: Any, sharing: Any) -> list:
    """After the pools start (before they close): the bus (a service on PostgreSQL),
    then the upstream state kept in ``upstream_state`` (loaded at start) by
    ``sharing`` (a :class:`~zmirror.upstream.shared.HealthSharing`, or None)."""
    from twisted.application.service import IService

    out = [bus] if IService.providedBy(bus) else []
    if sharing is not None:
        out.append(CallbackService(start=sharing.load, stop=sharing.stop))
    return out


def _cache_services(cache: CacheParts | None) -> list:
    """Load the cache indexes after the pools start (retried until they load);
    write access times every 30 s (a failed write is retried, backing off) and
    at shutdown, then join the transfer threads."""
    if cache is None:
        return []
    return [CallbackService(start=cache.upkeep.start, stop=cache.upkeep.stop)]


def _registry_rows(config: Config) -> list[dict]:
    """Registry rows read once at start (before the reactor runs)."""
    conn = connect_config(config)
    try:
        cur = conn.execute("SELECT * FROM registries ORDER BY priority, id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        conn.close()


def _ui_resource():
    from zmirror.ui import ui_resource

    return ui_resource()
