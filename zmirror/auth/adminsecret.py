"""The admin password as cluster state (PostgreSQL).

The ``cluster_secrets`` row :data:`ROW` holds a passlib hash that, when present
and usable, overrides ``[admin] password`` of config.toml on every node;
:class:`ClusterAdminPassword` is this node's copy, re-read on :data:`EVENT`, the
bus's ``RESYNC`` and SIGHUP.  See docs/design/auth.md, "The cluster's admin password".
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from zmirror.auth.passwords import is_hash, is_wellformed_hash
from zmirror.cluster import RESYNC
from zmirror.db.errors import one_line

log = Logger()

ROW = "admin_password"  # cluster_secrets.name
EVENT = "admin.password"  # bus event kind: the row changed; re-read it
VALUE_MAX = 1024
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")

_SELECT = "SELECT value FROM cluster_secrets WHERE name = ?"
_UPSERT = ("INSERT INTO cluster_secrets (name, value, created_at) VALUES (?, ?, ?)"
           " ON CONFLICT (name) DO UPDATE SET value = excluded.value, created_at = excluded.created_at")
_INSERT_NEW = ("INSERT INTO cluster_secrets (name, value, created_at) VALUES (?, ?, ?)"
               " ON CONFLICT (name) DO NOTHING")
_UPDATE_IF = "UPDATE cluster_secrets SET value = ?, created_at = ? WHERE name = ? AND value = ?"


class Unavailable(Exception):
    """The row cannot be read or written now (the database); the message is safe to log."""


def value_problem(value: Any) -> Optional[str]:
    """Why ``value`` (the row's) cannot be the admin password hash, or None.
    The message never contains the value."""
    if not isinstance(value, str):
        return "not text"
    if not value.strip():
        return "empty"
    if len(value) > VALUE_MAX:
        return f"longer than {VALUE_MAX} characters"
    if _SPACE_OR_CONTROL.search(value):
        return "contains spaces or control characters"
    if not is_hash(value):
        return "not a password hash (plain text is never taken from the database)"
    if not is_wellformed_hash(value):
        return "a malformed password hash"
    return None


# --- blocking (the CLI, the start of a node) -----------------------------------------


def read_blocking(conn: Any) -> Optional[str]:
    """The row's raw value (None: no row); ``conn`` a blocking DB-API connection
    taking ``?`` placeholders (:func:`zmirror.db.engine.connect_config`)."""
    row = conn.execute(_SELECT, (ROW,)).fetchone()
    return None if row is None else row[0]


def store_blocking(conn: Any, hashed: str, *, now: float, origin: Optional[str] = None) -> None:
    """Write ``hashed`` into the row (insert or replace) and tell the running nodes
    (``pg_notify`` in the same transaction: delivered once the row is committed).
    ``conn``: a blocking PostgreSQL connection in autocommit mode (the CLI's).
    Raises ValueError for a value :func:`value_problem` refuses."""
    from zmirror.db.listen import notify_blocking

    problem = value_problem(hashed)
    if problem is not None:
        raise ValueError(f"the admin password hash is {problem}")
    conn.execute("BEGIN")
    try:
        conn.execute(_UPSERT, (ROW, hashed, float(now)))
        notify_blocking(conn, origin or f"cli-{secrets.token_hex(6)}", EVENT, {"at": float(now)})
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# --- a running node --------------------------------------------------------------------


class ClusterAdminPassword:
    """This node's copy of the row: :attr:`value` is the usable hash that overrides
    config.toml's ``[admin] password``, or None (no row, or an unusable one:
    config.toml applies).  :attr:`loaded` is False until the row was read once
    (the admin API answers 503 meanwhile rather than trust config.toml).

    ``db``: the node's database (``query``, ``write``); ``bus``: its
    :class:`zmirror.cluster.IBus`; ``passwords``: whose admin cache to forget
    when the value changes.
    """

    def __init__(self, db: Any, bus: Any, clock: Any, *, passwords: Any = None):
        self.db = db
        self.bus = bus
        self.clock = clock
        self.passwords = passwords
        self.value: Optional[str] = None
        self.loaded = False
        self.changes = 0  # values applied (after the first load)
        self.failures = 0  # reads that failed
        self._raw: Any = None  # the last raw value seen (to log a problem once)
        self._gen = 0  # bumped by this node's own writes: older reads are discarded
        self._dirty = False
        self._running: Optional[Deferred] = None
        self._waiters: list[Deferred] = []
        if bus is not None:
            bus.subscribe(EVENT, lambda _data: self.refresh())
            bus.subscribe(RESYNC, lambda _data: self.refresh())

    # --- loading -----------------------------------------------------------------------

    def load_blocking(self, conn: Any) -> bool:
        """Read the row on ``conn`` (at start, before the reactor serves requests).
        False (logged) when it cannot be read: :meth:`refresh` tries again."""
        try:
            raw = read_blocking(conn)
        except Exception as e:
            return self._unreadable(e)
        self._take(raw)
        return True

    def _unreadable(self, e: BaseException) -> bool:
        self.failures += 1
        log.error("admin password: cannot read the cluster's admin password ({error}); "
                  "admin logins answer 503 until it can be read", error=one_line(e, 200))
        return False

    def load_config(self, config: Any) -> bool:
        """:meth:`load_blocking` on a new connection to ``config``'s database."""
        from zmirror.db.engine import connect_config

        try:
            conn = connect_config(config)
        except Exception as e:
            return self._unreadable(e)
        try:
            return self.load_blocking(conn)
        finally:
            conn.close()

    def refresh(self) -> Deferred:
        """Re-read the row (the bus event, RESYNC, SIGHUP): one read at a time, a
        request made meanwhile reads again after it.  Fires when done; never errbacks."""
        self._dirty = True
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        if self._running is None:
            running = Deferred.fromCoroutine(self._drain())
            if not running.called:  # it may have finished already (a synchronous database)
                self._running = running
        return waiter

    async def _drain(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                gen = self._gen
                try:
                    raw = await self._read()
                except Exception as e:
                    self.failures += 1
                    log.warn("admin password: cannot re-read the cluster's admin password "
                             "({error}); keeping the one in use", error=one_line(e, 200))
                    break
                if gen != self._gen:  # this node wrote meanwhile: read again
                    self._dirty = True
                    continue
                self._take(raw)
        finally:
            self._running = None
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(None)

    async def _read(self) -> Optional[str]:
        rows = await self.db.query(_SELECT, (ROW,))
        return rows[0]["value"] if rows else None

    def _take(self, raw: Any) -> None:
        """Apply the raw row value ``raw`` (None: no row)."""
        first = not self.loaded
        self.loaded = True
        seen_before = (not first) and raw == self._raw
        self._raw = raw
        if raw is None:
            value = None
            if self.value is not None:
                log.warn("admin password: the cluster_secrets row {row!r} is gone; the [admin] "
                         "password of config.toml applies again", row=ROW)
        else:
            problem = value_problem(raw)
            if problem is not None:
                value = None
                if not seen_before:
                    log.error("admin password: the cluster_secrets row {row!r} is refused ({problem});"
                              " the [admin] password of config.toml applies; set a new one with the"
                              " web UI or `zmirror admin-password`", row=ROW, problem=problem)
            else:
                value = raw
        self._set(value, "the database", quiet=first)

    def _set(self, value: Optional[str], source: str, *, quiet: bool = False) -> None:
        if value == self.value:
            return
        self.value = value
        if self.passwords is not None:
            self.passwords.forget_admin()
        if value is None:
            return
        if quiet:
            log.info("admin password: the cluster's (cluster_secrets row {row!r}) applies; "
                     "[admin] password of config.toml is not used", row=ROW)
        else:
            self.changes += 1
            log.info("admin password: changed ({source}); the old one no longer works",
                     source=source)

    # --- the change (PUT /api/me/password) ------------------------------------------------------

    async def fresh(self) -> tuple[Optional[str], Optional[str]]:
        """``(raw, usable)``: the row as it is in the database now (raw: for
        :meth:`replace`'s compare-and-set; usable: the hash to check the current
        password against, None when config.toml's applies).  Applies it here too.
        Raises :class:`Unavailable`."""
        try:
            raw = await self._read()
        except Exception as e:
            raise Unavailable(f"cannot read the cluster's admin password: {one_line(e, 200)}") from None
        self._gen += 1  # a read started before this one must not land after it
        self._take(raw)
        return raw, (raw if raw is not None and value_problem(raw) is None else None)

    async def replace(self, expected: Optional[str], hashed: str) -> bool:
        """Write ``hashed`` if the row is still ``expected`` (None: no row); apply it
        here and tell the other nodes.  False: it changed meanwhile (re-read).
        Raises :class:`Unavailable` (nothing written) or ValueError (not a hash)."""
        problem = value_problem(hashed)
        if problem is not None:
            raise ValueError(f"the admin password hash is {problem}")
        now = float(self.clock.seconds())

        def txn(cur):
            if expected is None:
                cur.execute(_INSERT_NEW, (ROW, hashed, now))
            else:
                cur.execute(_UPDATE_IF, (hashed, now, ROW, expected))
            return cur.rowcount

        try:
            count = await self.db.write(txn)
        except Exception as e:  # the hashes are cut out of whatever the driver says
            text = str(e)  # before it is cut short: a hash across the cut would stay in part
            for h in (hashed, expected):
                if h:
                    text = text.replace(h, "***")
            raise Unavailable("cannot write the cluster's admin password: "
                              + (" ".join(text.split())[:200] or type(e).__name__)) from None
        if count != 1:
            self.refresh()
            return False
        self._gen += 1
        self._raw = hashed
        self.loaded = True
        self._set(hashed, "through this node's admin API")
        if self.bus is not None:
            await self.bus.publish(EVENT, {"at": now})  # never errbacks
        return True

    def wait(self) -> Deferred:
        """Fires when no re-read is running (tests)."""
        if self._running is None:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d


__all__ = ["ROW", "EVENT", "ClusterAdminPassword", "Unavailable", "value_problem",
           "read_blocking", "store_blocking"]
