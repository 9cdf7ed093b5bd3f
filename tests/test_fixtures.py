"""The test fakes hold to the interfaces they stand for (tests/fixtures/)."""

from twisted.trial import unittest
from twisted.web.iweb import IAgent, IResponse
from zope.interface.verify import verifyObject

from tests.fixtures.fakes import FakeBus, FakeProxy
from tests.fixtures.proxyenv import ProxyEnv
from tests.fixtures.upstream import FakeResponse, ScriptAgent
from zmirror.cluster import IBus
from zmirror.registry.interfaces import IPullService
from zmirror.testing import FakeRegistry


class FakeInterfaceTests(unittest.TestCase):
    def test_fake_bus_is_a_bus(self):
        self.assertTrue(verifyObject(IBus, FakeBus()))

    def test_scripted_upstream_is_an_agent_answering_responses(self):
        self.assertTrue(verifyObject(IAgent, ScriptAgent()))
        self.assertTrue(verifyObject(IResponse, FakeResponse()))
        self.assertTrue(verifyObject(IResponse, FakeResponse(stall=True)))

    def test_fake_proxy_answers_pulls_as_the_proxy_core_does(self):
        self.assertTrue(verifyObject(IPullService, FakeProxy()))
        # the real one, as the test environments build it
        env = ProxyEnv([("up.fake", FakeRegistry())])
        self.assertTrue(verifyObject(IPullService, env.proxy))
