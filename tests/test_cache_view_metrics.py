"""The cache figures on /metrics (Metrics.watch_cache_figures) and in the node's
heartbeat row (cluster_nodes), the two sources of GET /api/cache/stats."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fixtures.helpers import coro
from tests.fixtures.pgserver import temp_database
from zmirror.cache.view import node_figures
from zmirror.metrics import Metrics
from zmirror.nodes import NodeHeartbeat


class Stats:
    def __init__(self, **stats):
        self.stats = stats
        self.size = 123
        self.entries = {"a": 1}


class FigureTests(unittest.TestCase):
    def test_node_figures(self):
        f = node_figures(Stats(hits=5, misses=1, bytes_from_cache=700, bytes_from_upstream=50),
                         Stats(hits=4, misses=2))
        self.assertEqual(f, {"hits": 9, "misses": 3, "bytes_from_cache": 700, "bytes_from_upstream": 50,
                             "manifest_gets_avoided": 4, "size": 123, "entries": 1})
        self.assertEqual(node_figures(None, None)["hits"], 0)

    def test_metrics(self):
        m = Metrics(process=False)
        figures = {"hits": 9, "misses": 3, "bytes_from_cache": 700, "bytes_from_upstream": 50,
                   "manifest_gets_avoided": 4}
        m.watch_cache_figures("node-a", lambda: figures)
        text = m.exposition().decode()
        for line in ('zmirror_cache_hits_total{node="node-a"} 9.0',
                     'zmirror_cache_misses_total{node="node-a"} 3.0',
                     'zmirror_cache_hit_ratio{node="node-a"} 0.75',
                     'zmirror_cache_blob_bytes_total{node="node-a",source="cache"} 700.0',
                     'zmirror_cache_blob_bytes_total{node="node-a",source="upstream"} 50.0',
                     'zmirror_cache_manifest_gets_avoided_total{node="node-a"} 4.0'):
            self.assertIn(line, text)
        figures.update(hits=0, misses=0)
        self.assertNotIn("zmirror_cache_hit_ratio{", m.exposition().decode())  # no requests yet


class HeartbeatTests(unittest.TestCase):
    @coro
    async def test_the_heartbeat_writes_the_figures(self):
        db = temp_database(self)
        beat = NodeHeartbeat(db, Clock(), node="n1", figures=lambda: {
            "hits": 2, "misses": 1, "bytes_from_cache": 10, "bytes_from_upstream": 20,
            "manifest_gets_avoided": 1})
        await beat.beat()
        rows = await db.query("SELECT cache_hits, cache_misses, cache_bytes_served, cache_bytes_fetched, "
                              "cache_gets_avoided FROM cluster_nodes")
        self.assertEqual([tuple(r.values()) for r in rows], [(2, 1, 10, 20, 1)])
        beat.figures = lambda: 1 / 0  # a failing source leaves the figures out, not the heartbeat
        await beat.beat()
        rows = await db.query("SELECT cache_hits FROM cluster_nodes")
        self.assertEqual(rows[0]["cache_hits"], None)


class PostgresHeartbeatTests(HeartbeatTests):
    backend = "postgresql"
