"""``[admin] password`` of ``config.toml``: the rules a new admin password
follows, and the file edited in place (tomlkit keeps every comment; the result
is validated before the file is atomically replaced)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from zmirror.config.files import write_preserving_mode
from zmirror.config.parse import parse_config
from zmirror.config.passwordpolicy import PASSWORD_POLICY
from zmirror.config.schema import DEFAULT_ADMIN_PASSWORD, Config, ConfigError

ADMIN_PASSWORD_MIN = PASSWORD_POLICY.min_length
ADMIN_PASSWORD_MAX = PASSWORD_POLICY.max_length


def admin_password_problem(password: Any) -> str | None:
    """Why ``password`` cannot be the new admin password (a field message), or None.

    The same rules for ``PUT /api/me/password`` and ``zmirror admin-password``:
    the one password policy (:data:`~zmirror.config.passwordpolicy.PASSWORD_POLICY`,
    the registry users' too), and not the well-known default."""
    problem = PASSWORD_POLICY.problem(password)
    if problem is not None:
        return problem
    if password == DEFAULT_ADMIN_PASSWORD:
        return "must not be the default password"
    return None


def set_admin_password_text(text: str, value: str) -> str:
    """``text`` (config.toml) with ``[admin] password`` set to ``value``.

    Edited with tomlkit, so every comment, blank line and other value stays as it
    was; a missing ``[admin]`` table is added.  Raises :class:`ConfigError` when
    ``text`` is not TOML or ``admin`` is not a table.
    """
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as e:
        raise ConfigError(f"invalid TOML: {e}") from None
    admin = doc.get("admin")
    if admin is None:
        doc.add("admin", tomlkit.table())
        admin = doc["admin"]
    elif not isinstance(admin, dict):
        raise ConfigError("admin: expected a table [admin]")
    admin["password"] = value
    return tomlkit.dumps(doc)


# one read-modify-write of a config file at a time in this process (API requests
# run it in threads; the file itself is replaced atomically)
_write_lock = threading.Lock()


def update_admin_password(config_path: Path, value: str, *, data_dir: Path) -> Config:
    """Set ``[admin] password`` of the file at ``config_path`` to ``value`` (a hash).

    Blocking (call it off the reactor thread).  The result is validated with
    :func:`parse_config` before the file is replaced, so a file the server
    would refuse is never written; returns the configuration the new file
    holds.  Raises :class:`ConfigError` (missing, unreadable or invalid file)
    or :class:`OSError` (cannot write).
    """
    path = Path(config_path)
    with _write_lock:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        parse_config(text, data_dir=data_dir, config_path=path)  # the file as it is must be valid
        try:
            new_text = set_admin_password_text(text, value)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        new = parse_config(new_text, data_dir=data_dir, config_path=path)
        if new.admin.password != value:
            raise ConfigError(f"{path}: [admin] password could not be set")
        write_preserving_mode(path, new_text)
        return new
