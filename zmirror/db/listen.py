"""The cluster bus on PostgreSQL: LISTEN / NOTIFY.

:class:`PostgresBus` implements :class:`zmirror.cluster.IBus` for the nodes of
one PostgreSQL database: table changes from the triggers on ``zmirror_changes``
(coalesced for :data:`COALESCE` seconds), events on ``zmirror_events``; one
thread owns the listening connection, the reactor holds all state; after a
connection loss it reconnects with backoff and resyncs every table.

Design: docs/design/database.md ("The cluster bus on LISTEN / NOTIFY").
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from zmirror.cluster import IBus, Subscribers
from zmirror.db.postgresql import CONNECT_TIMEOUT, redact_url
from zmirror.db.watch import TABLES

log = Logger()

CHANGES = "zmirror_changes"
EVENTS = "zmirror_events"
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; leave room
MAX_PAYLOAD = 7000
COALESCE = 0.1  # seconds table notifications are gathered before one delivery
POLL = 0.25  # seconds the listening thread blocks before it looks at its stop flag
PING = 30.0  # idle seconds before a "SELECT 1" checks the connection is alive
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STOP_TIMEOUT = 2.0
APPLICATION_NAME = "zmirror-bus"
# the listening connection notices a dead peer within about half a minute
_KEEPALIVE = dict(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                  tcp_user_timeout=20000)


@implementer(IBus)
class PostgresBus(Subscribers, Service):
    """The IBus of the nodes sharing one PostgreSQL database (a Service: start
    it after the database's pools, stop it before they close).

    ``db``: the :class:`~zmirror.db.postgresql.PostgresDatabase` (publishing
    goes through its writer); ``reactor``: for ``callFromThread``; ``clock``:
    coalescing, backoff and the stop timeout (default: the reactor);
    ``connect``: ``connect(url)`` → a psycopg connection (tests).
    """

    def __init__(self, url: str, db: Any, reactor: Any, *, clock: Any = None,
                 connect: Optional[Callable[[str], Any]] = None, tables: tuple = TABLES):
        Subscribers.__init__(self)
        self.url = url
        self.db = db
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.tables = tuple(tables)
        self._connect_fn = connect or _connect
        try:
            from urllib.parse import urlsplit

            self._password = urlsplit(url).password or ""
        except ValueError:
            self._password = ""
        # reactor-thread state
        self.connected = False
        self.connects = 0  # successful connects (the first one included)
        self.failures = 0  # failed connects and lost connections
        self.dropped = 0  # events refused (too big) or unreadable
        # for /metrics and /readyz (zmirror.metrics.Metrics.watch_cluster, zmirror.health)
        self.published = 0  # events the database took (pg_notify answered)
        self.publish_errors = 0  # events the database refused (pg_notify failed)
        self.received = 0  # other nodes' events delivered to the subscribers
        self.table_changes: dict[str, int] = {}  # table → deliveries of its changes
        self.connected_at: Optional[float] = None  # clock time of the last (re)connect
        # clock time since when it is not listening (None while connected): the start,
        # or the moment the connection was lost
        self.disconnected_since: Optional[float] = None
        self._attempt = 0
        self._outage_logged = False
        self._pending: set[str] = set()
        self._flush: Any = None
        self._retry: Any = None
        self._ended: Optional[Deferred] = None
        # shared with the thread
        self._go = threading.Event()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        return f"<PostgresBus {redact_url(self.url)}>"

    # --- IBus ---------------------------------------------------------------------

    def publish(self, kind: str, data: dict) -> Deferred:
        try:
            payload = encode_event(self.origin, kind, data)
        except (TypeError, ValueError) as e:
            self.dropped += 1
            log.error("cluster event {kind} not sent: not JSON ({error})", kind=kind, error=str(e))
            return succeed(None)
        size = len(payload.encode("utf-8"))
        if size > MAX_PAYLOAD:
            self.dropped += 1
            log.error("cluster event {kind} not sent: {size} bytes is over the {limit} byte limit",
                      kind=kind, size=size, limit=MAX_PAYLOAD)
            return succeed(None)
        d = self.db.execute(NOTIFY_EVENT, (payload,))

        def sent(_):
            self.published += 1

        def refused(f):
            self.publish_errors += 1
            log.error("cluster event {kind} not sent: {error}", kind=kind,
                      error=self._clean(f.value))

        d.addCallbacks(sent, refused)
        return d

    # --- the service ----------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self._stopping = False
        # a new thread: not listening until it says so
        self.connected = False
        self.disconnected_since = self.clock.seconds()
        # a new event and thread each start: one left over from before a stop (still in
        # a connect) sees it is not the current one and ends
        self._go = go = threading.Event()
        go.set()
        self._thread = threading.Thread(target=self._run, args=(go,), name="zmirror-bus", daemon=True)
        self._thread.start()

    def stopService(self):
        Service.stopService(self)
        self._stopping = True
        for call in (self._retry, self._flush):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._flush = None
        self._go.set()
        thread = self._thread
        if thread is None or not thread.is_alive():
            return succeed(None)
        done: Deferred = Deferred()
        self._ended = done
        timer = self.clock.callLater(STOP_TIMEOUT, lambda: done.called or done.callback(False))

        def finished(ended):
            if timer.active():
                timer.cancel()
            if ended:
                # its last statement ran (it told us so): the join returns at once
                thread.join(1.0)
            else:
                log.warn("cluster bus: the listening thread is still connecting; not waiting for it")
            return None

        return done.addCallback(finished)

    # --- on the reactor thread --------------------------------------------------------

    def _connected(self) -> None:
        if self._stopping:
            return
        self.connected = True
        self.connects += 1
        self.connected_at = self.clock.seconds()
        self.disconnected_since = None
        self._attempt = 0
        if self._outage_logged or self.connects > 1:
            log.info("cluster bus: listening again on {url}; re-reading shared state",
                     url=redact_url(self.url))
        self._outage_logged = False
        self.resync(set(self.tables))

    def _failed(self, reason: str) -> None:
        if self._stopping:
            return
        was = self.connected
        self.connected = False
        self.failures += 1
        if was or self.disconnected_since is None:
            self.disconnected_since = self.clock.seconds()
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** min(self._attempt, 16)))
        self._attempt += 1
        if not self._outage_logged:
            self._outage_logged = True
            log.warn("cluster bus: {what} {url} ({reason}); retrying (changes made by other nodes "
                     "apply once it is back)", what="lost the connection to" if was else
                     "cannot listen on", url=redact_url(self.url), reason=reason)
        else:
            log.debug("cluster bus: still no connection ({reason}); next try in {s}s",
                      reason=reason, s=delay)
        self._retry = self.clock.callLater(delay, self._wake)

    def _wake(self) -> None:
        self._retry = None
        if not self._stopping:
            self._go.set()

    def _received(self, items: list) -> None:
        if self._stopping:
            return
        for channel, payload in items:
            if channel == CHANGES:
                if payload in self.tables:
                    self._pending.add(payload)
            elif channel == EVENTS:
                self._event(payload)
        if self._pending and self._flush is None:
            self._flush = self.clock.callLater(COALESCE, self._deliver_pending)

    def _deliver_pending(self) -> None:
        self._flush = None
        tables, self._pending = self._pending, set()
        if tables and not self._stopping:
            for t in tables:
                self.table_changes[t] = self.table_changes.get(t, 0) + 1
            self.deliver_tables(tables)

    def _event(self, payload: str) -> None:
        try:
            msg = json.loads(payload)
            origin, kind, data = msg["o"], msg["k"], msg["d"]
            if not isinstance(kind, str) or not isinstance(data, dict):
                raise ValueError("kind or data of the wrong type")
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deep
            self.dropped += 1
            log.warn("cluster bus: ignored an unreadable event ({n} bytes)", n=len(payload))
            return
        if origin == self.origin:
            return  # our own, echoed by PostgreSQL
        self.received += 1
        self.deliver(kind, data)

    def _thread_ended(self, thread: threading.Thread) -> None:
        if thread is not self._thread:
            return
        ended, self._ended = self._ended, None
        if ended is not None and not ended.called:
            ended.callback(True)

    # --- on the listening thread --------------------------------------------------------

    def _done(self) -> bool:
        # stopped, or a thread left over from before a stop and a new start
        return self._stopping or self._thread is not threading.current_thread()

    def _call(self, f: Callable, *args: Any) -> None:
        self.reactor.callFromThread(f, *args)

    def _clean(self, e: BaseException) -> str:
        text = " ".join(str(e).split())[:300] or type(e).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _run(self, go: threading.Event) -> None:
        try:
            while True:
                go.wait()
                if self._done():
                    return
                go.clear()
                self._session()
        finally:
            self._call(self._thread_ended, threading.current_thread())

    def _session(self) -> None:
        try:
            conn = self._connect_fn(self.url)
        except Exception as e:
            if not self._done():
                self._call(self._failed, self._clean(e))
            return
        try:
            if self._done():
                return
            conn.execute(f"LISTEN {CHANGES}")
            conn.execute(f"LISTEN {EVENTS}")
            self._call(self._connected)
            idle_since = time.monotonic()
            while not self._done():
                got = [(n.channel, n.payload) for n in conn.notifies(timeout=POLL, stop_after=1)]
                if got:
                    # and whatever else already arrived, in the same hand-over
                    got.extend((n.channel, n.payload) for n in conn.notifies(timeout=0))
                    self._call(self._received, got)
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= PING:
                    conn.execute("SELECT 1")
                    idle_since = time.monotonic()
        except Exception as e:
            if not self._done():
                self._call(self._failed, self._clean(e))
        finally:
            try:
                conn.close()
            except Exception:
                pass


# the one statement that sends an event (a node's writer, or a blocking connection)
NOTIFY_EVENT = f"SELECT pg_notify('{EVENTS}', ?)"


def encode_event(origin: str, kind: str, data: dict) -> str:
    """The ``zmirror_events`` payload :meth:`PostgresBus._event` reads (raises
    TypeError / ValueError when ``data`` is not JSON)."""
    return json.dumps({"o": origin, "k": kind, "d": data}, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def notify_blocking(conn: Any, origin: str, kind: str, data: dict) -> None:
    """Send an event from a blocking DB-API connection taking ``?`` placeholders
    (the ``zmirror`` CLI, which has no bus): delivered at its transaction's commit."""
    payload = encode_event(origin, kind, data)
    if len(payload.encode("utf-8")) > MAX_PAYLOAD:
        raise ValueError(f"cluster event {kind} is over the {MAX_PAYLOAD} byte limit")
    conn.execute(NOTIFY_EVENT, (payload,))


def _connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                           application_name=APPLICATION_NAME, **_KEEPALIVE)


__all__ = ["PostgresBus", "CHANGES", "EVENTS", "MAX_PAYLOAD", "COALESCE", "APPLICATION_NAME",
           "NOTIFY_EVENT", "encode_event", "notify_blocking"]
