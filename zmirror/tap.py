"""The twistd entry: ``Options`` and ``makeService(options, reactor)``, which loads
the configuration, builds the object graph (:func:`zmirror.wiring.build`) and
returns the top service (:func:`build_service`).

Used by the twistd plugin (``twistd -n zmirror``) and by ``zmirror.tac``
(options from ``ZMIRROR_*`` environment variables).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service, strports
from twisted.logger import Logger
from twisted.python import usage

from zmirror import __version__
from zmirror import logsetup
from zmirror.service import ZMirrorService

log = Logger()


class Options(usage.Options):
    synopsis = "[--data DIR] [--config FILE] [--listen ENDPOINT]"
    longdesc = "ZMirror: a Docker/OCI registry pull proxy. / Docker/OCI 镜像仓库拉取代理。"
    optParameters = [
        ["data", "d", None, "Data directory (default ./data; created on first start)"],
        ["config", "c", None, "Config file (default <data>/config.toml; created if missing)"],
        ["listen", "l", None, "Twisted endpoint string to listen on (default from config: tcp:PORT:interface=HOST)"],
    ]


def options_from_env(environ=None) -> Options:
    """Options for ``zmirror.tac``: ``ZMIRROR_DATA``, ``ZMIRROR_CONFIG``, ``ZMIRROR_LISTEN``."""
    env = os.environ if environ is None else environ
    opts = Options()
    argv = []
    for name in ("data", "config", "listen"):
        value = env.get("ZMIRROR_" + name.upper())
        if value:
            argv += [f"--{name}", value]
    opts.parseOptions(argv)
    return opts


def fail(message: str):
    """A user error: one line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"zmirror: error: {message}")


def makeService(options: Any, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    from zmirror.config import ConfigError, load_config
    from zmirror.db.errors import DatabaseError
    from zmirror.wiring import build

    try:
        config = load_config(options["data"], options["config"])
        components = build(config, reactor, listen=options["listen"])
    except (ConfigError, DatabaseError) as e:
        fail(str(e))
    for w in config.warnings:
        log.warn("config: {w}", w=w)
    listen = options["listen"] or config.listen_endpoint()
    # the log observer ([log] format/level) goes where twistd's options say
    observer = logsetup.log_observer(options, config, components.log_control)
    top = build_service(components, listen, reactor, log_observer=observer)
    cluster_password = components.cluster_admin_password  # PostgreSQL: the cluster's, if set
    if config.admin_password_is_default and (cluster_password is None
                                             or cluster_password.value is None):
        log.warn(
            "\n" + "!" * 72 + "\n"
            "!!  The admin password is still the default: the admin API only lets it be\n"
            "!!  changed (log in to the web UI, or run `zmirror admin-password`); it is\n"
            "!!  stored hashed in {path}\n"
            "!!  管理员密码仍为默认值：管理接口只允许修改密码（登录管理界面或运行\n"
            "!!  `zmirror admin-password`），新密码以哈希形式写入上述文件。\n" + "!" * 72,
            path=str(config.config_path),
        )
    log.info("zmirror {v} listening on {listen}, data in {data}", v=__version__, listen=listen,
             data=str(config.data_dir))
    return top


def build_service(components: Any, listen: str, reactor: Any, *,
                  log_observer: Any = None) -> ZMirrorService:
    """The top service of ``components`` (:class:`zmirror.wiring.Components`): its
    services, the site listening on ``listen``, then SIGHUP reload and the database
    watch (added last, so they stop first)."""
    try:
        web = strports.service(listen, components.site, reactor=reactor)
    except (ValueError, KeyError) as e:
        fail(f"invalid listen endpoint {listen!r}: {e}")
    return ZMirrorService(components, [*components.services, web, *components.reload_services],
                          log_observer=log_observer)


__all__ = ["Options", "build_service", "makeService", "options_from_env"]
