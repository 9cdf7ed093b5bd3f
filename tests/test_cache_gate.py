"""zmirror.cache.gate: the gate requests wait at while a store loads."""

from twisted.internet.defer import CancelledError
from twisted.trial import unittest

from zmirror.cache.gate import LoadGate


class LoadGateTests(unittest.TestCase):
    def test_waiter_that_leaves_is_let_go(self):
        gate = LoadGate()
        gate.close()
        a, b = gate.wait(), gate.wait()
        a.cancel()
        self.failureResultOf(a, CancelledError)
        self.assertEqual(gate.waiting, 1)  # not held until the gate opens
        self.assertNoResult(b)
        gate.open()
        self.assertIsNone(self.successResultOf(b))
        self.assertFalse(gate.closed)
        self.assertIsNone(self.successResultOf(gate.wait()))
