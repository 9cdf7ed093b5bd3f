"""HTTP clients of the e2e tests, on a fresh connection per request (repeated header names stay
separate lines): :func:`http_request`, :func:`http_json` (JSON body, Basic credentials),
:func:`http_stream` (big bodies, hashed as read) and :func:`fetch` (never raises for a broken
body)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from tests.e2e.images import MANIFEST_ACCEPT, MiB


@dataclass
class HTTPResult:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self):
        return json.loads(self.body)

    def describe(self) -> str:
        hs = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"HTTP {self.status} [{hs}] body={self.body[:300]!r}"


def _send_raw(method: str, url: str, headers: Iterable[tuple[str, str]], timeout: float):
    """Send a request on a fresh connection (repeated header names stay separate lines);
    returns (connection, response) — the caller reads the body and closes."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.putrequest(method, (u.path or "/") + (f"?{u.query}" if u.query else ""), skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def http_request(method: str, url: str, headers: Iterable[tuple[str, str]] = (), timeout: float = 60,
                 read_limit: int | None = None) -> HTTPResult:
    """One request on a fresh connection; repeated header names become separate lines."""
    conn, resp = _send_raw(method, url, headers, timeout)
    try:
        body = resp.read() if read_limit is None else resp.read(read_limit)
        return HTTPResult(resp.status, resp.headers, body)
    finally:
        conn.close()


def http_json(method: str, url: str, obj=None, *, auth: tuple[str, str] | None = None,
              headers: Iterable[tuple[str, str]] = (), timeout: float = 30) -> HTTPResult:
    """One request with an optional JSON body and HTTP Basic credentials."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    hdrs = dict(headers)
    if auth is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    body = None
    if obj is not None:
        body = json.dumps(obj).encode()
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, (u.path or "/") + (f"?{u.query}" if u.query else ""), body=body, headers=hdrs)
        resp = conn.getresponse()
        return HTTPResult(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def manifest_headers(*types: str) -> list[tuple[str, str]]:
    return [("Accept", t) for t in (types or MANIFEST_ACCEPT)]


@dataclass
class StreamedResult:
    """A response read in chunks and hashed, never held in memory."""

    status: int
    headers: http.client.HTTPMessage
    length: int
    digest: str  # "sha256:<hex>" of the bytes read

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def http_stream(method: str, url: str, headers: Iterable[tuple[str, str]] = (), timeout: float = 60,
                chunk: int = MiB) -> StreamedResult:
    """:func:`http_request` for big bodies: reads to the end in ``chunk`` reads and hashes them."""
    conn, resp = _send_raw(method, url, headers, timeout)
    try:
        h, n = hashlib.sha256(), 0
        while True:
            data = resp.read(chunk)
            if not data:
                break
            h.update(data)
            n += len(data)
        return StreamedResult(resp.status, resp.headers, n, "sha256:" + h.hexdigest())
    finally:
        conn.close()


class Fetched:
    """A GET read to its end (or its failure), hashed as read."""

    def __init__(self, status: int | None, length: int, digest: str, error: BaseException | None):
        self.status, self.length, self.digest, self.error = status, length, digest, error

    def __repr__(self) -> str:
        return f"<GET {self.status}: {self.length} bytes {self.digest[:19]}… error={self.error!r}>"


def fetch(url: str, timeout: float = 90, progress: list | None = None) -> Fetched:
    """GET ``url``; never raises for a broken body (the error is in the result)."""
    u = url.split("://", 1)[1]
    hostport, path = u.split("/", 1)
    host, port = hostport.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    h, n, status = hashlib.sha256(), 0, None
    try:
        conn.request("GET", "/" + path)
        resp = conn.getresponse()
        status = resp.status
        while True:
            data = resp.read(MiB)
            if not data:
                break
            h.update(data)
            n += len(data)
            if progress is not None:
                progress[0] = n
        cl = resp.getheader("Content-Length")
        # read(amt) ends quietly at an early EOF: a body short of its Content-Length is an error
        err = http.client.IncompleteRead(b"", int(cl) - n) if cl is not None and n < int(cl) else None
        return Fetched(status, n, "sha256:" + h.hexdigest(), err)
    except (OSError, http.client.HTTPException) as e:
        return Fetched(status, n, "sha256:" + h.hexdigest(), e)
    finally:
        conn.close()
