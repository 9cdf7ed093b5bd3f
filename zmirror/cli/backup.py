"""``zmirror backup DEST``: an online copy of the SQLite database (a consistent
snapshot while the server writes), config.toml and the token key, each 0600."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from zmirror.auth.tokens import SECRET_FILE
from zmirror.cli.common import CLIError, load, out
from zmirror.db.engine import describe, is_postgresql


def _create_private(path: Path):
    """A new file open for writing, mode 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def _copy_database(db_path: Path, target: Path) -> int:
    """SQLite's online backup of ``db_path`` into the new file ``target``, checked;
    returns its schema version."""
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        src.execute("PRAGMA busy_timeout = 10000")
        _create_private(target).close()  # 0600 before SQLite opens it (its journal gets the same)
        copy = sqlite3.connect(str(target))
        try:
            src.backup(copy, pages=1024)  # online: a consistent snapshot while the server writes
            ok = copy.execute("PRAGMA integrity_check").fetchone()[0]
            version = copy.execute("PRAGMA user_version").fetchone()[0]
        finally:
            copy.close()
    except sqlite3.Error as e:
        raise CLIError(f"backup of {db_path} failed: {e}") from None
    finally:
        src.close()
    if ok != "ok":
        raise CLIError(f"the backup copy failed its integrity check: {ok}")
    return version


def cmd_backup(args) -> int:
    cfg = load(args)
    if is_postgresql(cfg):
        raise CLIError(f"backup copies the SQLite database; {describe(cfg)} is PostgreSQL: "
                       "back it up with pg_dump (and copy config.toml yourself)")
    dest = Path(args.dest).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CLIError(f"{dest} exists and is not an empty directory")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    db_path = cfg.database_path
    if not db_path.exists():
        raise CLIError(f"{db_path}: no database to back up")
    target = dest / db_path.name
    version = _copy_database(db_path, target)
    copied = [target.name]
    for name, source in (("config.toml", cfg.config_path), (SECRET_FILE, cfg.data_dir / SECRET_FILE)):
        if source.exists():
            # created 0600, never readable by others for a moment (copy2 copies the mode)
            with open(source, "rb") as src_file, _create_private(dest / name) as out_file:
                shutil.copyfileobj(src_file, out_file)
            copied.append(name)
    out(f"backup written to {dest}: {', '.join(copied)} (schema version {version})")
    out("restore: stop zmirror, copy these files into the data directory, start zmirror")
    return 0


def add_parser(sub) -> None:
    b = sub.add_parser("backup", help="online backup of database and config / 在线备份")
    b.add_argument("dest", help="directory to create (must not exist or be empty)")
    b.set_defaults(func=cmd_backup)
