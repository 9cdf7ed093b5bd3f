#!/usr/bin/env python3
"""Cold blob GETs through zmirror under random upstream faults; not a test.

Starts, on 127.0.0.1 in a temporary directory (``tests/e2e/harness.py``), one open Debian
``docker-registry`` holding an image with one random layer of ``--mib`` MiB, two
``tests/e2e/faultproxy.FaultProxy`` in front of it as zmirror's upstreams (priority 1 and 2) and
``twistd zmirror`` with the cache on and ``idle_timeout = 5``.  Then ``--n`` times: delete the blob
from the cache (``DELETE /api/cache``, the admin password from the data dir's config.toml, never
the default), GET it cold through zmirror, hash what comes and sort the outcome:

- complete: 200, the whole length, the right sha256;
- corrupt:  the whole length but a wrong sha256 (must stay 0);
- aborted:  anything else (the body broke, a short body, an error status).

Each upstream request for the blob (first GETs and resumes alike, on both upstreams) gets a
fault with probability ``--fault-rate``, its kind uniform over: cut (FIN) at a random byte,
reset (RST) at a random byte, one flipped byte, a 1 s stall at a random byte, 503, 429,
refused connections for 1 s.  Resumes are read from ``/metrics`` (the sum of the samples whose
name contains ``resume``), or reported as n/a when there is no such metric.

    python bench/faults.py                 # 60 GETs of a 200 MiB blob
    python bench/faults.py --n 10 --mib 64 # a quick run
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e import harness as H
from tests.e2e.httpclient import fetch, http_json
from tests.e2e.images import Blob, Image, MiB, build_big_image
from tests.e2e.processes import HarnessError
from tests.e2e.faultproxy import Fault, FaultProxy, blob_get

KINDS = ("cut", "reset", "flip", "stall", "503", "429", "refuse")


def random_fault(rate: float):
    def choose(req, rnd: random.Random) -> Fault:
        if rnd.random() >= rate:
            return Fault()
        kind = rnd.choice(KINDS)
        if kind == "cut":
            return Fault.cut(None)
        if kind == "reset":
            return Fault.reset(None)
        if kind == "flip":
            return Fault.flip(None)
        if kind == "stall":
            return Fault.stall(1.0, None)
        if kind == "refuse":
            return Fault.refuse(1.0)
        return Fault.answer(int(kind))

    return choose


def get(zm: H.ZMirror, img: Image, blob: Blob, timeout: float) -> tuple[str, str]:
    """One GET: (outcome, detail)."""
    r = fetch(f"http://127.0.0.1:{zm.port}/v2/{img.repo}/blobs/{blob.digest}", timeout=timeout)
    err = f"{type(r.error).__name__}: {r.error}" if r.error is not None else ""
    if r.length == blob.size and r.digest != blob.digest:
        return "corrupt", f"{r.status}, {r.length} bytes, wrong sha256 {err}"
    if r.status == 200 and r.length == blob.size and not err:
        return "complete", ""
    return "aborted", f"status {r.status}, {r.length}/{blob.size} bytes {err}".strip()


def resumes(zm: H.ZMirror) -> float | None:
    user, password = zm.admin_credentials()
    r = http_json("GET", f"{zm.url}/metrics", auth=(user, password), timeout=10)
    if r.status != 200:
        return None
    total, seen = 0.0, False
    for line in r.body.decode(errors="replace").splitlines():
        if line.startswith("#") or "resum" not in line.split("{", 1)[0].split(" ", 1)[0]:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.endswith("_created"):
            continue
        try:
            total += float(line.rsplit(" ", 1)[1])
            seen = True
        except (IndexError, ValueError):
            continue
    return total if seen else None


def evict(zm: H.ZMirror, blob: Blob, timeout: float = 30) -> None:
    """Deletes the blob from the cache (if there) and waits until the index has no entry."""
    deadline = time.monotonic() + timeout
    while True:
        r = zm.api("DELETE", f"/cache?digest={blob.digest}")
        if r.status != 200:
            raise HarnessError(f"DELETE /api/cache: {r.describe()}")
        c = zm.api("GET", "/cache").json()
        if c["entries"] == 0:
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"the blob stays in the cache: {c}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--n", type=int, default=60, help="cold GETs (default 60)")
    ap.add_argument("--mib", type=int, default=200, help="layer size in MiB (default 200)")
    ap.add_argument("--fault-rate", type=float, default=0.5,
                    help="probability that an upstream request gets a fault (default 0.5)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--idle-timeout", type=float, default=5)
    ap.add_argument("--cooldown", type=float, default=30, help="[upstream] cooldown (default 30, the config default)")
    ap.add_argument("--rate", type=float, default=0, help="pace each upstream connection, MiB/s (0: unlimited)")
    ap.add_argument("--timeout", type=float, default=60, help="client socket timeout, s")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per GET")
    a = ap.parse_args(argv)
    why = H.missing_tools()
    if why:
        print(why, file=sys.stderr)
        return 2

    h = H.Harness(keep=a.keep or None)
    proxies: list[FaultProxy] = []
    try:
        t0 = time.monotonic()
        reg = h.start_open("faultup")
        img = build_big_image(h.root / "images" / "big", a.mib, "bench/faults")
        h.push(img, reg)
        blob = img.largest_blob()
        print(f"setup {time.monotonic() - t0:.1f} s: {blob.digest} ({blob.size} bytes) in {h.root}", file=sys.stderr)
        for i in (1, 2):
            p = FaultProxy(reg.port, name=f"up{i}", seed=a.seed * 10 + i, rate=a.rate * MiB or None)
            p.plan(blob_get(blob.digest), [], then=random_fault(a.fault_rate))
            proxies.append(p)
        zm = h.start_zmirror("faults", [H.Upstream("up1", proxies[0].url), H.Upstream("up2", proxies[1].url)],
                             anonymous="all", cache=True, idle_timeout=a.idle_timeout, cooldown=a.cooldown)
        from zmirror.config import DEFAULT_ADMIN_PASSWORD

        if zm.admin_credentials()[1] == DEFAULT_ADMIN_PASSWORD:
            raise HarnessError("the admin password is a default one")
        r0 = resumes(zm)
        counts = {"complete": 0, "aborted": 0, "corrupt": 0}
        details: list[str] = []
        t1 = time.monotonic()
        for i in range(a.n):
            evict(zm, blob)
            t = time.monotonic()
            outcome, detail = get(zm, img, blob, a.timeout)
            counts[outcome] += 1
            if detail:
                details.append(f"#{i + 1} {outcome}: {detail}")
            if a.verbose:
                print(f"#{i + 1:3} {outcome:8} {time.monotonic() - t:6.2f} s {detail}", file=sys.stderr)
            time.sleep(0.2)  # let an orphaned download or a refusal end before the next cold GET
        wall = time.monotonic() - t1
        r1 = resumes(zm)
        resumed = "n/a" if r1 is None else f"{r1 - (r0 or 0):g}"
        faults = {p.name: {k: v for k, v in sorted(p.snapshot().items())} for p in proxies}
        print(f"zmirror {zm.proc.pid} at {H.REPO}: {a.n} cold GETs of {a.mib} MiB, fault rate {a.fault_rate}, "
              f"idle_timeout {a.idle_timeout:g}, cooldown {a.cooldown:g}, {wall:.1f} s")
        print(f"complete {counts['complete']}  aborted {counts['aborted']}  corrupt {counts['corrupt']}  "
              f"resumes {resumed}")
        for name, c in faults.items():
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
        for d in details[:20]:
            print("  " + d)
        if a.json:
            Path(a.json).write_text(json.dumps({"n": a.n, "mib": a.mib, "fault_rate": a.fault_rate, **counts,
                                                "resumes": resumed, "faults": faults, "seconds": wall}, indent=2))
        return 0 if counts["corrupt"] == 0 else 1
    except HarnessError as e:
        print(f"setup failed: {e}", file=sys.stderr)
        return 2
    finally:
        for p in proxies:
            p.close()
        h.stop()


if __name__ == "__main__":
    sys.exit(main())
