"""``zmirror admin-password``: a hash of a new admin password, in config.toml
(SQLite: the file edited in place, as ``PUT /api/me/password`` does) or in the
database for every node (PostgreSQL)."""

from __future__ import annotations

import time
from contextlib import closing

from zmirror.auth.adminsecret import ROW, store_blocking
from zmirror.auth.passwords import hash_admin_password
from zmirror.cli.common import CLIError, audit, connect, err, load, open_database, out, read_password
from zmirror.config import ConfigError, admin_password_problem, update_admin_password
from zmirror.db.engine import describe, is_postgresql


def cmd_admin_password(args) -> int:
    cfg = load(args)
    password = read_password(args, "New admin password / 新的管理员密码: ")
    problem = admin_password_problem(password)
    if problem is not None:
        raise CLIError(f"the new admin password {problem}")
    if is_postgresql(cfg):
        return _admin_password_cluster(cfg, hash_admin_password(password))
    path = cfg.config_path
    try:
        # tomlkit keeps every comment; never writes a file the server would refuse
        update_admin_password(path, hash_admin_password(password), data_dir=cfg.data_dir)
    except ConfigError as e:
        raise CLIError(f"cannot update the admin password: {e}") from None
    out(f"admin password updated in {path} (stored as an argon2 hash)")
    _record(cfg)
    err("note: a running server applies it on SIGHUP or restart.")
    return 0


def _admin_password_cluster(cfg, hashed: str) -> int:
    """PostgreSQL: the hash goes into the cluster_secrets row every node reads (it
    overrides [admin] password of config.toml, which is left alone: it may be
    read-only); the running nodes hear of it through pg_notify (zmirror.auth.adminsecret)."""
    conn = connect(cfg)
    try:
        store_blocking(conn, hashed, now=time.time())
    except Exception as e:
        # the hash out of the whole message first, then one short line (a cut could split it)
        text = " ".join(str(e).replace(hashed, "***").split())[:300]
        raise CLIError(f"{describe(cfg)}: cannot store the admin password: {text}") from None
    finally:
        conn.close()
    out(f"admin password updated in the database (cluster_secrets row {ROW!r}, an argon2 hash); "
        "it takes precedence over [admin] password of config.toml")
    _record(cfg)
    err("note: every running node applies it within 2 s (no SIGHUP or restart needed).")
    return 0


def _record(cfg) -> None:
    """The change in the audit trail (never the password or its hash); a data directory
    whose database the server has not created yet has no trail to record it in."""
    if not is_postgresql(cfg) and not cfg.database_path.is_file():
        return
    with closing(open_database(cfg)) as db:
        audit(db, cfg, "admin.password", "admin", after={"password": "changed"})


def add_parser(sub) -> None:
    ap = sub.add_parser("admin-password", help="set the admin password (stored hashed) / 设置管理员密码")
    ap.add_argument("--stdin", action="store_true", help="read the password from stdin")
    ap.set_defaults(func=cmd_admin_password)
