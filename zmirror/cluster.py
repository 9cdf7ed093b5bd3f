"""What the nodes of one cluster tell each other: :class:`IBus` carries table
changes (``on_tables``) and events one node publishes for the others
(``publish`` / ``subscribe``); after a (re)connect it calls the ``RESYNC``
subscribers and the table callbacks with every table.  :class:`LocalBus` (one
node), :class:`LoopbackHub` (tests); the PostgreSQL bus is
:mod:`zmirror.db.listen`.

Design: docs/design/cluster.md.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

log = Logger()

# subscribed kind: the bus (re)connected; reload what other nodes may have changed
RESYNC = "resync"


class IBus(Interface):
    origin = Attribute("This process's random id (str); events it publishes carry it")

    def publish(kind: str, data: dict) -> Deferred:
        """Send ``data`` to the other nodes' ``kind`` subscribers; fires when sent
        (never errbacks: a failure is logged and the event dropped)."""

    def subscribe(kind: str, callback: Callable[[dict], Any]) -> None:
        """Call ``callback(data)`` for each ``kind`` event from another node."""

    def on_tables(callback: Callable[[set], Any]) -> None:
        """Call ``callback(tables)`` when shared tables changed."""


class Subscribers:
    """The subscriber lists every bus keeps; a callback that raises is logged."""

    def __init__(self) -> None:
        self.origin = secrets.token_hex(8)
        self._subs: dict[str, list[Callable[[dict], Any]]] = {}
        self._table_subs: list[Callable[[set], Any]] = []

    def subscribe(self, kind: str, callback: Callable[[dict], Any]) -> None:
        self._subs.setdefault(kind, []).append(callback)

    def on_tables(self, callback: Callable[[set], Any]) -> None:
        self._table_subs.append(callback)

    def deliver(self, kind: str, data: dict) -> None:
        for cb in list(self._subs.get(kind, ())):
            try:
                cb(data)
            except Exception:
                log.failure("cluster event {kind}: a subscriber failed", kind=kind)

    def deliver_tables(self, tables: set) -> None:
        for cb in list(self._table_subs):
            try:
                cb(set(tables))
            except Exception:
                log.failure("cluster table change: a subscriber failed")

    def resync(self, tables: set) -> None:
        self.deliver(RESYNC, {})
        self.deliver_tables(tables)


@implementer(IBus)
class LocalBus(Subscribers):
    """A node alone (SQLite): publishing reaches nobody."""

    def publish(self, kind: str, data: dict) -> Deferred:
        return succeed(None)


class LoopbackHub:
    """Buses in one process that hear each other (tests of several "nodes")."""

    def __init__(self) -> None:
        self.buses: list[LoopbackBus] = []
        self.sent: list[tuple[str, str, dict]] = []  # (origin, kind, data)

    def bus(self) -> "LoopbackBus":
        b = LoopbackBus(self)
        self.buses.append(b)
        return b

    def tables_changed(self, tables: set) -> None:
        """What a write to shared tables makes every node hear."""
        for b in list(self.buses):
            b.deliver_tables(tables)


@implementer(IBus)
class LoopbackBus(Subscribers):
    def __init__(self, hub: LoopbackHub):
        super().__init__()
        self.hub = hub

    def publish(self, kind: str, data: dict) -> Deferred:
        self.hub.sent.append((self.origin, kind, data))
        for b in list(self.hub.buses):
            if b is not self:
                b.deliver(kind, data)
        return succeed(None)


__all__ = ["IBus", "LocalBus", "LoopbackHub", "LoopbackBus", "RESYNC"]
