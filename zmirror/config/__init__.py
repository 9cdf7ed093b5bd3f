"""The configuration: ``config.toml`` in the data directory (design:
docs/design/config.md).

:mod:`~zmirror.config.schema` the validated :class:`Config`;
:mod:`~zmirror.config.parse` TOML text to :class:`Config`;
:mod:`~zmirror.config.load` the data directory, the default file, :func:`load_config`;
:mod:`~zmirror.config.paths` relative paths, and those of files written the earlier way;
:mod:`~zmirror.config.files` private modes and the atomic rewrite;
:mod:`~zmirror.config.adminpassword` ``[admin] password`` edited in place.
"""

from zmirror.config.adminpassword import (
    admin_password_problem,
    set_admin_password_text,
    update_admin_password,
)
from zmirror.config.files import private_dir, private_file
from zmirror.config.load import DEFAULT_CONFIG, NoDataDir, load_config
from zmirror.config.parse import parse_config, parse_size
from zmirror.config.schema import (
    DEFAULT_ADMIN_PASSWORD,
    AccessConfig,
    AdminConfig,
    CacheConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    LockoutConfig,
    LogConfig,
    MetricsConfig,
    RoutingConfig,
    ServerConfig,
    UpstreamConfig,
    default_node_name,
    node_name_problem,
)

__all__ = [
    "DEFAULT_ADMIN_PASSWORD", "DEFAULT_CONFIG", "AccessConfig", "AdminConfig", "CacheConfig",
    "Config", "ConfigError", "DatabaseConfig", "LockoutConfig", "LogConfig", "MetricsConfig",
    "NoDataDir", "RoutingConfig", "ServerConfig", "UpstreamConfig", "admin_password_problem",
    "default_node_name", "load_config", "node_name_problem", "parse_config", "parse_size",
    "private_dir", "private_file", "set_admin_password_text", "update_admin_password",
]
