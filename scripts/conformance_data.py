"""Prepare and adjust a zmirror data directory for scripts/conformance.sh (not part of the service).

    conformance_data.py init DATA PORT UPSTREAM_URL   config.toml (127.0.0.1:PORT, random admin password,
                                                      anonymous = "whitelist", cache on) + a migrated
                                                      database whose registries table lists only UPSTREAM_URL
    conformance_data.py whitelist DATA PREFIX on|off  add / enable / disable one whitelist entry

The ``zmirror`` CLI has no commands for registries or whitelist entries, so this writes the two rows
with :mod:`sqlite3` after :func:`zmirror.db.sqlite.migrate`, as tests/e2e/harness.py does (the server polls
the database and picks a change up within about 2 s).  Users are created with ``zmirror user add``.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import sys
import time
from pathlib import Path

CONFIG = """# written by scripts/conformance_data.py for the OCI conformance run
[server]
host = "127.0.0.1"
port = {port}

[admin]
username = "admin"
password = "{admin_password}"

[database]
path = {db}

[access]
anonymous = "whitelist"

[upstream]
connect_timeout = 5
idle_timeout = 30
cooldown = 5

[cache]
enabled = true
dir = {cache}
"""


def _connect(data: Path) -> sqlite3.Connection:
    from zmirror.db.sqlite import configure, migrate

    db = data / "registry.db"
    migrate(db)
    conn = sqlite3.connect(str(db), isolation_level=None)
    configure(conn)
    return conn


def init(data: Path, port: int, upstream: str) -> None:
    from zmirror.db.registries import normalize_url

    data.mkdir(parents=True, exist_ok=True)
    config = data / "config.toml"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(CONFIG.format(port=port, admin_password=secrets.token_hex(16),
                              db=json.dumps(str(data / "registry.db")), cache=json.dumps(str(data / "cache"))))
    url = normalize_url(upstream)
    now = time.time()
    conn = _connect(data)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM registries")
        conn.execute("INSERT INTO registries (name, url, priority, enabled, username, password, created_at,"
                     " updated_at) VALUES (?, ?, 1, 1, '', '', ?, ?)", ("conformance-upstream", url, now, now))
        conn.execute("COMMIT")
    finally:
        conn.close()


def whitelist(data: Path, prefix: str, on: bool) -> None:
    from zmirror.auth.whitelist import validate_prefix

    prefix = validate_prefix(prefix)
    now = time.time()
    conn = _connect(data)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO whitelists (prefix, enabled, note, created_at, updated_at)"
                     " VALUES (?, ?, 'conformance', ?, ?)"
                     " ON CONFLICT(prefix) DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at",
                     (prefix, int(on), now, now))
        conn.execute("COMMIT")
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    from zmirror.db.errors import DatabaseError
    from zmirror.db.users import InvalidField

    try:
        if len(argv) == 4 and argv[0] == "init":
            init(Path(argv[1]).resolve(), int(argv[2]), argv[3])
        elif len(argv) == 4 and argv[0] == "whitelist" and argv[3] in ("on", "off"):
            whitelist(Path(argv[1]).resolve(), argv[2], argv[3] == "on")
        else:
            print(__doc__.strip().split("\n\n")[0], file=sys.stderr)
            return 2
    except InvalidField as e:
        print(f"conformance_data: {e.field}: {e.message}", file=sys.stderr)
        return 1
    except (ValueError, OSError, sqlite3.Error, DatabaseError) as e:
        print(f"conformance_data: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
