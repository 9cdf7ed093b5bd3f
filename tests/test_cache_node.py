"""Each node of a cluster keeps its own verified blob cache: on PostgreSQL the blob
index lives in a node-local SQLite file (<[cache] dir>/index.sqlite), so nodes on
one database never see or delete each other's blob rows; on SQLite it stays in
the main database.  The manifest cache (no files) is in the main
database on both engines: on PostgreSQL a manifest one node fetched is served by
every node without asking the upstream."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest
from twisted.web.server import Site

from tests.fixtures.helpers import admin_password_line, coro, start_services, write_default_config
from tests.fixtures.admin import basic
from zmirror.cache.index import BLOB_TABLES, INDEX_FILE, MANIFEST_TABLES
from zmirror.cache.manifests import Manifest, ManifestCache
from zmirror.config import load_config
from zmirror.db.engine import connect_config, migrate_config
from zmirror.db.sqlite import Database
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
        self.port = reactor.listenTCP(0, self.c.site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.stopped = False
        case.addCleanup(lambda: Deferred.fromCoroutine(self.stop()))

    async def stop(self):
        if not self.stopped:
            self.stopped = True
            await self.port.stopListening()
            await self.top.stopService()
            await self.c.upstreams.close()

    @property
    def blobs(self):
        return self.c.blob_cache

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
        from tests.fixtures.pgserver import fresh_database

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
        self.assertIsInstance(node.c.index_db, Database)
        self.assertEqual(node.c.index_db.path, index)
        self.assertIs(node.blobs.db, node.c.index_db)
        self.assertIs(node.c.manifest_cache.db, node.c.db)  # shared by the nodes
        self.assertTrue(node.c.manifest_cache.shared)
        self.assertEqual(stat.S_IMODE(index.stat().st_mode), 0o600)

        body = await node.pull_blob("library/app", self.digest_a)
        self.assertEqual(body, self.blob_a)
        mdigest = self.upstream.registry.add_manifest("library/app", "v1", json.dumps(
            {"schemaVersion": 2, "layers": []}).encode())
        code, _ = await node.get("/v2/library/app/manifests/v1")
        self.assertEqual(code, 200)
        await wait_for(lambda: pg_rows(self.url, "cache_tags"))  # written through the writer pool

        self.assertEqual([r[0] for r in node.index_rows("cache_blobs")], [self.digest_a])
        self.assertEqual(node.index_rows("cache_blob_repos"), [(self.digest_a, "library/app")])
        for table in BLOB_TABLES:  # nothing of this node's blob cache in the shared database
            self.assertEqual(pg_rows(self.url, table), [], table)
        # the manifest cache is in the shared database, not in the node's index
        self.assertEqual([r[0] for r in pg_rows(self.url, "cache_manifests")], [mdigest])
        for table in MANIFEST_TABLES:
            self.assertEqual(node.index_rows(table), [], table)
        # the pull itself is logged in the shared database, with the node's name
        await node.c.accesslog.flush()
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

        # the admin API shows the node's own cache; a purge (of every node) of A's blob
        # leaves B's own
        code, body = await a.get("/api/cache", auth=True)
        self.assertEqual((code, json.loads(body)["entries"]), (200, 1))
        code, body = await a.get(f"/api/cache?digest={self.digest_a}", auth=True, method="DELETE")
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


    def manifest_requests(self):
        return [r[:3] for r in self.upstream.registry.requests if "/manifests/" in r[2]]

    @coro
    async def test_a_manifest_one_node_fetched_is_served_by_the_others(self):
        a = Node(self, self.work / "a" / "data", self.upstream.url, self.url)
        b = Node(self, self.work / "b" / "data", self.upstream.url, self.url)
        await a.c.manifest_cache.ready()
        await b.c.manifest_cache.ready()
        mdigest = self.upstream.registry.add_manifest("library/app", "v1", json.dumps(
            {"schemaVersion": 2, "layers": [{"digest": self.digest_a}]}).encode())
        by_tag, by_digest = "/v2/library/app/manifests/v1", f"/v2/library/app/manifests/{mdigest}"
        answers = {}
        for path in (by_tag, by_digest):
            resp = await treq.get(a.base + path, persistent=False)
            answers[path] = (resp.code, resp.headers.getRawHeaders("docker-content-digest"),
                             resp.headers.getRawHeaders("content-type"), await resp.content())
        self.assertEqual(answers[by_tag][0], 200)
        self.assertEqual(answers[by_tag][1], [mdigest])
        from_a = self.manifest_requests()
        self.assertEqual([m for m, _, _ in from_a], ["GET"])  # A: one GET, the digest from its cache
        await wait_for(lambda: pg_rows(self.url, "cache_tags"))  # A's write landed

        for path in (by_tag, by_digest, by_tag):
            resp = await treq.get(b.base + path, persistent=False)
            got = (resp.code, resp.headers.getRawHeaders("docker-content-digest"),
                   resp.headers.getRawHeaders("content-type"), await resp.content())
            self.assertEqual(got, answers[path], path)  # byte-identical
        self.assertEqual(self.manifest_requests(), from_a)  # B asked the upstream nothing

        # the counters stay each node's own
        stats = {}
        for name, node in (("a", a), ("b", b)):
            code, body = await node.get("/api/cache", auth=True)
            self.assertEqual(code, 200)
            m = json.loads(body)["manifests"]
            stats[name] = (m["hits"], m["misses"])
        self.assertEqual(stats, {"a": (1, 1), "b": (3, 0)})

    @coro
    async def test_a_delete_on_one_node_removes_the_shared_rows(self):
        a = Node(self, self.work / "a" / "data", self.upstream.url, self.url)
        b = Node(self, self.work / "b" / "data", self.upstream.url, self.url)
        self.upstream.registry.add_manifest("library/app", "v1", b'{"schemaVersion": 2, "layers": []}')
        code, _ = await a.get("/v2/library/app/manifests/v1")
        self.assertEqual(code, 200)
        await wait_for(lambda: pg_rows(self.url, "cache_tags"))
        code, body = await a.get("/api/cache?repository=library/app", auth=True, method="DELETE")
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["deleted"]["manifests"], 1)
        for table in MANIFEST_TABLES:
            self.assertEqual(pg_rows(self.url, table), [], table)
        before = len(self.manifest_requests())
        code, _ = await b.get("/v2/library/app/manifests/v1")  # nothing left to read: fetched again
        self.assertEqual(code, 200)
        self.assertEqual([m for m, _, _ in self.manifest_requests()[before:]], ["GET"])


async def wait_for(condition, tries: int = 500):
    for _ in range(tries):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition never held")


MANIFEST = b'{"schemaVersion": 2, "layers": []}'
DIGEST_1 = "sha256:" + "1" * 64
DIGEST_2 = "sha256:" + "2" * 64
MT = "application/vnd.docker.distribution.manifest.v2+json"


class TwoCachesOneDatabase:
    """Two ManifestCache instances (two "nodes", each with its own pools and writer
    connection) on one database."""

    backend = "sqlite"

    def setUp(self):
        from zmirror.db.sqlite import migrate

        if self.backend == "postgresql":
            from tests.fixtures.pgserver import fresh_database
            from zmirror.db import postgresql

            url = fresh_database(self)
            postgresql.migrate(url)
            self.dbs = [postgresql.PostgresDatabase(url, reactor) for _ in range(2)]
        else:
            path = Path(self.mktemp()).resolve() / "db.sqlite"
            path.parent.mkdir()
            migrate(path)
            self.dbs = [Database(path, reactor) for _ in range(2)]
        for db in self.dbs:
            db.start()
            self.addCleanup(db.close)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.a, self.b = (ManifestCache(db, self.clock, ttl=300) for db in self.dbs)

    @coro
    async def test_a_delete_on_one_node_drops_the_others_memory_copies(self):
        from zmirror.cluster import LoopbackHub

        hub = LoopbackHub()
        self.a, self.b = (ManifestCache(db, self.clock, ttl=300, shared=True, bus=hub.bus())
                          for db in self.dbs)
        for node in (self.a, self.b):
            node.store("library/app", "v1", Manifest(DIGEST_1, MT, MANIFEST))
        await self.settle()
        self.assertIsNotNone(await self.b.tag("library/app", "v1", [MT]))  # fresh, in B's memory
        await self.a.delete(repository="library/app")
        self.assertIsNone(await self.b.tag("library/app", "v1", [MT]))
        self.assertIsNone(await self.b.get(DIGEST_1))
        self.assertFalse(await self.b.has_repo(DIGEST_1, "library/app"))
        self.assertEqual([k for _o, k, _d in hub.sent], ["manifest.delete"])
        # what another node sends is checked: nothing here is usable
        for junk in (None, [], {"r": 5}, {"r": "x" * 1001}, {"d": "sha256:nope"}, {"r": ""}):
            hub.buses[1].deliver("manifest.delete", junk)
        self.b.store("library/app", "v2", Manifest(DIGEST_2, MT, MANIFEST))
        hub.buses[1].deliver("manifest.delete", {"r": None, "d": "sha256:" + "f" * 64})
        self.assertIsNotNone(await self.b.tag("library/app", "v2", [MT]))

    async def settle(self):
        """Every write queued so far has landed (each node's writer runs in order)."""
        await gatherResults([db.write(lambda txn: None) for db in self.dbs])

    async def tag_rows(self):
        return await self.dbs[0].query("SELECT digest, fetched_at FROM cache_tags")

    @coro
    async def test_concurrent_stores_of_one_tag_and_digest_do_not_fail(self):
        for i in range(20):
            t = self.clock.seconds()
            newer, older = (self.a, self.b) if i % 2 else (self.b, self.a)
            # the newer fetch is queued first, the older one second: it must not win
            self.clock.advance(1)
            newer.store("library/app", "v1", Manifest(DIGEST_2 if i % 2 else DIGEST_1, MT, MANIFEST))
            newer_at = self.clock.seconds()
            self.clock.advance(-0.5)  # the other node's (slightly behind) clock
            older.store("library/app", "v1", Manifest(DIGEST_1 if i % 2 else DIGEST_2, MT, MANIFEST))
            self.clock.advance(0.5)
            await self.settle()
            self.assertGreater(newer_at, t)
            self.assertEqual(await self.tag_rows(),
                             [{"digest": DIGEST_2 if i % 2 else DIGEST_1, "fetched_at": newer_at}], i)
        self.assertEqual(self.flushLoggedErrors(), [])
        bodies = await self.dbs[1].query("SELECT digest FROM cache_manifests ORDER BY digest")
        self.assertEqual([r["digest"] for r in bodies], [DIGEST_1, DIGEST_2])
        repos = await self.dbs[1].query("SELECT digest, repository FROM cache_manifest_repos ORDER BY digest")
        self.assertEqual([(r["digest"], r["repository"]) for r in repos],
                         [(DIGEST_1, "library/app"), (DIGEST_2, "library/app")])


class SqliteTwoCachesTests(TwoCachesOneDatabase, unittest.TestCase):
    def test_one_node_is_not_shared(self):
        self.assertFalse(self.a.shared)


class PostgresTwoCachesTests(TwoCachesOneDatabase, unittest.TestCase):
    """What sharing the rows means for what a node keeps in memory."""

    backend = "postgresql"

    @coro
    async def test_refresh_never_moves_a_newer_row_back(self):
        self.assertTrue(self.a.shared)
        self.a.store("library/app", "v1", Manifest(DIGEST_1, MT, MANIFEST))
        await self.settle()
        entry = await self.a.tag("library/app", "v1", [MT])
        self.clock.advance(400)  # stale on A
        self.b.store("library/app", "v1", Manifest(DIGEST_2, MT, MANIFEST))  # B: the tag moved
        moved_at = self.clock.seconds()
        await self.settle()
        self.clock.advance(-10)  # A's clock is behind: its revalidation is older than B's fetch
        self.a.refresh(entry)
        await self.settle()
        self.assertEqual(await self.tag_rows(), [{"digest": DIGEST_2, "fetched_at": moved_at}])
        # A no longer holds its entry: the newer shared row is read
        found = await self.a.tag("library/app", "v1", [MT])
        self.assertEqual((found.digest, found.fetched_at), (DIGEST_2, moved_at))

    @coro
    async def test_a_stale_entry_is_read_again_from_the_shared_row(self):
        self.a.store("library/app", "v1", Manifest(DIGEST_1, MT, MANIFEST))
        await self.settle()
        entry = await self.b.tag("library/app", "v1", [MT])
        self.assertTrue(self.b.fresh(entry))
        self.clock.advance(301)
        self.assertFalse(self.b.fresh(entry))
        a_entry = await self.a.tag("library/app", "v1", [MT])
        self.a.refresh(a_entry)  # A revalidated it upstream
        await self.settle()
        found = await self.b.tag("library/app", "v1", [MT])
        self.assertTrue(self.b.fresh(found))  # B serves it without asking the upstream
        self.assertEqual((found.digest, found.fetched_at), (DIGEST_1, self.clock.seconds()))

    @coro
    async def test_a_delete_on_one_node_removes_what_the_other_reads(self):
        self.a.store("library/app", "v1", Manifest(DIGEST_1, MT, MANIFEST))
        await self.settle()
        stored_at = self.clock.seconds()
        self.assertIsNotNone(await self.b.tag("library/app", "v1", [MT]))  # now in B's memory
        self.assertEqual(await self.a.delete(repository="library/app"), 1)
        for table in MANIFEST_TABLES:
            self.assertEqual(await self.dbs[1].query(f"SELECT * FROM {table}"), [], table)
        # B's memory copy: served until the TTL counted from the row's fetched_at runs out ...
        self.clock.advance(299)
        self.assertIsNotNone(await self.b.tag("library/app", "v1", [MT]))
        # ... then the row is read again: gone, so the entry goes too
        self.clock.advance(1)
        self.assertEqual(self.clock.seconds() - stored_at, 300)
        self.assertIsNone(await self.b.tag("library/app", "v1", [MT]))
        self.assertEqual(self.b.summary()["tags"], 0)
        # a revalidation on a node that still holds it does not bring the deleted row back
        self.a.store("library/app", "v2", Manifest(DIGEST_1, MT, MANIFEST))
        await self.settle()
        held = await self.b.tag("library/app", "v2", [MT])
        await self.a.delete(digest=DIGEST_1)
        self.clock.advance(301)
        self.b.refresh(held)
        await self.settle()
        self.assertEqual(await self.tag_rows(), [])
        self.assertIsNone(await self.b.tag("library/app", "v2", [MT]))


class HeldDatabase:
    """Queries and writes that answer when the test says so."""

    dialect = "postgresql"

    def __init__(self):
        self.queries: list[Deferred] = []
        self.writes: list[Deferred] = []

    def query(self, sql, params=()):
        d = Deferred()
        self.queries.append(d)
        return d

    def write(self, f, *args):
        d = Deferred()
        self.writes.append(d)
        return d


class WriteInFlightTests(unittest.TestCase):
    @coro
    async def test_a_row_read_before_its_write_landed_is_not_taken_for_deleted(self):
        db = HeldDatabase()
        cache = ManifestCache(db, Clock(), ttl=300)
        cache.store("library/app", "v1", Manifest(DIGEST_1, MT, MANIFEST))
        cache.clock.advance(301)  # stale (a slow database, or a short TTL)
        lookup = Deferred.fromCoroutine(cache.tag("library/app", "v1", [MT]))
        self.assertEqual(len(db.queries), 1)
        db.writes[0].callback(None)  # the store commits while the lookup reads ...
        db.queries[0].callback([])  # ... what was there before it: no row yet
        found = self.successResultOf(lookup)
        self.assertEqual(found.digest, DIGEST_1)  # stale, still held: revalidated, not refetched
        # a row really gone (no write in flight) drops the stale entry
        lookup = Deferred.fromCoroutine(cache.tag("library/app", "v1", [MT]))
        db.queries[1].callback([])
        self.assertIsNone(self.successResultOf(lookup))


class FailingDatabase:
    dialect = "postgresql"

    def __init__(self):
        self.queries = 0

    def query(self, sql, params=()):
        from twisted.internet.defer import fail

        self.queries += 1
        return fail(ConnectionError("the database is down"))

    def write(self, f, *args):
        from twisted.internet.defer import fail

        return fail(ConnectionError("the database is down"))


class DatabaseDownTests(unittest.TestCase):
    @coro
    async def test_a_failed_lookup_is_a_miss_logged_once(self):
        db = FailingDatabase()
        cache = ManifestCache(db, Clock())
        self.assertIsNone(await cache.tag("library/app", "v1", [MT]))
        self.assertIsNone(await cache.get(DIGEST_1))
        self.assertFalse(await cache.has_repo(DIGEST_1, "library/app"))
        self.assertEqual(db.queries, 3)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)  # not once per lookup
        # what this node stored meanwhile is served from memory (the write failed: logged)
        cache.store("library/app", "v1", Manifest(DIGEST_1, MT, MANIFEST))
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        found = await cache.tag("library/app", "v1", [MT])
        self.assertEqual(found.digest, DIGEST_1)
        self.assertEqual((await cache.get(DIGEST_1)).body, MANIFEST)
        self.assertEqual(db.queries, 3)
        # stale, the database still down: the memory copy (the caller revalidates it upstream)
        cache.clock.advance(301)
        self.assertEqual((await cache.tag("library/app", "v1", [MT])).digest, DIGEST_1)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)  # the next interval


class SqliteNodeCacheTests(unittest.TestCase):
    """One node on SQLite: the cache index stays in the main database (no extra file)."""

    @coro
    async def test_the_cache_index_stays_in_the_main_database(self):
        upstream = Upstream(self)
        blob = os.urandom(2000)
        digest = upstream.registry.add_blob(blob)
        node = Node(self, Path(self.mktemp()).resolve() / "data", upstream.url)
        self.assertIs(node.c.index_db, node.c.db)
        self.assertIs(node.blobs.db, node.c.db)
        self.assertIs(node.c.manifest_cache.db, node.c.db)
        self.assertFalse(node.c.manifest_cache.shared)
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

        self.assertEqual([s.db for s in node.c.services if isinstance(s, DatabaseService)],
                         [node.c.db])
