"""Flow control, timeouts and integrity of the blob relay, without sockets."""

import hashlib

from twisted.internet import reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseDone

from tests.fixtures.rawhttp import make_request
from zmirror.transfer.threads import TransferThreads
from zmirror.upstream.relay import BlobRelay


class RelayFlowControlTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.channel, self.client, self.request = make_request()
        self.upstream = StringTransport()

    def relay(self, **kw):
        kw.setdefault("idle_timeout", 10)
        relay = BlobRelay(self.request, self.clock, **kw)
        relay.makeConnection(self.upstream)
        return relay

    def test_slow_client_pauses_upstream(self):
        relay = self.relay(expected_length=3 * 65536)
        self.assertEqual(self.upstream.producerState, "producing")
        relay.dataReceived(b"a" * 65536)
        # the client's socket buffer is full: the transport pauses the channel
        self.channel.pauseProducing()
        self.assertEqual(self.upstream.producerState, "paused")
        # while the client holds us back the idle timer does not run
        self.clock.advance(100)
        self.assertEqual(self.upstream.producerState, "paused")
        self.channel.resumeProducing()
        self.assertEqual(self.upstream.producerState, "producing")
        relay.dataReceived(b"b" * 65536 * 2)
        relay.connectionLost(Failure(ResponseDone()))
        self.assertTrue(relay.done.called)
        self.assertTrue(relay.outcome.complete)
        self.assertEqual(relay.outcome.sent, 3 * 65536)

    def test_idle_upstream_aborted(self):
        relay = self.relay()
        relay.dataReceived(b"x" * 10)
        self.clock.advance(9)
        relay.dataReceived(b"x" * 10)
        self.clock.advance(9)
        self.assertEqual(self.upstream.producerState, "producing")
        self.clock.advance(2)
        self.assertEqual(self.upstream.producerState, "stopped")

    def test_client_gone_aborts_upstream(self):
        relay = self.relay()
        relay.dataReceived(b"x" * 10)
        self.request.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.upstream.producerState, "stopped")
        relay.connectionLost(Failure(ConnectionLost()))
        self.assertFalse(relay.outcome.complete)
        self.assertEqual(relay.outcome.reason, "client disconnected")

    def test_short_body_aborts_client(self):
        relay = self.relay(expected_length=100)
        relay.dataReceived(b"x" * 50)
        relay.connectionLost(Failure(ResponseDone()))
        self.assertTrue(self.client.disconnecting or self.client.disconnected)
        self.assertFalse(relay.done.called)  # fires only once the client is gone
        self.request.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(relay.outcome.complete)
        self.assertIn("50 of 100", relay.outcome.reason)

    def test_digest_mismatch_holds_back_last_chunk(self):
        data = [b"a" * 1000, b"b" * 1000, b"c" * 1000]
        good = "sha256:" + hashlib.sha256(b"".join(data)).hexdigest()
        relay = self.relay(expected_digest="sha256:" + "0" * 64, expected_length=3000)
        for chunk in data:
            relay.dataReceived(chunk)
        self.assertEqual(relay.sent, 2000)  # the last chunk waits for the digest
        relay.connectionLost(Failure(ResponseDone()))
        self.assertTrue(self.client.disconnecting or self.client.disconnected)
        self.request.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(relay.outcome.complete)
        self.assertIn(good, relay.outcome.reason)
        self.assertEqual(relay.sent, 2000)


class ThreadedDigestTests(unittest.TestCase):
    """The worker-thread digest path, on the real reactor."""

    def test_large_body_verified_on_thread(self):
        channel, client, request = make_request()
        chunk = bytes(range(256)) * 1024
        total = chunk * 24  # 6 MiB: above the threaded threshold
        digest = "sha256:" + hashlib.sha256(total).hexdigest()
        threads = TransferThreads(reactor, 1)
        self.addCleanup(threads.stop)
        relay = BlobRelay(request, reactor, threads=threads, expected_digest=digest,
                          expected_length=len(total), idle_timeout=10)
        self.assertIsNotNone(relay.worker)
        upstream = StringTransport()
        relay.makeConnection(upstream)
        for _ in range(24):
            relay.dataReceived(chunk)
        relay.connectionLost(Failure(ResponseDone()))

        def check(outcome):
            self.assertTrue(outcome.complete)
            self.assertEqual(outcome.digest, digest)
            self.assertEqual(outcome.sent, len(total))

        return relay.done.addCallback(check)

    def test_worker_backpressure(self):
        channel, client, request = make_request()
        threads = TransferThreads(reactor, 1)
        self.addCleanup(threads.stop)
        relay = BlobRelay(request, reactor, threads=threads, expected_digest="sha256:" + "0" * 64,
                          idle_timeout=10)
        relay.worker.high_water = 1000
        relay.worker.low_water = 0
        upstream = StringTransport()
        relay.makeConnection(upstream)
        relay.dataReceived(b"x" * 5000)
        self.assertEqual(upstream.producerState, "paused")
        from twisted.internet.task import deferLater

        def check(_):
            self.assertEqual(upstream.producerState, "producing")
            relay.connectionLost(Failure(ConnectionLost()))
            request.connectionLost(Failure(ConnectionLost()))

        return deferLater(reactor, 0.2, lambda: None).addCallback(check)
