"""zmirror.cache.download: the Content-Type a cache download stores and replays to its followers."""

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.fixtures.helpers import coro
from tests.fixtures.upstream import (BAD_CONTENT_TYPES, BDIGEST, BLOB, BPATH, OCTET, blob_answer,
                                     pull_blob, script_world)


class CachedDownloadValueTests(unittest.TestCase):
    """The Content-Type a cache download stores and replays to its followers."""

    def setUp(self):
        from tests.fixtures.helpers import temp_dir
        from tests.fixtures.pgserver import temp_database
        from tests.fixtures.cache import stop_transfers
        from zmirror.cache.blobs import CacheBlobs

        self.base, self.db = temp_dir(self), temp_database(self, reactor)
        self.blobs = CacheBlobs(self.base / "cache", self.db, reactor, max_size=1 << 30, idle_timeout=30)
        self.addCleanup(stop_transfers, self.blobs)

    async def wait_done(self, dl):
        for _ in range(500):
            if dl.state in ("done", "failed"):
                break
            await deferLater(reactor, 0.002, lambda: None)
        self.assertEqual(dl.state, "done")

    @coro
    async def test_invalid_content_type_not_stored_nor_replayed(self):
        await self.blobs.start()
        for ctype in BAD_CONTENT_TYPES:
            await self.blobs.delete()
            w = script_world(blobs=self.blobs)
            w.agent.on("GET", f"http://a.fake{BPATH}", lambda ctype=ctype: blob_answer(ctype=ctype))
            first = await pull_blob(w)
            dl = first.download
            self.assertEqual(dl.content_type, OCTET, ctype)
            self.assertEqual(first.headers[b"Content-Type"], OCTET, ctype)
            # another client of the same download gets the stored value
            second = await pull_blob(w)
            self.assertIs(second.download, dl)
            self.assertEqual(second.headers[b"Content-Type"], OCTET, ctype)
            await self.wait_done(dl)

    @coro
    async def test_download_start_checks_what_it_is_given(self):
        from zmirror.cache.download import Download
        from zmirror.upstream.blobs import UpstreamBlob

        await self.blobs.start()
        for ctype, stored in ((b"text/plain\r\nX-Injected: 1", OCTET), ("application/x-tar", b"application/x-tar"),
                              (None, OCTET)):
            dl = Download(self.blobs, BDIGEST, "library/x")
            dl.start(UpstreamBlob(blob_answer(), len(BLOB), ctype))
            self.assertEqual(dl.content_type, stored)
            await self.wait_done(dl)
