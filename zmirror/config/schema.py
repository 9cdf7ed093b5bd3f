"""The validated configuration: one frozen dataclass per ``config.toml`` section,
:class:`Config` holding them with absolute paths, and :class:`ConfigError`."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

DEFAULT_ADMIN_PASSWORD = "admin123"


class ConfigError(Exception):
    """A user error in the configuration: ``str(err)`` is one line for the operator.

    ``problems``: each problem found, one line each (a file with several bad keys
    is reported whole: ``str(err)`` names them all on its one line)."""

    def __init__(self, message: str = "", problems: tuple[str, ...] = ()):
        super().__init__(message)
        self.problems = tuple(problems) or (message,)


NODE_NAME_MAX = 64


def node_name_problem(v: Any) -> str | None:
    """Why ``v`` cannot be a node name (``[server] node``, the ``node=`` filter of
    ``/api/logs``), or None: 1 to NODE_NAME_MAX printable characters, no whitespace."""
    if not isinstance(v, str):
        return "must be a string"
    if not v:
        return "must not be empty"
    if len(v) > NODE_NAME_MAX:
        return f"must be at most {NODE_NAME_MAX} characters"
    if not v.isprintable() or any(c.isspace() for c in v):
        return "must be printable characters without spaces"
    return None


def default_node_name() -> str:
    """The host name (the part a node name may hold), or "zmirror"."""
    try:
        name = socket.gethostname()
    except OSError:
        name = ""
    name = "".join(c for c in name if c.isprintable() and not c.isspace())[:NODE_NAME_MAX]
    return name or "zmirror"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    external_url: str = ""
    trusted_proxies: tuple[str, ...] = ()
    read_timeout: float = 20.0
    max_connections: int = 1000
    node: str = field(default_factory=default_node_name)  # this node's name in the access log


@dataclass(frozen=True)
class AdminConfig:
    username: str = "admin"
    password: str = DEFAULT_ADMIN_PASSWORD


@dataclass(frozen=True)
class DatabaseConfig:
    path: str = "registry.db"  # relative: inside the data directory
    url: str = ""  # postgresql://...; empty: SQLite at path


@dataclass(frozen=True)
class AccessConfig:
    anonymous: str = "whitelist"


@dataclass(frozen=True)
class LockoutConfig:
    max_account_failures: int = 10
    max_ip_failures: int = 30
    window: int = 600
    cooldown: int = 300
    max_concurrent_verifications: int = 2
    max_queued_verifications: int = 32


@dataclass(frozen=True)
class UpstreamConfig:
    connect_timeout: float = 10.0
    idle_timeout: float = 60.0
    cooldown: float = 30.0
    resume_attempts: int = 3
    resume_deadline: float = 300.0
    # the egress proxy of every upstream without one of its own ("" = direct) and the
    # hosts reached directly; None: the key is not in the file
    proxy: Optional[str] = field(default=None, repr=False)  # may hold a password
    no_proxy: Optional[str] = None

    @property
    def proxy_from_environment(self) -> bool:
        """Neither key is in the file: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and
        NO_PROXY (or their lower-case forms) from the environment apply."""
        return self.proxy is None and self.no_proxy is None


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    dir: str = "cache"  # relative: inside the data directory
    max_size: int = 50 * 1000**3
    manifest_ttl: float = 300.0
    manifest_tags_in_memory: int = 100_000
    transfer_threads: int = 16
    max_temp_size: int = 0  # 0: max_size
    max_orphans: int = 4
    max_orphan_size: int = 2 << 30


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "info"
    retention_days: int = 30
    max_rows: int = 1_000_000


@dataclass(frozen=True)
class MetricsConfig:
    access: str = "admin"
    listen: str = ""


@dataclass(frozen=True)
class RoutingConfig:
    # (host name the clients use, namespace it serves), lower-cased
    hosts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Config:
    """The validated configuration; paths are absolute."""

    data_dir: Path
    config_path: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    warnings: tuple[str, ...] = ()
    # the path keys ("database.path", "cache.dir") whose relative value is read against
    # the data directory's parent: a file written before relative paths meant the data
    # directory (zmirror.config.paths)
    parent_relative: frozenset[str] = frozenset()

    @property
    def database_path(self) -> Path:
        return self.resolve(self.database.path, "database.path")

    @property
    def cache_dir(self) -> Path:
        return self.resolve(self.cache.dir, "cache.dir")

    def resolve(self, p: str, key: str = "") -> Path:
        """``p`` as an absolute path: a relative one inside the data directory (or
        its parent, for a ``key`` in :attr:`parent_relative`)."""
        path = Path(p)
        if not path.is_absolute():
            base = self.data_dir.parent if key in self.parent_relative else self.data_dir
            path = base / path
        return Path(os.path.normpath(path))

    @property
    def admin_password_is_default(self) -> bool:
        return self.admin.password == DEFAULT_ADMIN_PASSWORD

    def listen_endpoint(self) -> str:
        host = self.server.host.replace(":", "\\:")
        return f"tcp:{self.server.port}:interface={host}"
