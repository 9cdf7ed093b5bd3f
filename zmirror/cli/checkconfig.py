"""``zmirror check-config``: config.toml validated as the server would, every bad
key reported (one line each), with its warnings (the default admin password
among them)."""

from __future__ import annotations

from twisted.internet import endpoints

from zmirror.auth.adminsecret import read_blocking, value_problem
from zmirror.cli.common import CLIError, err, out
from zmirror.config import ConfigError, load_config
from zmirror.db.engine import connect_config, is_postgresql


def _cluster_admin_password_set(cfg) -> bool:
    """On PostgreSQL: the cluster's admin password (zmirror.auth.adminsecret) is set and
    usable, so config.toml's default does not apply. False on SQLite or when unreadable."""
    if not is_postgresql(cfg):
        return False
    try:
        conn = connect_config(cfg)
        try:
            raw = read_blocking(conn)
        finally:
            conn.close()
    except Exception:
        err("warning: cannot read the cluster's admin password from the database")
        return False
    return raw is not None and value_problem(raw) is None


class _DescriptionOnly:
    """A stand-in reactor: only the endpoint description is parsed."""


def cmd_check_config(args) -> int:
    try:
        cfg = load_config(args.data, args.config, create=False)
    except ConfigError as e:
        for problem in e.problems:  # every bad key, one line each
            err(f"zmirror: error: {problem}")
        return 1
    for w in cfg.warnings:
        err(f"warning: {w}")
    if cfg.admin_password_is_default and not _cluster_admin_password_set(cfg):
        err("warning: the admin password is still the default; run `zmirror admin-password`")
    if cfg.metrics.listen:
        try:
            endpoints.serverFromString(_DescriptionOnly(), cfg.metrics.listen)
        except (ValueError, KeyError, TypeError) as e:
            raise CLIError(f"{cfg.config_path}: metrics.listen: invalid endpoint "
                           f"{cfg.metrics.listen!r}: {e}") from None
    out(f"{cfg.config_path}: OK")
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("check-config", help="validate config.toml / 检查配置")
    c.set_defaults(func=cmd_check_config)
