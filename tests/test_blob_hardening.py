"""Blob path hardening ("Safe to expose"): reader counts, verified pass-through,
index flushes that survive failures, bounded transfer threads and temp bytes,
orphaned downloads, Range parsing."""

import os

from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest
from twisted.web._newclient import ResponseFailed

from tests.fixtures.fakes import FailingCache
from tests.fixtures.helpers import coro
from tests.fixtures.cache import CacheTestBase
from tests.fixtures.proxyenv import ProxyEnv
from tests.fixtures.upstream import (BAD_CONTENT_TYPES, BDIGEST, BLOB, BPATH, OCTET, blob_answer, pull_blob,
                                     script_world)
from zmirror.registry.proxy import Proxy
from zmirror.testing import FakeRegistry


def err_code(body):
    import json

    return json.loads(body)["errors"][0]["code"]
