"""Operations glue used by :func:`zmirror.tap.makeService`: log setup and SIGHUP reload.

**Logs.**  twistd installs its log observer *after* ``makeService`` returns:
``AppLogger.start`` uses, in order, a ``--logger`` factory, an
``ILogObserver`` component on the application, or its own (``--logfile``,
``--syslog``).  :class:`ZMirrorService` puts ZMirror's observer (``[log]``
format and level, secret redaction) on the application as that component
when it is added to it, so no global state is touched at import or in tests.
What it writes to follows twistd's options: stdout when running in the
foreground without ``--logfile`` (Docker, systemd), else the ``--logfile``
(default ``twistd.log``), like twistd itself.  With ``--logger`` or
``--syslog`` twistd's choice is left alone.

**Reload.**  :class:`Reloader` re-reads config.toml and applies what can change
live: ``[access] anonymous``, ``[log] level``, ``[server] trusted_proxies``, ``[routing] hosts``,
``[metrics] access``, the ``[admin]`` password and the ``[lockout]`` thresholds.  Everything else is logged
as "needs a restart".  It also re-reads users, whitelist and registries from
the database (changed by the ``zmirror`` CLI while the server runs); between
SIGHUPs, :class:`DatabaseWatchService` notices such changes within 2 s and
re-reads the changed stores the same way (SQLite); on PostgreSQL the bus
(LISTEN/NOTIFY, :class:`TableChanges`) does, for changes made by other nodes
too.  :class:`SighupService` installs the SIGHUP handler
when the service starts in the main thread (that is, under twistd) and
restores the previous handler when it stops; nothing is installed at import.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from zmirror.logs import LogControl
from zmirror.service import SequentialMultiService

log = Logger()

# database tables behind the in-memory stores (components of the same names)
STORE_TABLES = ("users", "whitelists", "registries")

# seconds between checks for database changes made by other processes (the CLI)
DB_POLL_INTERVAL = 2.0

# settings that apply without a restart (section.key)
LIVE = ("access.anonymous", "log.level", "server.trusted_proxies", "metrics.access",
        "admin.password", "lockout.max_account_failures", "lockout.max_ip_failures",
        "lockout.window", "lockout.cooldown", "routing.hosts")



class ZMirrorService(SequentialMultiService):
    """The top service; gives the twistd application ZMirror's log observer."""

    log_observer: Optional[Any] = None

    def setServiceParent(self, parent):
        if (self.log_observer is not None and isinstance(parent, Componentized)
                and parent.getComponent(ILogObserver, None) is None):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)


def log_stream(options: Any):
    """Where ZMirror's observer writes, from twistd's options (``options.parent``).

    Returns a writable stream, or None to leave twistd's observer in place.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return sys.stdout  # zmirror.tac / embedding: stdout
    try:
        if parent.get("logger") or parent.get("syslog"):
            return None
        logfile = parent.get("logfile")
        nodaemon = parent.get("nodaemon")
    except Exception:
        return None
    if nodaemon and (not logfile or logfile == "-"):
        return sys.stdout
    if logfile == "-":
        return None  # twistd refuses this for daemons itself
    from twisted.python.logfile import LogFile

    return LogFile.fromFullPath(logfile or "twistd.log")


def setup_logging(top: ZMirrorService, options: Any, config: Any) -> LogControl:
    control = LogControl.from_config(config)
    parent = getattr(options, "parent", None)
    if parent is None and config.log.format == "text" and config.log.level == "info":
        # zmirror.tac with the defaults: keep twistd's own observer (honours --logfile)
        return control
    stream = log_stream(options)
    if stream is not None:
        top.log_observer = control.observer(stream)
    return control


class Reloader:
    """Re-reads config.toml and applies the live settings to the components."""

    def __init__(self, config: Any, components: dict, log_control: Optional[LogControl] = None,
                 load: Optional[Callable[[], Any]] = None):
        self._config = config
        self.components = components
        self.log_control = log_control
        self._load = load or self._default_load
        self.reloads = 0

    @property
    def config(self) -> Any:
        """The configuration in force: the one last applied, with ``[admin]`` as the
        admin account has it now (its password may have been changed through the API)."""
        account = self.components.get("admin_account")
        if account is None:
            return self._config
        return _with_admin(self._config, account.settings)

    def _default_load(self):
        from zmirror.config import load_config

        return load_config(self.config.data_dir, self.config.config_path)

    def reload(self) -> bool:
        """Returns True when the new configuration was applied."""
        from zmirror.config import ConfigError

        try:
            new = self._load()
        except ConfigError as e:
            log.error("reload: {error}; keeping the running configuration", error=str(e))
            return False
        except Exception:
            log.failure("reload: cannot read the configuration; keeping the running one")
            return False
        self.apply(new)
        self.refresh_stores()
        secret = self.components.get("admin_password")
        if secret is not None:  # PostgreSQL: the cluster's admin password, re-read
            secret.refresh()
        return True

    def refresh_stores(self, tables: Optional[Any] = None, reason: str = "reload",
                       quiet: bool = False):
        """Re-read users, whitelist and registries from the database, for changes
        made outside the server (``zmirror user ...``, ``import-zmirror``): on
        SIGHUP (all three) and from :class:`DatabaseWatchService` (only the
        ``tables`` whose content changed).  Returns a Deferred (errors are
        logged, never raised)."""
        from twisted.internet.defer import Deferred

        c = self.components
        wanted = [t for t in STORE_TABLES if tables is None or t in tables]

        async def go():
            done = []
            for table in wanted:
                store = c.get(table)
                if store is None:
                    continue
                if table == "registries":
                    await store.publish()  # the proxy core's upstream list follows
                else:
                    # users: the in-memory auth rows; whitelists: the enabled rows go to
                    # the subscribed zmirror.auth.whitelist.Whitelist (a new matcher)
                    await store.load()
                done.append(table)
            if done:
                (log.debug if quiet else log.info)("{reason}: {tables} re-read from the database",
                                                   reason=reason, tables=", ".join(done))

        d = Deferred.fromCoroutine(go())
        d.addErrback(lambda f: log.failure("{reason}: re-reading the database failed", f,
                                           reason=reason))
        return d

    def apply(self, new: Any) -> None:
        old = self.config
        c = self.components
        trusted = c.get("trusted")
        if trusted is not None and hasattr(trusted, "reload"):
            trusted.reload(new.server.trusted_proxies)
        routing = c.get("routing")
        if routing is not None and hasattr(routing, "set_hosts"):
            routing.set_hosts(dict(new.routing.hosts))
        access = c.get("access")
        policy = getattr(access, "policy", None)
        if policy is not None and hasattr(policy, "reload"):
            policy.reload(new)
        if self.log_control is not None:
            self.log_control.reload(new)
        lockout = c.get("lockout")
        if lockout is not None and hasattr(lockout, "configure"):
            from zmirror.auth.lockout import settings

            lockout.configure(**settings(new.lockout))
        endpoint = c.get("metrics_endpoint")
        if endpoint is not None:
            endpoint.reload(new)
        account = c.get("admin_account")
        if account is not None:
            account.reload(new)
        changed = _changed(old, new)
        secret = c.get("admin_password")
        if "admin.password" in changed and getattr(secret, "value", None) is not None:
            log.warn("reload: [admin] password of config.toml changed, but the cluster's admin "
                     "password (database) takes precedence: change it with the web UI or "
                     "`zmirror admin-password`")
        live = [k for k in changed if k in LIVE]
        restart = [k for k in changed if k not in LIVE]
        if new.admin.username != old.admin.username:
            restart.append("admin.username")
        for w in new.warnings:
            log.warn("config: {w}", w=w)
        log.info("reload: configuration re-read; applied {live}{rest}",
                 live=", ".join(live) or "no changes",
                 rest=("; needs a restart: " + ", ".join(sorted(set(restart)))) if restart else "")
        # keep the username the running services were built with
        if new.admin.username != old.admin.username:
            new = dataclasses.replace(new, admin=dataclasses.replace(new.admin,
                                                                     username=old.admin.username))
        self._config = new
        self.reloads += 1


def _with_admin(config: Any, admin: Any) -> Any:
    import dataclasses

    try:
        return dataclasses.replace(config, admin=admin)
    except TypeError:
        return config


def _changed(old: Any, new: Any) -> list[str]:
    import dataclasses

    out = []
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if not dataclasses.is_dataclass(a):
            continue
        for g in dataclasses.fields(a):
            if getattr(a, g.name) != getattr(b, g.name):
                out.append(f"{f.name}.{g.name}")
    return out


class SighupService(Service):
    """SIGHUP → ``reloader.reload()`` in the reactor thread, while running."""

    def __init__(self, reloader: Reloader, reactor: Any):
        self.reloader = reloader
        self.reactor = reactor
        self._previous: Any = None
        self.installed = False

    def startService(self):
        super().startService()
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        self.installed = True

    def _on_signal(self, signum, frame):
        self.reactor.callFromThread(self.reloader.reload)

    def stopService(self):
        super().stopService()
        if self.installed:
            signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
            self.installed = False


class DatabaseWatchService(Service):
    """Every ``interval`` seconds (on ``clock``) asks a
    :class:`~zmirror.db.watch.ChangeWatcher` whether the users / whitelists /
    registries tables changed, and re-reads those stores with
    :meth:`Reloader.refresh_stores` (the SIGHUP path).  So a user disabled with
    the ``zmirror`` CLI loses its tokens within ``interval`` seconds.

    One check at a time (``LoopingCall`` waits for the returned Deferred); the
    first one runs at start and re-reads every store quietly.  Changes the server
    makes itself (admin API) are re-read too, which is harmless.  Stopping waits
    for a running check, then closes the watcher's connection.
    """

    def __init__(self, watcher: Any, reloader: Any, clock: Any, interval: float = DB_POLL_INTERVAL):
        self.watcher = watcher
        self.reloader = reloader
        self.clock = clock
        self.interval = interval
        self.polls = 0
        self._loop: Any = None
        self._pending: Any = None
        self._waiters: list = []
        self._failing = False

    def startService(self):
        super().startService()
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("database watch stopped", f))

    def poll(self):
        """One check (and re-read); a Deferred that never errbacks."""
        from twisted.internet.defer import Deferred

        outer: Deferred = Deferred()
        self._pending = outer

        def finished(_):
            outer.callback(None)  # the LoopingCall schedules the next check first,
            self._done()  # then wait() returns

        Deferred.fromCoroutine(self._poll()).addBoth(finished)
        return outer

    async def _poll(self) -> None:
        first = self.polls == 0
        self.polls += 1
        try:
            changed = await self.watcher.check()
        except Exception:
            if not self._failing:  # once until it works again, not every interval
                log.failure("database watch: checking for changes failed (retrying)")
            self._failing = True
            return
        self._failing = False
        if changed:
            await self.reloader.refresh_stores(changed, reason="database changed", quiet=first)

    def _done(self) -> None:
        self._pending = None
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(None)

    def wait(self):
        """A Deferred that fires when no check is running."""
        from twisted.internet.defer import Deferred, succeed

        if self._pending is None:
            return succeed(None)
        w: Deferred = Deferred()
        self._waiters.append(w)
        return w

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        d = self.wait()
        d.addCallback(lambda _: self.watcher.close())
        d.addErrback(lambda f: log.failure("database watch: closing failed", f))
        return d


class TableChanges:
    """The bus's table changes (PostgreSQL's LISTEN/NOTIFY,
    :class:`zmirror.db.listen.PostgresBus`) → :meth:`Reloader.refresh_stores`, the
    path of the SQLite watch and of SIGHUP.

    One refresh at a time: tables reported while one runs are re-read together
    after it, so an older read never lands after a newer one and a burst of
    changes costs a few refreshes.  The first one (the bus's resync when it first
    connects: every table) is logged quietly, like the SQLite watch's first check.
    """

    def __init__(self, reloader: Any):
        self.reloader = reloader
        self.refreshes = 0
        self._pending: set = set()
        self._running: Any = None

    def changed(self, tables: Any) -> None:
        from twisted.internet.defer import Deferred

        self._pending |= set(tables)
        if self._running is None:
            self._running = Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        try:
            while self._pending:
                tables, self._pending = self._pending, set()
                quiet = self.refreshes == 0
                self.refreshes += 1
                await self.reloader.refresh_stores(tables, reason="database changed", quiet=quiet)
        finally:
            self._running = None

    def wait(self):
        """A Deferred that fires when no refresh is running (tests)."""
        from twisted.internet.defer import succeed

        if self._running is None:
            return succeed(None)
        from twisted.internet.defer import Deferred

        d: Deferred = Deferred()
        self._running.addBoth(lambda r: (d.callback(None), r)[1])
        return d


def instrument(config: Any, reactor: Any, components: dict) -> dict:
    """Adds metrics, ``/healthz``, ``/readyz`` and ``/metrics`` to what
    :func:`zmirror.wiring.build` built (called at its end); returns ``components``.

    - one :class:`~zmirror.metrics.Metrics` (own CollectorRegistry) per build;
    - the registry routes' access log (also the token service's) is wrapped in
      :class:`~zmirror.metrics.MeteredAccessLog`: every finished request is
      counted where the access log learns its final status and bytes;
    - ``UpstreamPool.metrics``, ``AccessPolicy.metrics``, ``TokenService.metrics``;
    - ``[metrics] listen``: an extra listening service that serves only /metrics;
    - on PostgreSQL the ``zmirror_cluster_*`` series and ``/readyz``'s ``checks.bus``;
    - health and metrics requests are kept out of the HTTP access log lines.
    """
    from zmirror.health import HealthChecks
    from zmirror.metrics import MeteredAccessLog, Metrics, MetricsEndpoint, metrics_listen_service

    metrics = Metrics()
    app = components["app"]
    registry = app.registry
    upstreams = components.get("upstreams")
    if upstreams is not None:
        upstreams.metrics = metrics
        metrics.watch_upstreams(upstreams)
        metrics.watch_namespaces(upstreams)
    inner_log = registry.accesslog
    metered = MeteredAccessLog(inner_log, metrics)
    registry.accesslog = metered
    access = components.get("access")
    if access is not None:
        access.policy.metrics = metrics
        access.token_service.metrics = metrics
        access.token_service.accesslog = metered
    metrics.watch_accesslog(components.get("accesslog") or inner_log)
    if components.get("root") is not None:
        metrics.watch_inflight(components["root"])
    cache = components.get("blob_cache")
    if cache is None:
        cache = getattr(components.get("proxy"), "cache", None)
    metrics.watch_cache(cache)

    # PostgreSQL: the cluster bus, the shared lockout and upstream health (zmirror_cluster_*,
    # /readyz's checks.bus); a node alone (SQLite, LocalBus) has none of them
    bus = components.get("bus")
    if bus is None or getattr(components["db"], "dialect", "sqlite") == "sqlite":
        bus = None
    else:
        metrics.watch_cluster(bus, getattr(access, "lockout_sync", None),
                              getattr(upstreams, "sharing", None), reactor)
    health = HealthChecks(components["db"], upstreams, reactor, bus=bus)
    endpoint = MetricsEndpoint(metrics, config.metrics.access,
                               account=components.get("admin_account"), trusted=registry.trusted)
    app.extra.setdefault("healthz", health.healthz)
    app.extra.setdefault("readyz", health.readyz)
    app.extra.setdefault("metrics", endpoint)
    if config.metrics.listen:
        components["services"].append(metrics_listen_service(config.metrics.listen, metrics, reactor))
    site = components.get("site")
    if site is not None:
        _quiet_paths(site, (b"/healthz", b"/readyz", b"/metrics"))
    components.setdefault("trusted", registry.trusted)
    components.update(metrics=metrics, health=health, metrics_endpoint=endpoint)
    return components


def _quiet_paths(site: Any, paths: tuple) -> None:
    """No access-log line for health checks and scrapes (docker probes every 30 s)."""
    original = site.log

    def log_request(request):
        if request.path in paths and request.code < 400:
            return None
        return original(request)

    site.log = log_request


def attach(top: ZMirrorService, options: Any, config: Any, components: dict, reactor: Any) -> None:
    """Logging, SIGHUP reload and the database watch for the service tree
    ``makeService`` returns (added last, so they stop first)."""
    control = setup_logging(top, options, config)
    reloader = Reloader(config, components, control)
    components["log_control"] = control
    components["reloader"] = reloader
    SighupService(reloader, reactor).setServiceParent(top)
    db = components.get("db")
    bus = components.get("bus")
    if db is not None and getattr(db, "dialect", "sqlite") != "sqlite":
        # PostgreSQL: the triggers of migration 0005 NOTIFY, the bus LISTENs
        if bus is not None:
            changes = TableChanges(reloader)
            bus.on_tables(changes.changed)
            components["table_changes"] = changes
    elif db is not None:
        from zmirror.db.watch import ChangeWatcher

        watch = DatabaseWatchService(ChangeWatcher.for_database(db), reloader, reactor)
        watch.setServiceParent(top)
        components["db_watch"] = watch

__all__ = ["ZMirrorService", "Reloader", "SighupService", "DatabaseWatchService", "TableChanges",
           "attach",
           "instrument", "setup_logging", "LIVE", "STORE_TABLES", "DB_POLL_INTERVAL"]
