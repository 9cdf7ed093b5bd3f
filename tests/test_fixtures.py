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


class TestModulesStandAloneTests(unittest.TestCase):
    def test_no_test_module_imports_another(self):
        # what tests share lives in tests/fixtures/ (or a non-test module of tests/e2e/)
        import ast
        from pathlib import Path

        root = Path(__file__).resolve().parent
        found = []
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    if name.split(".")[-1].startswith("test_") and name.startswith("tests"):
                        found.append(f"{path.relative_to(root)} imports {name}")
        self.assertGreater(len(list(root.rglob("test_*.py"))), 50)
        self.assertEqual(found, [])
