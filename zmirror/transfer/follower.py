"""The client-side follower: one client reads a blob file, complete or still
being downloaded, by sendfile(2) on plain TCP or in 64 KiB reads otherwise;
the last byte of a running download waits for its verification
(see docs/design/transfer.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IWriteDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from zmirror.transfer.connections import abort_client

log = Logger()

CHUNK = 64 << 10  # file reads: 64 KiB measured best here (1 MiB reads were ~3x slower)


@implementer(IPushProducer)
class FollowerProducer:
    """Streams a blob to one client from a file that may still be growing.

    On plain TCP the body goes by sendfile(2) (:class:`_SendfileWriter`);
    otherwise a push producer writes 64 KiB reads while the client's transport
    is not paused.  When it has caught up with a running download it waits for
    ``data_available``.  ``done`` fires True when every byte was sent, False
    when the client went away or had to be aborted (after its connection is
    gone, so the web layer never finishes a short response as complete).
    """

    def __init__(self, request, download: Any = None, *, path: Optional[Path] = None,
                 file=None, size: Optional[int] = None, start: int = 0, end: Optional[int] = None,
                 on_close: Optional[Callable[[], None]] = None,
                 on_sent: Optional[Callable[[int], None]] = None, reactor: Any = None):
        self.request = request
        self.reactor = reactor
        self._sf: Optional[_SendfileWriter] = None  # set while sending with sendfile(2)
        self.download = download
        self.file = file
        self.path = path if path is not None else (download.tmp_path if download else None)
        self.size = size
        self.pos = start
        self.end = end  # inclusive end, or None for "to the end"
        self.on_close = on_close
        self.on_sent = on_sent  # on_sent(n): n more bytes went out (the cache counts them)
        self.done: Deferred = Deferred()
        self.sent = 0
        self.paused = False
        self._pumping = False
        self._finished = False
        request.notifyFinish().addErrback(self._client_gone)

    def begin(self) -> Deferred:
        if self.file is None and self.path is not None:
            try:
                self.file = open(self.path, "rb", buffering=0)
            except OSError as e:
                self._abort(f"cannot open blob: {e}")
                return self.done
        # sendfile(2) whenever the client is on plain TCP, also while the download
        # still runs (it then waits for data_available when it has caught up)
        transport = _sendfile_transport(self.request, self.reactor)
        if transport is not None:
            # status line and headers go out through the transport first; the
            # body then moves from the page cache to the socket in the kernel
            self.request.write(b"")
            self._sf = _SendfileWriter(self, transport)
            self.reactor.addWriter(self._sf)
            return self.done
        self.request.registerProducer(self, True)
        self._pump()
        return self.done

    def _sendfile(self):
        """The client socket is writable (sendfile mode)."""
        if self._finished:
            return
        t = self._sf.transport
        if t.offset < len(t.dataBuffer) or t._tempDataLen:
            return  # the headers are still in Twisted's buffer
        limit, final = self._limit()
        if self.pos < limit:
            try:
                n = os.sendfile(self._sf.fd, self.file.fileno(), self.pos, min(limit - self.pos, SENDFILE_MAX))
            except BlockingIOError:
                return
            except OSError as e:
                self._abort(f"send failed: {e}")
                return
            if n == 0:
                self._abort("blob file shorter than expected")
                return
            self.pos += n
            self.sent += n
            self.request.sentLength += n
            if self.on_sent is not None:
                self.on_sent(n)
            return
        if final:
            if self.download is not None and self.download.state == "failed":
                self._abort(self.download.failure_reason)
            else:
                self._complete()
            return
        self._sf.pause()  # caught up with a running download: wait for data_available

    def _limit(self) -> tuple[int, bool]:
        """(readable end offset exclusive, final?)"""
        stop = None if self.end is None else self.end + 1
        dl = self.download
        if dl is None or dl.state == "done":
            total = self.size if dl is None else dl.length
            return (total if stop is None else min(stop, total)), True
        if dl.state == "failed":
            return self.pos, True
        # running: never release the final byte before verification
        avail = dl.written
        if dl.length is not None:
            avail = min(avail, dl.length - 1)
        if stop is not None and stop <= avail:
            return stop, True
        return avail, False

    def _pump(self):
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self.paused and not self._finished:
                limit, final = self._limit()
                if self.pos < limit:
                    n = min(CHUNK, limit - self.pos)
                    try:
                        data = os.pread(self.file.fileno(), n, self.pos)
                    except OSError as e:
                        self._abort(f"read failed: {e}")
                        return
                    if not data:
                        self._abort("blob file shorter than expected")
                        return
                    self.pos += len(data)
                    self.sent += len(data)
                    if self.on_sent is not None:
                        self.on_sent(len(data))
                    self.request.write(data)
                    continue
                if final:
                    if self.download is not None and self.download.state == "failed":
                        self._abort(self.download.failure_reason)
                    else:
                        self._complete()
                return  # caught up with a running download: wait for data_available
        finally:
            self._pumping = False

    def push(self, data: bytes, offset: int):
        """Bytes as they arrive from upstream, when this reader is right there."""
        if self.paused or self._finished or self.pos != offset or self.end is not None:
            return
        if self._sf is not None:
            return  # the sendfile writer reads the file; bytes written here would pass it
        dl = self.download
        if dl.length is not None and offset + len(data) >= dl.length:
            data = data[: dl.length - 1 - offset]  # the last byte waits for verification
        if data:
            self.pos += len(data)
            self.sent += len(data)
            self.request.write(data)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._pump()

    def data_available(self):
        if self._sf is not None:
            if not self._finished:
                self._sf.resume()
        elif not self.paused:
            self._pump()

    def stopProducing(self):
        self._close()

    def _client_gone(self, _f):
        self._finished = True
        self._close()
        if not self.done.called:
            self.done.callback(False)

    def _complete(self):
        self._finished = True
        if self._sf is None:
            self.request.unregisterProducer()
        self._close()
        if not self.done.called:
            self.done.callback(True)

    def _abort(self, why: str):
        log.warn("aborting blob transfer: {why}", why=why)
        self._finished = True
        try:
            self.request.unregisterProducer()
        except Exception:
            pass
        self._close()
        abort_client(self.request)
        # ``done`` fires from _client_gone once the connection is really gone, so
        # the web layer never finishes this response as if it were complete.

    def _close(self):
        if self._sf is not None:
            self._sf.close()
        if self.download is not None:
            self.download._unfollow(self)
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
        if self.on_close is not None:
            cb, self.on_close = self.on_close, None
            cb()


SENDFILE_MAX = 8 << 20


def _sendfile_transport(request, reactor):
    """The client's plain TCP transport when the body can go by sendfile(2):
    a known Content-Length (no chunking), not a HEAD, no TLS, a real reactor."""
    if reactor is None or not hasattr(reactor, "addWriter") or not hasattr(os, "sendfile"):
        return None
    from twisted.internet import tcp

    t = getattr(getattr(request, "channel", None), "transport", None)
    if type(t) is not tcp.Server or getattr(t, "TLS", False):
        return None
    if not all(hasattr(t, a) for a in ("dataBuffer", "offset", "_tempDataLen")):
        return None
    if request.method == b"HEAD" or request.responseHeaders.getRawHeaders(b"content-length") is None:
        return None
    return t


@implementer(IWriteDescriptor)
class _SendfileWriter:
    """Writability of a duplicate of the client's socket descriptor, so the
    reactor tells us when sendfile(2) can go on (Twisted's transport keeps the
    original descriptor for reading and for the headers)."""

    def __init__(self, producer: "FollowerProducer", transport):
        self.producer = producer
        self.transport = transport
        self.fd = os.dup(transport.fileno())
        self.reactor = producer.reactor
        self.active = True
        self.closed = False

    def fileno(self):
        return self.fd

    def doWrite(self):
        self.producer._sendfile()
        return None

    def connectionLost(self, reason):
        self.close()

    def logPrefix(self):
        return "zmirror-sendfile"

    def pause(self):
        if self.active:
            self.active = False
            self.reactor.removeWriter(self)

    def resume(self):
        if not self.active and not self.closed:
            self.active = True
            self.reactor.addWriter(self)

    def close(self):
        if self.closed:
            return
        self.pause()
        self.closed = True
        os.close(self.fd)

