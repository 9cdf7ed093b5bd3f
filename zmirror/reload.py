"""SIGHUP reload: re-read config.toml and apply what can change live.

:class:`Reloader` applies the settings of :data:`LIVE` to the objects listed in
its :class:`LiveSettings` and re-reads the :class:`Stores` from the database;
everything else is logged as "needs a restart".  :class:`SighupService` calls
it on SIGHUP while the service runs (docs/design/wiring.md).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()

# database tables behind the in-memory stores (the fields of Stores)
STORE_TABLES = ("users", "whitelists", "registries", "policy_rules")

# settings that apply without a restart (section.key)
LIVE = ("access.anonymous", "log.level", "server.trusted_proxies", "metrics.access",
        "admin.password", "lockout.max_account_failures", "lockout.max_ip_failures",
        "lockout.window", "lockout.cooldown", "routing.hosts")


@dataclass(frozen=True)
class LiveSettings:
    """What a re-read configuration changes in the running server."""

    trusted: Any  # zmirror.net.TrustedProxies: [server] trusted_proxies
    routing: Any  # zmirror.registry.routing.RoutingTable: [routing] hosts
    policy: Any  # zmirror.auth.policy.AccessPolicy: [access] anonymous
    log_control: Any  # zmirror.logs.LogControl: [log] level
    lockout: Any  # zmirror.auth.lockout.Lockout: the [lockout] thresholds
    metrics_endpoint: Any  # zmirror.metricsendpoint.MetricsEndpoint: [metrics] access
    account: Any  # zmirror.auth.adminaccount.AdminAccount: [admin] password
    # PostgreSQL: the cluster's admin password (zmirror.auth.adminsecret), re-read on SIGHUP
    cluster_password: Any = None


@dataclass(frozen=True)
class Stores:
    """The in-memory stores re-read from the database (None: not kept here)."""

    users: Any = None  # zmirror.db.users.UserStore: the auth rows
    whitelists: Any = None  # zmirror.db.whitelists.WhitelistStore: the live matcher follows
    registries: Any = None  # zmirror.db.registries.RegistryStore: the upstream list follows
    policy_rules: Any = None  # zmirror.db.policyrules.PolicyRuleStore: the image policy follows


class Reloader:
    """Re-reads config.toml and applies the live settings; re-reads the stores."""

    def __init__(self, config: Any, stores: Stores = Stores(), live: Optional[LiveSettings] = None,
                 load: Optional[Callable[[], Any]] = None):
        self._config = config
        self.stores = stores
        self.live = live
        self._load = load or self._default_load

    @property
    def config(self) -> Any:
        """The configuration in force: the one last applied, with ``[admin]`` as the
        admin account has it now (its password may have been changed through the API)."""
        if self.live is None:
            return self._config
        return dataclasses.replace(self._config, admin=self.live.account.settings)

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
        secret = self.live.cluster_password if self.live is not None else None
        if secret is not None:  # PostgreSQL: the cluster's admin password, re-read
            secret.refresh()
        return True

    def refresh_stores(self, tables: Optional[Any] = None, reason: str = "reload",
                       quiet: bool = False):
        """Re-read users, whitelist and registries from the database, for changes
        made outside the server (``zmirror user ...``, ``import-zmirror``): on
        SIGHUP (all three) and from :mod:`zmirror.dbwatch` (only the ``tables``
        whose content changed).  Returns a Deferred (errors are logged, never
        raised)."""
        from twisted.internet.defer import Deferred

        wanted = [t for t in STORE_TABLES if tables is None or t in tables]

        async def go():
            done = []
            for table in wanted:
                store = getattr(self.stores, table)
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
        if self.live is not None:
            self._apply_live(self.live, old, new)
        changed = _changed(old, new)
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

    @staticmethod
    def _apply_live(live: LiveSettings, old: Any, new: Any) -> None:
        from zmirror.auth.lockout import settings

        live.trusted.reload(new.server.trusted_proxies)
        live.routing.set_hosts(dict(new.routing.hosts))
        live.policy.reload(new)
        live.log_control.reload(new)
        live.lockout.configure(**settings(new.lockout))
        live.metrics_endpoint.reload(new)
        live.account.reload(new)
        secret = live.cluster_password
        if ("admin.password" in _changed(old, new) and secret is not None
                and secret.value is not None):
            log.warn("reload: [admin] password of config.toml changed, but the cluster's admin "
                     "password (database) takes precedence: change it with the web UI or "
                     "`zmirror admin-password`")


def _changed(old: Any, new: Any) -> list[str]:
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
    """SIGHUP → ``reloader.reload()`` in the reactor thread, while running.

    The handler is installed when the service starts in the main thread (that
    is, under twistd) and the previous one restored when it stops; nothing is
    installed at import or construction."""

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


__all__ = ["LIVE", "STORE_TABLES", "LiveSettings", "Reloader", "SighupService", "Stores"]
