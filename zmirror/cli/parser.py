"""The ``zmirror`` argument parser (one sub-parser per command, added by the
command's module) and :func:`main`: dispatch and exit status."""

from __future__ import annotations

import argparse
import os

from zmirror.cli.adminpassword import add_parser as add_admin_password
from zmirror.cli.backup import add_parser as add_backup
from zmirror.cli.cache import add_parser as add_cache
from zmirror.cli.checkconfig import add_parser as add_check_config
from zmirror.cli.common import CLIError, err
from zmirror.cli.dbcopy import add_parser as add_db
from zmirror.cli.importer import add_parser as add_import_zmirror
from zmirror.cli.policy import add_parser as add_policy
from zmirror.cli.registries import add_parser as add_registry
from zmirror.cli.retention import add_parser as add_retention
from zmirror.cli.sync import add_parser as add_sync
from zmirror.cli.users import add_parser as add_user
from zmirror.cli.whitelist import add_parser as add_whitelist

# in the order of ``zmirror --help``
COMMANDS = (add_check_config, add_user, add_whitelist, add_registry, add_admin_password, add_import_zmirror,
            add_backup, add_db, add_cache, add_retention, add_sync, add_policy)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zmirror", description="ZMirror administration / ZMirror 管理工具")
    p.add_argument("--data", default=os.environ.get("ZMIRROR_DATA", "data"),
                   help="data directory (default $ZMIRROR_DATA or ./data)")
    p.add_argument("--config", default=os.environ.get("ZMIRROR_CONFIG") or None,
                   help="config file (default <data>/config.toml)")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv=None) -> int:
    """Run one command; exit status 0 success, 1 user error (one line on stderr,
    no traceback), 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        err(f"zmirror: error: {e}")
        return 1
    except KeyboardInterrupt:
        err("zmirror: interrupted")
        return 130
    except OSError as e:
        err(f"zmirror: error: {e.filename or ''}: {e.strerror or e}")
        return 1
