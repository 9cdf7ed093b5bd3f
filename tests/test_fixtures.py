"""The test fakes hold to the interfaces they stand for (tests/fixtures/)."""

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from tests.fixtures.fakes import FakeBus
from zmirror.cluster import IBus


class FakeInterfaceTests(unittest.TestCase):
    def test_fake_bus_is_a_bus(self):
        self.assertTrue(verifyObject(IBus, FakeBus()))
