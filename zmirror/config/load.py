"""The data directory and ``config.toml`` in it: created on the server's first
start (the data directory 0700, the commented default file ``default.toml``
0600), then read and validated (:func:`load_config`)."""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path

from zmirror.config.files import private_dir
from zmirror.config.parse import parse_config
from zmirror.config.schema import Config, ConfigError

# the file written on first start, byte for byte
DEFAULT_CONFIG = resources.files(__package__).joinpath("default.toml").read_text(encoding="utf-8")


def ensure_data_dir(data_dir: Path) -> list[str]:
    """Create the data directory 0700 (it holds the database with upstream
    passwords and password hashes, the token secret and config.toml) or
    restrict an existing one; returns warnings."""
    try:
        return private_dir(data_dir, "data directory")
    except OSError as e:
        raise ConfigError(f"cannot create data directory {data_dir}: {e.strerror}") from None


def write_default_config(path: Path) -> bool:
    """Write the default config if ``path`` does not exist.  Returns True if written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as e:
        raise ConfigError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(DEFAULT_CONFIG)
    return True


class NoDataDir(ConfigError):
    """The data directory or its config.toml is not there, and was not to be created."""


def load_config(data_dir: str | os.PathLike | None = None, config_path: str | os.PathLike | None = None,
                *, create: bool = True) -> Config:
    """Load and validate the configuration; with ``create`` (the server's start)
    first create the data dir and the default config when missing.

    ``data_dir`` defaults to ``./data``; ``config_path`` to ``<data_dir>/config.toml``.
    Without ``create`` (the ``zmirror`` commands) nothing is created: a missing
    data directory or config file raises :class:`NoDataDir` naming the path.
    """
    ddir = Path(os.path.abspath(data_dir or "data"))
    cpath = Path(os.path.abspath(config_path)) if config_path else ddir / "config.toml"
    written = False
    if create:
        mode_warnings = ensure_data_dir(ddir)
        if config_path is None:
            written = write_default_config(cpath)
    else:
        if config_path is None and not cpath.is_file():
            why = "no such directory" if not ddir.exists() else f"{cpath}: no such file"
            raise NoDataDir(f"no ZMirror data directory at {ddir} ({why}); point to one with "
                            f"--data DIR (or ZMIRROR_DATA) or --config FILE; the server creates "
                            f"a new one on its first start (twistd -n zmirror --data DIR)")
        mode_warnings = ensure_data_dir(ddir) if ddir.is_dir() else []
    try:
        text = cpath.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{cpath}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{cpath}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{cpath}: cannot read: {e.strerror}") from None
    # a file just written is the current default: nothing on disk to look for
    cfg = parse_config(text, data_dir=ddir, config_path=cpath, probe=not written)
    if mode_warnings:
        cfg = dataclasses.replace(cfg, warnings=tuple(mode_warnings) + cfg.warnings)
    return cfg
