"""Each node keeps its own verified blob cache (issue 15): on PostgreSQL the cache
index lives in a node-local SQLite file (<[cache] dir>/index.sqlite), so nodes on
one database never see or delete each other's cache rows; on SQLite it stays in
the main database as before."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.server import Site

from tests.helpers import admin_password_line, start_services, write_default_config
from tests.test_admin_registries import coro
from tests.test_admin_support import basic
from zmirror.cache.index import CACHE_TABLES, INDEX_FILE
from zmirror.config import load_config
from zmirror.db import Database, connect_config, migrate_config
from zmirror.testing import FakeRegistry
from zmirror.wiring import build

ADMIN_PW = "Node-cache-admin-pw-1"
PG_LINE = '# url = "postgresql://zmirror:PASSWORD@127.0.0.1:5432/zmirror"'


class Node:
    """One wired zmirror (zmirror.wiring.build) on a real socket."""

    def __init__(self, case: unittest.TestCase, data: Path, upstream: str, url: str = ""):
        replacements = dict(admin_password_line(ADMIN_PW))
        replacements['anonymous = "whitelist"'] = 'anonymous = "all"'
        if url:
            replacements[PG_LINE] = f'url = "{url}"'
        write_default_config(data, replacements)
        self.config = load_config(data)
        migrate_config(self.config)
        conn = connect_config(self.config)  # the one registry row: the fake upstream
        try:
            conn.execute("UPDATE registries SET url = ?", (upstream,))
        finally:
            conn.close()
        self.c = build(self.config, reactor)
        self.top = start_services(self.c)
        self.port = reactor.listenTCP(0, self.c["site"], interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.stopped = False
        case.addCleanup(lambda: Deferred.fromCoroutine(self.stop()))

    async def stop(self):
        if not self.stopped:
            self.stopped = True
            await self.port.stopListening()
            await self.top.stopService()
            await self.c["upstreams"].close()

    @property
    def blobs(self):
        return self.c["blob_cache"]

    async def get(self, path: str, auth: bool = False, method: str = "GET"):
        headers = basic("admin", ADMIN_PW) if auth else {}
        resp = await treq.request(method, self.base + path, headers=headers, persistent=False)
        body = await resp.content()
        return resp.code, body

    async def pull_blob(self, repo: str, digest: str) -> bytes:
        code, body = await self.get(f"/v2/{repo}/blobs/{digest}")
        assert code == 200, (code, body[:200])
        for _ in range(500):  # the download is indexed when its file is in place
            if self.blobs.lookup(digest) is not None:
                break
            await deferLater(reactor, 0.01, lambda: None)
        await self.blobs.flush_index()
        return body

    def index_rows(self, table: str) -> list:
        conn = sqlite3.connect(str(self.config.cache_dir / INDEX_FILE))
        try:
            return conn.execute(f"SELECT * FROM {table}").fetchall()
        finally:
            conn.close()


class Upstream:
    def __init__(self, case: unittest.TestCase):
        self.registry = FakeRegistry()
        self.port = reactor.listenTCP(0, Site(self.registry.resource()), interface="127.0.0.1")
        case.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"


def pg_rows(url: str, table: str) -> list:
    from zmirror.db import postgresql

    with postgresql.connect(url, autocommit=True) as pg:
        return pg.execute(f"SELECT * FROM {table}").fetchall()


class PostgresNodeCacheTests(unittest.TestCase):
    def setUp(self):
        from tests.pgserver import fresh_database

        self.url = fresh_database(self)
        self.upstream = Upstream(self)
        self.blob_a = os.urandom(3000)
        self.blob_b = os.urandom(5000)
        self.digest_a = self.upstream.registry.add_blob(self.blob_a)
        self.digest_b = self.upstream.registry.add_blob(self.blob_b)
        self.work = Path(self.mktemp()).resolve()

    @coro
    async def test_a_wired_node_caches_into_its_local_index(self):
        node = Node(self, self.work / "a" / "data", self.upstream.url, self.url)
        index = node.config.cache_dir / INDEX_FILE
        self.assertIsInstance(node.c["cache_db"], Database)
        self.assertEqual(node.c["cache_db"].path, index)
        self.assertIs(node.blobs.db, node.c["cache_db"])
        self.assertIs(node.c["manifest_cache"].db, node.c["cache_db"])
        self.assertEqual(stat.S_IMODE(index.stat().st_mode), 0o600)

        body = await node.pull_blob("library/app", self.digest_a)
        self.assertEqual(body, self.blob_a)
        mdigest = self.upstream.registry.add_manifest("library/app", "v1", json.dumps(
            {"schemaVersion": 2, "layers": []}).encode())
        code, _ = await node.get("/v2/library/app/manifests/v1")
        self.assertEqual(code, 200)
        for _ in range(500):  # the manifest cache writes through the writer pool
            if node.index_rows("cache_manifests"):
                break
            await deferLater(reactor, 0.01, lambda: None)

        self.assertEqual([r[0] for r in node.index_rows("cache_blobs")], [self.digest_a])
        self.assertEqual(node.index_rows("cache_blob_repos"), [(self.digest_a, "library/app")])
        self.assertEqual([r[0] for r in node.index_rows("cache_manifests")], [mdigest])
        for table in CACHE_TABLES:  # nothing of this node's cache in the shared database
            self.assertEqual(pg_rows(self.url, table), [], table)
        # the pull itself is logged in the shared database, with the node's name
        await node.c["accesslog"].flush()
        from zmirror.db import postgresql

        with postgresql.connect(self.url, autocommit=True) as pg:
            nodes = {r[0] for r in pg.execute("SELECT node FROM access_logs").fetchall()}
        self.assertEqual(nodes, {node.config.server.node})

        # after a restart the node finds its cache again in its own index
        await node.stop()
        again = Node(self, self.work / "a" / "data", self.upstream.url, self.url)
        await again.blobs.ready()
        for _ in range(500):
            if again.blobs.lookup(self.digest_a) is not None:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(again.blobs.knows(self.digest_a, "library/app"))

    @coro
    async def test_two_nodes_on_one_database_keep_separate_caches(self):
        a = Node(self, self.work / "a" / "data", self.upstream.url, self.url)
        b = Node(self, self.work / "b" / "data", self.upstream.url, self.url)
        await a.pull_blob("library/app", self.digest_a)
        await b.pull_blob("library/app", self.digest_b)
        self.assertEqual([r[0] for r in a.index_rows("cache_blobs")], [self.digest_a])
        self.assertEqual([r[0] for r in b.index_rows("cache_blobs")], [self.digest_b])
        self.assertIsNone(a.blobs.lookup(self.digest_b))
        self.assertIsNone(b.blobs.lookup(self.digest_a))

        # the admin API shows and empties the node's own cache only
        code, body = await a.get("/api/cache", auth=True)
        self.assertEqual((code, json.loads(body)["entries"]), (200, 1))
        code, body = await a.get("/api/cache", auth=True, method="DELETE")
        self.assertEqual(code, 200, body)
        self.assertEqual(a.index_rows("cache_blobs"), [])
        self.assertEqual([r[0] for r in b.index_rows("cache_blobs")], [self.digest_b])
        self.assertIsNotNone(b.blobs.lookup(self.digest_b))

        # node B restarted: its index still claims only its own file
        await b.stop()
        b2 = Node(self, self.work / "b" / "data", self.upstream.url, self.url)
        await b2.blobs.ready()
        for _ in range(500):
            if b2.blobs.lookup(self.digest_b) is not None:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(list(b2.blobs.entries), [self.digest_b])
        body = await b2.pull_blob("library/app", self.digest_b)  # a hit, from its own disk
        self.assertEqual(body, self.blob_b)
        self.assertEqual(b2.blobs.stats["hits"], 1)


class SqliteNodeCacheTests(unittest.TestCase):
    """One node on SQLite: the cache index stays in the main database (no extra file)."""

    @coro
    async def test_the_cache_index_stays_in_the_main_database(self):
        upstream = Upstream(self)
        blob = os.urandom(2000)
        digest = upstream.registry.add_blob(blob)
        node = Node(self, Path(self.mktemp()).resolve() / "data", upstream.url)
        self.assertIs(node.c["cache_db"], node.c["db"])
        self.assertIs(node.blobs.db, node.c["db"])
        self.assertIs(node.c["manifest_cache"].db, node.c["db"])
        self.assertEqual(await node.pull_blob("library/app", digest), blob)
        self.assertFalse((node.config.cache_dir / INDEX_FILE).exists())
        conn = sqlite3.connect(str(node.config.database_path))
        try:
            rows = conn.execute("SELECT digest FROM cache_blobs").fetchall()
        finally:
            conn.close()
        self.assertEqual(rows, [(digest,)])
        # one database service: the main pools only
        from zmirror.service import DatabaseService

        self.assertEqual([s.db for s in node.c["services"] if isinstance(s, DatabaseService)],
                         [node.c["db"]])
