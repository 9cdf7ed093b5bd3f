"""zmirror.upstream.auth: the token cache, shared token fetches and their bounds."""

import json

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.upstream import (MANIFEST, TAG_PATH, FakeResponse, World, manifest_response,
                                     token_challenge)
from zmirror.upstream.auth import TokenCache


class SharedTokenFetchTests(unittest.TestCase):
    def test_token_cache_first_waiter_cancelled(self):
        cache = TokenCache(Clock())
        work = Deferred()
        calls = []

        def fetch():
            calls.append(1)
            return work

        first = ensureDeferred(cache.get("k", fetch))
        second = ensureDeferred(cache.get("k", fetch))
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertFalse(work.called, "the shared fetch was cancelled with its first caller")
        work.callback(("tok", 300))
        self.assertEqual(self.successResultOf(second), "tok")
        self.assertEqual(len(calls), 1)
        self.assertEqual(cache.peek("k"), "tok")

    def test_pull_whose_client_left_does_not_fail_the_one_sharing_its_token(self):
        w = World()
        token = Deferred()
        w.agent.on("GET", "http://a.fake" + TAG_PATH, token_challenge())
        w.agent.on("GET", "http://auth.fake/token?service=s&scope=repository%3Alibrary%2Fx%3Apull",
                   lambda: token)
        first, second = w.pull(TAG_PATH), w.pull(TAG_PATH)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(len([s for s in w.agent.sent if "auth.fake" in s[1]]), 1)
        w.agent.on("GET", "http://a.fake" + TAG_PATH, lambda: manifest_response())
        token.callback(FakeResponse(200, {}, json.dumps({"token": "t1", "expires_in": 300}).encode()))
        result = self.successResultOf(second)
        self.assertEqual((result.status, result.body), (200, MANIFEST))
        self.assertEqual(w.health()["consecutive_failures"], 0)
