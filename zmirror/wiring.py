"""Builds the object graph from a validated :class:`~zmirror.config.Config`.

Called only through :func:`zmirror.tap.makeService`, the one wiring point
shared by the twistd plugin and ``zmirror.tac``.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Site

from zmirror.app import ZMirrorApp
from zmirror.config import Config
from zmirror.db import Database, migrate
from zmirror.net import TrustedProxies, base_url
from zmirror.registry.routes import RegistryRoutes
from zmirror.service import DatabaseService, DrainService, InflightTracker


def build(config: Config, reactor: Any) -> dict:
    migrate(config.database_path)
    db = Database(config.database_path, reactor)
    trusted = TrustedProxies(config.server.trusted_proxies)

    registry = RegistryRoutes(
        None,
        clock=reactor,
        trusted=trusted,
        base_url=lambda request: base_url(request, trusted, config.server.external_url),
    )
    app = ZMirrorApp(registry, ui=_ui_resource())
    root = InflightTracker(app.resource())
    site = Site(root, reactor=reactor)
    site.displayTracebacks = False
    services = [DatabaseService(db), DrainService(root, reactor)]
    return {
        "config": config,
        "db": db,
        "app": app,
        "site": site,
        "root": root,
        "services": services,
    }


def _ui_resource():
    from zmirror.ui import ui_resource

    return ui_resource()
