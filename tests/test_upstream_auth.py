"""zmirror.upstream.auth: the token cache, shared token fetches and their bounds."""

import json

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.upstream import (MANIFEST, TAG_PATH, FakeResponse, World, manifest_response,
                                     token_challenge)
from zmirror.oci.errors import RegistryError
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


class TokenCacheBoundsTests(unittest.TestCase):
    def fill(self, cache, keys, expires_in=300):
        for k in keys:
            self.successResultOf(ensureDeferred(cache.get(k, lambda: succeed((f"t{k}", expires_in)))))

    def test_count_capped_least_recently_used_first(self):
        cache = TokenCache(Clock(), max_entries=3)
        self.fill(cache, [1, 2, 3])
        self.assertEqual(cache.peek(1), "t1")  # 1 is now the most recently used
        self.fill(cache, [4, 5])
        self.assertEqual(len(cache), 3)
        self.assertEqual([k for k in (1, 2, 3, 4, 5) if cache.peek(k)], [1, 4, 5])

    def test_expired_tokens_are_purged(self):
        clock = Clock()
        cache = TokenCache(clock)
        self.fill(cache, range(100), expires_in=60)
        clock.advance(120)
        self.fill(cache, ["new"])
        self.assertEqual(len(cache), 1)

    def test_absurd_lifetimes_are_bounded(self):
        w = World()
        w.agent.on("GET", "http://a.fake" + TAG_PATH, token_challenge())
        w.agent.on("GET", "http://auth.fake/token?service=s&scope=repository%3Alibrary%2Fx%3Apull",
                   lambda: FakeResponse(200, {}, b'{"token": "t", "expires_in": 1e300}'))
        self.failureResultOf(w.pull(TAG_PATH), RegistryError)  # a keeps answering 401
        w.clock.advance(2 * 86400)
        self.assertEqual(len(w.pool.client.tokens), 1)
        self.assertIsNone(w.pool.client.tokens.peek((1, "http://a.fake", "", "repository:library/x:pull")))
