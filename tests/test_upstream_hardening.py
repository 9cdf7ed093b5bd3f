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
