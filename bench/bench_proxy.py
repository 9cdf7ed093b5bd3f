#!/usr/bin/env python3
"""Benchmark: a real registry direct vs through ``twistd zmirror``. Not a test.

Starts (with tests/e2e/harness.py, everything on 127.0.0.1 in a temp dir) one
open distribution registry holding an image with a ``--mib`` MiB random layer,
and one zmirror instance whose only upstream is that registry (pull-through
cache off unless ``--cache``). Then measures:

1. the big blob, one stream: direct vs zmirror (MB/s, best of ``--repeat``);
2. the big blob, ``--concurrency`` streams at once: aggregate MB/s;
3. manifest GET by tag: requests/s from ``--connections`` keep-alive
   connections for ``--seconds`` s (asyncio client, skopeo's Accept lines);
4. zmirror's memory: VmRSS sampled every 20 ms from /proc/PID/status during
   each phase, and VmHWM (peak) at the end.

Blob downloads use ``curl -o /dev/null`` when curl is installed (else a Python
reader that discards). The client, the registry and zmirror share the machine's
cores, so compare ratios, not absolute figures, across machines.

    python bench/bench_proxy.py                 # 256 MiB, 8 streams, 3 repeats, 5 s of manifests
    python bench/bench_proxy.py --mib 32 --repeat 1 --seconds 2    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e import harness as H
from tests.e2e.images import MANIFEST_ACCEPT, MiB, build_big_image
from tests.e2e.processes import HarnessError

TARGET_SINGLE_RATIO = 0.45
TARGET_PEAK_RSS_MIB = 100


# --------------------------------------------------------------------------- memory


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of ``pid`` in KiB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


class RSSSampler:
    """Max VmRSS of a process while the ``with`` block runs."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.max_kib = 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.max_kib = max(self.max_kib, proc_status(self.pid).get("VmRSS", 0))
            self._stop.wait(self.interval)

    def __enter__(self):
        self.max_kib = proc_status(self.pid).get("VmRSS", 0)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.max_kib = max(self.max_kib, proc_status(self.pid).get("VmRSS", 0))

    @property
    def max_mib(self) -> float:
        return self.max_kib / 1024


# --------------------------------------------------------------------------- blob clients


def _python_get(url: str, verify: str | None = None) -> int:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    conn.request("GET", u.path)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"GET {url}: HTTP {resp.status} {resp.read(300)!r}")
    h = hashlib.sha256() if verify else None
    n = 0
    while True:
        chunk = resp.read(1024 * 1024)
        if not chunk:
            break
        n += len(chunk)
        if h:
            h.update(chunk)
    conn.close()
    if verify and "sha256:" + h.hexdigest() != verify:
        raise RuntimeError(f"GET {url}: body does not match {verify}")
    return n


def fetch_many(url: str, count: int, expected: int) -> float:
    """Downloads ``url`` ``count`` times at once; returns aggregate MB/s (10^6 bytes/s)."""
    t0 = time.monotonic()
    if shutil.which("curl"):
        procs = [subprocess.Popen(["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download}", url],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(count)]
        sizes = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"curl {url}: exit {p.returncode}: {err.decode(errors='replace').strip()}")
            sizes.append(int(out or 0))
    else:
        sizes, errors = [], []

        def one():
            try:
                sizes.append(_python_get(url))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        ts = [threading.Thread(target=one) for _ in range(count)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise RuntimeError(str(errors[0]))
    wall = time.monotonic() - t0
    bad = [s for s in sizes if s != expected]
    if bad:
        raise RuntimeError(f"{url}: got {bad[0]} bytes, expected {expected} (truncated?)")
    return sum(sizes) / wall / 1e6


# --------------------------------------------------------------------------- manifest client


async def _manifest_conn(host: str, port: int, path: str, deadline: float, stats: dict) -> None:
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: zmirror-bench\r\n"
           + "".join(f"Accept: {t}\r\n" for t in MANIFEST_ACCEPT) + "\r\n").encode()
    reader = writer = None
    while time.monotonic() < deadline:
        if writer is None:
            reader, writer = await asyncio.open_connection(host, port)
        writer.write(req)
        status = await reader.readline()
        length, close = 0, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "connection" and "close" in v.lower():
                close = True
        if length:
            await reader.readexactly(length)
        if status.split(b" ", 2)[1:2] == [b"200"]:
            stats["ok"] += 1
        else:
            stats["bad"] += 1
            stats["last_bad"] = status.decode("latin-1").strip()
        if close or not status:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def manifest_rps(base: str, repo: str, tag: str, connections: int, seconds: float) -> tuple[float, dict]:
    u = urllib.parse.urlsplit(base)
    stats = {"ok": 0, "bad": 0}

    async def main():
        deadline = time.monotonic() + seconds
        await asyncio.gather(*[_manifest_conn(u.hostname, u.port, f"/v2/{repo}/manifests/{tag}", deadline, stats)
                               for _ in range(connections)])

    t0 = time.monotonic()
    asyncio.run(main())
    return stats["ok"] / (time.monotonic() - t0), stats


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="size of the big layer in MiB (default 256)")
    ap.add_argument("--concurrency", type=int, default=8, help="parallel blob streams (default 8)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per blob figure, best is kept (default 3)")
    ap.add_argument("--seconds", type=float, default=5.0, help="manifest benchmark duration (default 5)")
    ap.add_argument("--connections", type=int, default=16, help="manifest client connections (default 16)")
    ap.add_argument("--cache", action="store_true", help="enable zmirror's pull-through cache (default off)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a = ap.parse_args(argv)

    why = H.missing_tools()
    if why:
        print(f"bench: {why}", file=sys.stderr)
        return 2
    h = H.Harness(keep=a.keep)
    try:
        t0 = time.monotonic()
        reg = h.start_open("open")
        img = build_big_image(h.root / "images" / "big", a.mib, repo="bench/big", tag="1")
        h.push(img, reg)
        zm = h.start_zmirror("bench", [H.Upstream("open", reg.url)], cache=a.cache)
        blob = img.largest_blob()
        print(f"setup {time.monotonic() - t0:.1f}s: registry {reg.url}, zmirror {zm.url} (pid {zm.proc.pid}), "
              f"blob {blob.digest[:19]}… {blob.size / MiB:.1f} MiB, client "
              f"{'curl' if shutil.which('curl') else 'python'}", flush=True)
        path = f"/v2/{img.repo}/blobs/{blob.digest}"
        direct, proxied = reg.url + path, zm.url + path

        # correctness first: one full read through zmirror with sha256
        _python_get(proxied, verify=blob.digest)
        idle_rss = proc_status(zm.proc.pid).get("VmRSS", 0) / 1024

        res: dict = {"mib": a.mib, "concurrency": a.concurrency, "cache": a.cache, "idle_rss_mib": idle_rss}
        res["single_direct"] = max(fetch_many(direct, 1, blob.size) for _ in range(a.repeat))
        with RSSSampler(zm.proc.pid) as s1:
            res["single_zmirror"] = max(fetch_many(proxied, 1, blob.size) for _ in range(a.repeat))
        res["single_rss_mib"] = s1.max_mib
        res["multi_direct"] = max(fetch_many(direct, a.concurrency, blob.size) for _ in range(a.repeat))
        with RSSSampler(zm.proc.pid) as s8:
            res["multi_zmirror"] = max(fetch_many(proxied, a.concurrency, blob.size) for _ in range(a.repeat))
        res["multi_rss_mib"] = s8.max_mib
        res["manifest_direct"], st_d = manifest_rps(reg.url, img.repo, img.tag, a.connections, a.seconds)
        with RSSSampler(zm.proc.pid) as sm:
            res["manifest_zmirror"], st_z = manifest_rps(zm.url, img.repo, img.tag, a.connections, a.seconds)
        res["manifest_rss_mib"] = sm.max_mib
        res["manifest_errors"] = {"direct": st_d, "zmirror": st_z}
        res["vmhwm_mib"] = proc_status(zm.proc.pid).get("VmHWM", 0) / 1024
        report(res, a)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
        ok = (res["single_zmirror"] >= TARGET_SINGLE_RATIO * res["single_direct"]
              and max(res["multi_rss_mib"], res["vmhwm_mib"]) <= TARGET_PEAK_RSS_MIB)
        return 0 if ok else 1
    except (HarnessError, RuntimeError, OSError) as e:
        print(f"bench: failed: {e}", file=sys.stderr)
        for p in h.procs:
            print(f"--- {p.name} log tail ---\n{p.tail(20)}", file=sys.stderr)
        return 2
    finally:
        h.stop()


def report(r: dict, a) -> None:
    def row(label, d, z, unit, fmt="{:.0f}"):
        ratio = z / d if d else float("nan")
        print(f"| {label:<38} | {fmt.format(d) + ' ' + unit:>14} | {fmt.format(z) + ' ' + unit:>14} | {ratio:5.2f}× |")

    print()
    print(f"| {'measure':<38} | {'direct':>14} | {'zmirror':>14} | ratio |")
    print(f"|{'-' * 40}|{'-' * 16}|{'-' * 16}|-------|")
    row(f"blob {a.mib} MiB, 1 stream", r["single_direct"], r["single_zmirror"], "MB/s")
    row(f"blob {a.mib} MiB, {a.concurrency} streams (aggregate)", r["multi_direct"], r["multi_zmirror"], "MB/s")
    row(f"manifest GET by tag ({a.connections} conns)", r["manifest_direct"], r["manifest_zmirror"], "req/s")
    print()
    print(f"zmirror RSS: idle {r['idle_rss_mib']:.1f} MiB; max VmRSS during 1 stream {r['single_rss_mib']:.1f} MiB, "
          f"{a.concurrency} streams {r['multi_rss_mib']:.1f} MiB, manifests {r['manifest_rss_mib']:.1f} MiB; "
          f"VmHWM {r['vmhwm_mib']:.1f} MiB")
    errs = r["manifest_errors"]
    if errs["direct"]["bad"] or errs["zmirror"]["bad"]:
        print(f"manifest non-200 answers: {errs}")
    single = r["single_zmirror"] / r["single_direct"] if r["single_direct"] else 0
    peak = max(r["multi_rss_mib"], r["vmhwm_mib"])
    print(f"target single stream >= {TARGET_SINGLE_RATIO}× direct: {single:.2f}× "
          f"{'PASS' if single >= TARGET_SINGLE_RATIO else 'FAIL'}; "
          f"target peak RSS <= {TARGET_PEAK_RSS_MIB} MiB: {peak:.1f} MiB "
          f"{'PASS' if peak <= TARGET_PEAK_RSS_MIB else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
