"""``zmirror db copy --to postgresql://...``: the SQLite database copied into
PostgreSQL in one transaction (identities advanced past the copied ids), and
the blob index into this node's local index file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Optional

from zmirror.cache.index import BLOB_TABLES, index_path
from zmirror.cli.common import CLIError, err, ident, load, out
from zmirror.config import ConfigError
from zmirror.config.parse import validate_database_url
from zmirror.db import postgresql
from zmirror.db.engine import begin_sql
from zmirror.db.errors import DatabaseError, one_line
from zmirror.db.schema import latest_version
from zmirror.db.sqlite import migrate
from zmirror.nodes import TABLES as NODE_TABLES  # each node's heartbeat: not copied

COPY_BATCH = 1000


def _target_rows(pg, tables: list[str]) -> dict[str, int]:
    """Rows per table in the target, not counting the registry row migration 0001 seeds."""
    result = {}
    for t in tables:
        n = pg.execute(f'SELECT count(*) FROM "{ident(t)}"').fetchone()[0]
        if t == "registries" and n == 1:
            seed = pg.execute("SELECT 1 FROM registries WHERE name = 'Docker Hub' AND "
                              "url = 'https://registry-1.docker.io' AND created_at = updated_at").fetchone()
            n = 0 if seed else n
        result[t] = n
    return result


def _check_target(pg, tables: list[str], where: str, force: bool) -> None:
    """The target has every table, and holds no data unless ``force``."""
    pg_tables = {r[0] for r in pg.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
    missing = [t for t in tables if t not in pg_tables]
    if missing:
        raise CLIError(f"{where}: has no table {', '.join(missing)} (a different schema?)")
    held = {t: n for t, n in _target_rows(pg, tables).items() if n}
    if held and not force:
        raise CLIError(f"{where} already holds data ({', '.join(f'{t}: {n} rows' for t, n in sorted(held.items()))}); "
                       "pass --force to replace it")


def _copy_table(src: sqlite3.Connection, pg, t: str, where: str) -> int:
    """Replace the rows of table ``t`` in ``pg`` with those of ``src``; returns their number."""
    cols = [r[1] for r in src.execute(f'PRAGMA table_info("{ident(t)}")')]
    pg_cols = {r[0] for r in pg.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = ?", (t,))}
    if set(cols) - pg_cols:
        raise CLIError(f"{where}: table {t} lacks columns {', '.join(sorted(set(cols) - pg_cols))}")
    pg.execute(f'DELETE FROM "{ident(t)}"')
    names = ", ".join(f'"{ident(c)}"' for c in cols)
    insert = f'INSERT INTO "{ident(t)}" ({names}) VALUES ({", ".join("?" for _ in cols)})'
    cur = src.execute(f'SELECT {names} FROM "{ident(t)}" ORDER BY rowid')
    n = 0
    while True:
        batch = cur.fetchmany(COPY_BATCH)
        if not batch:
            break
        pg.cursor().executemany(insert, batch)
        n += len(batch)
    if "id" in cols:
        # the identity continues after the copied ids (or starts at 1 again)
        pg.execute(f"SELECT setval(pg_get_serial_sequence('\"{ident(t)}\"', 'id'), "
                   f'coalesce((SELECT max(id) FROM "{ident(t)}"), 0) + 1, false)')
    return n


def _copy_tables(src: sqlite3.Connection, url: str, tables: list[str], *, force: bool,
                 report) -> dict[str, int]:
    """Every table of ``tables`` into ``url`` in one transaction."""
    where = postgresql.redact_url(url)
    pg = postgresql.connect(url)
    try:
        _check_target(pg, tables, where, force)
        counts = {}
        for t in tables:
            counts[t] = _copy_table(src, pg, t, where)
            report(f"{t}: {counts[t]} rows")
        pg.commit()
    except postgresql.psycopg.Error as e:
        pg.rollback()
        raise CLIError(f"copy to {where} failed (nothing was written): {one_line(e)}") from None
    except BaseException:
        pg.rollback()
        raise
    finally:
        pg.close()
    return counts


def copy_database(source: Path, url: str, *, force: bool = False, out=out) -> dict[str, int]:
    """Copy every table of the SQLite database ``source`` into the PostgreSQL database
    ``url`` (migrated to the same schema first) in one transaction; identities are
    advanced past the copied ids.  Refuses a target that holds data unless ``force``
    (then its rows are replaced).  Blocking (a CLI command).  Returns rows per table.

    The blob index tables (:data:`zmirror.cache.index.BLOB_TABLES`) are not copied:
    on PostgreSQL each node keeps the index of its own blob cache in a local file
    (:func:`copy_cache_index`).  The manifest cache's tables are (every node shares
    them on PostgreSQL)."""
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
        return _copy_tables(src, url, tables, force=force, report=out)
    except sqlite3.Error as e:
        raise CLIError(f"{source}: cannot read: {e}") from None
    finally:
        src.close()


def copy_cache_index(source: Path, index: Path, *, force: bool = False, out=out) -> Optional[int]:
    """Copy the blob index tables (:data:`zmirror.cache.index.BLOB_TABLES`) of the
    SQLite database ``source`` into the node-local blob index ``index`` (created
    0600 and migrated as the server would), in one transaction, so this node's
    cached files stay known after it moves to PostgreSQL.  An index that already
    holds blob rows is left alone unless ``force``.  Returns the rows copied, or
    None when left alone.  Blocking.  (The manifest cache goes to PostgreSQL:
    :func:`copy_database`.)"""
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
            held = sum(conn.execute(f'SELECT count(*) FROM main."{ident(t)}"').fetchone()[0]
                       for t in BLOB_TABLES)
            if held and not force:
                conn.execute("ROLLBACK")
                out(f"cache index: {index} already holds {held} rows; left as it is "
                    "(--force replaces them)")
                return None
            n = 0
            for t in BLOB_TABLES:
                cols = ", ".join(f'"{ident(r[1])}"' for r in conn.execute(f'PRAGMA main.table_info("{ident(t)}")'))
                conn.execute(f'DELETE FROM main."{ident(t)}"')
                n += conn.execute(f'INSERT INTO main."{ident(t)}" ({cols}) SELECT {cols} FROM src."{ident(t)}"').rowcount
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
    cfg = load(args)
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
    out(f"copied {sum(counts.values())} rows from {source} to {postgresql.redact_url(url)}")
    # the blob index stays with the files: this node's local index file on PostgreSQL
    if cfg.cache.enabled and source == cfg.database_path:
        copy_cache_index(source, index_path(cfg), force=args.force)
    else:
        out("cache index: not copied (on PostgreSQL each node keeps the index of its own blob "
            "cache in <[cache] dir>/index.sqlite; a node adopts the cached files it finds, after "
            "checking them)")
    if cfg.database.url != url:
        err(f'note: set [database] url = "{postgresql.redact_url(url)}" (with its password) in '
            f"{cfg.config_path} and restart to use it")
    return 0


def add_parser(sub) -> None:
    d = sub.add_parser("db", help="database tools / 数据库工具")
    dsub = d.add_subparsers(dest="db_command", required=True)
    cp = dsub.add_parser("copy", help="copy the SQLite database into PostgreSQL / 将 SQLite 数据复制到 PostgreSQL")
    cp.add_argument("--to", required=True, metavar="URL", help="postgresql://user:password@host:5432/dbname")
    cp.add_argument("--from", dest="source", metavar="FILE",
                    help="the SQLite file (default: [database] path)")
    cp.add_argument("--force", action="store_true",
                    help="replace what the target database holds / 覆盖目标库中已有的数据")
    cp.set_defaults(func=cmd_db_copy)
