"""zmirror.transfer.threads: the transfer threads and their leases."""

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.fixtures.helpers import coro


class TransferThreadsTests(unittest.TestCase):
    def test_leases_never_exceed_the_pool(self):
        from zmirror.transfer.threads import TransferThreads

        threads = TransferThreads(reactor, 3)
        self.addCleanup(threads.stop)
        two = threads.lease(2)
        self.assertIsNotNone(two)
        self.assertIsNone(threads.lease(2))
        one = threads.lease(1)
        self.assertIsNotNone(one)
        self.assertIsNone(threads.lease(1))
        two.close()
        two.close()  # idempotent
        self.assertEqual(threads.free, 2)
        one.close()
        self.assertEqual(threads.busy, 0)

    @coro
    async def test_a_thread_is_free_again_when_its_work_returned(self):
        import threading

        from zmirror.transfer.threads import TransferThreads

        threads = TransferThreads(reactor, 1)
        self.addCleanup(threads.stop)
        gate, seen = threading.Event(), []
        lease = threads.lease(1)
        lease.run(lambda: (gate.wait(10), seen.append(threading.current_thread().name)))
        self.assertIsNone(threads.lease(1))
        gate.set()
        for _ in range(200):
            if threads.free:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(threads.free, 1)
        self.assertIn("zmirror-transfer", seen[0])
