"""Filling the cache from an HTTPS upstream off the reactor thread: after the
response headers, the TLS connection Twisted opened (pyOpenSSL over memory
BIOs) is taken over by a transfer thread that reads the ciphertext from the
socket, decrypts it with the same OpenSSL connection and writes the plaintext
into the temp file; the hashing thread of :class:`~zmirror.cache.kernelcopy.FileFill`
follows it as it follows a kernel copy (see docs/design/cache.md).

The cffi calls into OpenSSL release the GIL, so decryption, the file writes
and the hash run beside the reactor, which only serves clients."""

from __future__ import annotations

import mmap
import os
import select
from typing import Any, Optional

from zmirror.cache.kernelcopy import FileFill

try:
    from OpenSSL import SSL as _SSL

    _lib, _ffi = _SSL._lib, _SSL._ffi  # the cffi binding under pyOpenSSL
    _SSL_read, _SSL_get_error = _lib.SSL_read, _lib.SSL_get_error
    _WANT_READ = _lib.SSL_ERROR_WANT_READ
    _raise_ssl_error = _SSL.Connection._raise_ssl_error
except (ImportError, AttributeError):  # another pyOpenSSL: HTTPS bodies go the ordinary way
    _SSL = None

# Plaintext written per call (SSL_read yields at most one 16 KiB record per call)
# and ciphertext read from the socket per call.
PLAIN_CHUNK = 1 << 20
CIPHER_CHUNK = 1 << 20
_SEND_LIMIT = 1 << 16


def available() -> bool:
    return _SSL is not None and hasattr(mmap, "MAP_POPULATE")


def tls_over_tcp(transport) -> Optional[tuple]:
    """``(tls, tcp)`` when a response body's transport is pyOpenSSL's TLS
    (Twisted's ``TLSMemoryBIOProtocol``, handshake done) over a plain TCP
    connection, else None."""
    from twisted.internet import tcp
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    tls = getattr(transport, "_producer", None)
    if not isinstance(tls, TLSMemoryBIOProtocol) or _SSL is None:
        return None
    t = getattr(tls, "transport", None)
    conn = getattr(tls, "_tlsConnection", None)
    if type(t) is not tcp.Client or getattr(t, "TLS", False) or not hasattr(t, "fileno"):
        return None
    if not isinstance(conn, _SSL.Connection) or getattr(conn, "_into_ssl", None) is None:
        return None
    if not getattr(tls, "_handshakeDone", False) or getattr(tls, "_lostTLSConnection", True):
        return None
    return tls, t


def take_over(tls) -> Any:
    """The pyOpenSSL connection of ``tls`` (from :func:`tls_over_tcp`), which a
    :class:`TLSFill` owns from now on: Twisted's TLS layer no longer touches it
    (not when the TCP connection under it is closed, nor to write), so the
    reactor never races the transfer thread inside OpenSSL.  The connection
    cannot be used for anything else afterwards: drop it (abortConnection on
    the TCP connection) once the fill has ended."""
    conn = tls._tlsConnection
    tls._lostTLSConnection = True  # connectionLost: no bio_shutdown/recv; write(): ignored
    tls._aborted = True  # nothing more is delivered to the HTTP parser
    tls.disconnecting = True  # loseConnection(): no TLS shutdown on this connection
    tls.abortConnection = tls.transport.abortConnection  # no TLS shutdown either: straight to TCP
    return conn


class TLSFill(FileFill):
    """Moves an HTTPS body into the file: ciphertext from ``sock_fd`` (owned;
    non-blocking, polled like :class:`~zmirror.cache.kernelcopy.SpliceFill`)
    into ``connection`` (a pyOpenSSL ``Connection`` over memory BIOs, see
    :func:`take_over`), plaintext out of it into the file.  What OpenSSL wants
    to send meanwhile (a KeyUpdate answer, an alert) goes to the socket."""

    def __init__(self, algorithm: str, lease: Any, *, sock_fd: int, connection: Any, **kw):
        self._sock = sock_fd
        self._conn = connection
        super().__init__(algorithm, lease, **kw)

    def _release(self) -> None:
        os.close(self._sock)
        self._conn = None

    def _copy(self) -> None:
        conn = self._conn
        ssl = conn._ssl
        plain = bytearray(PLAIN_CHUNK)
        cipher = bytearray(CIPHER_CHUNK)
        cipher_view = memoryview(cipher)
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        remaining = self.length - self.written
        with _ffi.from_buffer(plain) as out:
            while remaining > 0:
                if self._stop:
                    return
                # the plaintext OpenSSL can make of what it holds, up to a chunk
                want = min(PLAIN_CHUNK, remaining)
                filled = 0
                broken = None  # SSL_read's result when it failed otherwise than "needs more bytes"
                while filled < want:
                    n = _SSL_read(ssl, out + filled, want - filled)
                    if n > 0:
                        filled += n
                    else:
                        if _SSL_get_error(ssl, n) != _WANT_READ:
                            broken = n
                        break
                if filled:  # what came before a failure is good: a resume goes on after it
                    self._write_all(memoryview(plain)[:filled])
                    remaining -= filled
                    self._advance(filled)
                if broken is not None:
                    self._tls_failed(conn, ssl, broken)
                    return
                if filled == want:
                    continue
                self._send_pending(conn)
                try:
                    n = os.readv(self._sock, [cipher])
                except BlockingIOError:
                    self._advance(0, drained=True)  # clients get what is there while we wait
                    if not self._wait(poller):
                        return
                    continue
                if n == 0:
                    self._failed(f"upstream sent {self.written} of {self.length} bytes")
                    return
                self._idle = 0.0
                conn.bio_write(cipher_view[:n])

    def _tls_failed(self, conn: Any, ssl: Any, result: int) -> None:
        """SSL_read failed with something other than "needs more bytes"."""
        try:
            _raise_ssl_error(conn, ssl, result)
        except _SSL.ZeroReturnError:  # close_notify: the upstream ended the body early
            self._failed(f"upstream sent {self.written} of {self.length} bytes")
            return
        except _SSL.Error as e:
            self._failed(f"upstream body broken after {self.written} bytes: TLS error {e}")
            return
        self._failed(f"upstream body broken after {self.written} bytes: TLS read returned {result}")

    def _send_pending(self, conn: Any) -> None:
        """Sends what OpenSSL queued for the peer (rare: a KeyUpdate answer)."""
        while True:
            try:
                data = conn.bio_read(_SEND_LIMIT)
            except _SSL.WantReadError:
                return
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self._sock, view):]
                except BlockingIOError:
                    out = select.poll()
                    out.register(self._sock, select.POLLOUT)
                    if not out.poll(int(self.idle_timeout * 1000)):
                        raise OSError(f"upstream took nothing for {self.idle_timeout:g} s")
