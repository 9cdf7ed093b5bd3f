"""The relative paths of ``config.toml`` (``[database] path``, ``[cache] dir``):
read inside the data directory, except in a file written when they were read
against the data directory's parent, which keeps finding its files.

The rule for such a key (:func:`place_old_paths`), each use noted in one warning:

* the form the generated file had, ``./data/…`` in a data directory named
  ``data``, is read against the parent (the same place it always named);
* with ``probe`` (a file read from disk, not one just written): a relative path
  that names nothing inside the data directory while, read against the parent,
  it names what the key is for (a SQLite database, a blob cache) is read against
  the parent;  an absent key likewise, with the earlier default ``./data/…``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePath

from zmirror.config.schema import Config

# key -> (section, field, the default before relative paths meant the data directory)
PATH_KEYS = {
    "database.path": ("database", "path", "./data/registry.db"),
    "cache.dir": ("cache", "dir", "./data/cache"),
}

_SQLITE_HEADER = b"SQLite format 3\x00"
# what a blob cache directory holds (zmirror.cache: the lock, the blob tree, the node's index)
_CACHE_MARKS = ("zmirror.lock", "blobs", "index.sqlite")


def generated_form(data_dir: Path, value: str) -> bool:
    """``value`` is the form an earlier generated file had: ``./data/…`` (or
    ``data/…``) in a data directory named ``data``."""
    path = PurePath(value)
    if path.is_absolute() or data_dir.name != "data":
        return False
    parts = [p for p in path.parts if p != "."]
    return len(parts) > 1 and parts[0] == "data"


def holds(key: str, path: Path) -> bool:
    """``path`` holds what ``key`` is for: a SQLite database file, a blob cache
    directory.  Blocking (a stat, 16 bytes read)."""
    if key == "database.path":
        try:
            with open(path, "rb") as f:
                return f.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
        except OSError:
            return False
    try:
        return path.is_dir() and any((path / mark).exists() for mark in _CACHE_MARKS)
    except OSError:
        return False


def _shown(path: Path, data_dir: Path) -> str:
    """``path`` as the file should say it: relative when inside the data directory."""
    try:
        return Path(os.path.relpath(path, data_dir)).as_posix() if path.is_relative_to(data_dir) \
            else str(path)
    except ValueError:
        return str(path)


def place_old_paths(cfg: Config, absent: frozenset[str], *, probe: bool) -> Config:
    """``cfg`` with :attr:`Config.parent_relative` (and an absent key's earlier
    default) set where the rule above says, and a warning for each.  ``absent``:
    the path keys the file does not set.  ``probe``: look at the disk (blocking)."""
    parent_relative = set(cfg.parent_relative)
    warnings = list(cfg.warnings)
    replaced = {}
    for key, (section, name, old_default) in PATH_KEYS.items():
        if key == "database.path" and cfg.database.url:
            continue  # PostgreSQL: the path is not used
        if key == "cache.dir" and not cfg.cache.enabled:
            continue
        value = getattr(getattr(cfg, section), name)
        if PurePath(value).is_absolute():
            continue
        here = cfg.data_dir / value
        if key in absent:
            old = cfg.data_dir.parent / old_default
            if not (probe and not here.exists() and holds(key, old)):
                continue
            replaced[section] = dataclasses.replace(getattr(cfg, section), **{name: old_default})
            why = f"{key} is not set: its earlier default {old_default!r} is read against the " \
                  f"data directory's parent, where it was found"
        elif generated_form(cfg.data_dir, value):
            old = cfg.data_dir.parent / value
            why = f"{key} = {value!r} is read against the data directory's parent (the form " \
                  f"earlier versions wrote)"
        else:
            old = cfg.data_dir.parent / value
            if not (probe and not here.exists() and holds(key, old)):
                continue
            why = f"{key} = {value!r} is read against the data directory's parent (as earlier " \
                  f"versions did), where it was found"
        old = Path(os.path.normpath(old))
        parent_relative.add(key)
        warnings.append(f"{cfg.config_path}: {why}: {old}; write {key} = "
                        f"{_shown(old, cfg.data_dir)!r} (relative paths are now read inside the "
                        f"data directory)")
    if not parent_relative - set(cfg.parent_relative):
        return cfg
    return dataclasses.replace(cfg, **replaced, parent_relative=frozenset(parent_relative),
                               warnings=tuple(warnings))
