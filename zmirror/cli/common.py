"""What the ``zmirror`` commands share: the user error (:class:`CLIError`),
output, the configuration and database that ``--data`` / ``--config`` name, a
new password typed or read from stdin."""

from __future__ import annotations

import getpass
import os
import pwd
import sys
import time
from typing import Any, Optional

from zmirror.config import ConfigError, load_config
from zmirror.db.auditlog import AuditStore
from zmirror.db.engine import connect_config, is_postgresql, migrate_config
from zmirror.db.errors import DatabaseError
from zmirror.db.sync import SyncDatabase, result


class CLIError(Exception):
    """A user error: printed as one line, exit status 1."""


def out(msg: str = "") -> None:
    print(msg)


def err(msg: str) -> None:
    print(msg, file=sys.stderr)


def load(args):
    """The configuration of ``--data`` / ``--config``.  Nothing is created: a
    missing data directory or config file is a :class:`CLIError` naming the path
    (only the server's first start makes a new data directory)."""
    try:
        return load_config(args.data, args.config, create=False)
    except ConfigError as e:
        raise CLIError(str(e)) from None


def connect(cfg):
    """The configured database (SQLite file or PostgreSQL), migrated if needed: a
    connection in autocommit mode whose ``execute`` takes ``?`` placeholders.  A
    missing SQLite file is a :class:`CLIError` (never an empty new database)."""
    if not is_postgresql(cfg) and not cfg.database_path.is_file():
        raise CLIError(f"{cfg.database_path}: no such database; the server creates it on its "
                       f"first start (twistd -n zmirror --data {cfg.data_dir}), or set "
                       f"[database] path in {cfg.config_path}")
    try:
        migrate_config(cfg)
        return connect_config(cfg)
    except DatabaseError as e:
        raise CLIError(str(e)) from None


def open_database(cfg) -> SyncDatabase:
    """:func:`connect` for the stores: one short transaction per store call."""
    conn = connect(cfg)
    return SyncDatabase(conn, path=None if is_postgresql(cfg) else cfg.database_path)


class WallClock:
    """The stores' ``clock``: ``seconds()`` is the time now, or ``at`` when given
    (one time for every row an import writes)."""

    def __init__(self, at: Optional[float] = None):
        self.at = at

    def seconds(self) -> float:
        return time.time() if self.at is None else self.at


def cli_actor() -> str:
    """The audit trail's actor of a command: ``cli:<os user>``."""
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, OSError):
        name = os.environ.get("USER") or str(os.getuid())
    return f"cli:{name}"


def audit(db, cfg, action: str, target: str, *, before: Any = None, after: Any = None) -> None:
    """Record a change a command made in the audit trail (:mod:`zmirror.db.auditlog`;
    secrets are masked there): actor ``cli:<os user>``, this config's node, no address."""
    result(AuditStore(db, WallClock(), node=cfg.server.node).append(
        actor=cli_actor(), action=action, target=target, before=before, after=after))


def read_password(args, prompt: str = "Password / 密码: ") -> str:
    """A new password: one line from stdin with --stdin, else typed twice."""
    if getattr(args, "stdin", False):
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise CLIError("no password on stdin")
        return password
    if not sys.stdin.isatty():
        raise CLIError("stdin is not a terminal: pass the password on stdin with --stdin")
    first = getpass.getpass(prompt)
    second = getpass.getpass("Again / 再次输入: ")
    if first != second:
        raise CLIError("the passwords do not match")
    if not first:
        raise CLIError("the password must not be empty")
    return first


def reload_hint(cfg) -> None:
    """When a running server sees a change of users, whitelist or registries."""
    if is_postgresql(cfg):
        # the triggers of migration 0005 NOTIFY, every node LISTENs (zmirror.db.listen)
        err("note: every running node picks this up within 2 s (no SIGHUP or restart needed); "
            "tokens of a disabled user or one with a new password stop working then.")
        return
    err("note: a running server picks this up within 2 s (no SIGHUP or restart needed); "
        "tokens of a disabled user or one with a new password stop working then.")


def ident(name: str) -> str:
    """``name`` for a double-quoted SQL identifier."""
    return name.replace('"', '""')


__all__ = ["CLIError", "out", "err", "load", "connect", "open_database", "WallClock",
           "cli_actor", "audit",
           "read_password", "reload_hint", "ident"]
