#!/usr/bin/env python3
"""One node against two nodes behind nginx, and the access-log write rate on SQLite against
PostgreSQL, in one run; not a test.

Starts with ``tests/e2e/cluster.py`` (everything on 127.0.0.1 in a temp dir): a real PostgreSQL 15,
one open Debian ``docker-registry`` as the upstream, two ``twistd zmirror`` nodes on that database
(cache on) and Debian's nginx with the shipped ``docs/cluster/nginx.conf`` in front of both; and a
second nginx, rendered from the same file, in front of node 1 only.  The upstream holds ``--blobs``
images, each with its own ``--mib`` MiB random layer.  Three ways in are compared:

- ``node``: node 1 directly;
- ``nginx→1``: nginx with node 1 alone (what nginx itself costs);
- ``nginx→2``: nginx with both nodes (blobs by digest to their home node, the rest round-robin);
- ``2 nodes``: both nodes directly, the clients split between them (what the nodes scale to
  without nginx's share of the CPU).

Measured for each (every layer is pulled through node 1, node 2 and nginx first, so the caches are warm):

1. manifest GET by digest: ``wrk -t2 -c32 -d{--seconds}s`` with the OCI manifest Accept line
   (``2 nodes``: one ``wrk -t1 -c16`` per node at once, summed), requests/s (non-2xx and socket
   errors are reported);
2. warm blob aggregate: ``--clients`` curl clients at once, client k GETs layer k mod ``--blobs``
   (``2 nodes``: from node k mod 2),
   ``--rounds`` rounds; the aggregate is all bytes / wall time, best round; every curl must end
   with the whole size (curl -f).

Then ``bench/accesslog_rate.py`` in a child process: the batched access-log writer's rows/s on a
SQLite file and on PostgreSQL.

This machine has 2 cores that wrk, curl, nginx, PostgreSQL and the nodes share: compare the ratios
of one run, not absolute figures across runs.

    python bench/cluster.py                         # 8 x 64 MiB layers, 10 s wrk runs, 3 rounds
    python bench/cluster.py --mib 16 --seconds 3 --rounds 1 --alog-rows 20000   # a quick run
    python bench/cluster.py --blobs 4 --buffer-sizes 16k,128k,512k,1m   # nginx's blob buffer size only
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.httpclient import fetch  # noqa: E402
from tests.e2e.images import Blob, Image, build_big_image  # noqa: E402
from tests.e2e.processes import spawn, wait_http  # noqa: E402
from tests.fixtures.helpers import free_port  # noqa: E402
from tests.e2e.cluster import Cluster, nginx_argv, render_nginx  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def wrk(urls: list[str], seconds: float, accept: str) -> dict:
    """``wrk -t2 -c32`` on one URL; on several, one ``wrk -t1 -c{32/n}`` per URL at once (summed)."""
    n = len(urls)
    threads, conns = ("-t2", "-c32") if n == 1 else ("-t1", f"-c{32 // n}")
    procs = [subprocess.Popen(["wrk", threads, conns, f"-d{seconds:g}s", "-H", f"Accept: {accept}", u],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for u in urls]
    total = {"rps": 0.0, "errors": 0}
    for p, u in zip(procs, urls):
        out, err = p.communicate(timeout=seconds + 60)
        one = _wrk_result(u, out, err)
        total["rps"] += one["rps"]
        total["errors"] += one["errors"]
    return total


def _wrk_result(url: str, text: str, stderr: str) -> dict:
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = 0
    m2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m2:
        errors += int(m2.group(1))
    m3 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m3:
        errors += sum(int(x) for x in m3.groups())
    if not m:
        raise RuntimeError(f"wrk {url}: no result: {text} {stderr}")
    return {"rps": float(m.group(1)), "errors": errors}


def blobs_at_once(bases: list[str], blobs: list[tuple[str, Blob]], clients: int) -> float:
    """``clients`` curls at once, client k on blob k mod len(blobs) from base k mod len(bases);
    aggregate MB/s."""
    jobs = [blobs[k % len(blobs)] for k in range(clients)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download}",
                               f"{bases[k % len(bases)]}/v2/{repo}/blobs/{b.digest}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k, (repo, b) in enumerate(jobs)]
    total = 0
    for p, (repo, b) in zip(procs, jobs):
        out, err = p.communicate(timeout=600)
        if p.returncode != 0 or int(out or 0) != b.size:
            raise RuntimeError(f"curl {repo}@{b.digest[:19]}: exit {p.returncode}, {out!r} bytes of "
                               f"{b.size}: {err.decode(errors='replace').strip()}")
        total += b.size
    return total / (time.perf_counter() - t0) / 1e6


def build_layers(root: Path, n: int, mib: int) -> list[Image]:
    return [build_big_image(root / f"b{i}", mib, repo=f"bench/b{i}", tag="1", seed=1000 + i)
            for i in range(n)]


def warm(base: str, images: list[Image]) -> None:
    for img in images:
        for b in img.blobs:
            r = fetch(f"{base}/v2/{img.repo}/blobs/{b.digest}")
            if r.status != 200 or r.error is not None or r.digest != b.digest:
                raise RuntimeError(f"warming {img.repo}@{b.digest[:19]}: {r!r}")


def alog(rows: int) -> list[dict]:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "accesslog_rate.py"), "--rows", str(rows),
                          "--json"], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"accesslog_rate.py: exit {out.returncode}: {out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def buffer_sizes(args, sizes: list[str]) -> None:
    """``--buffer-sizes``: one node, one nginx per blob ``proxy_buffer_size`` (the shipped config
    with only that changed), the warm blob aggregate through each, rounds interleaved."""
    with Cluster(nodes=1, images=["oci"]).start() as c:
        images = build_layers(c.root / "bench-images", args.blobs, args.mib)
        c.h.push_many([(img, c.registry) for img in images])
        ways = {"node": [c.nodes[0].url]}
        for size in sizes:
            port = free_port()
            conf = render_nginx(c.root / f"nginx-{size}", listen_port=port, nodes=[c.nodes[0].host])
            text = conf.read_text()
            changed, n = re.subn(r"(proxy_buffer_size|proxy_busy_buffers_size|proxy_buffers 4) 512k;",
                                 rf"\1 {size};", text)
            if n != 3:
                raise RuntimeError("the shipped nginx.conf has no 512k blob buffers to vary")
            conf.write_text(changed)
            proc = spawn(f"nginx-{size}", nginx_argv(conf), c.root / "logs" / f"nginx-{size}.log")
            c.h.procs.append(proc)
            wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=30)
            ways[f"nginx {size}"] = [f"http://127.0.0.1:{port}"]
        warm(c.nodes[0].url, images)
        layers = [(img.repo, img.blobs[1]) for img in images]
        res: dict = {k: [] for k in ways}
        for _ in range(args.rounds):
            for name, bases in ways.items():
                res[name].append(round(blobs_at_once(bases, layers, args.clients)))
    print(f"| way in | warm blobs, {args.clients} clients over {args.blobs} × {args.mib} MiB, MB/s per round |")
    print("|---|---|")
    for name, rounds in res.items():
        print(f"| {name} | {rounds} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blobs", type=int, default=8, help="images, one big layer each")
    ap.add_argument("--mib", type=int, default=64, help="size of each big layer")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="each wrk run")
    ap.add_argument("--alog-rows", type=int, default=200_000)
    ap.add_argument("--buffer-sizes", default="",
                    help="only compare nginx blob proxy_buffer_size values, e.g. 16k,128k,512k,1m")
    args = ap.parse_args()
    for tool in ("wrk", "curl"):
        if not shutil.which(tool):
            sys.exit(f"bench/cluster.py needs {tool} (apt-get install {tool})")
    if args.buffer_sizes:
        buffer_sizes(args, [x.strip() for x in args.buffer_sizes.split(",") if x.strip()])
        return

    results: dict = {"args": vars(args)}
    with Cluster(nodes=2, images=["oci"]).start() as c:
        images = build_layers(c.root / "bench-images", args.blobs, args.mib)
        c.h.push_many([(img, c.registry) for img in images])
        port = free_port()
        conf = render_nginx(c.root / "nginx-one", listen_port=port, nodes=[c.nodes[0].host])
        one = spawn("nginx-one", nginx_argv(conf), c.root / "logs" / "nginx-one.log")
        c.h.procs.append(one)
        wait_http(f"http://127.0.0.1:{port}/healthz", one, timeout=30)
        ways = {"node": [c.nodes[0].url], "nginx→1": [f"http://127.0.0.1:{port}"],
                "nginx→2": [c.nginx_url], "2 nodes": [c.nodes[0].url, c.nodes[1].url]}
        for base in (c.nodes[0].url, c.nodes[1].url, c.nginx_url):
            warm(base, images)
        layers = [(img.repo, img.blobs[1]) for img in images]  # blobs[0] is the config
        man = images[0]
        for name, bases in ways.items():
            r = wrk([f"{b}/v2/{man.repo}/manifests/{man.digest}" for b in bases], args.seconds, OCI_MANIFEST)
            results.setdefault("manifest", {})[name] = r
            print(f"manifest GET by digest {name:8} {r['rps']:8.0f} req/s  errors {r['errors']}",
                  file=sys.stderr)
        for name, bases in ways.items():
            rounds = [blobs_at_once(bases, layers, args.clients) for _ in range(args.rounds)]
            results.setdefault("blobs", {})[name] = {"rounds": [round(x) for x in rounds],
                                                      "best": round(max(rounds))}
            print(f"warm x{args.clients} blobs  {name:8} {max(rounds):8.0f} MB/s  rounds "
                  f"{[round(x) for x in rounds]}", file=sys.stderr)
    results["accesslog"] = alog(args.alog_rows)
    print(json.dumps(results), file=sys.stderr)
    print(report(results))


def report(r: dict) -> str:
    a = r["args"]
    m, b = r["manifest"], r["blobs"]
    lines = [
        "| measurement | node 1 direct | 2 nodes direct (clients split) | nginx → node 1 | nginx → 2 nodes |"
        " 2 ÷ 1 node via nginx | 2 ÷ 1 node direct |",
        "|---|---|---|---|---|---|---|",
        f"| manifest GET by digest (wrk, 32 connections) | {m['node']['rps']:.0f} req/s | "
        f"{m['2 nodes']['rps']:.0f} req/s | {m['nginx→1']['rps']:.0f} req/s | {m['nginx→2']['rps']:.0f} req/s | "
        f"{m['nginx→2']['rps'] / m['nginx→1']['rps']:.2f}× | {m['2 nodes']['rps'] / m['node']['rps']:.2f}× |",
        f"| warm blobs, {a['clients']} clients over {a['blobs']} × {a['mib']} MiB layers (aggregate) | "
        f"{b['node']['best']} MB/s | {b['2 nodes']['best']} MB/s | {b['nginx→1']['best']} MB/s | "
        f"{b['nginx→2']['best']} MB/s | {b['nginx→2']['best'] / b['nginx→1']['best']:.2f}× | "
        f"{b['2 nodes']['best'] / b['node']['best']:.2f}× |",
    ]
    errs = sum(v["errors"] for v in m.values())
    if errs:
        lines.append(f"\n**wrk saw {errs} errors** (non-2xx or socket): {json.dumps(m)}")
    lines.append("")
    lines.append("| access-log writer | rows | rows/s |")
    lines.append("|---|---|---|")
    rates = {}
    for x in r["accesslog"]:
        if "skipped" in x:
            lines.append(f"| {x['engine']} | skipped: {x['skipped']} | |")
            continue
        rates[x["engine"]] = x["rows_per_s"]
        lines.append(f"| {x['engine']} | {x['in_table']} of {x['rows']} | {x['rows_per_s']} |")
    if len(rates) == 2:
        lines.append(f"\nPostgreSQL ÷ SQLite: {rates['postgresql'] / rates['sqlite']:.2f}×")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
