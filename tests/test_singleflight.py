"""zmirror.singleflight: shared work that no caller owns."""

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial import unittest

from zmirror.singleflight import Flight, SingleFlight


class SingleFlightTests(unittest.TestCase):
    def test_callers_share_one_run(self):
        sf = SingleFlight()
        calls = []
        work = Deferred()

        def f():
            calls.append(1)
            return work

        a, b = sf.run("k", f), sf.run("k", f)
        self.assertEqual(len(calls), 1)
        self.assertIn("k", sf)
        work.callback("v")
        self.assertEqual(self.successResultOf(a), "v")
        self.assertEqual(self.successResultOf(b), "v")
        self.assertNotIn("k", sf)  # free again: the next caller starts anew
        sf.run("k", f)
        self.assertEqual(len(calls), 2)

    def test_first_caller_cancelling_does_not_cancel_the_work(self):
        sf = SingleFlight()
        work = Deferred()
        first, second = sf.run("k", lambda: work), sf.run("k", lambda: work)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertFalse(work.called)
        work.callback("token")
        self.assertEqual(self.successResultOf(second), "token")

    def test_failure_reaches_every_waiter_and_is_retried(self):
        sf = SingleFlight()
        work = Deferred()
        a, b = sf.run("k", lambda: work), sf.run("k", lambda: work)
        work.errback(ValueError("boom"))
        self.failureResultOf(a, ValueError)
        self.failureResultOf(b, ValueError)
        self.assertEqual(len(sf), 0)
        self.assertEqual(self.successResultOf(sf.run("k", lambda: 5)), 5)

    def test_coroutine_and_synchronous_exception(self):
        sf = SingleFlight()

        async def coro():
            return 7

        def bad():
            raise KeyError("x")

        self.assertEqual(self.successResultOf(sf.run("a", coro)), 7)
        self.failureResultOf(sf.run("b", bad), KeyError)
        self.assertEqual(len(sf), 0)

    def test_waiter_restarting_from_its_callback_gets_a_new_flight(self):
        sf = SingleFlight()
        work = Deferred()
        again = []
        d = sf.run("k", lambda: work)
        d.addCallback(lambda _: again.append(sf.flight("k", lambda: Deferred())[1]))
        work.callback(None)
        self.assertEqual(again, [True])

    def test_flight_wait_after_done(self):
        fl = Flight.start(lambda: 3)
        self.assertTrue(fl.done)
        self.assertEqual(self.successResultOf(fl.wait()), 3)
        self.assertEqual(fl.waiting, 0)
