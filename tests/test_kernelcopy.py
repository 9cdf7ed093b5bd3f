"""Cache fills in the kernel (zmirror/cache/kernelcopy.py), over real TCP.

The fake upstream registry and the proxy listen on 127.0.0.1 so that the
upstream response arrives on a real socket (the only case where the body is
spliced) and clients get it by sendfile(2).
"""

import os
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.fixtures.fills import ProxyFillCases
from tests.fixtures.helpers import coro
from zmirror.cache import kernelcopy
from zmirror.transfer.threads import TransferThreads

class KernelCopyTests(ProxyFillCases, unittest.TestCase):
    """Cold pulls from a plain-HTTP upstream: the body is spliced (SpliceFill)."""


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
