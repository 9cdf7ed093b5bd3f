"""The blob index on disk: its rows (``cache_blobs``, ``cache_blob_repos`` in the
node's own database, :mod:`zmirror.cache.index`) and the blob files they
describe, read and compared at start, written in batches.  The file functions
run on a thread and take the cache directory (see docs/design/cache.md)."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from zmirror.cache.download import silent_unlink
from zmirror.config import private_dir

log = Logger()

# At start, blob files the index lost are hashed before being adopted, up to this many bytes.
ADOPT_VERIFY_MAX = 4 << 30


@dataclass
class BlobEntry:
    digest: str
    size: int
    last_access: float
    readers: int = 0
    repos: set = field(default_factory=set)


def blob_relpath(digest: str) -> str:
    algo, hexd = digest.split(":", 1)
    return os.path.join("blobs", algo, hexd[:2], hexd)


# -- rows ---------------------------------------------------------------------------

async def read_rows(db: Any) -> tuple[list, list]:
    """(index rows in last-access order, repository rows) of the blob index."""
    rows = await db.query("SELECT digest, size, last_access FROM cache_blobs ORDER BY last_access")
    repos = await db.query("SELECT digest, repository FROM cache_blob_repos")
    return rows, repos


def rows_of(entries: dict, digests: set) -> tuple[list, list]:
    """The index rows and repository rows of ``digests`` that are in ``entries``
    (an evicted one has no entry and drops out)."""
    rows, repo_rows = [], []
    for d in digests:
        e = entries.get(d)
        if e is None:
            continue
        rows.append((e.digest, e.size, e.last_access, e.last_access))
        repo_rows.extend((e.digest, r) for r in e.repos)
    return rows, repo_rows


def delete_blob_rows(txn, digests):
    for i in range(0, len(digests), 500):
        part = digests[i:i + 500]
        marks = ",".join("?" * len(part))
        txn.execute(f"DELETE FROM cache_blobs WHERE digest IN ({marks})", part)
        txn.execute(f"DELETE FROM cache_blob_repos WHERE digest IN ({marks})", part)


def delete_repo_rows(txn, pairs):
    """Forget that blobs were seen in repositories: ``[(digest, repository)]``."""
    if pairs:
        txn.executemany("DELETE FROM cache_blob_repos WHERE digest = ? AND repository = ?", pairs)


def upsert_blob_rows(txn, rows, repo_rows):
    txn.executemany(
        "INSERT INTO cache_blobs (digest, size, created_at, last_access) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(digest) DO UPDATE SET last_access = excluded.last_access, size = excluded.size",
        rows,
    )
    txn.executemany("INSERT INTO cache_blob_repos (digest, repository) VALUES (?, ?)"
                    " ON CONFLICT DO NOTHING", repo_rows)


@dataclass
class Comparison:
    """The index rows held against the files found at start."""

    known: list = field(default_factory=list)  # (digest, size, last_access): row and file agree
    stale: list = field(default_factory=list)  # digests whose rows go (file gone or damaged)
    damaged: list = field(default_factory=list)  # digests whose file's size differs from the row
    unknown: list = field(default_factory=list)  # digests of files the index does not know


def compare(rows: list, present: dict[str, int]) -> Comparison:
    """Hold the index ``rows`` against ``present`` (digest → file size, :func:`scan`)."""
    out = Comparison()
    known = set()
    for r in rows:
        digest, size = r["digest"], int(r["size"])
        if digest not in present:
            out.stale.append(digest)  # file gone (deleted by hand): forget it
        elif present[digest] != size:
            out.stale.append(digest)
            out.damaged.append(digest)
        else:
            known.add(digest)
            out.known.append((digest, size, float(r["last_access"])))
    out.unknown = [d for d in present if d not in known and d not in out.damaged]
    return out


# -- files (thread functions) -----------------------------------------------------------

def check_files(root: Path, unknown: list, damaged: list) -> tuple[list, list]:
    """(thread) Delete ``damaged`` files; hash the ``unknown`` ones (up to
    ADOPT_VERIFY_MAX bytes in all, the rest are deleted: the cache refetches).
    Returns (digests whose content matches their name, [(digest, why deleted)])."""
    good, dropped, budget = [], [], ADOPT_VERIFY_MAX
    for digest in damaged:
        dropped.append((digest, "its size differs from the index (cut short by a crash?)"))
        silent_unlink(root / blob_relpath(digest))
    for digest in unknown:
        path = root / blob_relpath(digest)
        algo, hexd = digest.split(":", 1)
        try:
            size = path.stat().st_size
            if size > budget:
                raise ValueError("over the verification budget")
            budget -= size
            h = hashlib.new(algo)
            with open(path, "rb", buffering=0) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            ok = h.hexdigest() == hexd
        except (OSError, ValueError) as e:
            dropped.append((digest, f"not in the index and not verifiable ({e})"))
            silent_unlink(path)
            continue
        if ok:
            good.append(digest)
        else:
            dropped.append((digest, "not in the index and its content does not match its digest"))
            silent_unlink(path)
    return good, dropped


def make_root(root: Path) -> None:
    """(thread) The cache directory, 0700 whatever the umask (an existing one
    that group or others may use is restricted, with a warning)."""
    for w in private_dir(root, "cache directory"):
        log.warn("{problem}", problem=w)


def sweep_tmp(root: Path) -> None:
    """(thread) Empty tmp/ in place (it never disappears, not even for a moment)."""
    make_root(root)
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(tmp):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            silent_unlink(entry.path)


def scan(root: Path) -> dict[str, int]:
    """(thread) digest → size of every blob file under ``root``."""
    make_root(root)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    out: dict[str, int] = {}
    base = root / "blobs"
    if not base.exists():
        return out
    for algo in os.scandir(base):
        if not algo.is_dir():
            continue
        for prefix in os.scandir(algo.path):
            if not prefix.is_dir():
                continue
            for f in os.scandir(prefix.path):
                if f.is_file():
                    out[f"{algo.name}:{f.name}"] = f.stat().st_size
    return out
