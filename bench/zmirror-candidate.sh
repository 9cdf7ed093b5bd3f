#!/usr/bin/env bash
# Starts zmirror as the candidate of ../shared/bench (see bench/README.md):
# proxies $BENCH_UPSTREAM anonymously on 127.0.0.1:$BENCH_PORT with its data and
# cache under $BENCH_CACHE_DIR. Runs in the foreground (exec twistd -n).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
venv=${ZMIRROR_VENV:-$repo/.venv}
[ -x "$venv/bin/twistd" ] || venv=$(dirname "$(dirname "$(command -v twistd)")")
data=$BENCH_CACHE_DIR/data
mkdir -p "$data"
cat > "$data/config.toml" <<CONF
[access]
anonymous = "all"
[cache]
enabled = ${ZMIRROR_CACHE:-true}
CONF
chmod 600 "$data/config.toml"
"$venv/bin/python" - "$data/registry.db" "$BENCH_UPSTREAM" <<'PY'
import sqlite3, sys
from pathlib import Path
from zmirror.db.sqlite import migrate
path, url = Path(sys.argv[1]), sys.argv[2]
migrate(path)
c = sqlite3.connect(path)
c.execute("DELETE FROM registries")
c.execute("INSERT INTO registries (name, url, priority, enabled, created_at, updated_at) "
          "VALUES ('bench', ?, 1, 1, 0, 0)", (url,))
c.commit()
PY
cd "$BENCH_CACHE_DIR"
exec "$venv/bin/twistd" -n --pidfile= zmirror --data "$data" --listen "tcp:$BENCH_PORT:interface=127.0.0.1"
