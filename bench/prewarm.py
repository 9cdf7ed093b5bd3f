#!/usr/bin/env python3
"""Benchmark: a pre-warm job (``/api/sync``) against a plain ``skopeo copy --all`` through
zmirror, each on an empty cache. Not a test.

Starts (with tests/e2e/harness.py, everything on 127.0.0.1 in a temp dir) one open
distribution registry holding a multi-arch OCI index (linux/amd64 and linux/arm64/v8, each
with ``--layers`` random layers of about ``--mib`` MiB per platform in all, gzip level 0),
then, per round, two fresh ``twistd zmirror`` instances (cache on, empty) with that registry
as their only upstream, and measures:

(a) prewarm: ``POST /api/sync/jobs`` (the image, all platforms) and ``POST .../run``, then
    ``GET /api/sync/runs/<id>`` every 50 ms until the run ends: wall time from the run request
    to the end (MB/s = the image's bytes / wall), the run's own figures, and the upstream's
    requests (its access log: GET and HEAD of manifests and blobs) during the run; then a
    ``skopeo copy --all`` of the warmed image (upstream requests it still causes) and the
    job once more on the warm cache (what it asks upstream to find nothing changed);
(b) skopeo: ``skopeo copy --all docker://<zmirror>/<image> oci:<tmp>`` on the other, empty
    instance: wall time, MB/s, upstream requests; and, for the client's own cost, the same
    copy straight from the registry.

The order of (a) and (b) alternates between rounds. The client, the registry and zmirror
share the machine's cores: compare ratios from one run, not absolute figures.

    python bench/prewarm.py                        # 3 rounds, ~64 MiB per platform, 4 layers
    python bench/prewarm.py --rounds 1 --mib 8     # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e import harness as H  # noqa: E402
from tests.e2e.clients import skopeo  # noqa: E402
from tests.e2e.images import DirLayout, Image, MiB, _image, _list, _tar_big, _tar_small  # noqa: E402
from tests.e2e.processes import HarnessError  # noqa: E402

REPO_NAME = "bench/prewarm"
TAG = "1"
ENDED = ("succeeded", "failed", "cancelled")


# --------------------------------------------------------------------------- the image


def build_multiarch(path: Path, mib: int, layers: int) -> Image:
    """An OCI index of two platforms; each has ``layers`` layers of random data (sizes halving
    from the first, about ``mib`` MiB in all) and a small top layer."""
    lay = DirLayout(path)
    weights = [2 ** (layers - 1 - i) for i in range(layers)]
    sizes = [max(1, round(mib * MiB * w / sum(weights))) for w in weights]
    kids = []
    for arch, variant, seed in (("amd64", None, 100), ("arm64", "v8", 200)):
        parts = [(_tar_big(f"data/layer{i}.bin", size, seed=seed + i), 0) for i, size in enumerate(sizes)]
        parts.append(([_tar_small({"top.txt": f"{arch}\n".encode()})], 6))
        kids.append(_image(lay, f"prewarm-{arch}", parts, oci=True, arch=arch, variant=variant, top=False))
    return _list(lay, "prewarm", REPO_NAME, TAG, kids, oci=True)


# --------------------------------------------------------------------------- upstream requests


def upstream_requests(reg: H.Registry, since: int) -> dict[str, int]:
    """The registry's access-log lines from byte ``since`` on, counted as ``"<METHOD> <kind>"``
    (kind: manifest, blob, other)."""
    try:
        with open(reg.proc.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        for method in ("GET", "HEAD"):
            i = line.find(f'"{method} ')
            if i >= 0 and " - - [" in line[:i]:
                target = line[i + len(method) + 2:].split(" ", 1)[0].split("?", 1)[0]
                kind = "manifest" if "/manifests/" in target else "blob" if "/blobs/" in target else "other"
                key = f"{method} {kind}"
                out[key] = out.get(key, 0) + 1
    return out


def total(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if not k.endswith("other"))


def settle_log(reg: H.Registry, quiet: float = 0.3, limit: float = 5.0) -> int:
    """Waits until the registry's log stops growing (its access lines are written when a
    response ends); returns the size."""
    end = time.monotonic() + limit
    size = reg.log_offset()
    while time.monotonic() < end:
        time.sleep(quiet)
        now = reg.log_offset()
        if now == size:
            return size
        size = now
    return size


# --------------------------------------------------------------------------- the two ways


def run_prewarm(zm: H.ZMirror, reg: H.Registry, image_bytes: int, concurrency: int) -> dict:
    r = zm.api("POST", "/sync/jobs", {"name": "bench", "images": [f"{REPO_NAME}:{TAG}"], "platforms": [],
                                      "newest": None, "schedule": None, "pin": False,
                                      "concurrency": concurrency, "enabled": True})
    if r.status != 201:
        raise HarnessError(f"POST /api/sync/jobs: {r.describe()}")
    job = r.json()
    since = settle_log(reg)
    t0 = time.monotonic()
    run = run_job(zm, job["id"])
    wall = time.monotonic() - t0
    settle_log(reg)
    counts = upstream_requests(reg, since)
    out = {"wall_s": wall, "mbps": image_bytes / wall / 1e6, "upstream": counts, "upstream_total": total(counts),
           "run_upstream_requests": run.get("upstream_requests"), "run_bytes": run["bytes"]["done"],
           "run_blobs": run["blobs"], "run_wall_s": (run["finished_at"] or 0) - run["started_at"]}
    # a client pull of the warmed image: what still goes upstream
    since = settle_log(reg)
    t1 = time.monotonic()
    copy_all(zm)
    out["warm_pull_s"] = time.monotonic() - t1
    settle_log(reg)
    out["warm_pull_upstream"] = upstream_requests(reg, since)
    # the job again on the warm cache: what it asks the upstream to find nothing changed
    since = settle_log(reg)
    t2 = time.monotonic()
    again = run_job(zm, job["id"])
    out["rerun_s"] = time.monotonic() - t2
    settle_log(reg)
    out["rerun_upstream"] = upstream_requests(reg, since)
    out["rerun_blobs"] = again["blobs"]
    return out


def run_job(zm: H.ZMirror, jid: int) -> dict:
    """``POST .../run``, then the run polled every 50 ms until it ends; the ended run."""
    r = zm.api("POST", f"/sync/jobs/{jid}/run")
    if r.status != 202:
        raise HarnessError(f"POST /api/sync/jobs/{jid}/run: {r.describe()}")
    run = r.json()["run"]
    deadline = time.monotonic() + 600
    while run["state"] not in ENDED:
        if time.monotonic() > deadline:
            raise HarnessError(f"run {run['id']} did not end in 600 s: {run}")
        time.sleep(0.05)
        r = zm.api("GET", f"/sync/runs/{run['id']}")
        if r.status != 200:
            raise HarnessError(f"GET /api/sync/runs/{run['id']}: {r.describe()}")
        run = r.json()
    if run["state"] != "succeeded" or run["errors"]:
        raise HarnessError(f"run {run['id']} ended {run['state']}: {run.get('errors')}")
    return run


def copy_all(src) -> None:
    """``skopeo copy --all`` of the image from ``src`` (a zmirror or the registry) to an OCI layout."""
    dest = Path(tempfile.mkdtemp(prefix="zmirror-bench-oci-"))
    try:
        skopeo(["copy", "-q", "--all", "--src-tls-verify=false", "--src-no-creds",
                f"docker://{src.host}/{REPO_NAME}:{TAG}", f"oci:{dest}:{TAG}"], timeout=600)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def run_skopeo(zm: H.ZMirror, reg: H.Registry, image_bytes: int) -> dict:
    since = settle_log(reg)
    t0 = time.monotonic()
    copy_all(zm)
    wall = time.monotonic() - t0
    settle_log(reg)
    counts = upstream_requests(reg, since)
    return {"wall_s": wall, "mbps": image_bytes / wall / 1e6, "upstream": counts, "upstream_total": total(counts)}


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=64, help="random data per platform in MiB (default 64)")
    ap.add_argument("--layers", type=int, default=4, help="random layers per platform (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each on fresh empty caches (default 3)")
    ap.add_argument("--concurrency", type=int, default=2, help="the job's concurrency, 1..8 (default 2)")
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
        img = build_multiarch(h.root / "images" / "prewarm", a.mib, a.layers)
        h.push(img, reg)
        blobs = img.all_blobs()
        image_bytes = sum(b.size for b in blobs.values()) + len(img.manifest) + sum(len(c.manifest) for c in img.children)
        print(f"setup {time.monotonic() - t0:.1f}s: registry {reg.url}; {REPO_NAME}:{TAG} = OCI index of "
              f"{len(img.children)} platforms, {len(blobs)} blobs, {image_bytes / MiB:.1f} MiB", flush=True)
        rounds = []
        for i in range(a.rounds):
            zp = h.start_zmirror(f"prewarm{i}", [H.Upstream("open", reg.url)], cache=True)
            zs = h.start_zmirror(f"skopeo{i}", [H.Upstream("open", reg.url)], cache=True)
            first_prewarm = i % 2 == 0
            res = {}
            for which in (("prewarm", "skopeo") if first_prewarm else ("skopeo", "prewarm")):
                if which == "prewarm":
                    res["prewarm"] = run_prewarm(zp, reg, image_bytes, a.concurrency)
                else:
                    res["skopeo"] = run_skopeo(zs, reg, image_bytes)
            res["order"] = "prewarm first" if first_prewarm else "skopeo first"
            t1 = time.monotonic()
            copy_all(reg)  # the client's own cost: skopeo straight from the registry
            res["skopeo_direct_s"] = time.monotonic() - t1
            rounds.append(res)
            h.stop_zmirror(zp)
            h.stop_zmirror(zs)
            p, s = res["prewarm"], res["skopeo"]
            print(f"round {i + 1} ({res['order']}): prewarm {p['wall_s']:.2f}s {p['mbps']:.0f} MB/s "
                  f"upstream {p['upstream_total']} {p['upstream']}; skopeo {s['wall_s']:.2f}s {s['mbps']:.0f} MB/s "
                  f"upstream {s['upstream_total']} {s['upstream']}; warm pull {p['warm_pull_s']:.2f}s "
                  f"upstream {p['warm_pull_upstream']}", flush=True)
        report(rounds, a, image_bytes, len(blobs), len(img.children))
        if a.json:
            Path(a.json).write_text(json.dumps({"image_bytes": image_bytes, "blobs": len(blobs), "rounds": rounds},
                                               indent=2) + "\n")
        return 0
    except (HarnessError, RuntimeError, OSError) as e:
        print(f"bench: failed: {e}", file=sys.stderr)
        for p in h.procs:
            print(f"--- {p.name} log tail ---\n{p.tail(20)}", file=sys.stderr)
        return 2
    finally:
        h.stop()


def report(rounds: list[dict], a, image_bytes: int, nblobs: int, nplat: int) -> None:
    med = lambda xs: statistics.median(xs)  # noqa: E731
    pw = [r["prewarm"] for r in rounds]
    sk = [r["skopeo"] for r in rounds]
    print()
    print(f"{nplat} platforms, {nblobs} blobs, {image_bytes / MiB:.1f} MiB; job concurrency {a.concurrency}; "
          f"{len(rounds)} round(s), medians")
    print(f"| {'measure':<44} | {'prewarm job':>12} | {'skopeo --all':>12} | ratio |")
    print(f"|{'-' * 46}|{'-' * 14}|{'-' * 14}|-------|")
    p, s = med([x["mbps"] for x in pw]), med([x["mbps"] for x in sk])
    print(f"| {'throughput, empty cache (MB/s)':<44} | {p:>12.0f} | {s:>12.0f} | {p / s:5.2f}× |")
    p = med([image_bytes / x["run_wall_s"] / 1e6 for x in pw if x["run_wall_s"] > 0] or [float("nan")])
    print(f"| {'  the run alone, started→finished (MB/s)':<44} | {p:>12.0f} | {'':>12} |       |")
    p, s = med([x["wall_s"] for x in pw]), med([x["wall_s"] for x in sk])
    print(f"| {'wall time (s)':<44} | {p:>12.2f} | {s:>12.2f} | {p / s:5.2f}× |")
    p, s = med([x["upstream_total"] for x in pw]), med([x["upstream_total"] for x in sk])
    print(f"| {'upstream manifest+blob requests':<44} | {p:>12.0f} | {s:>12.0f} | {p / s if s else float('nan'):5.2f}× |")
    for kind in ("GET manifest", "HEAD manifest", "GET blob", "HEAD blob"):
        p, s = med([x["upstream"].get(kind, 0) for x in pw]), med([x["upstream"].get(kind, 0) for x in sk])
        print(f"| {'  ' + kind:<44} | {p:>12.0f} | {s:>12.0f} |       |")
    d = med([r["skopeo_direct_s"] for r in rounds])
    print(f"skopeo copy --all straight from the registry (no zmirror): {d:.2f} s, {image_bytes / d / 1e6:.0f} MB/s")
    warm = med([x["warm_pull_s"] for x in pw])
    warm_up = med([total(x["warm_pull_upstream"]) for x in pw])
    print(f"skopeo copy --all after the job: {warm:.2f} s, {warm_up:.0f} upstream manifest+blob request(s) "
          f"(medians; per round: {[x['warm_pull_upstream'] for x in pw]})")
    print(f"the job again on the warm cache: {med([x['rerun_s'] for x in pw]):.2f} s, upstream "
          f"{[x['rerun_upstream'] for x in pw]}, blobs {pw[0]['rerun_blobs']} (round 1)")
    print(f"the run's own figures (round 1): upstream_requests {pw[0]['run_upstream_requests']}, "
          f"bytes {pw[0]['run_bytes']}, blobs {pw[0]['run_blobs']}, started→finished {pw[0]['run_wall_s']:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
