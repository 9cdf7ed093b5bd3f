"""Cache fills in the kernel (zmirror/cache/kernelcopy.py), over real TCP.

The fake upstream registry and the proxy listen on 127.0.0.1 so that the
upstream response arrives on a real socket (the only case where the body is
spliced) and clients get it by sendfile(2).
"""

import os
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from tests.fixtures.helpers import coro, spy_constructor, temp_dir
from tests.fixtures.pgserver import temp_database
from tests.fixtures.upstream import OneAgent
from zmirror.accesslog import MemoryAccessLog
from zmirror.app import ZMirrorApp
from zmirror.cache import kernelcopy
from zmirror.cache.blobs import CacheBlobs
from zmirror.transfer import follower
from zmirror.registry.build import build_proxy
from zmirror.registry.routes import RegistryRoutes
from zmirror.testing import FakeRegistry
from zmirror.upstream.health import UpstreamHealth
from zmirror.upstream.pool import UpstreamPool
from zmirror.transfer.threads import TransferThreads


def stop_transfers(blobs):
    blobs.abort_downloads()
    blobs.transfers.stop()


class KernelCopyTests(unittest.TestCase):
    timeout = 60
    transfer_threads = 16
    kernel = True  # RelayFillTests runs the same tests with the fill through Python

    def expect_fills(self, n=1):
        """``n`` kernel fills happened (none when the kernel path is off)."""
        self.assertEqual(len(self.fills), n if self.kernel else 0)
        return self.fills[0] if self.fills else None

    def setUp(self):
        if not kernelcopy.available():
            raise unittest.SkipTest("splice(2) is not available here")
        self.base, self.db = temp_dir(self), temp_database(self, reactor)
        self.up = FakeRegistry()
        self.data = os.urandom((6 << 20) + 4321)  # above kernelcopy.SPLICE_MIN
        self.digest = self.up.add_blob(self.data)
        self.path = f"/v2/library/x/blobs/{self.digest}"
        up_port = reactor.listenTCP(0, Site(self.up.resource()), interface="127.0.0.1")
        self.addCleanup(up_port.stopListening)

        self.fills = spy_constructor(self, kernelcopy, "SpliceFill")
        if not self.kernel:
            self.patch(kernelcopy, "available", lambda: False)
        # the download each sendfile writer follows (None: a cached file)
        self.sendfile_writers = spy_constructor(self, follower, "_SendfileWriter",
                                                lambda producer, transport: producer.download)

        upstream_pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(upstream_pool.closeCachedConnections)
        pool = UpstreamPool(OneAgent(Agent(reactor, pool=upstream_pool)), reactor,
                            health=UpstreamHealth(reactor, cooldown=1), header_timeout=10)
        pool.set_registries([{"id": 1, "name": "up", "url": f"http://127.0.0.1:{up_port.getHost().port}",
                              "priority": 1, "enabled": 1, "username": "", "password": ""}])
        self.blobs = CacheBlobs(self.base / "cache", self.db, reactor, max_size=1 << 30, idle_timeout=1,
                               transfer_threads=self.transfer_threads)
        self.addCleanup(stop_transfers, self.blobs)
        proxy = build_proxy(pool, reactor, idle_timeout=1, blobs=self.blobs)
        self.log = MemoryAccessLog()
        routes = RegistryRoutes(proxy, clock=reactor, accesslog=self.log,
                                base_url=lambda request: "http://proxy.test")
        port = reactor.listenTCP(0, Site(ZMirrorApp(routes).resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.client_pool = HTTPConnectionPool(reactor, persistent=False)

    async def get(self, headers=None):
        resp = await treq.get(self.url + self.path, headers=headers or {}, pool=self.client_pool)
        return resp, await treq.content(resp)

    def blob_gets(self):
        return [r for r in self.up.requests if r[0] == "GET" and "/blobs/" in r[2]]

    def assert_nothing_kept(self):
        self.assertIsNone(self.blobs.lookup(self.digest))
        self.assertFalse(self.blobs.path(self.digest).exists())
        self.assertEqual(os.listdir(self.base / "cache" / "tmp"), [])

    @coro
    async def test_fill_by_splice_then_hit(self):
        await self.blobs.start()
        resp, body = await self.get()
        self.assertEqual(resp.code, 200)
        self.assertEqual(body, self.data)
        fill = self.expect_fills()  # the kernel path was taken
        if fill is not None:
            self.assertIsNone(fill.error)
        # the client followed the running download with sendfile(2)
        self.assertEqual(len(self.sendfile_writers), 1)
        self.assertIsNotNone(self.sendfile_writers[0])
        self.assertEqual(self.blobs.path(self.digest).read_bytes(), self.data)
        self.assertEqual(os.listdir(self.base / "cache" / "tmp"), [])
        self.assertEqual(self.blobs.stats["bytes_from_upstream"], len(self.data))
        self.assertEqual(self.log.records[-1].bytes, len(self.data))
        self.assertIs(self.log.records[-1].cache_hit, False)
        resp, body = await self.get()
        self.assertEqual(body, self.data)
        self.assertIs(self.log.records[-1].cache_hit, True)
        self.assertEqual(len(self.blob_gets()), 1)
        self.assertEqual(self.sendfile_writers[1:], [None])  # the hit: sendfile from the cached file

    @coro
    async def test_concurrent_clients_and_a_range_share_one_fetch(self):
        await self.blobs.start()
        gets = [ensureDeferred(self.get()) for _ in range(5)]
        gets.append(ensureDeferred(self.get({"Range": "bytes=5000000-5999999"})))
        results = await DeferredList(gets, consumeErrors=True)
        for ok, value in results[:5]:
            self.assertTrue(ok, value)
            self.assertEqual(value[0].code, 200)
            self.assertEqual(value[1], self.data)
        ok, (resp, body) = results[5]
        self.assertEqual(resp.code, 206)
        self.assertEqual(body, self.data[5000000:6000000])
        self.assertEqual(len(self.blob_gets()), 1)
        self.expect_fills()

    async def _fault_aborts_client(self, fault):
        await self.blobs.start()
        # a broken body is resumed (below): these break on every request
        self.up.faults[f"/v2/library/x/blobs/{self.digest}"] = [fault] * 4
        resp = await treq.get(self.url + self.path, pool=self.client_pool)
        self.assertEqual(resp.code, 200)
        try:
            body = await treq.content(resp)
        except Exception:
            pass  # the connection was cut: the client cannot take the body for complete
        else:
            self.fail(f"a {fault} upstream body reached the client as complete ({len(body)} bytes)")
        self.expect_fills()
        self.assert_nothing_kept()
        # the next request fetches again, this time whole
        self.up.faults[self.path] = []
        resp, body = await self.get()
        self.assertEqual(body, self.data)
        self.assertIsNotNone(self.blobs.lookup(self.digest))

    @coro
    async def test_corrupt_upstream_aborts_client_and_keeps_nothing(self):
        await self._fault_aborts_client("corrupt")
        if self.kernel:
            self.assertIsNone(self.fills[0].error)  # every byte arrived; the digest did not match
        self.assertEqual(self.blobs.stats["verify_failures"], 1)

    @coro
    async def test_truncated_upstream_aborts_client_and_keeps_nothing(self):
        await self._fault_aborts_client("truncate")
        if self.kernel:
            self.assertIn(f"upstream sent {len(self.data) // 2} of {len(self.data)} bytes", self.fills[0].error)

    @coro
    async def test_stalled_upstream_times_out(self):
        await self._fault_aborts_client("stall")
        if self.kernel:
            self.assertIn("sent nothing for 1 s", self.fills[0].error)

    async def _fault_resumed(self, fault, second=None):
        await self.blobs.start()
        self.up.faults[self.path] = [fault] + ([second] if second else [])
        resp, body = await self.get()
        self.assertEqual((resp.code, len(body)), (200, len(self.data)))
        self.assertEqual(body, self.data)
        self.assertEqual(self.blobs.path(self.digest).read_bytes(), self.data)
        gets = self.blob_gets()
        self.assertEqual(len(gets), 2)
        if fault == "reset":  # an RST drops what the kernel still held: resumed at or before half
            rng = gets[1][3].get("range")[0]
            self.assertRegex(rng, r"^bytes=[0-9]+-$")
            self.assertLessEqual(int(rng[6:-1]), len(self.data) // 2)
        else:
            self.assertEqual(gets[1][3].get("range"), [f"bytes={len(self.data) // 2}-"])
        self.assertEqual(self.log.records[-1].resumes, 1)
        fill = self.expect_fills()
        return fill

    @coro
    async def test_cut_upstream_is_resumed(self):
        """A kernel copy that breaks goes on through Python from the bytes it had."""
        fill = await self._fault_resumed("truncate")
        if fill is not None:
            self.assertIn(f"upstream sent {len(self.data) // 2} of {len(self.data)} bytes", fill.error)

    @coro
    async def test_reset_upstream_is_resumed_from_the_start_when_range_is_ignored(self):
        await self._fault_resumed("reset", "norange")

    @coro
    async def test_stalled_upstream_is_resumed(self):
        fill = await self._fault_resumed("stall")
        if fill is not None:
            self.assertIn("sent nothing for 1 s", fill.error)

    @coro
    async def test_corrupt_resume_keeps_nothing(self):
        await self.blobs.start()
        self.up.faults[self.path] = ["truncate", "corrupt"]
        resp = await treq.get(self.url + self.path, pool=self.client_pool)
        with self.assertRaises(Exception):
            await treq.content(resp)
        self.assert_nothing_kept()
        self.assertEqual(self.blobs.stats["verify_failures"], 1)

    @coro
    async def test_one_free_thread_fills_through_python(self):
        """A kernel copy needs two transfer threads; with one free the fill goes through Python."""
        await self.blobs.start()
        self.blobs.transfers.size = 1
        resp, body = await self.get()
        self.assertEqual((resp.code, body), (200, self.data))
        self.assertEqual(self.fills, [])
        self.assertEqual(self.blobs.path(self.digest).read_bytes(), self.data)
        self.assertEqual(len(self.blob_gets()), 1)

    @coro
    async def test_small_blob_goes_through_python(self):
        small = os.urandom(100_000)
        digest = self.up.add_blob(small)
        await self.blobs.start()
        resp = await treq.get(f"{self.url}/v2/library/x/blobs/{digest}", pool=self.client_pool)
        self.assertEqual(await treq.content(resp), small)
        self.assertEqual(self.fills, [])
        self.assertEqual(self.blobs.path(digest).read_bytes(), small)


class RelayFillTests(KernelCopyTests):
    """The same over real TCP with the fill through Python (as from a TLS upstream):
    clients still follow the growing file with sendfile(2)."""

    kernel = False


class SpliceFillTests(unittest.TestCase):
    """SpliceFill on its own: a socket pair stands in for the upstream connection."""

    timeout = 30

    def setUp(self):
        if not kernelcopy.available():
            raise unittest.SkipTest("splice(2) is not available here")

    def fill(self, file_fd, read_fd, prefix, length, send: bytes, close: bool = False):
        import socket
        import threading

        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)

        def upstream():
            try:
                theirs.sendall(send)
                if close:
                    theirs.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        threading.Thread(target=upstream, daemon=True).start()
        threads = TransferThreads(reactor, 2)
        self.addCleanup(threads.stop)
        return kernelcopy.SpliceFill("sha256", threads.lease(2), sock_fd=os.dup(ours.fileno()), file_fd=file_fd,
                                     read_fd=read_fd, prefix=prefix, length=length, idle_timeout=5)

    @coro
    async def test_prefix_and_spliced_rest_hashed(self):
        import hashlib

        data = os.urandom((5 << 20) + 17)
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        rfd = os.open(path, os.O_RDONLY)
        progress = []
        sf = self.fill(fd, rfd, [data[:1000], data[1000:70000]], len(data), data[70000:])
        sf.on_progress = progress.append
        digest = await sf.finish()
        self.assertEqual(digest, "sha256:" + hashlib.sha256(data).hexdigest())
        self.assertIsNone(sf.error)
        self.assertEqual(Path(path).read_bytes(), data)
        self.assertEqual(sf.written, len(data))
        self.assertTrue(progress and progress == sorted(progress) and progress[-1] <= len(data))

    async def until(self, condition):
        for _ in range(200):  # the threads get there within a few ms; 10 s is a broken build
            if condition():
                return True
            await deferLater(reactor, 0.05, lambda: None)
        return condition()

    @coro
    async def test_hashing_starts_before_a_whole_window_is_on_disk(self):
        # the upstream sends less than a hash window, then nothing: the hash
        # still runs right behind the writer (it is not left for the end)
        sent = kernelcopy.HASH_MIN + (1 << 20)
        self.assertLess(sent, kernelcopy.HASH_WINDOW)
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        sf = self.fill(fd, os.open(path, os.O_RDONLY), [], 64 << 20, b"h" * sent)
        self.addCleanup(sf.abort)
        self.assertTrue(await self.until(lambda: sf.written == sent))
        self.assertTrue(await self.until(lambda: sf.hashed >= kernelcopy.HASH_MIN))
        self.assertLessEqual(sf.hashed, sent)

    @coro
    async def test_progress_reaches_clients_when_upstream_pauses(self):
        # reports are batched (REPORT_STEP), but what is on disk when the
        # upstream pauses is reported at once, not after the next batch
        sent = kernelcopy.REPORT_STEP // 2 + 12345
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        progress = []
        sf = self.fill(fd, os.open(path, os.O_RDONLY), [b"p" * 100], 64 << 20, b"q" * sent)
        sf.on_progress = progress.append
        self.addCleanup(sf.abort)
        self.assertTrue(await self.until(lambda: progress and progress[-1] == sent + 100))
        self.assertEqual(progress, sorted(progress))

    @coro
    async def test_rest_of_the_file_is_reserved_but_its_size_is_what_was_written(self):
        probe = self.mktemp()
        with open(probe, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, 1 << 20)
            except OSError:
                raise unittest.SkipTest("no fallocate(2) on this file system")
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        sent, length = 3 << 20, 64 << 20
        sf = self.fill(fd, os.open(path, os.O_RDONLY), [], length, b"r" * sent)
        self.addCleanup(sf.abort)
        self.assertTrue(await self.until(lambda: sf.written == sent))
        st = os.stat(path)
        self.assertEqual(st.st_size, sent)  # followers and the hash never see bytes not written
        self.assertGreaterEqual(st.st_blocks * 512, length)

    @coro
    async def test_disk_error_is_told_apart_from_upstream_errors(self):
        path = self.mktemp()
        Path(path).write_bytes(b"")
        full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
        sf = self.fill(full, os.open(path, os.O_RDONLY), [b"x" * 100], 1 << 20, b"y" * ((1 << 20) - 100))
        self.assertIsNone(await sf.finish())
        self.assertTrue(sf.disk_error)
        self.assertIn("cache write failed", sf.error)

    @coro
    async def test_upstream_closing_early_is_not_a_disk_error(self):
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        sf = self.fill(fd, os.open(path, os.O_RDONLY), [], 1 << 20, b"z" * 1000, close=True)
        self.assertIsNone(await sf.finish())
        self.assertFalse(sf.disk_error)
        self.assertEqual(sf.error, f"upstream sent 1000 of {1 << 20} bytes")

    @coro
    async def test_abort_stops_both_threads(self):
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        sf = self.fill(fd, os.open(path, os.O_RDONLY), [], 1 << 20, b"z" * 1000)
        await deferLater(reactor, 0.2, lambda: None)
        self.assertIsNone(sf.error)  # waiting for more: not idle for 5 s yet
        sf.abort()
        self.assertIsNone(await sf.finish())
        self.assertEqual(sf.error, "aborted")
        for _ in range(100):  # the writer notices within one 0.5 s poll slice
            if sf.threads_running == 0:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(sf.threads_running, 0)
