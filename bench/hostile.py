#!/usr/bin/env python3
"""The "Safe to expose" attacks, run against a real ``twistd -n zmirror``. Not a test.

Starts one zmirror on 127.0.0.1 with a fresh data dir (no upstream needed) and a
registry user made with the ``zmirror`` CLI, then measures:

1. ``upload``: a PUT on /v2/ announcing ``--upload-mib`` MiB (Content-Length, then
   chunked), streamed until the answer comes: the status, how many bytes the
   client had pushed into the socket by then, and the largest file the server
   held open (``/proc/PID/fd``, the unlinked request-body temp file).
2. ``lockout``: ``--logins`` parallel ``GET /token`` with a wrong password for one
   registry user, and the same number of admin API requests with a wrong admin
   password: counts per status (the limit is 10 per account).
3. ``fuzz``: ``--fuzz`` random requests (paths with long, %-escaped, dotted and
   binary components, methods, Range/Authorization/Accept headers): counts of 5xx
   and of tracebacks in the server's log.
4. ``default-password``: the admin API with admin/admin123 unchanged: status of
   ``GET /api/me``, ``GET /api/registries`` and ``POST /api/registries``.

    python bench/hostile.py                      # all four
    python bench/hostile.py --only lockout,fuzz  # some
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.helpers import first_start, free_port, twistd_bin, wait_port  # noqa: E402

ZMIRROR_CLI = [sys.executable, "-m", "zmirror.cli"]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(port: int, method: str, path: str, headers=None, body=None, timeout=30.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def largest_open_file(pid: int) -> int:
    biggest = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return 0
    for fd in fds:
        try:
            target = os.readlink(fd)
            if target.startswith("/") and not target.startswith("/dev/"):
                biggest = max(biggest, os.stat(fd).st_size)
        except OSError:
            pass
    return biggest


# --- 1. upload -------------------------------------------------------------


def upload(port: int, pid: int, mib: int, chunked: bool) -> dict:
    total = mib << 20
    s = socket.create_connection(("127.0.0.1", port))
    head = (f"PUT /v2/x/blobs/uploads/abc HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/octet-stream\r\n")
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    s.sendall(head.encode())
    s.setblocking(False)
    block = b"\0" * (1 << 20)
    frame = (f"{len(block):x}\r\n".encode() + block + b"\r\n") if chunked else block
    sent, answer, biggest = 0, b"", 0
    deadline = time.monotonic() + 120
    while sent < total and time.monotonic() < deadline:
        try:
            answer += s.recv(65536)
            if answer:
                break
        except BlockingIOError:
            pass
        except OSError:
            break
        try:
            n = s.send(frame)
            sent += n
            if n < len(frame):
                frame = frame[n:]
            else:
                frame = (f"{len(block):x}\r\n".encode() + block + b"\r\n") if chunked else block
        except BlockingIOError:
            time.sleep(0.001)
        except OSError:
            break
        biggest = max(biggest, largest_open_file(pid))
    s.setblocking(True)
    s.settimeout(10)
    try:
        while b"\r\n" not in answer:
            more = s.recv(65536)
            if not more:
                break
            answer += more
    except OSError:
        pass
    s.close()
    status = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    return {"mode": "chunked" if chunked else "content-length", "status": status,
            "client_pushed_MiB": round(sent / (1 << 20), 1),
            "largest_server_file_MiB": round(max(biggest, largest_open_file(pid)) / (1 << 20), 1)}


# --- 2. lockout ---------------------------------------------------------------


def lockout(port: int, n: int, user: str, which: str) -> dict:
    """``n`` parallel wrong logins: ``which`` is "token" (a registry user on /token)
    or "admin" (Basic on /api)."""
    def token(_):
        return request(port, "GET", f"/token?service=zmirror&account={user}",
                       {"Authorization": basic(user, "wrong-password")})[0]

    def admin(_):
        return request(port, "GET", "/api/registries", {"Authorization": basic("admin", "wrong-password")})[0]

    f = token if which == "token" else admin
    with ThreadPoolExecutor(max_workers=n) as ex:
        return dict(sorted(Counter(ex.map(f, range(n))).items()))


# --- 3. fuzz --------------------------------------------------------------------


def fuzz_path(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.random()
        if kind < 0.15:
            pieces.append("a" * rng.choice([255, 256, 300, 1000, 4000]))
        elif kind < 0.3:
            pieces.append("".join(f"%{rng.randrange(256):02X}" for _ in range(rng.randint(1, 8))))
        elif kind < 0.4:
            pieces.append(rng.choice([".", "..", "...", ".INVALID", "%2e%2e", "~", "@"]))
        elif kind < 0.5:
            pieces.append(rng.choice(["manifests", "blobs", "tags", "list", "uploads", "sha256:" + "0" * 64]))
        else:
            pieces.append("".join(rng.choice("abcXYZ019-_.:@+=,;!$&'()*") for _ in range(rng.randint(1, 40))))
    prefix = rng.choice(["/v2/", "/v2/library/", "/", "/assets/", "/api/", "/api/registries/", "/token/", ""])
    path = prefix + "/".join(pieces)
    if rng.random() < 0.3:
        path += "?" + rng.choice(["n=abc", "n=99999999999", "last=%ff", "ns=docker.io", "scope=x:y", "a=" + "b" * 5000])
    return path if path.startswith("/") else "/" + path


def fuzz(port: int, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    statuses: Counter = Counter()
    bad = []
    for _ in range(n):
        path = fuzz_path(rng)
        method = rng.choice(["GET", "GET", "HEAD", "POST", "DELETE", "OPTIONS"])
        headers = {}
        if rng.random() < 0.3:
            headers["Range"] = rng.choice(["bytes=0-", "bytes=-1", "bytes=5-1", "bytes=a-b", "bytes=0-1,2-3",
                                           "items=0-1", "bytes=99999999999999999999-"])
        if rng.random() < 0.3:
            headers["Authorization"] = rng.choice(["Basic !!!", "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
                                                   "Bearer x.y.z", "Bearer", "Digest a=b", basic("u", "p" * 2000)])
        if rng.random() < 0.3:
            headers["Accept"] = rng.choice(["*/*", "application/json;q=abc", "\x7f", "a" * 3000])
        try:
            status, _ = request(port, method, path, headers, timeout=15)
        except Exception as e:  # noqa: BLE001 - a refused/cut connection is a result too
            status = type(e).__name__
        statuses[status] += 1
        if isinstance(status, int) and status >= 500 and len(bad) < 5:
            bad.append(f"{method} {path[:120]}")
    fives = sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500)
    return {"requests": n, "5xx": fives, "by_status": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "examples_5xx": bad}


# --- 4. default password ----------------------------------------------------------


def default_password(port: int) -> dict:
    auth = {"Authorization": basic("admin", "admin123")}
    body = json.dumps({"name": "evil", "url": "http://127.0.0.1:9", "priority": 0}).encode()
    return {
        "GET /api/me": request(port, "GET", "/api/me", auth)[0],
        "GET /api/registries": request(port, "GET", "/api/registries", auth)[0],
        "POST /api/registries": request(port, "POST", "/api/registries",
                                        {**auth, "Content-Type": "application/json"}, body)[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="upload,lockout,fuzz,default-password")
    ap.add_argument("--upload-mib", type=int, default=1536)
    ap.add_argument("--logins", type=int, default=120)
    ap.add_argument("--fuzz", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    only = set(args.only.split(","))

    work = Path(tempfile.mkdtemp(prefix="zmirror-hostile-"))
    data = work / "data"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # what the server's first start writes (the CLI creates nothing); the CLI then adds a user
    first_start(data)
    user = "victim"
    subprocess.run(ZMIRROR_CLI + ["--data", str(data), "user", "add", "--stdin", user],
                   input=b"correct-horse-battery\n", env=env, check=True, capture_output=True)
    results: dict = {}
    tracebacks = 0
    phases = [
        ("default-password", lambda port, pid: default_password(port)),
        ("upload", lambda port, pid: [upload(port, pid, args.upload_mib, False),
                                      upload(port, pid, args.upload_mib, True)]),
        ("fuzz", lambda port, pid: fuzz(port, args.fuzz, args.seed)),
        # two servers: failures per address are counted for both kinds of login
        ("lockout-token", lambda port, pid: lockout(port, args.logins, user, "token")),
        ("lockout-admin", lambda port, pid: lockout(port, args.logins, user, "admin")),
    ]
    for name, run in phases:
        if name not in only and name.split("-")[0] not in only:
            continue
        # each phase on a server of its own: the lockout's counts per address are
        # in memory, and one phase must not lock the next one out
        port = free_port()
        log_path = work / f"twistd-{name}.log"
        with open(log_path, "wb") as log_file:  # a file, not a pipe: a full pipe would stall the server
            proc = subprocess.Popen([twistd_bin(), "-n", "--pidfile=", "zmirror", "--data", str(data),
                                     "--listen", f"tcp:{port}:interface=127.0.0.1"],
                                    cwd=str(work), env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_port(port, 30, proc)
            results[name] = run(port, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        tracebacks += log_path.read_text("utf-8", "replace").count("Traceback")
    results["server_tracebacks"] = tracebacks
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
