"""Issue "Safe to expose", upstream side: shared fetches owned by no caller,
cancellations that are not upstream failures, upstream values checked where they
come in, bounded body reads and memory, no upstream internals in client errors.

The upstreams here are scripted ``IResponse`` objects (:class:`ScriptAgent`), so
a test can hold a body half-way, see whether its connection was closed, and send
header values no real server library would produce.
"""

from __future__ import annotations

import hashlib
import json

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial import unittest

import zmirror.registry.proxy as proxy_module
from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import temp_database
from tests.fixtures.upstream import (DOCKER_V2, MANIFEST, MDIGEST, TAG_PATH, TAGS_PATH, FakeResponse, World,
                                     manifest_response, token_challenge)
from zmirror.cache.gate import LoadGate
from zmirror.cache.manifests import Manifest, ManifestCache
from zmirror.oci.errors import RegistryError
from zmirror.registry.proxy import Proxy
from zmirror.oci.reference import parse_path
from zmirror.registry.routes import PullRequest
from zmirror.upstream.auth import TokenCache
from zmirror.upstream.client import UpstreamPool

# -- 1. shared work owned by no caller ---------------------------------------------------------------

# -- 2. a cancellation is not an upstream failure -----------------------------------------------------

# -- 3. upstream values checked where they come in ----------------------------------------------------

# -- 4. bounded small-body reads ----------------------------------------------------------------------

# -- 5. bounded memory ---------------------------------------------------------------------------

# -- 6. no upstream internals in client errors ----------------------------------------------------

class TrailingNewlineTests(unittest.TestCase):
    """``$`` also matches before a final newline: the checks of upstream values use ``\\Z``."""

    def test_media_type_and_digest(self):
        from zmirror.oci.mediatypes import content_media_type, valid_media_type

        self.assertTrue(valid_media_type("application/json"))
        self.assertFalse(valid_media_type("application/json\n"))
        self.assertIsNone(content_media_type("application/json; charset=utf-8\n"))

    def test_tag_page_size(self):
        from zmirror.upstream.manifests import _DIGITS

        self.assertTrue(_DIGITS.match("5"))
        self.assertIsNone(_DIGITS.match("5\n"))

    def test_external_url(self):
        from zmirror.config import ConfigError, _validate_external_url

        _validate_external_url("server.external_url", "https://mirror.example.com")
        with self.assertRaises(ConfigError):
            _validate_external_url("server.external_url", "https://mirror.example.com\n")
