#!/usr/bin/env python3
"""Per-round ratios of the candidate to each peer from a peer-benchmark results.jsonl
(bench/peers.sh writes $BENCH_STATE/results.jsonl; copies under $BENCH_STATE/results/).
The peer table gives ratios to the distribution proxy and to upstream direct only; this
adds the candidate ÷ nginx (and ÷ any other target) taken within each round, the same way.
    python3 bench/peer_ratios.py [RESULTS.jsonl ...]   (default: the newest run)
"""
import glob
import json
import os
import statistics
import sys
from collections import defaultdict


def fmt(xs):
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}..{max(xs):.2f}]"


def report(path):
    meta, rows = {}, defaultdict(dict)
    for line in open(path):
        r = json.loads(line)
        if r.get("type") == "meta":
            meta = r
        elif r.get("type") == "sample" and "round" in r:
            rows[(r["metric"], r["round"])][r["target"]] = r
    print(f"{path}: {meta.get('started', '?')}, candidate {meta.get('candidate_name', '?')}")
    for metric in dict.fromkeys(m for m, _ in rows):
        rounds = [v for (m, _), v in sorted(rows.items()) if m == metric]
        if not any("candidate" in r for r in rounds):
            continue
        vals = [r["candidate"]["value"] for r in rounds if "candidate" in r]
        line = f"  {metric}: candidate {statistics.median(vals):.0f} {rounds[0]['candidate']['unit']}"
        for peer in ("distribution", "nginx", "upstream"):
            ratios = [r["candidate"]["value"] / r[peer]["value"] for r in rounds
                      if "candidate" in r and peer in r and r[peer]["value"]]
            if ratios:
                line += f"; ÷ {peer} {fmt(ratios)}"
        print(line)
        firsts = []
        for t in ("upstream", "distribution", "nginx", "candidate"):
            ms = [r[t]["ttfb_ms"] for r in rounds if r.get(t, {}).get("ttfb_ms") is not None]
            if ms:
                firsts.append(f"{t} {statistics.median(ms):.1f}")
        if firsts:
            print("    first byte, median ms: " + ", ".join(firsts))


if __name__ == "__main__":
    state = os.environ.get("BENCH_STATE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "zmirror-bench"))
    paths = sys.argv[1:] or sorted(glob.glob(os.path.join(state, "results", "*.jsonl")))[-1:]
    for p in paths:
        report(p)
