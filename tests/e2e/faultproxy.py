"""A fault-injecting HTTP/1.1 TCP proxy on 127.0.0.1 for the e2e tests and ``bench/faults.py``.

Put a :class:`FaultProxy` between zmirror and a real registry (one proxy per upstream row).
With ``tls`` (a server ``ssl.SSLContext``) it serves zmirror over HTTPS, so every fault below
hits a TLS stream (a cut or reset lands mid-record, with no close_notify).
It forwards every request verbatim (``Range`` included: the registry answers it) and relays
the response byte for byte; it only parses enough HTTP to know where each response body
starts and ends on a keep-alive connection (status line, ``Content-Length``, chunked framing,
HEAD/204/304).  Per request it applies a :class:`Fault` chosen by its *plans*:

- ``pass``: relay untouched (paced at ``rate`` bytes/s if set, see below);
- ``cut``: send ``at`` body bytes, then close the connection (FIN);
- ``reset``: send ``at`` body bytes, then reset it (RST: ``SO_LINGER`` 0);
- ``stall``: send ``at`` body bytes, send nothing for ``seconds``, then go on (if the peer stayed);
- ``flip``: relay everything with the byte at offset ``at`` inverted;
- ``status``: answer ``status`` (5xx, 429 with ``Retry-After``) itself, upstream not asked;
- ``refuse``: reset this connection unanswered and refuse new connections (listener closed)
  for ``seconds``.

``at`` is a body offset (int), a fraction of this response's body (float in [0, 1)), or None
for a random byte of it (seeded).  A plan is ``(match, script, then)``: the requests ``match``
accepts take the faults of ``script`` in order, then ``then`` (a Fault, or a callable
``(request, random) -> Fault``) for ever after; the first plan that matches decides, a request
no plan matches passes.  Paced mode: ``rate`` (bytes/s per connection, None: unlimited; may
change at any time, open connections included) paces every response body, and :meth:`FaultProxy.hold`
holds back everything sent to clients (responses not even started) until
:meth:`FaultProxy.release` -- to keep a download in flight long enough to join it, read part of it,
or kill zmirror in the middle of it.  Everything done is counted (:attr:`FaultProxy.counts`) and logged
(:attr:`FaultProxy.events`, bounded).  Threads (two per open connection at most, bounded by
``max_connections``); :meth:`FaultProxy.close` stops them all.

Example: cut the first two GETs of a blob at a third of their bodies, then pass::

    p = FaultProxy(registry.port)
    p.plan(blob_get(digest), [Fault.cut(1 / 3), Fault.cut(1 / 3)])
    ...
    p.counts["fault:cut"]  # 2 once both happened
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

MiB = 1024 * 1024
KINDS = ("pass", "cut", "reset", "stall", "flip", "status", "refuse")
_REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass(frozen=True)
class Fault:
    kind: str = "pass"
    at: int | float | None = 0  # body offset, fraction of the body, or None (random byte)
    seconds: float = 0.0  # stall / refuse duration
    status: int = 503  # kind == "status"
    retry_after: str | None = None  # kind == "status": Retry-After to send (None: "1" on a 429, else none)
    headers: tuple[tuple[str, str], ...] = ()  # kind == "status": more response headers

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")

    @classmethod
    def pass_(cls) -> Fault:
        return cls("pass")

    @classmethod
    def cut(cls, at: float | None = None) -> Fault:
        return cls("cut", at)

    @classmethod
    def reset(cls, at: float | None = None) -> Fault:
        return cls("reset", at)

    @classmethod
    def stall(cls, seconds: float, at: float | None = None) -> Fault:
        return cls("stall", at, seconds=seconds)

    @classmethod
    def flip(cls, at: float | None = None) -> Fault:
        return cls("flip", at)

    @classmethod
    def answer(cls, status: int = 503, *, retry_after: int | str | None = None,
               headers: dict[str, str] | None = None) -> Fault:
        """Answer ``status`` without asking the upstream; ``retry_after``: the ``Retry-After``
        value (default: ``1`` on a 429, none otherwise); ``headers``: more headers (e.g.
        Docker Hub's ``ratelimit-limit`` / ``ratelimit-remaining``)."""
        return cls("status", status=status, retry_after=None if retry_after is None else str(retry_after),
                   headers=tuple((headers or {}).items()))

    @classmethod
    def refuse(cls, seconds: float = 1.0) -> Fault:
        return cls("refuse", seconds=seconds)

    def offset(self, length: int | None, rnd: random.Random) -> int:
        """The body offset this fault acts at, for a body of ``length`` bytes (None: unknown)."""
        n = length if length is not None else MiB
        if self.at is None:
            return rnd.randrange(max(1, n))
        if isinstance(self.at, float):
            return int(self.at * n)
        return int(self.at)


PASS = Fault()


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-cased names (the last one wins)
    raw: bytes  # the request head as received, forwarded verbatim

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


Match = Callable[[Request], bool]


def blob_get(digest: str | None = None, *, ranged: bool | None = None) -> Match:
    """Matches GETs of blobs (of ``digest`` only, if given); ``ranged``: only with / without Range."""

    def match(req: Request) -> bool:
        if req.method != "GET" or "/blobs/" not in req.path:
            return False
        if digest is not None and not req.path.endswith("/blobs/" + digest):
            return False
        return ranged is None or (req.range is not None) == ranged

    return match


def manifest_request(method: str | None = None, *, repository: str | None = None) -> Match:
    """Matches manifest requests (``method`` only, if given: "GET" or "HEAD"; of ``repository``
    only, if given: its name as sent to the upstream)."""

    def match(req: Request) -> bool:
        if method is not None and req.method != method:
            return False
        if "/manifests/" not in req.path:
            return False
        return repository is None or req.path.startswith(f"/v2/{repository}/manifests/")

    return match


def any_request(req: Request) -> bool:
    return True


@dataclass
class _Plan:
    match: Match
    script: deque
    then: Fault | Callable[[Request, random.Random], Fault]


@dataclass
class Event:
    """What the proxy did with one request (``sent``: body bytes written to the client)."""

    conn: int
    method: str
    path: str
    range: str | None
    fault: Fault
    status: int | None = None
    length: int | None = None  # the response body's announced length
    offset: int | None = None  # where the fault acted
    sent: int = 0
    done: bool = False  # the relay of this response ended (however)
    t0: float = field(default_factory=time.monotonic)


class _Closed(Exception):
    """The other side is gone (or the proxy is closing)."""


class FaultProxy:
    def __init__(self, target_port: int, *, name: str = "", rate: float | None = None, seed: int = 0,
                 max_connections: int = 64, chunk: int = 256 * 1024, target_host: str = "127.0.0.1",
                 max_events: int = 10_000, tls: ssl.SSLContext | None = None):
        self.target = (target_host, target_port)
        self.tls = tls  # a server context: zmirror talks TLS to this proxy (the registry behind it, plain HTTP)
        self.name = name or f"faultproxy-{target_port}"
        self.rate = rate  # response pacing per connection, bytes/s (None: unlimited); may change any time
        self.chunk = chunk
        self.max_connections = max_connections
        self.counts: Counter = Counter()
        self.events: deque[Event] = deque(maxlen=max_events)
        self._rnd = random.Random(seed)
        self._plans: list[_Plan] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._flowing = threading.Event()  # cleared by hold(): nothing goes out to clients
        self._flowing.set()
        self._socks: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._conn_ids = 0
        self._refuse_until = 0.0
        self._listener: socket.socket | None = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        self._acceptor.start()

    # -- control

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def plan(self, match: Match, script: list[Fault] = (), then=PASS, *, replace: bool = True) -> FaultProxy:
        """Faults for the requests ``match`` accepts: ``script`` in order, then ``then`` for ever.
        ``replace`` (default) drops the plans set before."""
        with self._lock:
            if replace:
                self._plans = []
            self._plans.append(_Plan(match, deque(script), then))
        return self

    def clear(self) -> FaultProxy:
        """No plans (everything passes), no refusal."""
        with self._lock:
            self._plans = []
            self._refuse_until = 0.0
        return self

    def script_left(self) -> int:
        with self._lock:
            return sum(len(p.script) for p in self._plans)

    def refuse(self, seconds: float | None = None) -> None:
        """Refuse new connections (listener closed) for ``seconds`` (None: until :meth:`accept`)."""
        with self._lock:
            self._refuse_until = float("inf") if seconds is None else time.monotonic() + seconds
        self._apply_refusal()

    def accept(self) -> None:
        with self._lock:
            self._refuse_until = 0.0
        self._apply_refusal()

    def hold(self) -> None:
        """Hold back everything sent to clients (responses not even started) until :meth:`release`
        (at most a minute each time something waits)."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def matching(self, match: Match) -> list[Event]:
        """The events of requests ``match`` accepts (oldest first)."""
        with self._lock:
            events = list(self.events)
        return [e for e in events if match(Request(e.method, e.path, {"range": e.range} if e.range else {}, b""))]

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self.counts)

    def close(self) -> None:
        self._closing.set()
        self._flowing.set()
        with self._lock:
            lst, self._listener = self._listener, None
            socks, self._socks = list(self._socks), set()
            threads = list(self._threads)
        if lst is not None:
            lst.close()
        for s in socks:
            _shut(s)
        self._acceptor.join(5)
        for t in threads:
            t.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- listening

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(128)
        s.settimeout(0.1)
        return s

    def _apply_refusal(self) -> None:
        """Closes or reopens the listener to match the refusal deadline (same port)."""
        with self._lock:
            if self._closing.is_set():
                return
            refusing = time.monotonic() < self._refuse_until
            if refusing and self._listener is not None:
                try:
                    self._listener.shutdown(socket.SHUT_RDWR)  # stops listening now, wakes accept()
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
                self.counts["refusals"] += 1
            elif not refusing and self._listener is None:
                for _ in range(50):
                    try:
                        self._listener = self._listen(self.port)
                        break
                    except OSError:
                        time.sleep(0.02)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            self._apply_refusal()
            with self._lock:
                lst = self._listener
            if lst is None:
                time.sleep(0.02)
                continue
            try:
                client, _ = lst.accept()
            except TimeoutError:
                continue
            except OSError:
                continue  # closed by refuse() or close()
            if not self._slots.acquire(blocking=False):
                self.counts["overflow"] += 1
                _rst(client)
                continue
            with self._lock:
                self._conn_ids += 1
                cid = self._conn_ids
                self.counts["connections"] += 1
                self._socks.add(client)
            t = threading.Thread(target=self._serve, args=(client, cid), name=f"{self.name}-{cid}", daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    # -- one connection

    def _decide(self, req: Request) -> Fault:
        with self._lock:
            for p in self._plans:
                if p.match(req):
                    if p.script:
                        return p.script.popleft()
                    return p.then(req, self._rnd) if callable(p.then) else p.then
        return PASS

    def _serve(self, client: socket.socket, cid: int) -> None:
        up: socket.socket | None = None
        cbuf, ubuf = b"", b""
        try:
            client.settimeout(600)
            if self.tls is not None:
                # the TLS socket replaces the TCP one: closing or resetting it (a fault) acts on
                # the same connection, cutting the TLS stream mid-record, without close_notify
                tcp, client = client, self.tls.wrap_socket(client, server_side=True)
                with self._lock:
                    self._socks.discard(tcp)
                    self._socks.add(client)
            while not self._closing.is_set():
                head, cbuf = _read_head(client, cbuf, self._closing)
                if head is None:
                    return
                req = _parse_request(head)
                n = int(req.headers.get("content-length") or 0)
                body, cbuf = _read_exact(client, cbuf, n, self._closing)
                fault = self._decide(req)
                ev = Event(cid, req.method, req.target, req.range, fault)
                with self._lock:
                    self.events.append(ev)
                    self.counts["requests"] += 1
                    if req.range:
                        self.counts["range_requests"] += 1
                if fault.kind != "pass":
                    self._count(fault)
                if fault.kind == "status":
                    ev.status, ev.done = fault.status, True
                    self._wait_flowing()
                    client.sendall(_error_answer(fault.status, fault.retry_after, fault.headers))
                    continue
                if fault.kind == "refuse":
                    self.refuse(fault.seconds)
                    ev.done = True
                    _rst(client)
                    return
                if up is None:
                    up = socket.create_connection(self.target, timeout=10)
                    up.settimeout(120)
                    with self._lock:
                        self._socks.add(up)
                up.sendall(req.raw + body)
                rhead, ubuf = _read_head(up, ubuf, self._closing)
                if rhead is None:
                    return
                status, rheaders = _parse_response(rhead)
                ev.status = status
                self._wait_flowing()
                client.sendall(rhead)
                if req.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                    ev.length = 0
                    ev.done = True
                    continue
                if "chunked" in rheaders.get("transfer-encoding", "").lower():
                    ubuf = self._relay_chunked(up, ubuf, client, ev)
                else:
                    cl = rheaders.get("content-length")
                    ev.length = int(cl) if cl is not None else None
                    ubuf, ended = self._relay(up, ubuf, client, ev, ev.length)
                    if ended == "fault":
                        return
                ev.done = True
                if ev.length is None or rheaders.get("connection", "").lower() == "close":
                    return
        except (_Closed, OSError, ValueError):  # ssl.SSLError is an OSError
            return
        finally:
            for s in (client, up):
                if s is not None:
                    with self._lock:
                        self._socks.discard(s)
                    _shut(s)
            with self._lock:
                self._threads.discard(threading.current_thread())
            self._slots.release()

    def _count(self, fault: Fault) -> None:
        with self._lock:
            self.counts[f"fault:{fault.kind}"] += 1
            if fault.kind == "status":
                self.counts[f"status:{fault.status}"] += 1

    def _wait_flowing(self) -> None:
        self._flowing.wait(60)
        if self._closing.is_set():
            raise _Closed()

    def _send(self, client: socket.socket, data: bytes) -> None:
        self._wait_flowing()
        client.sendall(data)
        rate = self.rate
        if rate and self._closing.wait(len(data) / rate):
            raise _Closed()

    def _relay(self, up: socket.socket, ubuf: bytes, client: socket.socket, ev: Event,
               length: int | None) -> tuple[bytes, str]:
        """Relays ``length`` body bytes (None: until the upstream closes), the event's fault
        applied; returns the bytes read past the body and how it ended ("end" or "fault")."""
        fault = ev.fault
        at = None if fault.kind == "pass" else fault.offset(length, self._rnd)
        if at is not None and length is not None and length > 0:
            at = min(at, length - 1)
        ev.offset = at
        pos, stalled = 0, False
        while length is None or pos < length:
            if ubuf:
                data, ubuf = ubuf, b""
            else:
                data = up.recv(self.chunk)
                if not data:
                    if length is None:
                        return b"", "end"
                    raise _Closed()
            if length is not None and pos + len(data) > length:
                data, ubuf = data[:length - pos], data[length - pos:]
            end = pos + len(data)
            if at is not None and fault.kind in ("cut", "reset") and end >= at:
                self._send(client, data[:at - pos])
                ev.sent = at
                if fault.kind == "cut":
                    client.shutdown(socket.SHUT_WR)
                else:
                    _rst(client)
                return b"", "fault"
            if at is not None and fault.kind == "stall" and not stalled and end > at:
                self._send(client, data[:at - pos])
                ev.sent = at
                stalled = True
                if self._closing.wait(fault.seconds):
                    raise _Closed()
                data, pos = data[at - pos:], at
            elif at is not None and fault.kind == "flip" and pos <= at < end:
                b = bytearray(data)
                b[at - pos] ^= 0xFF
                data = bytes(b)
            self._send(client, data)
            pos += len(data)
            ev.sent = pos
        return ubuf, "end"

    def _relay_chunked(self, up: socket.socket, ubuf: bytes, client: socket.socket, ev: Event) -> bytes:
        """Relays a chunked body untouched (faults apply to Content-Length bodies only)."""
        while True:
            line, ubuf = _read_line(up, ubuf, self._closing)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            data, ubuf = _read_exact(up, ubuf, size + 2, self._closing)
            self._send(client, line + data)
            ev.sent += size
            if size == 0:
                # trailers until an empty line (data above held the empty line when there are none)
                if data == b"\r\n":
                    return ubuf
                while True:
                    t, ubuf = _read_line(up, ubuf, self._closing)
                    self._send(client, t)
                    if t == b"\r\n":
                        return ubuf


# -- socket and HTTP helpers


def _rst(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def _recv(s: socket.socket, closing: threading.Event) -> bytes:
    while True:
        if closing.is_set():
            raise _Closed()
        try:
            return s.recv(256 * 1024)
        except TimeoutError:
            raise _Closed() from None


def _read_head(s: socket.socket, buf: bytes, closing: threading.Event, limit: int = 64 * 1024):
    """(head up to and including the blank line, rest) or (None, b"") at a clean EOF."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > limit:
            raise ValueError("header too long")
        data = _recv(s, closing)
        if not data:
            if buf:
                raise _Closed()
            return None, b""
        buf += data
    i = buf.index(b"\r\n\r\n") + 4
    return buf[:i], buf[i:]


def _read_line(s: socket.socket, buf: bytes, closing: threading.Event):
    while b"\r\n" not in buf:
        data = _recv(s, closing)
        if not data:
            raise _Closed()
        buf += data
    i = buf.index(b"\r\n") + 2
    return buf[:i], buf[i:]


def _read_exact(s: socket.socket, buf: bytes, n: int, closing: threading.Event):
    while len(buf) < n:
        data = _recv(s, closing)
        if not data:
            raise _Closed()
        buf += data
    return buf[:n], buf[n:]


def _headers(lines: list[bytes]) -> dict[str, str]:
    out = {}
    for line in lines:
        if b":" in line:
            k, v = line.split(b":", 1)
            out[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    return out


def _parse_request(head: bytes) -> Request:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3:
        raise ValueError(f"bad request line {lines[0]!r}")
    return Request(parts[0], parts[1], _headers(lines[1:]), head)


def _parse_response(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    return int(parts[1]), _headers(lines[1:])


def _error_answer(status: int, retry_after: str | None = None, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE"
    body = json.dumps({"errors": [{"code": code, "message": "injected by the fault proxy"}]}).encode()
    if retry_after is None and status == 429:
        retry_after = "1"
    extra = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    extra += "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


__all__ = ["KINDS", "PASS", "Event", "Fault", "FaultProxy", "Request", "any_request", "blob_get",
           "manifest_request"]
