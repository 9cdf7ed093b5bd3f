"""The ``zmirror`` admin command line (works on the data directory).

    zmirror [--data DIR] [--config FILE] COMMAND ...

    user add NAME [--stdin] [--disabled]     create a registry user (docker login)
    user passwd NAME [--stdin]               set a user's password
    user disable NAME | user enable NAME     block / unblock a user
    user list [--json]                       list users (never a hash)
    admin-password [--stdin]                 store a hash of a new admin password in config.toml
                                             (PostgreSQL: in the database, for every node)
    import-zmirror PATH [--dry-run]          users, registries, whitelist from an original registry.db
    check-config                             validate config.toml
    backup DEST                              online SQLite backup + config.toml + token key
    db copy --to postgresql://... [--force]  copy the SQLite database into PostgreSQL

The CLI is not the server: it uses :mod:`sqlite3` (WAL mode, a busy timeout) or,
with ``[database] url``, psycopg synchronously, one short transaction per
command, so it is safe while the server runs.  A running server on SQLite
notices changes to users, whitelist and registries within about 2 s (it polls
SQLite's ``data_version``; SIGHUP also re-reads them): a disabled or
re-passworded user's tokens stop working then; password logins see the change
at once.  On PostgreSQL every node hears of them at once (LISTEN/NOTIFY) and
re-reads them.

Exit status: 0 success, 1 user error (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

# the config.toml editor (tomlkit, atomic write) shared with the admin API's
# PUT /api/me/password
from zmirror.config.adminpassword import set_admin_password_text  # noqa: F401
from zmirror.config.files import write_preserving_mode  # noqa: F401


class CLIError(Exception):
    """A user error: printed as one line, exit status 1."""


def _out(msg: str = "") -> None:
    print(msg)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


# --- configuration and database ----------------------------------------------------


def _config(args):
    from zmirror.config import ConfigError, load_config

    try:
        return load_config(args.data, args.config)
    except ConfigError as e:
        raise CLIError(str(e)) from None


def _connect(cfg):
    """The configured database (SQLite file or PostgreSQL), created/migrated if
    needed: a connection whose ``execute`` takes ``?`` placeholders."""
    from zmirror.db import DatabaseError, connect_config, migrate_config

    try:
        migrate_config(cfg)
        return connect_config(cfg)
    except DatabaseError as e:
        raise CLIError(str(e)) from None


class _Txn:
    """``with _Txn(conn):`` — BEGIN (IMMEDIATE on SQLite) … COMMIT / ROLLBACK."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        from zmirror.db import begin_sql

        self.conn.execute(begin_sql(self.conn))
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _read_password(args, prompt: str = "Password / 密码: ") -> str:
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


def _hash_user_password(password: str) -> str:
    from zmirror.auth.passwords import make_context

    return make_context().hash(password)


def _reload_hint(args=None) -> None:
    from zmirror.db import is_postgresql

    if args is not None and is_postgresql(_config(args)):
        # the triggers of migration 0005 NOTIFY, every node LISTENs (zmirror.db.listen)
        _err("note: every running node picks this up within 2 s (no SIGHUP or restart needed); "
             "tokens of a disabled user or one with a new password stop working then.")
        return
    _err("note: a running server picks this up within 2 s (no SIGHUP or restart needed); "
         "tokens of a disabled user or one with a new password stop working then.")


# --- user ---------------------------------------------------------------------------


def _validate_user(cfg, name: str, password: Optional[str] = None) -> None:
    from zmirror.auth.users import validate_password
    from zmirror.db.users import InvalidField, validate_username

    try:
        validate_username(name, cfg.admin.username)
        if password is not None:
            validate_password(password)
    except InvalidField as e:
        raise CLIError(f"{e.field}: {e.message}") from None


def _find_user(conn, name: str) -> Optional[tuple]:
    return conn.execute("SELECT id, username, enabled FROM users WHERE lower(username) = lower(?)",
                        (name,)).fetchone()


def cmd_user_add(args) -> int:
    cfg = _config(args)
    _validate_user(cfg, args.name)
    with closing(_connect(cfg)) as conn:
        if _find_user(conn, args.name):
            raise CLIError(f"user {args.name!r} already exists")
        password = _read_password(args)
        _validate_user(cfg, args.name, password)
        password_hash = _hash_user_password(password)
        now = time.time()
        with _Txn(conn):
            if _find_user(conn, args.name):
                raise CLIError(f"user {args.name!r} already exists")
            conn.execute("INSERT INTO users (username, password_hash, enabled, created_at, updated_at)"
                         " VALUES (?, ?, ?, ?, ?)",
                         (args.name, password_hash, 0 if args.disabled else 1, now, now))
    _out(f"user {args.name} created{' (disabled)' if args.disabled else ''}")
    _reload_hint(args)
    return 0


def _update_user(args, **sets) -> None:
    cfg = _config(args)
    with closing(_connect(cfg)) as conn:
        row = _find_user(conn, args.name)
        if row is None:
            raise CLIError(f"no user named {args.name!r}")
        if sets.pop("password", False):
            password = _read_password(args)
            _validate_user(cfg, row[1], password)
            sets["password_hash"] = _hash_user_password(password)
        cols = sorted(sets)
        with _Txn(conn):
            # updated_at changes → the user's outstanding tokens stop working
            conn.execute(
                f"UPDATE users SET {', '.join(c + ' = ?' for c in cols)}, updated_at = ? WHERE id = ?",
                tuple(sets[c] for c in cols) + (time.time(), row[0]))


def cmd_user_passwd(args) -> int:
    _update_user(args, password=True)
    _out(f"password of {args.name} changed (its tokens are revoked)")
    _reload_hint(args)
    return 0


def cmd_user_disable(args) -> int:
    _update_user(args, enabled=0)
    _out(f"user {args.name} disabled")
    _reload_hint(args)
    return 0


def cmd_user_enable(args) -> int:
    _update_user(args, enabled=1)
    _out(f"user {args.name} enabled")
    _reload_hint(args)
    return 0


def _fmt_time(t: Optional[float]) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_user_list(args) -> int:
    cfg = _config(args)
    with closing(_connect(cfg)) as conn:
        rows = conn.execute("SELECT id, username, enabled, created_at, updated_at, last_login_at,"
                            " password_hash FROM users ORDER BY id").fetchall()
    from zmirror.auth.passwords import is_legacy_md5

    users = [{"id": r[0], "username": r[1], "enabled": bool(r[2]), "created_at": r[3],
              "updated_at": r[4], "last_login_at": r[5], "legacy_md5": is_legacy_md5(r[6])}
             for r in rows]
    if args.json:
        _out(json.dumps(users, ensure_ascii=False, indent=2))
        return 0
    if not users:
        _out("no users / 没有用户")
        return 0
    w = max(8, max(len(u["username"]) for u in users))
    _out(f"{'ID':>5}  {'USERNAME':<{w}}  {'ENABLED':<7}  {'CREATED':<20}  {'LAST LOGIN':<20}")
    for u in users:
        note = "  (MD5, re-hashed at next login)" if u["legacy_md5"] else ""
        _out(f"{u['id']:>5}  {u['username']:<{w}}  {'yes' if u['enabled'] else 'no':<7}  "
             f"{_fmt_time(u['created_at']):<20}  {_fmt_time(u['last_login_at']):<20}{note}")
    return 0


# --- admin-password -------------------------------------------------------------------

def cmd_admin_password(args) -> int:
    from zmirror.auth.passwords import hash_admin_password
    from zmirror.config import ConfigError, admin_password_problem, update_admin_password

    from zmirror.db import is_postgresql

    cfg = _config(args)
    password = _read_password(args, "New admin password / 新的管理员密码: ")
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
    _out(f"admin password updated in {path} (stored as an argon2 hash)")
    _err("note: a running server applies it on SIGHUP or restart.")
    return 0


def _admin_password_cluster(cfg, hashed: str) -> int:
    """PostgreSQL: the hash goes into the cluster_secrets row every node reads (it
    overrides [admin] password of config.toml, which is left alone: it may be
    read-only); the running nodes hear of it through pg_notify (zmirror.auth.adminsecret)."""
    from zmirror.auth.adminsecret import ROW, store_blocking
    from zmirror.db import describe
    conn = _connect(cfg)
    try:
        store_blocking(conn, hashed, now=time.time())
    except Exception as e:
        # the hash out of the whole message first, then one short line (a cut could split it)
        text = " ".join(str(e).replace(hashed, "***").split())[:300]
        raise CLIError(f"{describe(cfg)}: cannot store the admin password: {text}") from None
    finally:
        conn.close()
    _out(f"admin password updated in the database (cluster_secrets row {ROW!r}, an argon2 hash); "
         "it takes precedence over [admin] password of config.toml")
    _err("note: every running node applies it within 2 s (no SIGHUP or restart needed).")
    return 0


# --- check-config ---------------------------------------------------------------------


def _cluster_admin_password_set(cfg) -> bool:
    """On PostgreSQL: the cluster's admin password (zmirror.auth.adminsecret) is set and
    usable, so config.toml's default does not apply. False on SQLite or when unreadable."""
    from zmirror.db import connect_config, is_postgresql

    if not is_postgresql(cfg):
        return False
    from zmirror.auth.adminsecret import read_blocking, value_problem

    try:
        conn = connect_config(cfg)
        try:
            raw = read_blocking(conn)
        finally:
            conn.close()
    except Exception:
        _err("warning: cannot read the cluster's admin password from the database")
        return False
    return raw is not None and value_problem(raw) is None


def cmd_check_config(args) -> int:
    cfg = _config(args)
    for w in cfg.warnings:
        _err(f"warning: {w}")
    if cfg.admin_password_is_default and not _cluster_admin_password_set(cfg):
        _err("warning: the admin password is still the default; run `zmirror admin-password`")
    if cfg.metrics.listen:
        from twisted.internet import endpoints

        class _R:  # a stand-in reactor: only the description is parsed
            pass

        try:
            endpoints.serverFromString(_R(), cfg.metrics.listen)
        except (ValueError, KeyError, TypeError) as e:
            raise CLIError(f"{cfg.config_path}: metrics.listen: invalid endpoint "
                           f"{cfg.metrics.listen!r}: {e}") from None
    _out(f"{cfg.config_path}: OK")
    return 0


# --- backup -----------------------------------------------------------------------------


def _create_private(path: Path):
    """A new file open for writing, mode 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def cmd_backup(args) -> int:
    from zmirror.auth.tokens import SECRET_FILE

    cfg = _config(args)
    from zmirror.db import describe, is_postgresql

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
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        src.execute("PRAGMA busy_timeout = 10000")
        _create_private(target).close()  # 0600 before SQLite opens it (its journal gets the same)
        out = sqlite3.connect(str(target))
        try:
            src.backup(out, pages=1024)  # online: a consistent snapshot while the server writes
            ok = out.execute("PRAGMA integrity_check").fetchone()[0]
            version = out.execute("PRAGMA user_version").fetchone()[0]
        finally:
            out.close()
    except sqlite3.Error as e:
        raise CLIError(f"backup of {db_path} failed: {e}") from None
    finally:
        src.close()
    if ok != "ok":
        raise CLIError(f"the backup copy failed its integrity check: {ok}")
    copied = [target.name]
    for name, source in (("config.toml", cfg.config_path), (SECRET_FILE, cfg.data_dir / SECRET_FILE)):
        if source.exists():
            # created 0600, never readable by others for a moment (copy2 copies the mode)
            with open(source, "rb") as src_file, _create_private(dest / name) as out_file:
                shutil.copyfileobj(src_file, out_file)
            copied.append(name)
    _out(f"backup written to {dest}: {', '.join(copied)} (schema version {version})")
    _out("restore: stop zmirror, copy these files into the data directory, start zmirror")
    return 0


# --- import-zmirror -------------------------------------------------------------------------

USER_NAME_COLS = ("username", "user_name", "login", "account", "name", "user")
USER_PASS_COLS = ("password_hash", "passwd_hash", "pwd_hash", "hash", "password", "passwd", "pwd", "pass")
ENABLED_COLS = ("enabled", "is_enabled", "active", "is_active", "status", "state")
DISABLED_COLS = ("disabled", "is_disabled", "blocked", "locked")
CREATED_COLS = ("created_at", "create_time", "created", "ctime", "created_time", "gmt_create")
REG_URL_COLS = ("url", "registry_url", "address", "endpoint", "upstream", "host", "server", "mirror")
REG_NAME_COLS = ("name", "registry_name", "title", "label", "alias")
PRIORITY_COLS = ("priority", "sort", "sort_order", "order", "rank", "weight", "position", "seq")
REG_USER_COLS = ("username", "user", "auth_user", "auth_username", "login")
REG_PASS_COLS = ("password", "auth_password", "passwd", "secret", "token")
WL_PREFIX_COLS = ("prefix", "pattern", "repository", "repo", "image", "namespace", "path",
                  "whitelist", "value", "name", "rule")
NOTE_COLS = ("note", "notes", "description", "remark", "comment", "memo")


def _pick(cols: list[str], names: tuple) -> Optional[str]:
    lower = {c.lower(): c for c in cols}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def _truthy(v: Any, default: bool = True) -> bool:
    if v is None:
        return default
    if isinstance(v, (int, float)):
        return v != 0
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "on", "enabled", "enable", "active", "normal", "ok"):
        return True
    if s in ("0", "false", "no", "n", "off", "disabled", "disable", "inactive", "blocked", "locked"):
        return False
    return default


def _timestamp(v: Any) -> Optional[float]:
    if v is None or v == "":
        return None
    if isinstance(v, (int, float)):
        t = float(v)
        return t / 1000.0 if t > 1e11 else t  # milliseconds
    s = str(v).strip()
    try:
        return _timestamp(float(s))
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f",
                "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d"):
        try:
            return datetime.strptime(s.rstrip("Z"), fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    return None


class SourceTables:
    """The source database's tables and the columns this importer maps."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.tables: dict[str, list[str]] = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                    "AND name NOT LIKE 'sqlite_%' ORDER BY name"):
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{_ident(name)}")')]
            self.tables[name] = cols

    def find(self, name_hints: tuple, required: tuple[tuple, ...]) -> Optional[str]:
        """The first table whose name contains a hint and that has a column from
        each group in ``required``."""
        for hint in name_hints:
            for table, cols in self.tables.items():
                if hint in table.lower() and all(_pick(cols, group) for group in required):
                    return table
        return None

    def rows(self, table: str) -> list[dict]:
        cur = self.conn.execute(f'SELECT * FROM "{_ident(table)}"')
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def _ident(name: str) -> str:
    return name.replace('"', '""')


class ImportReport:
    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.notes: list[str] = []

    def add(self, kind: str, outcome: str, note: Optional[str] = None) -> None:
        self.counts.setdefault(kind, {}).setdefault(outcome, 0)
        self.counts[kind][outcome] += 1
        if note:
            self.notes.append(note)


def _classify_hash(value: Any, plaintext: bool) -> tuple[Optional[str], str]:
    """``(stored_hash, outcome)`` for a source password value."""
    from zmirror.auth.passwords import is_legacy_md5, make_context

    if value is None or value == "":
        return None, "no password"
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None, "unreadable password"
    value = str(value).strip()
    if is_legacy_md5(value):
        return value.lower(), "md5"
    ctx = make_context()
    try:
        if ctx.identify(value, required=False):
            return value, "hash"
    except (ValueError, TypeError):
        pass
    if plaintext:
        return ctx.hash(value), "plaintext"
    return None, "unrecognized password format (use --plaintext-passwords if the old database stored plain text)"


def import_zmirror(source: Path, conn: sqlite3.Connection, *, admin_username: str,
                   dry_run: bool = False, plaintext: bool = False) -> ImportReport:
    """Import users, registries and whitelist entries from an original ZMirror database.

    Idempotent: existing usernames, registry URLs/names and whitelist prefixes
    are left alone.  Runs in one transaction (all or nothing).
    """
    from zmirror.db.registries import normalize_url
    from zmirror.auth.whitelist import validate_prefix
    from zmirror.db.users import InvalidField, validate_username

    report = ImportReport()
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        src.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as e:
        raise CLIError(f"{source}: not a readable SQLite database: {e}") from None
    try:
        tables = SourceTables(src)
        if not tables.tables:
            raise CLIError(f"{source}: the database has no tables")
        now = time.time()
        users_t = tables.find(("user", "account", "member"), (USER_NAME_COLS, USER_PASS_COLS))
        regs_t = tables.find(("registr", "upstream", "mirror", "source", "repo"), (REG_URL_COLS,))
        wl_t = tables.find(("white", "allow", "public", "anonymous", "prefix"), (WL_PREFIX_COLS,))
        report.notes.append(f"source tables: {', '.join(f'{t}({len(c)} columns)' for t, c in tables.tables.items())}")
        report.notes.append(f"mapped: users={users_t or '-'} registries={regs_t or '-'} whitelists={wl_t or '-'}")
        with _Txn(conn):
            # --- users ---
            if users_t:
                cols = tables.tables[users_t]
                c_name, c_pass = _pick(cols, USER_NAME_COLS), _pick(cols, USER_PASS_COLS)
                c_en, c_dis, c_created = (_pick(cols, ENABLED_COLS), _pick(cols, DISABLED_COLS),
                                          _pick(cols, CREATED_COLS))
                for row in tables.rows(users_t):
                    name = row.get(c_name)
                    name = str(name).strip() if name is not None else ""
                    try:
                        validate_username(name, admin_username)
                    except InvalidField as e:
                        report.add("users", "skipped (invalid)", f"user {name[:64]!r}: {e.message}")
                        continue
                    if _find_user(conn, name):
                        report.add("users", "already present")
                        continue
                    stored, how = _classify_hash(row.get(c_pass), plaintext)
                    if stored is None:
                        report.add("users", "skipped (password)", f"user {name!r}: {how}")
                        continue
                    enabled = _truthy(row.get(c_en)) if c_en else True
                    if c_dis:
                        enabled = enabled and not _truthy(row.get(c_dis), default=False)
                    created = _timestamp(row.get(c_created)) if c_created else None
                    conn.execute(
                        "INSERT INTO users (username, password_hash, enabled, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?)", (name, stored, int(enabled), created or now, now))
                    report.add("users", "imported" + (" (MD5 kept, re-hashed at next login)"
                                                     if how == "md5" else ""))
            # --- registries ---
            if regs_t:
                cols = tables.tables[regs_t]
                c_url, c_name = _pick(cols, REG_URL_COLS), _pick(cols, REG_NAME_COLS)
                c_prio, c_en = _pick(cols, PRIORITY_COLS), _pick(cols, ENABLED_COLS)
                c_user, c_pw = _pick(cols, REG_USER_COLS), _pick(cols, REG_PASS_COLS)
                for row in tables.rows(regs_t):
                    raw = str(row.get(c_url) or "").strip()
                    if raw and "://" not in raw:
                        raw = "https://" + raw
                    try:
                        url = normalize_url(raw)
                    except ValueError as e:
                        report.add("registries", "skipped (invalid)", f"registry {raw[:100]!r}: {e}")
                        continue
                    from urllib.parse import urlsplit

                    name = str(row.get(c_name) or "").strip()[:100] if c_name and c_name != c_url else ""
                    name = name or urlsplit(url).hostname or url
                    exists = conn.execute("SELECT 1 FROM registries WHERE url = ? OR lower(name) = lower(?)",
                                          (url, name)).fetchone()
                    if exists:
                        report.add("registries", "already present")
                        continue
                    try:
                        priority = int(row.get(c_prio)) if c_prio and row.get(c_prio) is not None else 100
                    except (TypeError, ValueError):
                        priority = 100
                    priority = min(max(priority, 0), 1_000_000)
                    enabled = _truthy(row.get(c_en)) if c_en else True
                    user = str(row.get(c_user) or "") if c_user else ""
                    pw = str(row.get(c_pw) or "") if c_pw else ""
                    conn.execute("INSERT INTO registries (name, url, priority, enabled, username, password,"
                                 " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (name, url, priority, int(enabled), user, pw, now, now))
                    report.add("registries", "imported")
            # --- whitelist ---
            if wl_t:
                cols = tables.tables[wl_t]
                c_prefix, c_en, c_note = (_pick(cols, WL_PREFIX_COLS), _pick(cols, ENABLED_COLS),
                                          _pick(cols, NOTE_COLS))
                for row in tables.rows(wl_t):
                    raw = row.get(c_prefix)
                    try:
                        # repository names are lower case; the old matcher was not strict about it
                        prefix = validate_prefix(str(raw).strip().lower() if raw is not None else "")
                    except InvalidField as e:
                        report.add("whitelists", "skipped (invalid)", f"whitelist {str(raw)[:100]!r}: {e.message}")
                        continue
                    if conn.execute("SELECT 1 FROM whitelists WHERE prefix = ?", (prefix,)).fetchone():
                        report.add("whitelists", "already present")
                        continue
                    enabled = _truthy(row.get(c_en)) if c_en else True
                    note = str(row.get(c_note) or "")[:1000] if c_note else ""
                    note = note or f"imported from {source.name}"
                    conn.execute("INSERT INTO whitelists (prefix, enabled, note, created_at, updated_at)"
                                 " VALUES (?, ?, ?, ?, ?)", (prefix, int(enabled), note, now, now))
                    report.add("whitelists", "imported")
            if dry_run:
                raise _DryRun()
    except _DryRun:
        report.notes.append("dry run: nothing was written")
    finally:
        src.close()
    return report


class _DryRun(Exception):
    pass


def cmd_import_zmirror(args) -> int:
    cfg = _config(args)
    source = Path(args.path).resolve()
    if not source.is_file():
        raise CLIError(f"{source}: no such file")
    if cfg.database_path.exists() and source.samefile(cfg.database_path):
        raise CLIError(f"{source} is this server's own database")
    with closing(_connect(cfg)) as conn:
        report = import_zmirror(source, conn, admin_username=cfg.admin.username,
                                dry_run=args.dry_run, plaintext=args.plaintext_passwords)
    for note in report.notes:
        _out(note)
    for kind in ("users", "registries", "whitelists"):
        counts = report.counts.get(kind, {})
        summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "nothing found"
        _out(f"{kind}: {summary}")
    if not args.dry_run:
        _reload_hint(args)
    return 0


# --- db copy -----------------------------------------------------------------------------------

# parents first (no foreign keys today, but the order is kept stable for when there are)
COPY_BATCH = 1000


def _target_rows(pg, tables: list[str]) -> dict[str, int]:
    """Rows per table in the target, not counting the registry row migration 0001 seeds."""
    out = {}
    for t in tables:
        n = pg.execute(f'SELECT count(*) FROM "{_ident(t)}"').fetchone()[0]
        if t == "registries" and n == 1:
            seed = pg.execute("SELECT 1 FROM registries WHERE name = 'Docker Hub' AND "
                              "url = 'https://registry-1.docker.io' AND created_at = updated_at").fetchone()
            n = 0 if seed else n
        out[t] = n
    return out


def copy_database(source: Path, url: str, *, force: bool = False, out=_out) -> dict[str, int]:
    """Copy every table of the SQLite database ``source`` into the PostgreSQL database
    ``url`` (migrated to the same schema first) in one transaction; identities are
    advanced past the copied ids.  Refuses a target that holds data unless ``force``
    (then its rows are replaced).  Blocking (a CLI command).  Returns rows per table.

    The blob index tables (:data:`zmirror.cache.index.BLOB_TABLES`) are not copied:
    on PostgreSQL each node keeps the index of its own blob cache in a local file
    (:func:`copy_cache_index`).  The manifest cache's tables are (every node shares
    them on PostgreSQL)."""
    from zmirror.cache.index import BLOB_TABLES
    from zmirror.db import DatabaseError, latest_version, migrate, postgresql
    from zmirror.nodes import TABLES as NODE_TABLES  # each node's heartbeat: not copied

    where = postgresql.redact_url(url)
    try:
        version = migrate(source)  # the source at the current schema, as the server would
        postgresql.migrate(url)
    except DatabaseError as e:
        raise CLIError(str(e)) from None
    if version != latest_version():  # pragma: no cover - migrate() guarantees it
        raise CLIError(f"{source}: schema version {version}, expected {latest_version()}")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        src.execute("PRAGMA busy_timeout = 10000")
        src.execute("BEGIN")  # one snapshot of every table (WAL: the server may keep writing)
        tables = [r[0] for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            if r[0] not in BLOB_TABLES and r[0] not in NODE_TABLES]
        pg = postgresql.connect(url)
        try:
            pg_tables = {r[0] for r in pg.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
            missing = [t for t in tables if t not in pg_tables]
            if missing:
                raise CLIError(f"{where}: has no table {', '.join(missing)} (a different schema?)")
            held = {t: n for t, n in _target_rows(pg, tables).items() if n}
            if held and not force:
                raise CLIError(f"{where} already holds data ({', '.join(f'{t}: {n} rows' for t, n in sorted(held.items()))}); "
                               "pass --force to replace it")
            counts = {}
            for t in tables:
                cols = [r[1] for r in src.execute(f'PRAGMA table_info("{_ident(t)}")')]
                pg_cols = {r[0] for r in pg.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                    " AND table_name = ?", (t,))}
                if set(cols) - pg_cols:
                    raise CLIError(f"{where}: table {t} lacks columns {', '.join(sorted(set(cols) - pg_cols))}")
                pg.execute(f'DELETE FROM "{_ident(t)}"')
                names = ", ".join(f'"{_ident(c)}"' for c in cols)
                insert = f'INSERT INTO "{_ident(t)}" ({names}) VALUES ({", ".join("?" for _ in cols)})'
                cur = src.execute(f'SELECT {names} FROM "{_ident(t)}" ORDER BY rowid')
                n = 0
                while True:
                    batch = cur.fetchmany(COPY_BATCH)
                    if not batch:
                        break
                    pg.cursor().executemany(insert, batch)
                    n += len(batch)
                counts[t] = n
                if "id" in cols:
                    # the identity continues after the copied ids (or starts at 1 again)
                    pg.execute(f"SELECT setval(pg_get_serial_sequence('\"{_ident(t)}\"', 'id'), "
                               f'coalesce((SELECT max(id) FROM "{_ident(t)}"), 0) + 1, false)')
                out(f"{t}: {n} rows")
            pg.commit()
        except postgresql.psycopg.Error as e:
            pg.rollback()
            raise CLIError(f"copy to {where} failed (nothing was written): {postgresql._one_line(e)}") from None
        except BaseException:
            pg.rollback()
            raise
        finally:
            pg.close()
    except sqlite3.Error as e:
        raise CLIError(f"{source}: cannot read: {e}") from None
    finally:
        src.close()
    return counts


def copy_cache_index(source: Path, index: Path, *, force: bool = False, out=_out) -> Optional[int]:
    """Copy the blob index tables (:data:`zmirror.cache.index.BLOB_TABLES`) of the
    SQLite database ``source`` into the node-local blob index ``index`` (created
    0600 and migrated as the server would), in one transaction, so this node's
    cached files stay known after it moves to PostgreSQL.  An index that already
    holds blob rows is left alone unless ``force``.  Returns the rows copied, or
    None when left alone.  Blocking.  (The manifest cache goes to PostgreSQL:
    :func:`copy_database`.)"""
    from zmirror.cache.index import BLOB_TABLES
    from zmirror.db import DatabaseError, begin_sql, migrate

    try:
        migrate(index)
    except DatabaseError as e:
        raise CLIError(str(e)) from None
    conn = sqlite3.connect(str(index), isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("ATTACH DATABASE ? AS src", (str(source),))  # only read
        conn.execute(begin_sql(conn))
        try:
            held = sum(conn.execute(f'SELECT count(*) FROM main."{_ident(t)}"').fetchone()[0]
                       for t in BLOB_TABLES)
            if held and not force:
                conn.execute("ROLLBACK")
                out(f"cache index: {index} already holds {held} rows; left as it is "
                    "(--force replaces them)")
                return None
            n = 0
            for t in BLOB_TABLES:
                cols = ", ".join(f'"{_ident(r[1])}"' for r in conn.execute(f'PRAGMA main.table_info("{_ident(t)}")'))
                conn.execute(f'DELETE FROM main."{_ident(t)}"')
                n += conn.execute(f'INSERT INTO main."{_ident(t)}" ({cols}) SELECT {cols} FROM src."{_ident(t)}"').rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise CLIError(f"cache index {index}: copy failed: {e}") from None
    finally:
        conn.close()
    out(f"cache index: {n} blob rows copied to {index} (this node's own blob cache; not shared "
        "in PostgreSQL)")
    return n


def cmd_db_copy(args) -> int:
    from zmirror.config import ConfigError
    from zmirror.config.parse import validate_database_url
    from zmirror.db import postgresql

    cfg = _config(args)
    try:
        url = validate_database_url("--to", args.to)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    if not url:
        raise CLIError("--to: a postgresql:// URL is required")
    source = Path(args.source).resolve() if args.source else cfg.database_path
    if not source.is_file():
        raise CLIError(f"{source}: no SQLite database to copy")
    counts = copy_database(source, url, force=args.force)
    _out(f"copied {sum(counts.values())} rows from {source} to {postgresql.redact_url(url)}")
    # the blob index stays with the files: this node's local index file on PostgreSQL
    if cfg.cache.enabled and source == cfg.database_path:
        from zmirror.cache.index import index_path

        copy_cache_index(source, index_path(cfg), force=args.force)
    else:
        _out("cache index: not copied (on PostgreSQL each node keeps the index of its own blob "
             "cache in <[cache] dir>/index.sqlite; a node adopts the cached files it finds, after "
             "checking them)")
    if cfg.database.url != url:
        _err(f'note: set [database] url = "{postgresql.redact_url(url)}" (with its password) in '
             f"{cfg.config_path} and restart to use it")
    return 0


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zmirror", description="ZMirror administration / ZMirror 管理工具")
    p.add_argument("--data", default=os.environ.get("ZMIRROR_DATA", "data"),
                   help="data directory (default $ZMIRROR_DATA or ./data)")
    p.add_argument("--config", default=os.environ.get("ZMIRROR_CONFIG") or None,
                   help="config file (default <data>/config.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check-config", help="validate config.toml / 检查配置")
    c.set_defaults(func=cmd_check_config)

    u = sub.add_parser("user", help="registry users / 仓库用户")
    usub = u.add_subparsers(dest="user_command", required=True)
    a = usub.add_parser("add", help="create a user / 新建用户")
    a.add_argument("name")
    a.add_argument("--stdin", "--password-stdin", action="store_true", help="read the password from stdin")
    a.add_argument("--disabled", action="store_true", help="create it disabled")
    a.set_defaults(func=cmd_user_add)
    pw = usub.add_parser("passwd", help="set a user's password / 修改密码")
    pw.add_argument("name")
    pw.add_argument("--stdin", "--password-stdin", action="store_true", help="read the password from stdin")
    pw.set_defaults(func=cmd_user_passwd)
    for name, func, text in (("disable", cmd_user_disable, "disable a user / 禁用用户"),
                             ("enable", cmd_user_enable, "enable a user / 启用用户")):
        x = usub.add_parser(name, help=text)
        x.add_argument("name")
        x.set_defaults(func=func)
    ls = usub.add_parser("list", help="list users / 用户列表")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_user_list)

    ap = sub.add_parser("admin-password", help="set the admin password (stored hashed) / 设置管理员密码")
    ap.add_argument("--stdin", action="store_true", help="read the password from stdin")
    ap.set_defaults(func=cmd_admin_password)

    im = sub.add_parser("import-zmirror", help="import an original ZMirror registry.db / 导入旧版数据库")
    im.add_argument("path")
    im.add_argument("--dry-run", action="store_true", help="report what would be imported")
    im.add_argument("--plaintext-passwords", action="store_true",
                    help="hash password values that are neither MD5 hex nor a known hash")
    im.set_defaults(func=cmd_import_zmirror)

    b = sub.add_parser("backup", help="online backup of database and config / 在线备份")
    b.add_argument("dest", help="directory to create (must not exist or be empty)")
    b.set_defaults(func=cmd_backup)

    d = sub.add_parser("db", help="database tools / 数据库工具")
    dsub = d.add_subparsers(dest="db_command", required=True)
    cp = dsub.add_parser("copy", help="copy the SQLite database into PostgreSQL / 将 SQLite 数据复制到 PostgreSQL")
    cp.add_argument("--to", required=True, metavar="URL", help="postgresql://user:password@host:5432/dbname")
    cp.add_argument("--from", dest="source", metavar="FILE",
                    help="the SQLite file (default: [database] path)")
    cp.add_argument("--force", action="store_true",
                    help="replace what the target database holds / 覆盖目标库中已有的数据")
    cp.set_defaults(func=cmd_db_copy)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        _err(f"zmirror: error: {e}")
        return 1
    except KeyboardInterrupt:
        _err("zmirror: interrupted")
        return 130
    except OSError as e:
        _err(f"zmirror: error: {e.filename or ''}: {e.strerror or e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
