"""Builds the object graph from a validated :class:`~zmirror.config.Config`.

Called only through :func:`zmirror.tap.makeService`, the one wiring point
shared by the twistd plugin and ``zmirror.tac``.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.client import Agent

from zmirror import auth
from zmirror.accesslog import BatchedAccessLog
from zmirror.admin.api import AdminAPI
from zmirror.app import ZMirrorApp
from zmirror.auth.adminaccount import AdminAccount
from zmirror.cache import CacheBlobs, ManifestCache
from zmirror.cache.blobs import CacheDirLock
from zmirror.cache.index import open_cache_index
from zmirror.config import Config
from zmirror.db import connect_config, migrate_config, open_database
from zmirror.db.accesslogs import AccessLogStore, RetentionService
from zmirror.db.registries import RegistryStore
from zmirror.net import TrustedProxies, base_url
from zmirror.nodes import NodeHeartbeat, endpoint_address
from zmirror.ops import instrument
from zmirror.registry.routing import RoutingTable
from zmirror.registry.proxy import Proxy
from zmirror.registry.routes import RegistryRoutes
from zmirror.upstream.client import QuietConnectionPool, UpstreamPool
from zmirror.service import (CallbackService, DatabaseService, DrainService, InflightTracker,
                             LimitedSite)

log = Logger()


def build(config: Config, reactor: Any) -> dict:
    migrate_config(config)
    db = open_database(config, reactor)
    bus = _bus(config, db, reactor)
    trusted = TrustedProxies(config.server.trusted_proxies)

    upstreams = _upstream_pool(config, reactor, bus, db)
    upstreams.set_registries(_registry_rows(config))
    blob_cache = manifest_cache = None
    cache_db = db  # the node's own blob index: db on SQLite, a local file on PostgreSQL
    if config.cache.enabled:
        dir_lock = CacheDirLock.take(config.cache_dir)  # one process per [cache] dir, or exit
        cache_db = open_cache_index(config, db, reactor)
        blob_cache = CacheBlobs(config.cache_dir, cache_db, reactor, max_size=config.cache.max_size,
                                idle_timeout=config.upstream.idle_timeout,
                                transfer_threads=config.cache.transfer_threads,
                                max_temp_bytes=config.cache.max_temp_size,
                                max_orphans=config.cache.max_orphans,
                                max_orphan_bytes=config.cache.max_orphan_size,
                                dir_lock=dir_lock)
        # no files: in the main database, shared by every node on PostgreSQL
        manifest_cache = ManifestCache(db, reactor, ttl=config.cache.manifest_ttl,
                                       tag_limit=config.cache.manifest_tags_in_memory, bus=bus)
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
    # this node's row in cluster_nodes (GET /api/nodes): a heartbeat every 10 s
    nodes = NodeHeartbeat(db, reactor, node=config.server.node, bus=bus, cache=blob_cache,
                          address=endpoint_address(config.listen_endpoint()))
    cluster_password = _cluster_admin_password(config, db, bus, reactor, access.passwords)
    account = AdminAccount(config.admin, config_path=config.config_path, data_dir=config.data_dir,
                           passwords=access.passwords, lockout=access.lockout, users=access.users,
                           cluster_password=cluster_password)
    admin = AdminAPI(
        account=account,
        trusted=trusted,
        clock=reactor,
        registries=registries,
        accesslogs=accesslogs,
        users=access.users,
        whitelists=access.whitelists,
        whitelist=access.whitelist,
        accounts=access.accounts,
        policy=access.policy,
        node=config.server.node,
        upstreams=upstreams,
        accesslog=accesslog,
        cache=blob_cache,
        manifest_cache=manifest_cache,
        nodes=nodes,
    )
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
        *_cache_services(blob_cache, manifest_cache, reactor),
        CallbackService(stop=accesslog.stop),
        *_bus_services(bus, upstreams),
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
        "routing": routing,
        "proxy": proxy,
        "blob_cache": blob_cache,
        "manifest_cache": manifest_cache,
        "registries": registries,
        "accesslog": accesslog,
        "accesslogs": accesslogs,
        "admin": admin,
        "admin_account": account,
        **({"admin_password": cluster_password} if cluster_password is not None else {}),
        "nodes": nodes,
        "access": access,
        "users": access.users,
        "whitelists": access.whitelists,
        "lockout": access.lockout,
        "admin_credentials": access.admin_credentials,
    })
    metrics = components.get("metrics")
    if metrics is not None:
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


def _cluster_admin_password(config: Config, db: Any, bus: Any, reactor: Any, passwords: Any):
    """PostgreSQL: the cluster's admin password (:mod:`zmirror.auth.adminsecret`), read
    before the port opens, then on the bus's events, its RESYNC and SIGHUP; None on SQLite."""
    if getattr(db, "dialect", "sqlite") != "postgresql":
        return None
    from zmirror.auth.adminsecret import ClusterAdminPassword

    secret = ClusterAdminPassword(db, bus, reactor, passwords=passwords)
    secret.load_config(config)
    return secret


def _bus_services(bus: Any, upstreams: UpstreamPool) -> list:
    """After the pools start (before they close): the bus (a service on PostgreSQL),
    then the upstream state kept in ``upstream_state`` (loaded at start)."""
    from twisted.application.service import IService

    out = [bus] if IService.providedBy(bus) else []
    sharing = upstreams.sharing
    if sharing is not None:
        out.append(CallbackService(start=sharing.load, stop=sharing.stop))
    return out


def _cache_services(blobs, manifests, reactor) -> list:
    """Load the cache indexes after the pools start (retried until they load);
    write access times every 30 s (a failed write is retried, backing off) and
    at shutdown, then join the transfer threads."""
    if blobs is None:
        return []
    from zmirror.cache.blobs import CacheUpkeep

    upkeep = CacheUpkeep(blobs, manifests, reactor)
    return [CallbackService(start=upkeep.start, stop=upkeep.stop)]


def _upstream_pool(config: Config, reactor: Any, bus: Any = None, db: Any = None) -> UpstreamPool:
    """The HTTP agent for upstreams: persistent connections, connect timeout; the
    health memory shared over ``bus`` and kept in ``db``'s upstream_state.

    A plain ``Agent`` (not treq's HTTPClient, which adds gzip decoding): the
    bytes relayed must be exactly the upstream's, digests included.
    """
    pool = QuietConnectionPool(reactor, persistent=True)  # no log lines per connection
    pool.maxPersistentPerHost = 16
    pool.cachedConnectionTimeout = 120
    agent = Agent(reactor, pool=pool, connectTimeout=config.upstream.connect_timeout)
    return UpstreamPool(agent, reactor, header_timeout=config.upstream.connect_timeout,
                        cooldown=config.upstream.cooldown, connections=pool, bus=bus, db=db)


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
