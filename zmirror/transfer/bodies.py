"""The bodies of the local blob store: a cached file (:class:`FileBody`) or a
running download (:class:`DownloadBody`), both sent by a
:class:`~zmirror.transfer.follower.FollowerProducer`; and what every body does
as it starts (:func:`start_response`) and ends (:func:`note_sources`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from zope.interface import implementer

from zmirror.transfer.follower import FollowerProducer
from zmirror.transfer.interfaces import IBlobBody


def start_response(request, status: int, headers: dict) -> None:
    request.setResponseCode(status)
    for k, v in headers.items():
        request.setHeader(k, v)


@implementer(IBlobBody)
@dataclass
class FileBody:
    """A cached blob served from its open file (``file`` None: a HEAD, no body)."""

    status: int
    headers: dict
    file: Any
    size: int
    start: int = 0
    end: Optional[int] = None
    on_close: Optional[Callable[[], None]] = None
    on_sent: Optional[Callable[[int], None]] = None
    reactor: Any = None
    verified: bool = True

    async def send(self, request):
        start_response(request, self.status, self.headers)
        if self.file is None:
            return b""
        producer = FollowerProducer(request, file=self.file, size=self.size, start=self.start,
                                    end=self.end, on_close=self.on_close, on_sent=self.on_sent,
                                    reactor=self.reactor)
        await producer.begin()
        return None


@implementer(IBlobBody)
@dataclass
class DownloadBody:
    """A blob read from a (possibly still running) cache download: the
    follower comes from ``download.follow`` (the cache counts its bytes)."""

    status: int
    headers: dict
    download: Any
    start: int
    end: Optional[int]
    verified: bool = True
    record: Any = None  # access-log record: told which upstreams sent the blob

    async def send(self, request):
        start_response(request, self.status, self.headers)
        try:
            await self.download.follow(request, self.start, self.end).begin()
        finally:
            note_sources(self.record, self.download)
        return None


def note_sources(record: Any, body: Any) -> None:
    """Tell an access-log record which upstreams sent a blob (``upstreams``
    of a resumed body or download, comma-separated) and how often it was resumed."""
    if record is None:
        return
    names = getattr(body, "upstreams", None)
    if names:
        record.upstream = ",".join(names)
    resumes = getattr(body, "resumes", 0)
    if resumes:
        record.resumes = resumes

