#!/usr/bin/env python3
"""The cost of last-pull recording on the warm manifest rate; not a test.

One wired zmirror (``zmirror.wiring.build``, SQLite, anonymous pulls) on 127.0.0.1 in this
process, in front of an in-process fake upstream (``zmirror.testing.FakeRegistry``) that
holds one index and its image manifest.  One pull warms the cache; then ``wrk`` asks for
the tag (``GET /v2/library/bench/manifests/1``, the index's Accept) for ``--seconds`` per
round, rounds alternating recording on / off (``ManifestCache.record_pulls``: every hit
notes the tag's and the body's last pull in memory; the upkeep writes them in one
transaction every 30 s) — so both sides share the machine's state.  The upstream is not
asked during the rounds (the tag is fresh).  Prints one JSON object per round, then the
medians and their ratio (on / off).

    python bench/lastpull_rate.py                      # 3 rounds each, 8 s per round
    python bench/lastpull_rate.py --rounds 2 --seconds 4
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE = "application/vnd.oci.image.manifest.v1+json"


def _wrk(url: str, seconds: int, connections: int) -> dict:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-H", f"Accept: {INDEX}", url],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"req_per_s": rate, "non_2xx": int(non2xx.group(1)) if non2xx else 0}


async def _in_process(c, hits: int) -> dict:
    """The pull path alone (no HTTP): ``hits`` warm tag pulls through the proxy core's
    manifests (``PullThroughManifests.get``), on and off alternately, µs per pull."""
    import time

    from zmirror.oci.names import Repo

    pull = c.proxy.manifest_source
    repo = Repo("docker.io", "library/bench")
    out = {}
    for _ in range(2):
        for on in (True, False):
            c.manifest_cache.record_pulls = on
            t0 = time.perf_counter()
            for _ in range(hits):
                await pull.get(repo, "1", [INDEX])
            us = (time.perf_counter() - t0) / hits * 1e6
            key = "pull_path_us_recording_" + ("on" if on else "off")
            out[key] = round(min(us, out.get(key, us)), 3)
    out["pull_path_added_us"] = round(out["pull_path_us_recording_on"] - out["pull_path_us_recording_off"], 3)
    return out


async def _main(args) -> dict:
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread
    from twisted.web.server import Site

    from tests.fixtures.helpers import start_services, write_default_config
    from zmirror.config import load_config
    from zmirror.db.engine import connect_config, migrate_config
    from zmirror.testing import FakeRegistry
    from zmirror.wiring import build

    up = FakeRegistry()
    body = json.dumps({"schemaVersion": 2, "mediaType": IMAGE, "config": {"digest": "sha256:" + "1" * 64,
                       "size": 2}, "layers": []}).encode()
    img = up.add_manifest("library/bench", None, body, IMAGE)
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": IMAGE, "digest": img, "size": len(body),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    up.add_manifest("library/bench", "1", index, INDEX)
    up_port = reactor.listenTCP(0, Site(up.resource()), interface="127.0.0.1")

    tmp = Path(tempfile.mkdtemp(prefix="zmirror-lastpull-"))
    data = tmp / "data"
    write_default_config(data, {'anonymous = "whitelist"': 'anonymous = "all"'})
    config = load_config(data)
    migrate_config(config)
    conn = connect_config(config)
    conn.execute("UPDATE registries SET url = ?", (f"http://127.0.0.1:{up_port.getHost().port}",))
    conn.close()
    c = build(config, reactor)
    top = start_services(c)
    port = reactor.listenTCP(0, c.site, interface="127.0.0.1", backlog=512)
    url = f"http://127.0.0.1:{port.getHost().port}/v2/library/bench/manifests/1"
    rounds = []
    try:
        await deferToThread(_wrk, url, 2, args.connections)  # warm: the fill, then hits
        warm_gets = _manifest_gets(up)
        manifests = c.manifest_cache
        for i in range(args.rounds * 2):
            on = i % 4 in (0, 3)  # on, off, off, on, ...: a drift of the machine hits both alike
            manifests.record_pulls = on
            r = await deferToThread(_wrk, url, args.seconds, args.connections)
            r.update(round=i, recording=on)
            rounds.append(r)
            print(json.dumps(r), flush=True)
        micro = await _in_process(c, args.hits)
        await c.manifest_cache.flush_pulls()
        row = (await c.db.query("SELECT last_access, fetched_at FROM cache_tags"))[0]
    finally:
        await port.stopListening()
        await top.stopService()
        await c.upstreams.close()
        await up_port.stopListening()
        shutil.rmtree(tmp, ignore_errors=True)
    on = statistics.median(r["req_per_s"] for r in rounds if r["recording"])
    off = statistics.median(r["req_per_s"] for r in rounds if not r["recording"])
    return {"recording_on_req_per_s": on, "recording_off_req_per_s": off, "ratio_on_off": round(on / off, 3),
            **micro,
            "tag_last_access_written": row["last_access"] is not None,
            "upstream_manifest_gets_after_warmup": _manifest_gets(up) - warm_gets}


def _manifest_gets(up) -> int:
    return sum(1 for m, _h, p, _hd in up.requests if m == "GET" and "/manifests/" in p)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds per setting (default 3)")
    p.add_argument("--seconds", type=int, default=8, help="seconds per round (default 8)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--hits", type=int, default=200_000, help="in-process pulls per setting (default 200000)")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed", file=sys.stderr)
        return 1
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    result = {}

    def done(r):
        result.update(r if isinstance(r, dict) else {"error": str(r)})
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(_main(args)).addBoth(done))
    reactor.run()
    print(json.dumps(result, indent=1))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
