"""Load, create and validate ``config.toml``.

The file lives in the data directory.  On first start a commented default is
written (mode 0600: it holds the admin password); an existing file is never
overwritten.  Relative paths in the file are resolved against the data
directory's parent, so the default ``./data/registry.db`` lands inside the data
directory whatever the working directory is.

User errors raise :class:`ConfigError` with one line of text naming the file and
the problem; callers print it and exit non-zero (no traceback).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import toml

DEFAULT_ADMIN_PASSWORD = "admin123"

DEFAULT_CONFIG = """\
# ZMirror configuration / ZMirror 配置文件
# Written on first start; edit and restart (some settings also reload on SIGHUP).
# 首次启动时生成；修改后重启生效（部分设置可通过 SIGHUP 热加载）。

[server]
# Address and port to listen on / 监听地址与端口
host = "0.0.0.0"
port = 8080
# Public base URL used in token realms and Link headers, e.g. "https://mirror.example.com".
# Empty: derived from the request's Host header. / 对外地址，留空则取请求的 Host 头
external_url = ""
# Peers whose X-Forwarded-For/-Proto/-Host headers are trusted (IPs or CIDRs).
# 受信任的反向代理地址（IP 或 CIDR）
trusted_proxies = []
# Seconds a request's head and body may take to arrive, from its first byte (408 after that,
# connection closed); 0: no deadline (needs a restart).
# 请求头与请求体须在首字节后多少秒内收齐，超时返回 408 并断开；0 为不限（重启生效）
read_timeout = 20
# Open client connections at most; one more is answered 503 and closed (needs a restart).
# 最大客户端连接数，超出的新连接返回 503 并关闭（重启生效）
max_connections = 1000
# This node's name in the access log, when several nodes share one PostgreSQL database: at most
# 64 printable characters, no spaces. Default: the host name (needs a restart).
# 本节点名称，记录在访问日志中（多个节点共用一个 PostgreSQL 时区分来源）：最多 64 个可打印字符，
# 不含空格；默认为主机名（重启生效）
# node = "mirror-1"

[admin]
# Admin account of the web UI and /api (not a registry user).
# 管理后台账号（不是镜像仓库用户）。Change the default password! 请务必修改默认密码！
# While it is the default, the admin API only lets you change it (web UI or `zmirror admin-password`).
# 默认密码下管理 API 只允许修改密码（管理界面或 `zmirror admin-password`）。
# The password may be plain text or a passlib hash (see `zmirror admin-password`).
username = "admin"
password = "admin123"

[database]
# SQLite database file (the embedded default, one node); relative paths are resolved against the
# data directory's parent. / SQLite 数据库路径（内置默认，单节点），相对路径以数据目录的上级目录为基准
path = "./data/registry.db"
# PostgreSQL instead of SQLite (several nodes can share it); `path` is then ignored. Needs a restart;
# copy an existing SQLite database over with `zmirror db copy --to URL`. The password is never logged.
# 改用 PostgreSQL（多个节点可共用），此时忽略 path；重启生效；已有 SQLite 数据可用
# `zmirror db copy --to URL` 迁移。密码不会写入日志。
# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"

[access]
# Anonymous pulls / 匿名拉取: "whitelist" (only whitelisted prefixes), "all", "none"
anonymous = "whitelist"

[lockout]
# Brute-force protection for registry logins and the admin account (applies on SIGHUP).
# 登录防爆破（仓库用户与管理员账号），SIGHUP 生效。
# Failed logins within `window` seconds that lock an account / a client address
# 在 window 秒内，同一账号 / 同一客户端地址失败多少次后锁定
max_account_failures = 10
max_ip_failures = 30
window = 600
# Seconds a locked account or address must wait (answered with 429) / 锁定时长（秒）
cooldown = 300
# Password checks (argon2: a CPU core and 19 MiB each) running at once, and waiting; logins beyond
# that get 429 (needs a restart) / 同时校验的密码数与排队数，超出返回 429（重启生效）
max_concurrent_verifications = 2
max_queued_verifications = 32

[upstream]
# Seconds to wait for a TCP/TLS connection and for response headers / 连接与响应头超时（秒）
connect_timeout = 10
# Abort a body transfer after this many seconds without a byte / 传输空闲超时（秒）
idle_timeout = 60
# Skip an upstream for this many seconds after repeated failures / 上游连续失败后的冷却时间（秒）
cooldown = 30
# A blob body that breaks (cut, reset, idle, too long) continues with a Range request: from the same
# upstream once, then from the next ones by priority; at most this many times per blob (0: never)
# 上游 blob 传输中断（断开、重置、空闲超时、超长）时用 Range 续传：先同一上游一次，再按优先级换上游；
# 每个 blob 最多续传次数（0 为不续传）
resume_attempts = 3
# Give up resuming this many seconds after the body first broke / 首次中断后超过该秒数不再续传
resume_deadline = 300

[routing]
# Registries other than Docker Hub are upstreams with their own namespace (admin UI). Clients pick one
# by path prefix (mirror:8080/ghcr.io/owner/img), containerd by ?ns=, or by host name here:
# one host name per namespace (reloaded on SIGHUP).
# 除 Docker Hub 外的仓库在管理界面中作为带命名空间的上游添加。客户端可用路径前缀
# （mirror:8080/ghcr.io/owner/img）、containerd 的 ?ns= 或下面的主机名选择命名空间（SIGHUP 生效）。
# hosts = { "ghcr.mirror.example.com" = "ghcr.io", "quay.mirror.example.com" = "quay.io" }
hosts = {}

[cache]
# Pull-through cache of blobs and manifests / 拉取缓存
enabled = true
# Relative paths are resolved against the data directory's parent / 相对路径同上
# With [database] url (PostgreSQL) each node keeps the index of its own cache in <dir>/index.sqlite,
# so every node needs its own dir. / 使用 PostgreSQL 时每个节点把自己缓存的索引保存在
# <dir>/index.sqlite，因此每个节点须使用各自的缓存目录
dir = "./data/cache"
max_size = "50GB"
# Seconds a manifest fetched by tag is served before it is revalidated upstream
manifest_ttl = 300
# Cached tags kept in memory (the rest are read from the database when asked for)
# 内存中保留的已缓存标签数（其余按需从数据库读取）
manifest_tags_in_memory = 100000
# Limits of cold pulls (need a restart) / 冷拉取的资源上限（重启生效）
# Threads that hash and write downloads (a kernel copy takes 2); with none free a miss is relayed
# uncached / 下载写入与摘要计算的线程数（一次内核拷贝占 2 个），没有空闲线程时未命中直接转发、不写缓存
transfer_threads = 16
# Temp files of running downloads in all; a miss beyond is relayed uncached. 0: same as max_size
# 正在下载的临时文件合计上限，超出的未命中直接转发、不写缓存；0 表示与 max_size 相同
max_temp_size = 0
# Downloads every client has left are finished while at most this many, with at most
# max_orphan_size left to fetch between them, run; beyond, they are aborted (0: always aborted)
# 所有客户端都已离开的下载：最多同时完成多少个、合计剩余多少字节，超出的被中止（0 表示总是中止）
max_orphans = 4
max_orphan_size = "2GiB"

[log]
# "text" or "json" log lines / 日志格式
format = "text"
level = "info"
# Access log retention (0 = keep) / 访问日志保留天数与最大行数（0 表示不限）
retention_days = 30
max_rows = 1000000

[metrics]
# Prometheus metrics at /metrics / Prometheus 指标
# "admin": needs the admin account (HTTP Basic) / 需要管理员账号
# "open":  anyone who can reach the port / 任何人可访问
# "off":   not served on the main port / 主端口不提供
access = "admin"
# Optional separate, unauthenticated endpoint for /metrics (Twisted endpoint string),
# e.g. "tcp:9100:interface=127.0.0.1". Empty: none. / 可选的独立指标端口（无认证），留空不启用
listen = ""
"""


class ConfigError(Exception):
    """A user error in the configuration: ``str(err)`` is one line for the operator."""


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size(value: Any) -> int:
    """``"50GB"`` / ``"512MiB"`` / ``1024`` → bytes."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative size")
        return value
    if not isinstance(value, str):
        raise ValueError("not a size")
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r}")
    number, unit = m.group(1), (m.group(2) or "").upper()
    binary = "I" in unit
    letter = unit.replace("I", "").replace("B", "")
    base = _SIZE_UNITS[letter]
    if binary and letter:
        base = 1024 ** "KMGT".index(letter) * 1024
    return int(float(number) * base)


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
    path: str = "./data/registry.db"
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


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    dir: str = "./data/cache"
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

    @property
    def database_path(self) -> Path:
        return self.resolve(self.database.path)

    @property
    def cache_dir(self) -> Path:
        return self.resolve(self.cache.dir)

    def resolve(self, p: str) -> Path:
        path = Path(p)
        if not path.is_absolute():
            path = self.data_dir.parent / path
        return Path(os.path.normpath(path))

    @property
    def admin_password_is_default(self) -> bool:
        return self.admin.password == DEFAULT_ADMIN_PASSWORD

    def listen_endpoint(self) -> str:
        host = self.server.host.replace(":", "\\:")
        return f"tcp:{self.server.port}:interface={host}"


# --- validation -----------------------------------------------------------


def _str(key: str, v: Any, *, nonempty: bool = False, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{key}: expected a string, got {type(v).__name__}")
    if nonempty and not v.strip():
        raise ConfigError(f"{key}: must not be empty")
    if choices and v not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(repr(c) for c in choices)}, got {v!r}")
    return v


def _int(key: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{key}: expected an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ConfigError(f"{key}: must be between {lo} and {hi}, got {v}")
    return v


def _num(key: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ConfigError(f"{key}: must be between {lo} and {hi}, got {v}")
    return float(v)


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {type(v).__name__}")
    return v


def _str_list(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{key}: expected a list of strings")
    return tuple(v)


def _validate_external_url(key: str, v: str) -> str:
    if v and not re.match(r"^https?://[^/?#@\s]+(/[^?#\s]*)?\Z", v):
        raise ConfigError(f"{key}: must be an http(s) URL without query or credentials, got {v!r}")
    return v.rstrip("/")


def _database_url(key: str, v: Any) -> str:
    """``postgresql://[user[:password]@]host[:port]/dbname[?options]`` or empty (SQLite).
    Error messages never repeat the value (it may hold a password)."""
    from urllib.parse import urlsplit

    if not isinstance(v, str):
        raise ConfigError(f"{key}: expected a string, got {type(v).__name__}")
    v = v.strip()
    if not v:
        return ""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in v):
        raise ConfigError(f"{key}: must not contain whitespace or control characters")
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"{key}: is not a valid URL (postgresql://user:password@host:5432/dbname)") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{key}: must start with postgresql:// (only PostgreSQL is supported; "
                          f"leave it empty for SQLite at database.path)")
    if not parts.path.strip("/"):
        raise ConfigError(f"{key}: must name the database (postgresql://user:password@host:5432/dbname)")
    if parts.fragment:
        raise ConfigError(f"{key}: must not contain a fragment")
    if not parts.hostname and "host=" not in parts.query:
        raise ConfigError(f"{key}: must name the host (postgresql://user:password@host:5432/dbname)")
    return v


def _node_name(key: str, v: Any) -> str:
    problem = node_name_problem(v)
    if problem is not None:
        # the value is not repeated: it may hold control characters
        raise ConfigError(f"{key}: {problem}")
    return v


def _validate_proxies(key: str, v: tuple[str, ...]) -> tuple[str, ...]:
    import ipaddress

    for item in v:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{key}: {item!r} is not an IP address or network") from None
    return v


def _routing_hosts(key: str, v: Any) -> tuple[tuple[str, str], ...]:
    from zmirror.oci.names import normalize_host, normalize_namespace

    if not isinstance(v, dict):
        raise ConfigError(f'{key}: expected a table such as {{ "ghcr.mirror.example.com" = "ghcr.io" }}')
    out = {}
    for host, ns in v.items():
        try:
            name = normalize_host(host)
        except ValueError as e:
            raise ConfigError(f"{key}: host name {str(host)[:100]!r} {e}") from None
        try:
            out[name] = normalize_namespace(ns)
        except ValueError as e:
            raise ConfigError(f"{key}: namespace of {name} {e}") from None
    return tuple(sorted(out.items()))


# section -> key -> (validator(key, value) -> converted)
_SCHEMA: dict[str, dict[str, Any]] = {
    "server": {
        "host": lambda k, v: _str(k, v, nonempty=True),
        "port": lambda k, v: _int(k, v, 1, 65535),
        "external_url": lambda k, v: _validate_external_url(k, _str(k, v)),
        "trusted_proxies": lambda k, v: _validate_proxies(k, _str_list(k, v)),
        "read_timeout": lambda k, v: _num(k, v, 0, 3600),
        "max_connections": lambda k, v: _int(k, v, 1, 1_000_000),
        "node": lambda k, v: _node_name(k, v),
    },
    "admin": {
        "username": lambda k, v: _str(k, v, nonempty=True),
        "password": lambda k, v: _str(k, v, nonempty=True),
    },
    "database": {"path": lambda k, v: _str(k, v, nonempty=True),
                 "url": lambda k, v: _database_url(k, v)},
    "access": {"anonymous": lambda k, v: _str(k, v, choices=("whitelist", "all", "none"))},
    "lockout": {
        "max_account_failures": lambda k, v: _int(k, v, 1, 1_000_000),
        "max_ip_failures": lambda k, v: _int(k, v, 1, 1_000_000),
        "window": lambda k, v: _int(k, v, 1, 7 * 86400),
        "cooldown": lambda k, v: _int(k, v, 1, 7 * 86400),
        "max_concurrent_verifications": lambda k, v: _int(k, v, 1, 64),
        "max_queued_verifications": lambda k, v: _int(k, v, 0, 100_000),
    },
    "upstream": {
        "connect_timeout": lambda k, v: _num(k, v, 0.1, 3600),
        "idle_timeout": lambda k, v: _num(k, v, 0.1, 86400),
        "cooldown": lambda k, v: _num(k, v, 0, 86400),
        "resume_attempts": lambda k, v: _int(k, v, 0, 100),
        "resume_deadline": lambda k, v: _num(k, v, 0, 86400),
    },
    "cache": {
        "enabled": _bool,
        "dir": lambda k, v: _str(k, v, nonempty=True),
        "max_size": lambda k, v: _size(k, v),
        "manifest_ttl": lambda k, v: _num(k, v, 0, 365 * 86400),
        "manifest_tags_in_memory": lambda k, v: _int(k, v, 1, 100_000_000),
        "transfer_threads": lambda k, v: _int(k, v, 1, 256),
        "max_temp_size": lambda k, v: _size(k, v),
        "max_orphans": lambda k, v: _int(k, v, 0, 10_000),
        "max_orphan_size": lambda k, v: _size(k, v),
    },
    "log": {
        "format": lambda k, v: _str(k, v, choices=("text", "json")),
        "level": lambda k, v: _str(k, v, choices=("debug", "info", "warn", "error", "critical")),
        "retention_days": lambda k, v: _int(k, v, 0, 100000),
        "max_rows": lambda k, v: _int(k, v, 0, 10**12),
    },
    "metrics": {
        "access": lambda k, v: _str(k, v, choices=("admin", "open", "off")),
        "listen": lambda k, v: _str(k, v).strip(),
    },
    "routing": {"hosts": _routing_hosts},
}

_SECTION_CLASSES = {
    "server": ServerConfig,
    "admin": AdminConfig,
    "database": DatabaseConfig,
    "access": AccessConfig,
    "lockout": LockoutConfig,
    "upstream": UpstreamConfig,
    "cache": CacheConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
    "routing": RoutingConfig,
}


def _size(key: str, v: Any) -> int:
    try:
        return parse_size(v)
    except ValueError:
        raise ConfigError(f'{key}: expected a size such as "50GB" or "512MiB", got {v!r}') from None


def parse_config(text: str, *, data_dir: Path, config_path: Path) -> Config:
    """Parse and validate TOML text.  Raises :class:`ConfigError`."""
    try:
        raw = toml.loads(text)
    except toml.TomlDecodeError as e:
        raise ConfigError(
            f"{config_path}: invalid TOML at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    warnings: list[str] = []
    sections: dict[str, Any] = {}
    for section, value in raw.items():
        if section not in _SCHEMA:
            warnings.append(f"{config_path}: unknown section [{section}] ignored")
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{config_path}: {section}: expected a table [{section}]")
        kwargs = {}
        for key, item in value.items():
            full = f"{section}.{key}"
            validator = _SCHEMA[section].get(key)
            if validator is None:
                warnings.append(f"{config_path}: unknown key {full} ignored")
                continue
            try:
                kwargs[key] = validator(full, item)
            except ConfigError as e:
                raise ConfigError(f"{config_path}: {e}") from None
        sections[section] = _SECTION_CLASSES[section](**kwargs)
    db_raw = raw.get("database")
    if isinstance(db_raw, dict) and "path" in db_raw and sections["database"].url:
        warnings.append(f"{config_path}: database.path is ignored: database.url selects PostgreSQL")
    return Config(
        data_dir=data_dir, config_path=config_path, warnings=tuple(warnings), **sections
    )


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path, what: str = "directory") -> list[str]:
    """Create the directory ``path`` mode 0700 whatever the umask, or restrict
    an existing one that group or others may use (chmod 0700).  Returns
    warnings (a loose mode found and fixed, or one that cannot be fixed).
    Missing parents are created as ``mkdir -p`` does; existing ones are never
    touched.  Raises OSError when the directory cannot be created."""
    path = Path(path)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(path, PRIVATE_DIR_MODE)  # the umask may have taken owner bits
        return []
    return _restrict(path, PRIVATE_DIR_MODE, what)


def private_file(path: Path, what: str = "file", *, create: bool = True) -> list[str]:
    """Create the (empty) file ``path`` mode 0600 whatever the umask unless it
    exists, or restrict an existing one that group or others may read (chmod
    0600).  ``create=False``: only restrict it if it exists.  Returns warnings
    as :func:`private_dir` does."""
    path = Path(path)
    if create:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:
            pass
        else:
            try:
                os.fchmod(fd, PRIVATE_FILE_MODE)
            finally:
                os.close(fd)
            return []
    try:
        return _restrict(path, PRIVATE_FILE_MODE, what)
    except FileNotFoundError:
        return []


def _restrict(path: Path, mode: int, what: str) -> list[str]:
    current = stat.S_IMODE(path.stat().st_mode)
    if not current & 0o077:
        return []
    try:
        os.chmod(path, mode)
    except OSError as e:
        return [f"{what} {path} has mode {current:04o} (group or others may read it) and cannot "
                f"be restricted to {mode:04o}: {e.strerror}"]
    return [f"{what} {path} had mode {current:04o} (group or others could read it); "
            f"now {mode:04o}"]


def ensure_data_dir(data_dir: Path) -> list[str]:
    """Create the data directory 0700 (it holds the database with upstream
    passwords and password hashes, the token secret and config.toml) or
    restrict an existing one; returns warnings."""
    try:
        return private_dir(data_dir, "data directory")
    except OSError as e:
        raise ConfigError(f"cannot create data directory {data_dir}: {e.strerror}") from None


def write_default_config(path: Path) -> bool:
    """Write the default config if ``path`` does not exist.  Returns True if written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as e:
        raise ConfigError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(DEFAULT_CONFIG)
    return True


def load_config(data_dir: str | os.PathLike | None = None, config_path: str | os.PathLike | None = None) -> Config:
    """Create the data dir and default config when missing, then load and validate.

    ``data_dir`` defaults to ``./data``; ``config_path`` to ``<data_dir>/config.toml``.
    """
    ddir = Path(os.path.abspath(data_dir or "data"))
    mode_warnings = ensure_data_dir(ddir)
    cpath = Path(os.path.abspath(config_path)) if config_path else ddir / "config.toml"
    if config_path is None:
        write_default_config(cpath)
    try:
        text = cpath.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{cpath}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{cpath}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{cpath}: cannot read: {e.strerror}") from None
    cfg = parse_config(text, data_dir=ddir, config_path=cpath)
    if mode_warnings:
        cfg = dataclasses.replace(cfg, warnings=tuple(mode_warnings) + cfg.warnings)
    return cfg


def replace(config: Config, **sections: Any) -> Config:
    """A copy of ``config`` with whole sections replaced (tests, reload)."""
    return dataclasses.replace(config, **sections)


# --- editing config.toml (the admin password) ------------------------------------

ADMIN_PASSWORD_MIN = 8
ADMIN_PASSWORD_MAX = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def admin_password_problem(password: Any) -> str | None:
    """Why ``password`` cannot be the new admin password (a field message), or None.

    The same rules for ``PUT /api/me/password`` and ``zmirror admin-password``."""
    if not isinstance(password, str):
        return "must be a string"
    if not password:
        return "must not be empty"
    if len(password) < ADMIN_PASSWORD_MIN:
        return f"must be at least {ADMIN_PASSWORD_MIN} characters"
    if len(password) > ADMIN_PASSWORD_MAX:
        return f"must be at most {ADMIN_PASSWORD_MAX} characters"
    if _CONTROL.search(password):
        return "must not contain control characters"
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    if password == DEFAULT_ADMIN_PASSWORD:
        return "must not be the default password"
    return None


def set_admin_password_text(text: str, value: str) -> str:
    """``text`` (config.toml) with ``[admin] password`` set to ``value``.

    Edited with tomlkit, so every comment, blank line and other value stays as it
    was; a missing ``[admin]`` table is added.  Raises :class:`ConfigError` when
    ``text`` is not TOML or ``admin`` is not a table.
    """
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as e:
        raise ConfigError(f"invalid TOML: {e}") from None
    admin = doc.get("admin")
    if admin is None:
        doc.add("admin", tomlkit.table())
        admin = doc["admin"]
    elif not isinstance(admin, dict):
        raise ConfigError("admin: expected a table [admin]")
    admin["password"] = value
    return tomlkit.dumps(doc)


def write_preserving_mode(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (a temporary file in the same
    directory, fsync, rename): the same mode (0600 if new), the owner kept when
    possible.  A reader sees the old or the new file, never a part."""
    path = Path(path)
    try:
        st = path.stat()
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    except FileNotFoundError:
        mode, uid, gid = 0o600, None, None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            if uid is not None:
                try:
                    os.fchown(f.fileno(), uid, gid)
                except PermissionError:
                    pass
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself survives a crash
        dfd = os.open(str(path.parent), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# one read-modify-write of a config file at a time in this process (API requests
# run it in threads; the file itself is replaced atomically)
_write_lock = threading.Lock()


def update_admin_password(config_path: Path, value: str, *, data_dir: Path) -> Config:
    """Set ``[admin] password`` of the file at ``config_path`` to ``value`` (a hash).

    Blocking (call it off the reactor thread).  The result is validated with
    :func:`parse_config` before the file is replaced, so a file the server
    would refuse is never written; returns the configuration the new file
    holds.  Raises :class:`ConfigError` (missing, unreadable or invalid file)
    or :class:`OSError` (cannot write).
    """
    path = Path(config_path)
    with _write_lock:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        parse_config(text, data_dir=data_dir, config_path=path)  # the file as it is must be valid
        try:
            new_text = set_admin_password_text(text, value)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        new = parse_config(new_text, data_dir=data_dir, config_path=path)
        if new.admin.password != value:
            raise ConfigError(f"{path}: [admin] password could not be set")
        write_preserving_mode(path, new_text)
        return new
