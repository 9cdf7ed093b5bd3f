#!/usr/bin/env python3
"""Access-log write rate: the server's batched writer on SQLite and on PostgreSQL; not a test.

For each engine: a fresh database (a temp SQLite file; a fresh database on a throw-away PostgreSQL 15
from ``tests/fixtures/pgserver.py`` on 127.0.0.1), migrated, opened with the server's pools
(``zmirror.db.engine.open_database`` engines), and ``zmirror.accesslog.BatchedAccessLog`` with its defaults
(batches of 500 rows, one multi-row INSERT each).  ``--rows`` records go into the queue in waves of
``--wave`` (the queue is bounded at 200 000), each wave followed by ``flush()``; the figure is rows
written per second of wall time, checked against ``count(*)``.  Prints one JSON object per engine,
then a table.  ``bench/cluster.py`` runs this as its access-log part.

    python bench/accesslog_rate.py                  # 200 000 rows per engine
    python bench/accesslog_rate.py --rows 20000     # a quick run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


async def _rate(db, rows: int, wave: int) -> dict:
    from zmirror.accesslog import AccessRecord, BatchedAccessLog

    log = BatchedAccessLog(db, _reactor())
    now = time.time()
    t0 = time.perf_counter()
    sent = 0
    while sent < rows:
        n = min(wave, rows - sent)
        for i in range(n):
            log.record(AccessRecord(created_at=now + (sent + i) * 1e-4, client_ip="127.0.0.1",
                                    username="bench", method="GET", repository="library/bench",
                                    reference=f"sha256:{sent + i:064x}", kind="blob", status=200,
                                    bytes=1024, duration_ms=1.5, upstream="hub", cache_hit=True,
                                    user_agent="bench/1", namespace="docker.io"))
        sent += n
        await log.flush()
    seconds = time.perf_counter() - t0
    counted = (await db.query("SELECT count(*) AS n FROM access_logs"))[0]["n"]
    await log.stop()
    return {"rows": rows, "written": log.written, "dropped": log.dropped, "in_table": int(counted),
            "seconds": round(seconds, 3), "rows_per_s": round(log.written / seconds)}


def _reactor():
    from twisted.internet import reactor

    return reactor


async def _main(args) -> list[dict]:
    from zmirror.db.sqlite import Database, migrate
    from zmirror.db import postgresql

    out = []
    tmp = Path(tempfile.mkdtemp(prefix="zmirror-alog-"))
    path = tmp / "zmirror.db"
    migrate(path)
    db = Database(path, _reactor())
    db.start()
    try:
        out.append({"engine": "sqlite", **(await _rate(db, args.rows, args.wave))})
    finally:
        db.close()

    from tests.fixtures import pgserver

    srv = pgserver.server()
    if srv is None:
        out.append({"engine": "postgresql", "skipped": pgserver.reason()})
        return out
    import psycopg

    with psycopg.connect(srv.url(), autocommit=True) as conn:
        conn.execute('CREATE DATABASE "bench_alog"')
    url = srv.url("bench_alog")
    postgresql.migrate(url)
    db = postgresql.PostgresDatabase(url, _reactor())
    db.start()
    try:
        out.append({"engine": "postgresql", **(await _rate(db, args.rows, args.wave))})
    finally:
        db.close()
    return out


def run(rows: int = 200_000, wave: int = 50_000) -> list[dict]:
    """Both engines, in this process (its own reactor run); the list of results."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    args = argparse.Namespace(rows=rows, wave=wave)
    result: list = []

    def main(reactor):
        d = Deferred.fromCoroutine(_main(args))
        d.addCallback(result.extend)
        return d

    try:
        react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return result


def table(results: list[dict]) -> str:
    lines = ["| engine | rows | seconds | rows/s | in table | dropped |", "|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['engine']} | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(f"| {r['engine']} | {r['rows']} | {r['seconds']} | {r['rows_per_s']} | "
                     f"{r['in_table']} | {r['dropped']} |")
    rates = {r["engine"]: r.get("rows_per_s") for r in results}
    if rates.get("sqlite") and rates.get("postgresql"):
        lines.append(f"\nPostgreSQL / SQLite: {rates['postgresql'] / rates['sqlite']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--wave", type=int, default=50_000)
    ap.add_argument("--json", action="store_true", help="only the JSON lines")
    a = ap.parse_args()
    res = run(a.rows, a.wave)
    for r in res:
        print(json.dumps(r))
    if not a.json:
        print(table(res))
