"""The cache upkeep service (zmirror.cache.upkeep): index loads retried at start,
access times written every 30 s and at stop, failed writes retried with a back-off."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.fakes import FailingCache


class CacheServiceTests(unittest.TestCase):
    def service(self, blobs, manifests):
        from zmirror.cache.upkeep import CacheUpkeep
        from zmirror.service import CallbackService

        clock = Clock()
        upkeep = CacheUpkeep(blobs, manifests, clock)
        svc = CallbackService(start=upkeep.start, stop=upkeep.stop)
        svc.startService()
        return svc, clock

    def test_flusher_survives_failed_writes(self):
        from zmirror.cache.upkeep import retry_delay

        blobs = FailingCache(flush_failures=2)
        svc, clock = self.service(blobs, FailingCache())
        clock.advance(30)
        self.assertEqual(blobs.flushes, 1)  # failed
        clock.advance(retry_delay(1))
        self.assertEqual(blobs.flushes, 2)  # failed again: backs off
        clock.advance(retry_delay(2) - 0.1)
        self.assertEqual(blobs.flushes, 2)
        clock.advance(0.1)
        self.assertEqual(blobs.flushes, 3)  # worked: the usual interval again
        clock.advance(30)
        self.assertEqual(blobs.flushes, 4)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        d = svc.stopService()
        self.successResultOf(d)
        self.assertEqual(blobs.flushes, 5)  # the last write at stop
        self.assertTrue(blobs.aborted and blobs.transfers.stopped)
        clock.advance(3600)
        self.assertEqual(blobs.flushes, 5)  # nothing after stop

    def test_failing_start_is_retried(self):
        blobs, manifests = FailingCache(start_failures=2), FailingCache(start_failures=1)
        svc, clock = self.service(blobs, manifests)
        self.assertEqual((blobs.starts, manifests.starts), (1, 1))
        for _ in range(10):
            clock.advance(60)
        self.assertEqual((blobs.starts, manifests.starts), (3, 2))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
        self.successResultOf(svc.stopService())
