"""``config.toml`` text → :class:`~zmirror.config.schema.Config`: every key's
validator, unknown keys and sections as warnings, a one-line :class:`ConfigError`
naming the file and every bad key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import toml

from zmirror.config.paths import PATH_KEYS, place_old_paths
from zmirror.config.proxyurl import check_no_proxy, check_proxy_url
from zmirror.config.schema import (
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
    node_name_problem,
)

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


def validate_external_url(key: str, v: str) -> str:
    if v and not re.match(r"^https?://[^/?#@\s]+(/[^?#\s]*)?\Z", v):
        raise ConfigError(f"{key}: must be an http(s) URL without query or credentials, got {v!r}")
    return v.rstrip("/")


def validate_database_url(key: str, v: Any) -> str:
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


def _checked(check, key: str, v: Any) -> str:
    """``check(v)`` with its ValueError as a ConfigError naming ``key`` (the value
    is not repeated: a proxy URL may hold a password)."""
    try:
        return check(v)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


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
        "external_url": lambda k, v: validate_external_url(k, _str(k, v)),
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
                 "url": lambda k, v: validate_database_url(k, v)},
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
        "proxy": lambda k, v: _checked(check_proxy_url, k, v),
        "no_proxy": lambda k, v: _checked(check_no_proxy, k, v),
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


def parse_config(text: str, *, data_dir: Path, config_path: Path, probe: bool = False) -> Config:
    """Parse and validate TOML text.  Raises :class:`ConfigError` naming every
    bad key (``problems``: one line each).  ``probe``: relative paths may be read
    the earlier way when the disk says so (blocking; :mod:`zmirror.config.paths`)."""
    try:
        raw = toml.loads(text)
    except toml.TomlDecodeError as e:
        raise ConfigError(
            f"{config_path}: invalid TOML at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    warnings: list[str] = []
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for section, value in raw.items():
        if section not in _SCHEMA:
            warnings.append(f"{config_path}: unknown section [{section}] ignored")
            continue
        if not isinstance(value, dict):
            problems.append(f"{section}: expected a table [{section}]")
            continue
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
                problems.append(str(e))
        sections[section] = _SECTION_CLASSES[section](**kwargs)
    if problems:
        listed = "; ".join(problems) if len(problems) == 1 else \
            f"{len(problems)} problems: " + "; ".join(problems)
        raise ConfigError(f"{config_path}: {listed}",
                          tuple(f"{config_path}: {p}" for p in problems))
    db_raw = raw.get("database")
    if isinstance(db_raw, dict) and "path" in db_raw and sections["database"].url:
        warnings.append(f"{config_path}: database.path is ignored: database.url selects PostgreSQL")
    cfg = Config(data_dir=data_dir, config_path=config_path, warnings=tuple(warnings), **sections)
    absent = frozenset(key for key, (section, name, _old) in PATH_KEYS.items()
                       if name not in (raw.get(section) or {}))
    return place_old_paths(cfg, absent, probe=probe)
