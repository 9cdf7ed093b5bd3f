"""The schema both engines share: the numbered ``migrations/NNNN_*.sql`` files
shipped as package data, their versions, and the splitting of a file into
statements.  A ``NNNN_name.postgresql.sql`` file replaces ``NNNN_name.sql`` on
PostgreSQL (:func:`zmirror.db.postgresql.migrations`)."""

from __future__ import annotations

import re
from importlib import resources

_BASE = re.compile(r"^(\d+)_[^.]*\.sql$")
_OVERRIDE = re.compile(r"^(\d+)_[^.]*\.(postgresql)\.sql$")


def migration_files() -> tuple[list[tuple[int, str, str]], dict[int, tuple[str, str]]]:
    """The shipped migrations ``[(version, filename, sql)]`` sorted by version, and
    the PostgreSQL override files ``{version: (filename, sql)}``."""
    base, overrides = [], {}
    pkg = resources.files("zmirror.db") / "migrations"
    for entry in pkg.iterdir():
        m = _BASE.match(entry.name)
        if m:
            base.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
            continue
        m = _OVERRIDE.match(entry.name)
        if m:
            overrides[int(m.group(1))] = (entry.name, entry.read_text(encoding="utf-8"))
    base.sort()
    return base, overrides


def migrations() -> list[tuple[int, str, str]]:
    """``[(version, filename, sql)]`` sorted by version (the SQLite text)."""
    return migration_files()[0]


def latest_version() -> int:
    """The schema version this ZMirror migrates to."""
    ms = migrations()
    return ms[-1][0] if ms else 0


def split_sql(sql: str) -> list[str]:
    """The statements of a migration file, comment lines dropped."""
    # Statements are separated by ';' at line ends; a PostgreSQL function body keeps its
    # inner ';' on the line of its CREATE FUNCTION (0005_cluster.postgresql.sql).
    out, buf = [], []
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        buf.append(line)
        if line.rstrip().endswith(";"):
            stmt = "\n".join(buf).strip()
            if stmt:
                out.append(stmt)
            buf = []
    rest = "\n".join(buf).strip()
    if rest:
        out.append(rest)
    return out


__all__ = ["migration_files", "migrations", "latest_version", "split_sql"]
