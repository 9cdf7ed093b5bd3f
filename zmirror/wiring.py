"""The one wiring point: builds the object graph from a validated
:class:`~zmirror.config.Config` into :class:`Components`.

Every object gets its collaborators in its constructor; the order of the build
and the reasons for it are in docs/design/wiring.md.  Called by
:func:`zmirror.tap.makeService` (the twistd plugin and ``zmirror.tac``) and by
the tests that need the whole graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from twisted.application.service import IService

from zmirror.accesslog import BatchedAccessLog
from zmirror.admin.api import AdminAPI
from zmirror.admin.build import build_admin
from zmirror.admin.validate import MAX_BODY as API_MAX_BODY, ApiError
from zmirror.app import ZMirrorApp
from zmirror.auth.adminaccount import AdminAccount
from zmirror.auth.adminsecret import ClusterAdminPassword
from zmirror.auth.build import AccessControl, build_access
from zmirror.auth.imagepolicy import ImagePolicy
from zmirror.auth.tokenservice import MAX_BODY as TOKEN_MAX_BODY, TokenError
from zmirror.bodylimits import Area, BodyLimits
from zmirror.cache.blobs import CacheBlobs
from zmirror.cache.build import build_cache
from zmirror.cache.manifests import ManifestCache
from zmirror.cache.purge import CachePurge
from zmirror.cache.view import CacheView, node_figures
from zmirror.cluster import LocalBus
from zmirror.config import Config
from zmirror.db.engine import connect_config, migrate_config, open_database
from zmirror.db.policyrules import PolicyRuleStore
from zmirror.db.accesslogs import AccessLogStore, RetentionService
from zmirror.db.auditlog import AuditRetentionService, AuditStore
from zmirror.db.registries import RegistryStore
from zmirror.db.retention import RetentionStore
from zmirror.db.syncjobs import SyncJobStore
from zmirror.db.watch import ChangeWatcher
from zmirror.dbwatch import DatabaseWatchService, TableChanges
from zmirror.health import HealthChecks
from zmirror.httpchannel import LimitedSite
from zmirror.logs import LogControl
from zmirror.metrics import MeteredAccessLog, Metrics
from zmirror.metricsendpoint import MetricsEndpoint, metrics_listen_service
from zmirror.net import TrustedProxies, base_url
from zmirror.nodes import NodeHeartbeat, endpoint_address
from zmirror.registry.build import build_proxy
from zmirror.registry.proxy import Proxy
from zmirror.registry.routes import RegistryRoutes, channel_error
from zmirror.registry.routing import RoutingTable
from zmirror.reload import LiveSettings, Reloader, SighupService, Stores
from zmirror.service import CallbackService, DatabaseService, DrainService, InflightTracker
from zmirror.sync.front import FrontBlobs
from zmirror.sync.service import LocalBlobs, SyncService
from zmirror.upstream.build import Upstreams, build_upstreams
from zmirror.upstream.pool import UpstreamPool
from zmirror.upstream.shared import HealthSharing
from zmirror.upstream.warmup import UpstreamWarmup

# health checks and scrapes: no access-log line while they succeed
QUIET_PATHS = (b"/healthz", b"/readyz", b"/metrics")


@dataclass(frozen=True)
class Components:
    """Everything :func:`build` made, for the top service, the tests and the tac."""

    config: Config
    db: Any  # zmirror.db.sqlite.Database or zmirror.db.postgresql.PostgresDatabase
    index_db: Any  # the blob cache's index: ``db`` on SQLite, a local file on PostgreSQL
    bus: Any  # zmirror.cluster.IBus: a LocalBus alone, a PostgresBus on PostgreSQL
    trusted: TrustedProxies
    metrics: Metrics
    upstreams: UpstreamPool
    upstream_sharing: Optional[HealthSharing]  # None without a bus
    blob_cache: Optional[CacheBlobs]
    manifest_cache: Optional[ManifestCache]
    proxy: Proxy
    registries: RegistryStore
    accesslog: BatchedAccessLog  # the writer; requests reach it through MeteredAccessLog
    accesslogs: AccessLogStore
    access: AccessControl
    routing: RoutingTable
    routes: RegistryRoutes
    nodes: NodeHeartbeat
    sync: Optional[SyncService]  # the sync jobs' scheduler; None without a blob cache
    cluster_admin_password: Optional[ClusterAdminPassword]  # PostgreSQL only
    admin: AdminAPI
    health: HealthChecks
    metrics_endpoint: MetricsEndpoint
    app: ZMirrorApp
    root: InflightTracker
    site: LimitedSite
    log_control: LogControl
    reloader: Reloader
    table_changes: Optional[TableChanges]  # PostgreSQL: the bus's table changes
    db_watch: Optional[DatabaseWatchService]  # SQLite: the poll for other processes' changes
    services: tuple  # start before the port opens, stop (in reverse) after it closed
    reload_services: tuple  # SIGHUP and the database watch: after the port, stop first


def build(config: Config, reactor: Any, *, listen: Optional[str] = None,
          ui: Any = None) -> Components:
    """The whole object graph.  ``listen``: the endpoint string the site will listen
    on (default from the config; shown in ``/api/nodes``); ``ui``: the web UI
    resource (default: the packaged one, if built)."""
    migrate_config(config)
    db = open_database(config, reactor)
    bus = _bus(db, reactor)
    trusted = TrustedProxies(config.server.trusted_proxies)
    metrics = Metrics()  # first: the parts below count into it
    # the image policy: what may be pulled at all (rules in policy_rules, followed in memory)
    image_policy = ImagePolicy(PolicyRuleStore(db, reactor), metrics=metrics)
    pull = _pull_path(config, reactor, db, bus, metrics, image_policy)
    # access log: batched writer (queue → one transaction per batch), counted on the way
    accesslog = BatchedAccessLog(db, reactor, node=config.server.node)
    metered = MeteredAccessLog(accesslog, metrics)
    access = build_access(config, db, reactor, trusted=trusted, bus=bus, accesslog=metered,
                          metrics=metrics, image_policy=image_policy)
    # path prefix | ?ns= | Host → (namespace, repository); the namespaces are the registries'
    routing = RoutingTable(lambda: pull.upstreams.pool.namespaces, dict(config.routing.hosts))
    routes = RegistryRoutes(
        pull.proxy, policy=access.policy, accesslog=metered, clock=reactor, trusted=trusted,
        base_url=lambda request: base_url(request, trusted, config.server.external_url),
        routing=routing)
    # this node's row in cluster_nodes (GET /api/nodes, /api/cache/stats): a heartbeat every 10 s
    nodes = NodeHeartbeat(db, reactor, node=config.server.node, bus=bus, cache=pull.cache.blobs,
                          address=endpoint_address(listen or config.listen_endpoint()),
                          figures=lambda: node_figures(pull.cache.blobs, pull.cache.manifests))
    cluster_password = _cluster_admin_password(config, db, bus, reactor, access)
    accesslogs = AccessLogStore(db, reactor)
    audit = AuditStore(db, reactor, node=config.server.node)
    sync_jobs = SyncJobStore(db, reactor)
    sync = _sync(config, reactor, db, pull, sync_jobs, access)
    admin = build_admin(config, clock=reactor, trusted=trusted, access=access,
                        registries=pull.registries, accesslogs=accesslogs,
                        upstreams=pull.upstreams.pool, accesslog=accesslog, cache=pull.cache.blobs,
                        manifest_cache=pull.cache.manifests, nodes=nodes,
                        cluster_password=cluster_password, cache_purge=pull.cache.purge,
                        cache_view=pull.cache.view, sync_jobs=sync_jobs, sync=sync,
                        retention_store=pull.cache.retention_store, retention=pull.cache.retention,
                        audit=audit)
    account = admin.account
    web = _web(config, reactor, db, bus, metrics, pull.upstreams.pool, routes, access, admin,
               account, trusted, ui)
    _observe(metrics, reactor, db, bus, pull, accesslog, access, web)
    log_control = LogControl.from_config(config)
    reloader = _reloader(config, pull, access, LiveSettings(
        trusted=trusted, routing=routing, policy=access.policy, log_control=log_control,
        lockout=access.lockout, metrics_endpoint=web.metrics_endpoint, account=account,
        cluster_password=cluster_password))
    table_changes, db_watch = _database_changes(db, bus, reloader, reactor)
    return Components(
        config=config, db=db, index_db=pull.cache.index_db, bus=bus, trusted=trusted,
        metrics=metrics, upstreams=pull.upstreams.pool, upstream_sharing=pull.upstreams.sharing,
        blob_cache=pull.cache.blobs, manifest_cache=pull.cache.manifests, proxy=pull.proxy,
        registries=pull.registries,
        accesslog=accesslog, accesslogs=accesslogs, access=access, routing=routing,
        routes=routes, nodes=nodes, sync=sync, cluster_admin_password=cluster_password,
        admin=admin,
        health=web.health, metrics_endpoint=web.metrics_endpoint, app=web.app, root=web.root,
        site=web.site, log_control=log_control, reloader=reloader, table_changes=table_changes,
        db_watch=db_watch,
        services=_services(config, reactor, db, bus, pull, accesslog, accesslogs, nodes, access,
                           web.root, metrics, sync, audit),
        reload_services=(SighupService(reloader, reactor),
                         *([db_watch] if db_watch is not None else [])))


def body_limits() -> BodyLimits:
    """The request bodies the HTTP channel takes, and each area's error format:
    /v2 none (the registry format), /token a form of at most 8 KiB (the token
    format), /api JSON of at most 64 KiB (the admin API's format); nothing elsewhere."""
    return BodyLimits([
        Area("v2", b"/v2", 0, channel_error, subtree=True,
             method_refusal="this is a pull-only proxy"),
        Area("token", b"/token", TOKEN_MAX_BODY, _token_error),
        Area("api", b"/api", API_MAX_BODY, _api_error, subtree=True),
    ])


def _token_error(status: int, message: str):
    return json.dumps(TokenError(status, "invalid_request", message).body()).encode(), []


def _api_error(status: int, message: str):
    return json.dumps(ApiError(status, message).body()).encode(), []


# --- the parts --------------------------------------------------------------------------


def _bus(db: Any, reactor: Any):
    """What this node tells the others (:mod:`zmirror.cluster`): nobody on SQLite;
    on PostgreSQL the other nodes of the database (LISTEN/NOTIFY,
    :class:`~zmirror.db.listen.PostgresBus`)."""
    if db.dialect == "postgresql":
        from zmirror.db.listen import PostgresBus

        return PostgresBus(db.url, db, reactor)
    return LocalBus()


def _cluster_bus(db: Any, bus: Any):
    """The bus when there are other nodes (PostgreSQL), else None."""
    return bus if db.dialect == "postgresql" else None


def _registry_rows(config: Config) -> list[dict]:
    """Registry rows read once at start (before the reactor runs)."""
    conn = connect_config(config)
    try:
        cur = conn.execute("SELECT * FROM registries ORDER BY priority, id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        conn.close()


class _Cache(NamedTuple):
    blobs: Optional[CacheBlobs]  # None: [cache] enabled = false
    manifests: Optional[ManifestCache]
    index_db: Any  # the node's own blob index: db on SQLite, a local file on PostgreSQL
    services: list
    retention_store: Any  # rules and pins (main database), also without a cache
    retention: Any  # the RetentionPass, None without a cache
    purge: Optional[CachePurge] = None  # purge / invalidate on every node
    view: Optional[CacheView] = None  # what GET /api/cache/namespaces|images|tags|stats read


class _PullPath(NamedTuple):
    upstreams: Upstreams
    cache: _Cache
    proxy: Proxy
    registries: RegistryStore
    warmup: UpstreamWarmup  # a pooled connection to each upstream once the services run


def _cache(config: Config, db: Any, reactor: Any, bus: Any) -> _Cache:
    """The pull-through caches (:func:`~zmirror.cache.build.build_cache`) and the
    service that loads their indexes after the pools start and writes access times
    (every 30 s and at shutdown), then joins the transfer threads."""
    retention_store = RetentionStore(db, reactor)
    parts = build_cache(config, db, reactor, bus=bus, retention_store=retention_store)
    if parts is None:
        return _Cache(None, None, db, [], retention_store, None)
    upkeep = parts.upkeep
    node = config.server.node
    # applies purges made on other nodes (the bus) or by the CLI (a poll of cache_purges)
    purge = CachePurge(db, reactor, blobs=parts.blobs, manifests=parts.manifests, bus=bus, node=node)
    view = CacheView(db, reactor, blobs=parts.blobs, manifests=parts.manifests, node=node)
    return _Cache(parts.blobs, parts.manifests, parts.index_db,
                  [CallbackService(start=upkeep.start, stop=upkeep.stop),
                   CallbackService(start=purge.start, stop=purge.stop)], retention_store,
                  parts.retention, purge, view)


def _pull_path(config: Config, reactor: Any, db: Any, bus: Any, metrics: Metrics,
               image_policy: Any = None) -> _PullPath:
    """The upstreams, the caches and the proxy core over them; the registries store
    whose changes (admin API) reach the upstream list at once."""
    upstreams = build_upstreams(config, reactor, bus=bus, db=db, metrics=metrics)
    upstreams.pool.set_registries(_registry_rows(config))
    cache = _cache(config, db, reactor, bus)
    proxy = build_proxy(upstreams.pool, reactor, blobs=cache.blobs, manifests=cache.manifests,
                        idle_timeout=config.upstream.idle_timeout,
                        resume_attempts=config.upstream.resume_attempts,
                        resume_deadline=config.upstream.resume_deadline,
                        image_policy=image_policy)
    registries = RegistryStore(db, reactor)
    registries.subscribe(upstreams.pool.set_registries)
    warmup = UpstreamWarmup(upstreams.pool)
    registries.subscribe(warmup.registries_changed)  # after the pool has the new list
    return _PullPath(upstreams, cache, proxy, registries, warmup)


def _sync(config: Config, reactor: Any, db: Any, pull: _PullPath, store: SyncJobStore,
          access: AccessControl) -> Optional[SyncService]:
    """The sync jobs' scheduler over the proxy's sources (docs/design/sync.md); a node
    without a blob cache runs none (its API queues runs for the others).  In a cluster
    with an external URL (nginx) blobs are fetched through it, so each lands on its
    home node; otherwise into this node's cache."""
    if pull.cache.blobs is None:
        return None
    proxy = pull.proxy
    blobs: Any = LocalBlobs(proxy.blob_source, reactor)
    if config.server.external_url and db.dialect == "postgresql":
        import treq
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=True)))
        blobs = FrontBlobs(http, config.server.external_url, access.tokens, blobs, collect=treq.collect,
                           timeout=config.upstream.idle_timeout)
    return SyncService(store, manifests=proxy.manifest_source, tags=proxy.tag_source, blobs=blobs,
                       clock=reactor, node=config.server.node)


def _cluster_admin_password(config: Config, db: Any, bus: Any, reactor: Any,
                            access: AccessControl) -> Optional[ClusterAdminPassword]:
    """PostgreSQL: the admin password is the cluster's (zmirror.auth.adminsecret),
    read before the port opens, then on the bus's events, its RESYNC and SIGHUP."""
    if db.dialect != "postgresql":
        return None
    secret = ClusterAdminPassword(db, bus, reactor, passwords=access.passwords)
    secret.load_config(config)
    return secret


class _Web(NamedTuple):
    health: HealthChecks
    metrics_endpoint: MetricsEndpoint
    app: ZMirrorApp
    root: InflightTracker
    site: LimitedSite


def _web(config: Config, reactor: Any, db: Any, bus: Any, metrics: Metrics,
         upstreams: UpstreamPool, routes: RegistryRoutes, access: AccessControl, admin: AdminAPI,
         account: AdminAccount, trusted: TrustedProxies, ui: Any) -> _Web:
    """The HTTP surface: /v2, /token, /api, /healthz, /readyz, /metrics and the UI in
    one app, its requests counted in flight, served by the limited site."""
    health = HealthChecks(db, upstreams, reactor, bus=_cluster_bus(db, bus))
    endpoint = MetricsEndpoint(metrics, config.metrics.access, account=account, trusted=trusted)
    app = ZMirrorApp(routes, token=access.token_service, admin=admin.resource(),
                     ui=ui if ui is not None else _ui_resource(),
                     extra={"healthz": health.healthz, "readyz": health.readyz,
                            "metrics": endpoint})
    root = InflightTracker(app.resource())
    site = LimitedSite(root, reactor=reactor, limits=body_limits(),
                       max_connections=config.server.max_connections,
                       read_timeout=config.server.read_timeout, quiet_paths=QUIET_PATHS)
    return _Web(health, endpoint, app, root, site)


def _observe(metrics: Metrics, reactor: Any, db: Any, bus: Any, pull: _PullPath,
             accesslog: Any, access: AccessControl, web: _Web) -> None:
    """The gauges and collectors ``metrics`` reads at scrape time."""
    upstreams, site = pull.upstreams.pool, web.site
    metrics.watch_upstreams(upstreams)
    metrics.watch_namespaces(upstreams)
    metrics.watch_accesslog(accesslog)
    metrics.watch_inflight(web.root)
    metrics.watch_cache(pull.cache.blobs)
    if pull.cache.blobs is not None:
        metrics.watch_cache_figures(pull.cache.view.node,
                                    lambda: node_figures(pull.cache.blobs, pull.cache.manifests))
    # PostgreSQL: the cluster bus, the shared lockout and upstream health (zmirror_cluster_*);
    # a node alone (SQLite, LocalBus) has none of them
    if _cluster_bus(db, bus) is not None:
        metrics.watch_cluster(bus, access.lockout_sync, pull.upstreams.sharing, reactor)
    metrics.gauge("zmirror_http_connections", "Open client connections",
                  lambda: site.open_connections)
    metrics.gauge("zmirror_http_connections_refused", "Client connections refused (503) "
                  "over [server] max_connections since start", lambda: site.refused_connections)


def _services(config: Config, reactor: Any, db: Any, bus: Any, pull: _PullPath,
              accesslog: Any, accesslogs: AccessLogStore, nodes: NodeHeartbeat,
              access: AccessControl, root: InflightTracker, metrics: Metrics,
              sync: Optional[SyncService], audit: AuditStore) -> tuple:
    """The services in start order; they stop in reverse: the access-log queue is
    written before the DatabaseService closes the pools."""
    index_db, sharing = pull.cache.index_db, pull.upstreams.sharing
    return (
        DatabaseService(db),
        *([DatabaseService(index_db)] if index_db is not db else []),
        *pull.cache.services,
        CallbackService(stop=accesslog.stop),
        # after the pools start (before they close): the bus (a service on PostgreSQL),
        # then the upstream state kept in upstream_state (loaded at start)
        *([bus] if IService.providedBy(bus) else []),
        *([CallbackService(start=sharing.load, stop=sharing.stop)] if sharing is not None else []),
        RetentionService(accesslogs, reactor, config.log.retention_days, config.log.max_rows),
        AuditRetentionService(audit, reactor, config.log.retention_days),
        CallbackService(start=pull.warmup.start, stop=pull.warmup.stop),
        nodes,
        *access.services,
        *([sync] if sync is not None else []),
        DrainService(root, reactor),
        # [metrics] listen: a separate endpoint that serves only /metrics
        *([metrics_listen_service(config.metrics.listen, metrics, reactor)]
          if config.metrics.listen else []),
    )


def _reloader(config: Config, pull: _PullPath, access: AccessControl,
              live: LiveSettings) -> Reloader:
    """SIGHUP and database changes: the live settings of a re-read config.toml and
    the stores re-read from the database (users, whitelists, registries, policy rules)."""
    stores = Stores(users=access.users, whitelists=access.whitelists, registries=pull.registries,
                    policy_rules=access.policy.image_policy.store)
    return Reloader(config, stores, live)


def _database_changes(db: Any, bus: Any, reloader: Reloader, reactor: Any):
    """``(table_changes, db_watch)``: what re-reads the stores when another process
    changes them.  PostgreSQL: the triggers NOTIFY, the bus LISTENs; SQLite: a poll."""
    if db.dialect == "postgresql":
        changes = TableChanges(reloader)
        bus.on_tables(changes.changed)
        return changes, None
    return None, DatabaseWatchService(ChangeWatcher.for_database(db), reloader, reactor)


def _ui_resource():
    from zmirror.ui import ui_resource

    return ui_resource()


__all__ = ["QUIET_PATHS", "Components", "body_limits", "build"]
