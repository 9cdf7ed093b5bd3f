"""Upstream registries (the ``registries`` table).

Every change runs in ONE write transaction that also reads the resulting full
list; subscribers (the proxy core) get that list after the commit, so they keep
an in-memory copy and never query the database per pull.  The upstream's
password, the proxy URL's password and the client key are stored as given
(they cannot be hashed); the admin API never returns them.

Design: docs/design/database.md ("The stores").
"""

from __future__ import annotations

from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from twisted.logger import Logger

from zmirror.db.errors import Conflict, NotFound
from zmirror.oci.names import DOCKER_HUB, normalize_namespace

log = Logger()

# proxy: None = the [upstream] default, "" = direct, else a proxy URL; tls_verify,
# ca, client_cert, client_key, server_name: zmirror.upstream.tlsconfig.TLSSettings
TLS_COLUMNS = ("proxy", "tls_verify", "ca", "client_cert", "client_key", "server_name")
COLUMNS = ("id", "name", "url", "priority", "enabled", "username", "password",
           "created_at", "updated_at", "namespace") + TLS_COLUMNS
UPDATABLE = ("name", "url", "priority", "enabled", "username", "password", "namespace") + TLS_COLUMNS
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM registries"
_ORDER = " ORDER BY priority, id"

URL_MAX = 2048


def normalize_url(url: str) -> str:
    """An upstream base URL: ``http(s)://host[:port][/path]`` without userinfo,
    query or fragment; the trailing slash is dropped.  Raises ValueError with a
    one-line reason."""
    if not isinstance(url, str):
        raise ValueError("must be a string")
    url = url.strip()
    if not url:
        raise ValueError("must not be empty")
    if len(url) > URL_MAX:
        raise ValueError(f"must be at most {URL_MAX} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("must not contain whitespace or control characters")
    if "\\" in url:
        raise ValueError("must not contain backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("must not contain credentials (use username and password)")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.query or url.rstrip().endswith("?"):
        raise ValueError("must not contain a query string")
    if parts.fragment or "#" in url:
        raise ValueError("must not contain a fragment")
    if port == 0:
        raise ValueError("has an invalid port")
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


def _row(values) -> dict:
    row = dict(zip(COLUMNS, values))
    row["enabled"] = bool(row["enabled"])
    row["tls_verify"] = bool(row["tls_verify"])
    return row


def _all(txn) -> list[dict]:
    txn.execute(_SELECT + _ORDER)
    return [_row(r) for r in txn.fetchall()]


def _get(txn, rid: int) -> dict:
    txn.execute(_SELECT + " WHERE id = ?", (rid,))
    r = txn.fetchone()
    if r is None:
        raise NotFound(f"registry {rid}")
    return _row(r)


def _check_name(txn, name: str, rid: Optional[int]) -> None:
    if rid is None:
        txn.execute("SELECT id FROM registries WHERE lower(name) = lower(?)", (name,))
    else:
        txn.execute("SELECT id FROM registries WHERE lower(name) = lower(?) AND id != ?", (name, rid))
    if txn.fetchone() is not None:
        raise Conflict("name", "a registry with this name already exists")


class RegistryStore:
    """CRUD on upstream registries; ``subscribe(cb)`` to get the full list after each change."""

    def __init__(self, db: Any, clock: Any):
        self.db = db
        self.clock = clock
        self._subscribers: list[Callable[[list[dict]], Any]] = []

    # --- reads -------------------------------------------------------------

    def list(self):
        """Deferred → all rows ordered by priority, id."""
        return self.db.read(_all)

    def get(self, rid: int):
        """Deferred → the row; errbacks with NotFound."""
        return self.db.read(_get, rid)

    def find(self, url: str, name: str):
        """Deferred → a row whose URL is ``url`` or whose name is ``name`` in any
        case, or None."""

        def run(txn):
            txn.execute(_SELECT + " WHERE url = ? OR lower(name) = lower(?) ORDER BY id", (url, name))
            r = txn.fetchone()
            return _row(r) if r is not None else None

        return self.db.read(run)

    # --- writes (each one transaction, then notify) ------------------------

    async def create(self, name: str, url: str, priority: int = 100, enabled: bool = True,
                     username: str = "", password: str = "", namespace: str = DOCKER_HUB,
                     proxy: Optional[str] = None, tls_verify: bool = True, ca: str = "",
                     client_cert: str = "", client_key: str = "", server_name: str = "") -> dict:
        url = normalize_url(url)
        namespace = normalize_namespace(namespace)
        now = self.clock.seconds()

        def txn_create(txn):
            _check_name(txn, name, None)
            txn.execute(
                "INSERT INTO registries (name, url, priority, enabled, username, password,"
                " created_at, updated_at, namespace, proxy, tls_verify, ca, client_cert, client_key,"
                " server_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (name, url, int(priority), int(bool(enabled)), username, password, now, now, namespace,
                 proxy, int(bool(tls_verify)), ca, client_cert, client_key, server_name),
            )
            rid = txn.fetchone()[0]
            return _get(txn, rid), _all(txn)

        row, rows = await self.db.write(txn_create)
        self._notify(rows)
        return row

    async def update(self, rid: int, **changes: Any) -> dict:
        """Change the given fields (``UPDATABLE``); unknown keys raise TypeError."""
        unknown = set(changes) - set(UPDATABLE)
        if unknown:
            raise TypeError(f"unknown registry fields: {', '.join(sorted(unknown))}")
        if "url" in changes:
            changes["url"] = normalize_url(changes["url"])
        if "namespace" in changes:
            changes["namespace"] = normalize_namespace(changes["namespace"])
        if "enabled" in changes:
            changes["enabled"] = int(bool(changes["enabled"]))
        if "tls_verify" in changes:
            changes["tls_verify"] = int(bool(changes["tls_verify"]))
        if "priority" in changes:
            changes["priority"] = int(changes["priority"])
        now = self.clock.seconds()

        def txn_update(txn):
            _get(txn, rid)
            if "name" in changes:
                _check_name(txn, changes["name"], rid)
            if changes:
                cols = sorted(changes)
                sets = ", ".join(f"{c} = ?" for c in cols)
                txn.execute(
                    f"UPDATE registries SET {sets}, updated_at = ? WHERE id = ?",
                    tuple(changes[c] for c in cols) + (now, rid),
                )
            return _get(txn, rid), _all(txn)

        row, rows = await self.db.write(txn_update)
        if changes:
            self._notify(rows)
        return row

    async def delete(self, rid: int) -> None:
        def txn_delete(txn):
            txn.execute("DELETE FROM registries WHERE id = ?", (rid,))
            if txn.rowcount == 0:
                raise NotFound(f"registry {rid}")
            return _all(txn)

        rows = await self.db.write(txn_delete)
        self._notify(rows)

    # --- change notification -----------------------------------------------

    def subscribe(self, callback: Callable[[list[dict]], Any]) -> Callable[[], None]:
        """Call ``callback(rows)`` (full list, secrets included) after every
        change.  Returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe():
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    async def publish(self) -> list[dict]:
        """Read the current list and hand it to every subscriber (e.g. at start)."""
        rows = await self.list()
        self._notify(rows)
        return rows

    def _notify(self, rows: list[dict]) -> None:
        for cb in list(self._subscribers):
            try:
                cb([dict(r) for r in rows])
            except Exception:
                log.failure("registry change subscriber failed")


__all__ = ["RegistryStore", "normalize_url", "NotFound", "Conflict", "UPDATABLE", "TLS_COLUMNS"]
