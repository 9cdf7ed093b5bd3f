"""Blobs that survive flaky upstreams (resumed with Range), end to end.

One open distribution registry (``faultup``, its own, started once per process) holds two images
built here: ``e2e/big200`` (a 200 MiB layer) and ``e2e/mid`` (a 48 MiB layer).  Every test starts
a fresh ``twistd zmirror`` (cache on or off, ``idle_timeout = 5``) whose two upstream rows
(priority 1 and 2) are :class:`tests.e2e.faultproxy.FaultProxy` instances in front of that same
registry, told per test which blob GETs to cut (FIN), reset (RST), stall, corrupt or pace.

What is asserted is what a client must see: the whole blob, verified, from
one uninterrupted 200 per client request (zmirror's access log holds exactly one GET row per
client, with the whole size), resumed upstream with ``Range: bytes=<received>-``; a corrupted
blob is never delivered complete and never cached; a zmirror killed mid-resume serves nothing of
the partial file after its restart.  Each test runs with the pull-through cache on
(:class:`ResumeCacheOnTests`) and off (:class:`ResumePassThroughTests`), and with the cache on
against upstreams that speak HTTPS (:class:`ResumeTLSTests`: the fault proxies terminate TLS with
a certificate of a test CA that the upstream rows' ``ca`` trusts).

docker pulls use a dockerd of this module's own (:class:`tests.e2e.clients.Dockerd`), started on first use and
stopped at exit; they skip when dockerd/containerd/runc are missing or not running as root.
Skipped when ``docker-registry`` or ``skopeo`` is missing.
"""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import ssl
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twisted.trial import unittest

from tests.e2e import harness as H
from tests.e2e.clients import DOCKER_SKIP, Dockerd, SkopeoError, output, skopeo_copy
from tests.e2e.httpclient import Fetched, fetch, http_request
from tests.e2e.images import Blob, Image, MiB, build_big_image, dir_problems, sha256_file
from tests.e2e.processes import HarnessError
from tests.e2e.faultproxy import Fault, FaultProxy, blob_get
from tests.fixtures.tlsregistry import TestPKI

SKIP = H.missing_tools()
IDLE_TIMEOUT = 5
BIG_MIB = 200
MID_MIB = 48


# --------------------------------------------------------------------------- module environment


class _Env:
    lock = threading.Lock()
    harness: H.Harness | None = None
    reg: H.Registry | None = None
    big: Image | None = None
    mid: Image | None = None
    error: BaseException | None = None
    dockerd: Dockerd | None = None
    docker_error: str | None = None
    docker_root: Path | None = None
    pki: TestPKI | None = None


def _stop_all() -> None:
    if _Env.dockerd is not None:
        try:
            _Env.dockerd.stop()
        except Exception as e:  # noqa: BLE001 -- the harness below must still be stopped
            print(f"zmirror resume e2e: stopping dockerd failed: {e}", file=sys.stderr)
    if _Env.docker_root is not None and os.environ.get("ZMIRROR_E2E_KEEP") != "1":
        shutil.rmtree(_Env.docker_root, ignore_errors=True)
    if _Env.harness is not None:
        _Env.harness.stop()


def environment() -> _Env:
    """The registry and its two images, built and pushed once per process (a failure is remembered)."""
    with _Env.lock:
        if _Env.error is not None:
            raise HarnessError(f"resume e2e environment failed earlier: {_Env.error}")
        if _Env.harness is None:
            h = H.Harness()
            atexit.register(_stop_all)
            _Env.harness = h
            try:
                with ThreadPoolExecutor(max_workers=2) as ex:
                    big = ex.submit(build_big_image, h.root / "images" / "big200", BIG_MIB, "e2e/big200")
                    mid = ex.submit(build_big_image, h.root / "images" / "mid", MID_MIB, "e2e/mid")
                    _Env.reg = h.start_open("faultup")
                    _Env.big, _Env.mid = big.result(), mid.result()
                h.push_many([(_Env.big, _Env.reg), (_Env.mid, _Env.reg)])
            except BaseException as e:
                _Env.error = e
                raise
        return _Env


def pki() -> TestPKI:
    """The test CA and the fault proxies' server certificate (127.0.0.1), made once per process."""
    with _Env.lock:
        if _Env.pki is None:
            _Env.pki = TestPKI(Path(tempfile.mkdtemp(prefix="zm-res-pki-")))
            atexit.register(shutil.rmtree, _Env.pki.root, True)
        return _Env.pki


def dockerd() -> Dockerd:
    with _Env.lock:
        if _Env.docker_error is not None:
            raise HarnessError(f"dockerd failed to start earlier: {_Env.docker_error}")
        if _Env.dockerd is None:
            base = tempfile.gettempdir()
            _Env.docker_root = Path(tempfile.mkdtemp(prefix="zm-res-", dir=base if len(base) <= 40 else "/tmp"))
            d = Dockerd(_Env.docker_root, "127.0.0.0/8")  # every zmirror of the module is on 127.0.0.1
            _Env.dockerd = d
            try:
                d.start()
            except BaseException as e:
                _Env.docker_error = str(e)
                raise
        return _Env.dockerd


# --------------------------------------------------------------------------- helpers


def wait_for(pred, timeout: float, what=None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            msg = what() if callable(what) else (what or "condition")
            raise unittest.FailTest(f"timed out after {timeout}s waiting for {msg}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- tests


class ResumeCase(unittest.TestCase):
    skip = SKIP
    CACHE = True
    TLS = False  # the fault proxies serve zmirror HTTPS (certificates of a test CA the rows trust)

    def setUp(self):
        e = environment()
        self.harness, self.reg, self.big, self.mid = e.harness, e.reg, e.big, e.mid
        tls = self.server_context() if self.TLS else None
        self.p1 = FaultProxy(self.reg.port, name="up1", seed=1, tls=tls)
        self.p2 = FaultProxy(self.reg.port, name="up2", seed=2, tls=tls)
        self.addCleanup(self.p2.close)
        self.addCleanup(self.p1.close)
        self.zm: H.ZMirror | None = None

    def start(self) -> H.ZMirror:
        mode = ("cache" if self.CACHE else "relay") + ("-tls" if self.TLS else "")  # its own data directory
        name = f"resume-{mode}-{self._testMethodName[5:40]}"
        ca = pki().ca.cert_pem if self.TLS else ""
        zm = self.harness.start_zmirror(name, [H.Upstream("up1", self.p1.url, ca=ca),
                                               H.Upstream("up2", self.p2.url, ca=ca)],
                                        anonymous="all", cache=self.CACHE, idle_timeout=IDLE_TIMEOUT)
        self.addCleanup(self.harness.stop_zmirror, zm)
        self.zm = zm
        return zm

    @staticmethod
    def server_context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki().server.cert_path, pki().server.key_path)
        return ctx

    # -- diagnostics and checks

    def tails(self) -> str:
        out = ""
        if self.zm is not None:
            out += f"\n--- {self.zm.proc.name} log tail ---\n{self.zm.tail(40)}"
        for p in (self.p1, self.p2):
            evs = [f"  {e.method} {e.path[-30:]} range={e.range} fault={e.fault.kind}@{e.offset} "
                   f"status={e.status} sent={e.sent}/{e.length}" for e in list(p.events)[-12:]]
            out += f"\n--- {p.name} {p.snapshot()} ---\n" + "\n".join(evs)
        return out

    def blob(self, img: Image) -> Blob:
        return img.largest_blob()

    def url(self, img: Image, blob: Blob) -> str:
        return f"{self.zm.url}/v2/{img.repo}/blobs/{blob.digest}"

    def assertComplete(self, r: Fetched, blob: Blob) -> None:
        self.assertIsNone(r.error, f"{r}{self.tails()}")
        self.assertEqual(r.status, 200, f"{r}{self.tails()}")
        self.assertEqual((r.length, r.digest), (blob.size, blob.digest), f"{r}{self.tails()}")

    def assertNotDelivered(self, r: Fetched, blob: Blob) -> None:
        """The client never got the whole length (the held-back last byte never came)."""
        self.assertFalse(r.error is None and r.status == 200 and r.length == blob.size,
                         f"a corrupt blob was delivered complete: {r}{self.tails()}")
        self.assertLess(r.length, blob.size, f"{r}{self.tails()}")
        if r.length == blob.size:
            self.assertNotEqual(r.digest, blob.digest)

    def blob_rows(self, img: Image, blob: Blob, n: int) -> list[dict]:
        """zmirror's access-log rows of GETs of ``blob`` once there are ``n``, after a grace for more."""
        def rows():
            return [r for r in self.zm.access_logs(kind="blob", repository=img.repo)
                    if r["reference"] == blob.digest and r["method"] == "GET"]

        wait_for(lambda: len(rows()) >= n, 15, lambda: f"{n} access-log rows of {blob.digest}: {rows()}")
        time.sleep(0.8)  # the access log is written in batches (~0.5 s)
        return rows()

    def assertOneUninterrupted200PerClient(self, img: Image, blob: Blob, clients: int = 1) -> list[dict]:
        rows = self.blob_rows(img, blob, clients)
        self.assertEqual([(r["status"], r["bytes"]) for r in rows], [(200, blob.size)] * clients,
                         f"each client must see one uninterrupted 200 (no retries, no short body): {rows}"
                         f"{self.tails()}")
        return rows

    def blob_gets(self, blob: Blob) -> list:
        """Both proxies' blob GET events of ``blob``, in the order they started."""
        evs = self.p1.matching(blob_get(blob.digest)) + self.p2.matching(blob_get(blob.digest))
        return sorted(evs, key=lambda e: e.t0)

    def resumes(self, blob: Blob) -> list:
        return [e for e in self.blob_gets(blob) if e.range is not None]

    def cache_state(self) -> dict:
        r = self.zm.api("GET", "/cache")
        self.assertEqual(r.status, 200, r.describe())
        return r.json()

    def cache_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.zm.data / "cache" / "blobs" / "sha256" / hexd[:2] / hexd

    def assertNothingCached(self, blob: Blob) -> None:
        self.assertFalse(self.cache_path(blob.digest).exists(), "a corrupt blob's file is in the cache")
        tmp = self.zm.data / "cache" / "tmp"
        wait_for(lambda: not tmp.exists() or not any(tmp.iterdir()), 10,
                 lambda: f"{tmp} emptied: {list(tmp.iterdir())}")
        if self.CACHE:
            c = self.cache_state()
            self.assertEqual((c["entries"], c["size"]), (0, 0), c)
        self.assertFalse(self.cache_path(blob.digest).exists(), "a corrupt blob's file is in the cache")

    def workdir(self) -> Path:
        d = Path(self.mktemp()).resolve()
        d.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    # -- one GET, the first upstream cut twice

    def cut_twice(self, first: Fault, second: Fault) -> None:
        zm = self.start()
        img = self.big
        blob = self.blob(img)
        self.p1.plan(blob_get(blob.digest), [first, second])
        r = fetch(self.url(img, blob))
        self.assertComplete(r, blob)
        self.assertEqual(self.p1.script_left(), 0, f"both cuts of up1 must have happened{self.tails()}")
        gets = self.blob_gets(blob)
        self.assertEqual(gets[0].range, None, self.tails())
        self.assertEqual(gets[0].fault, first)
        self.assertEqual(gets[1].fault, second, "the first resume goes to the same upstream once" + self.tails())
        if first.kind == "cut":  # a FIN loses nothing: the resume starts at exactly what was sent
            self.assertEqual(gets[1].range, f"bytes={gets[0].sent}-", self.tails())
        self.assertTrue(all(e.range is not None for e in gets[1:]), self.tails())
        rows = self.assertOneUninterrupted200PerClient(img, blob)
        self.assertIn("up1", rows[0]["upstream"], rows[0])
        self.assertIn("up2", rows[0]["upstream"], f"the access log says which upstreams served the blob: {rows[0]}")
        if self.CACHE:
            wait_for(lambda: self.cache_state()["entries"] == 1, 10, "the resumed blob cached")
            self.assertEqual(sha256_file(self.cache_path(blob.digest)), blob.digest)
            # the body was taken over by a fill thread (kernel copy, or decrypted there over TLS)
            self.assertEqual(self.cache_state()["blobs"]["fills_tls" if self.TLS else "fills_splice"], 1, self.tails())
        self.assertIsNotNone(zm.proc.popen.pid)

    def test_get_200mib_first_upstream_cut_twice_fin(self):
        self.cut_twice(Fault.cut(1 / 3), Fault.cut(1 / 3))

    def test_get_200mib_first_upstream_reset_twice(self):
        self.cut_twice(Fault.reset(1 / 3), Fault.reset(1 / 3))

    def test_skopeo_pull_200mib_first_upstream_cut_fin_then_rst(self):
        zm = self.start()
        img = self.big
        blob = self.blob(img)
        self.p1.plan(blob_get(blob.digest), [Fault.cut(1 / 3), Fault.reset(1 / 3)])
        dest = self.workdir() / "big"
        try:
            skopeo_copy(zm.host, img.ref, dest, timeout=150)
        except SkopeoError as e:
            self.fail(f"skopeo copy failed: {e}{self.tails()}")
        self.assertEqual(dir_problems(dest, img), [])
        self.assertEqual(self.p1.script_left(), 0, f"both cuts of up1 must have happened{self.tails()}")
        self.assertGreaterEqual(len(self.resumes(blob)), 2, self.tails())
        self.assertOneUninterrupted200PerClient(img, blob)

    def test_docker_pull_200mib_first_upstream_cut_rst_then_fin(self):
        docker = dockerd()
        zm = self.start()
        img = self.big
        blob = self.blob(img)
        self.p1.plan(blob_get(blob.digest), [Fault.reset(1 / 3), Fault.cut(1 / 3)])
        cfg = self.workdir() / "docker-config"
        cfg.mkdir()
        ref = f"{zm.host}/{img.ref}"
        p = docker.cli(cfg, "pull", ref, timeout=240)
        self.addCleanup(lambda: docker.cli(cfg, "rmi", "-f", ref, timeout=60))
        self.assertEqual(p.returncode, 0, output(p) + self.tails() + "\n--- dockerd ---\n" + docker.tail())
        self.assertIn(f"Digest: {img.digest}", p.stdout, output(p))
        self.assertEqual(self.p1.script_left(), 0, f"both cuts of up1 must have happened{self.tails()}")
        self.assertGreaterEqual(len(self.resumes(blob)), 2, self.tails())
        # dockerd retries a broken layer download itself: one row says zmirror never broke it
        self.assertOneUninterrupted200PerClient(img, blob)

    # -- many clients, stalls

    def test_eight_concurrent_clients_of_a_cut_download(self):
        self.start()
        img = self.mid
        blob = self.blob(img)
        # every GET of the whole blob is cut at a third (one with the cache, one per client without)
        self.p1.plan(blob_get(blob.digest, ranged=False), [], then=Fault.cut(1 / 3))
        self.p1.rate = self.p2.rate = 24 * MiB  # ~2 s: the clients join the download in flight
        with ThreadPoolExecutor(max_workers=8) as ex:
            results = list(ex.map(lambda _: fetch(self.url(img, blob)), range(8)))
        for r in results:
            self.assertComplete(r, blob)
        full = [e for e in self.blob_gets(blob) if e.range is None]
        self.assertEqual(len(full), 1 if self.CACHE else 8, self.tails())
        self.assertTrue(all(e.fault.kind == "cut" for e in full), self.tails())
        self.assertGreaterEqual(len(self.resumes(blob)), len(full), self.tails())
        self.assertOneUninterrupted200PerClient(img, blob, 8)

    def test_stall_longer_than_idle_timeout_is_resumed(self):
        self.start()
        img = self.mid
        blob = self.blob(img)
        self.p1.plan(blob_get(blob.digest), [Fault.stall(3 * IDLE_TIMEOUT, 1 / 3)])
        r = fetch(self.url(img, blob), timeout=60)
        self.assertComplete(r, blob)
        gets = self.blob_gets(blob)
        self.assertEqual(gets[0].fault.kind, "stall", self.tails())
        # resumed (not waited out): a Range request for exactly what came before the stall
        self.assertGreaterEqual(len(gets), 2, self.tails())
        self.assertEqual(gets[1].range, f"bytes={gets[0].offset}-", self.tails())
        self.assertOneUninterrupted200PerClient(img, blob)

    # -- corruption

    def test_flipped_byte_never_delivered_complete_nor_cached(self):
        self.start()
        img = self.mid
        blob = self.blob(img)
        for p in (self.p1, self.p2):  # whichever upstream answers, and however often: one byte is wrong
            p.plan(blob_get(blob.digest), [], then=Fault.flip(None))
        r = fetch(self.url(img, blob), timeout=60)
        self.assertNotDelivered(r, blob)
        self.assertGreaterEqual(self.p1.counts["fault:flip"] + self.p2.counts["fault:flip"], 1, self.tails())
        self.assertNothingCached(blob)
        r2 = fetch(self.url(img, blob), timeout=60)  # and not later either
        self.assertNotDelivered(r2, blob)
        self.assertNothingCached(blob)

    def test_corrupt_resume_is_thrown_away(self):
        self.start()
        img = self.mid
        blob = self.blob(img)
        self.p1.plan(blob_get(blob.digest), [Fault.cut(1 / 3), Fault.reset(1 / 2)], then=Fault.flip(None))
        self.p2.plan(blob_get(blob.digest), [], then=Fault.flip(None))  # the resumed bytes are corrupt
        r = fetch(self.url(img, blob), timeout=60)
        self.assertNotDelivered(r, blob)
        # the corruption came in a resumed answer (otherwise this tests no resume)
        self.assertTrue(any(e.fault.kind == "flip" and e.range for e in self.blob_gets(blob)), self.tails())
        self.assertNothingCached(blob)

    # -- SIGKILL mid-resume

    def test_sigkill_mid_resume_then_restart(self):
        zm = self.start()
        img = self.mid
        blob = self.blob(img)
        self.p1.plan(blob_get(blob.digest), [Fault.cut(1 / 4)])
        self.p1.rate = self.p2.rate = 12 * MiB  # the resume (36 MiB) takes ~3 s
        progress = [0]
        with ThreadPoolExecutor(max_workers=1) as ex:
            fut = ex.submit(fetch, self.url(img, blob), 60, progress)
            wait_for(lambda: any(e.sent >= 2 * MiB for e in self.resumes(blob)), 20,
                     lambda: f"a resume in flight{self.tails()}")
            self.assertGreater(progress[0], blob.size // 8, "the client got what came before the cut")
            self.harness.restart_zmirror(zm, kill=True)
            r = fut.result(timeout=60)
        self.assertNotDelivered(r, blob)

        # nothing of the partial download is kept or served
        self.assertNothingCached(blob)
        self.p1.clear()
        self.p1.rate = self.p2.rate = None
        before = len(self.blob_gets(blob))
        self.assertComplete(fetch(self.url(img, blob)), blob)
        self.assertGreater(len(self.blob_gets(blob)), before, "the next pull went upstream")
        if self.CACHE:
            wait_for(lambda: self.cache_state()["entries"] == 1, 10, "the blob cached after the restart")
            self.assertEqual(sha256_file(self.cache_path(blob.digest)), blob.digest)
            self.assertComplete(fetch(self.url(img, blob)), blob)


class FaultProxyTests(unittest.TestCase):
    """The tool itself, straight in front of the registry (no zmirror): what it does is exact."""

    skip = SKIP

    def setUp(self):
        e = environment()
        self.reg, self.img = e.reg, e.mid
        self.blob = self.img.largest_blob()
        self.p = FaultProxy(self.reg.port, name="tool", seed=3)
        self.addCleanup(self.p.close)
        self.url = f"{self.p.url}/v2/{self.img.repo}/blobs/{self.blob.digest}"

    def test_range_passes_through_and_faults_act_where_told(self):
        b, n = self.blob, self.blob.size
        self.p.plan(blob_get(b.digest), [Fault.cut(1000), Fault.reset(n // 2), Fault.flip(12345),
                                         Fault.answer(429), Fault.answer(503), Fault.stall(0.5, 10)])
        # cut (FIN): exactly 1000 bytes, then the body ends short
        r = fetch(self.url)
        self.assertEqual((r.status, r.length), (200, 1000), r)
        self.assertIsInstance(r.error, http.client.IncompleteRead)
        # reset (RST): at most n/2 bytes, then ECONNRESET
        r = fetch(self.url)
        self.assertLessEqual(r.length, n // 2, r)
        self.assertIsInstance(r.error, ConnectionResetError)
        # one flipped byte: the whole length, another digest
        res = http_request("GET", self.url, timeout=30)
        self.assertEqual((res.status, len(res.body)), (200, n))
        good = b.read()
        self.assertEqual(_differences(res.body, good), [12345])
        self.assertEqual(res.body[12345], good[12345] ^ 0xFF)
        # answered by the proxy itself, the connection kept
        for status, retry_after in ((429, "1"), (503, None)):
            res = http_request("GET", self.url, timeout=30)
            self.assertEqual(res.status, status, res.describe())
            self.assertEqual(res.header("Retry-After"), retry_after, res.describe())
            self.assertIn("errors", res.json())
        # a stall delays, then the whole blob comes
        r = fetch(self.url)
        self.assertEqual((r.status, r.length, r.digest, r.error), (200, n, b.digest, None))
        self.assertEqual(self.p.script_left(), 0)
        self.assertEqual({k: v for k, v in self.p.counts.items() if k.startswith("fault:")},
                         {"fault:cut": 1, "fault:reset": 1, "fault:flip": 1, "fault:status": 2, "fault:stall": 1})
        # Range is the registry's: 206 with the right bytes, through a stall
        self.p.plan(blob_get(b.digest), [Fault.stall(0.3, 5)])
        res = http_request("GET", self.url, [("Range", "bytes=1000-1999")], timeout=30)
        self.assertEqual(res.status, 206, res.describe())
        self.assertEqual(res.header("Content-Range"), f"bytes 1000-1999/{n}")
        self.assertEqual(res.body, good[1000:2000])
        self.assertEqual(self.p.matching(blob_get(b.digest, ranged=True))[-1].range, "bytes=1000-1999")
        # refused connections for a while, then accepted again on the same port
        self.p.refuse()
        with self.assertRaises(ConnectionRefusedError):
            http_request("GET", self.url, timeout=5)
        self.p.accept()
        wait_for(lambda: _answers(self.url), 5, "the proxy listening again")
        self.p.plan(blob_get(b.digest), [Fault.refuse(0.5)])
        with self.assertRaises((ConnectionResetError, http.client.RemoteDisconnected)):
            http_request("GET", self.url, timeout=5)
        with self.assertRaises(ConnectionRefusedError):
            http_request("GET", self.url, timeout=5)
        wait_for(lambda: _answers(self.url), 5, "the proxy listening again after 0.5 s")
        # paced: still the whole, right blob
        self.p.rate = 64 * MiB
        r = fetch(self.url)
        self.assertEqual((r.status, r.length, r.digest, r.error), (200, n, b.digest, None))


def _differences(a: bytes, b: bytes, step: int = 64 * 1024) -> list[int]:
    """Offsets where ``a`` and ``b`` (same length) differ."""
    out = []
    for i in range(0, len(a), step):
        if a[i:i + step] != b[i:i + step]:
            out += [j for j in range(i, min(i + step, len(a))) if a[j] != b[j]]
    return out


def _answers(url: str) -> bool:
    try:
        return http_request("HEAD", url, timeout=5).status == 200
    except OSError:
        return False


ResumeCase.test_docker_pull_200mib_first_upstream_cut_rst_then_fin.skip = DOCKER_SKIP


class ResumeCacheOnTests(ResumeCase):
    CACHE = True


class ResumePassThroughTests(ResumeCase):
    CACHE = False


class ResumeTLSTests(ResumeCase):
    """Every case over HTTPS: each cut, reset, stall and flip lands in a TLS stream (a cold
    download's TLS fill on a transfer thread, and its resume)."""

    CACHE = True
    TLS = True


del ResumeCase
