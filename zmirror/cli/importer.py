"""``zmirror import-zmirror PATH``: users, registries and whitelist entries of an
original ZMirror ``registry.db``, found by table and column names, written
through the server's stores in one transaction (all or nothing; ``--dry-run``
rolls it back)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from zmirror.auth.passwords import is_legacy_md5, make_context
from zmirror.auth.whitelist import validate_prefix
from zmirror.cli.common import CLIError, WallClock, ident, load, open_database, out, reload_hint
from zmirror.db.errors import Conflict, InvalidField
from zmirror.db.registries import RegistryStore, normalize_url
from zmirror.db.sync import SyncDatabase, result
from zmirror.db.users import UserStore, validate_username
from zmirror.db.whitelists import WhitelistStore

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
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{ident(name)}")')]
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
        cur = self.conn.execute(f'SELECT * FROM "{ident(table)}"')
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


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



def _import_users(tables: SourceTables, table: str, users: UserStore, report: ImportReport, *,
                  plaintext: bool, now: float) -> None:
    cols = tables.tables[table]
    c_name, c_pass = _pick(cols, USER_NAME_COLS), _pick(cols, USER_PASS_COLS)
    c_en, c_dis, c_created = (_pick(cols, ENABLED_COLS), _pick(cols, DISABLED_COLS),
                              _pick(cols, CREATED_COLS))
    for row in tables.rows(table):
        name = row.get(c_name)
        name = str(name).strip() if name is not None else ""
        try:
            validate_username(name, users.admin_username)
        except InvalidField as e:
            report.add("users", "skipped (invalid)", f"user {name[:64]!r}: {e.message}")
            continue
        if result(users.find(name)):
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
        result(users.create_with_hash(name, stored, enabled, created_at=created or now))
        report.add("users", "imported" + (" (MD5 kept, re-hashed at next login)"
                                         if how == "md5" else ""))


def _priority(value: Any) -> int:
    try:
        priority = int(value) if value is not None else 100
    except (TypeError, ValueError):
        priority = 100
    return min(max(priority, 0), 1_000_000)


def _import_registries(tables: SourceTables, table: str, registries: RegistryStore,
                       report: ImportReport) -> None:
    cols = tables.tables[table]
    c_url, c_name = _pick(cols, REG_URL_COLS), _pick(cols, REG_NAME_COLS)
    c_prio, c_en = _pick(cols, PRIORITY_COLS), _pick(cols, ENABLED_COLS)
    c_user, c_pw = _pick(cols, REG_USER_COLS), _pick(cols, REG_PASS_COLS)
    for row in tables.rows(table):
        raw = str(row.get(c_url) or "").strip()
        if raw and "://" not in raw:
            raw = "https://" + raw
        try:
            url = normalize_url(raw)
        except ValueError as e:
            report.add("registries", "skipped (invalid)", f"registry {raw[:100]!r}: {e}")
            continue
        name = str(row.get(c_name) or "").strip()[:100] if c_name and c_name != c_url else ""
        name = name or urlsplit(url).hostname or url
        if result(registries.find(url, name)) is not None:
            report.add("registries", "already present")
            continue
        priority = _priority(row.get(c_prio) if c_prio else None)
        enabled = _truthy(row.get(c_en)) if c_en else True
        user = str(row.get(c_user) or "") if c_user else ""
        pw = str(row.get(c_pw) or "") if c_pw else ""
        result(registries.create(name, url, priority, enabled, user, pw))
        report.add("registries", "imported")


def _import_whitelist(tables: SourceTables, table: str, whitelists: WhitelistStore,
                      report: ImportReport, source_name: str) -> None:
    cols = tables.tables[table]
    c_prefix, c_en, c_note = (_pick(cols, WL_PREFIX_COLS), _pick(cols, ENABLED_COLS),
                              _pick(cols, NOTE_COLS))
    for row in tables.rows(table):
        raw = row.get(c_prefix)
        try:
            # repository names are lower case; the old matcher was not strict about it
            prefix = validate_prefix(str(raw).strip().lower() if raw is not None else "")
        except InvalidField as e:
            report.add("whitelists", "skipped (invalid)", f"whitelist {str(raw)[:100]!r}: {e.message}")
            continue
        enabled = _truthy(row.get(c_en)) if c_en else True
        note = str(row.get(c_note) or "").replace("\x00", "")[:1000] if c_note else ""
        note = note or f"imported from {source_name}"
        try:
            result(whitelists.create(prefix, enabled, note))
        except Conflict:
            report.add("whitelists", "already present")
            continue
        report.add("whitelists", "imported")


class _DryRun(Exception):
    pass


def _open_source(source: Path) -> sqlite3.Connection:
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        src.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as e:
        raise CLIError(f"{source}: not a readable SQLite database: {e}") from None
    return src


def import_zmirror(source: Path, db: SyncDatabase, *, admin_username: str,
                   dry_run: bool = False, plaintext: bool = False) -> ImportReport:
    """Import users, registries and whitelist entries from an original ZMirror database.

    Idempotent: existing usernames, registry URLs/names and whitelist prefixes
    are left alone.  Runs in one transaction (all or nothing).
    """
    report = ImportReport()
    src = _open_source(source)
    try:
        tables = SourceTables(src)
        if not tables.tables:
            raise CLIError(f"{source}: the database has no tables")
        clock = WallClock(time.time())  # one time for every row
        users_t = tables.find(("user", "account", "member"), (USER_NAME_COLS, USER_PASS_COLS))
        regs_t = tables.find(("registr", "upstream", "mirror", "source", "repo"), (REG_URL_COLS,))
        wl_t = tables.find(("white", "allow", "public", "anonymous", "prefix"), (WL_PREFIX_COLS,))
        report.notes.append(f"source tables: {', '.join(f'{t}({len(c)} columns)' for t, c in tables.tables.items())}")
        report.notes.append(f"mapped: users={users_t or '-'} registries={regs_t or '-'} whitelists={wl_t or '-'}")
        with db.transaction():
            if users_t:
                _import_users(tables, users_t, UserStore(db, clock, admin_username=admin_username),
                              report, plaintext=plaintext, now=clock.seconds())
            if regs_t:
                _import_registries(tables, regs_t, RegistryStore(db, clock), report)
            if wl_t:
                _import_whitelist(tables, wl_t, WhitelistStore(db, clock), report, source.name)
            if dry_run:
                raise _DryRun()
    except _DryRun:
        report.notes.append("dry run: nothing was written")
    finally:
        src.close()
    return report


def cmd_import_zmirror(args) -> int:
    cfg = load(args)
    source = Path(args.path).resolve()
    if not source.is_file():
        raise CLIError(f"{source}: no such file")
    if cfg.database_path.exists() and source.samefile(cfg.database_path):
        raise CLIError(f"{source} is this server's own database")
    with closing(open_database(cfg)) as db:
        report = import_zmirror(source, db, admin_username=cfg.admin.username,
                                dry_run=args.dry_run, plaintext=args.plaintext_passwords)
    for note in report.notes:
        out(note)
    for kind in ("users", "registries", "whitelists"):
        counts = report.counts.get(kind, {})
        summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "nothing found"
        out(f"{kind}: {summary}")
    if not args.dry_run:
        reload_hint(cfg)
    return 0


def add_parser(sub) -> None:
    im = sub.add_parser("import-zmirror", help="import an original ZMirror registry.db / 导入旧版数据库")
    im.add_argument("path")
    im.add_argument("--dry-run", action="store_true", help="report what would be imported")
    im.add_argument("--plaintext-passwords", action="store_true",
                    help="hash password values that are neither MD5 hex nor a known hash")
    im.set_defaults(func=cmd_import_zmirror)
