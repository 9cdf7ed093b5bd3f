"""The anonymous-pull whitelist: :class:`Matcher` (prefix entries on canonical
names, at component boundaries or as plain prefixes with a trailing ``*``),
:class:`Whitelist` (the live matcher, rebuilt from the store's rows after every
change) and :func:`validate_prefix` (the one check of what an admin types).

Design: docs/design/auth.md ("The anonymous-pull whitelist").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from zmirror.db.errors import InvalidField
from zmirror.oci.names import DOCKER_ALIASES, hostlike
from zmirror.singleflight import SingleFlight

PREFIX_MAX = 255
# Anchored with \Z, not $: "$" also matches before a trailing newline.
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z")
# a registry host as the first component of several: "localhost:5000/x"
_HOST_PORT = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?:[0-9]{1,5}\Z")
# a component cut anywhere: "hello", "hello-", "hello_", "hello.w", ""
_PARTIAL = re.compile(r"^(?:[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\.|_|__|-+)?)?\Z")
LIBRARY = "library/"


class InvalidPrefix(ValueError):
    """A whitelist entry that can never be valid; ``str(e)`` explains why."""


def normalize_prefix(raw: object) -> str:
    """Validate a whitelist entry as typed by an admin; returns it stripped.

    Raises :class:`InvalidPrefix` with a human-readable reason.
    """
    if not isinstance(raw, str):
        raise InvalidPrefix("prefix must be a string")
    prefix = raw.strip()
    if not prefix:
        raise InvalidPrefix("prefix must not be empty")
    if len(prefix) > PREFIX_MAX:
        raise InvalidPrefix(f"prefix is longer than {PREFIX_MAX} characters")
    if prefix != prefix.lower():
        raise InvalidPrefix("repository names are lower case")
    star = prefix.endswith("*")
    body = prefix[:-1] if star else prefix
    if "*" in body:
        raise InvalidPrefix("'*' is only allowed at the end")
    if not body:
        raise InvalidPrefix('a lone "*" would allow everything; set [access] anonymous = "all" instead')
    if body.startswith("/"):
        raise InvalidPrefix("prefix must not start with '/'")
    parts = body.split("/")
    if len(parts) > 1 and parts[0] in DOCKER_ALIASES and parts[1]:
        # Docker Hub's canonical names are bare: docker.io/helloz is helloz
        prefix = prefix.split("/", 1)[1]
        return normalize_prefix(prefix)
    if star:
        full, last = parts[:-1], parts[-1]
        if not _PARTIAL.match(last):
            raise InvalidPrefix("prefix holds characters that never occur in repository names")
    else:
        full = parts
    for i, part in enumerate(full):
        if i == 0 and len(parts) > 1 and _HOST_PORT.match(part):
            continue  # a namespace with a port
        if not _COMPONENT.match(part):
            raise InvalidPrefix(
                "each path component must be lower-case letters and digits, "
                "separated by '.', '_', '__' or '-'"
            )
    return prefix


def validate_prefix(prefix: Any) -> str:
    """:func:`normalize_prefix` for input fields: raises ``InvalidField("prefix", …)``."""
    try:
        return normalize_prefix(prefix)
    except InvalidPrefix as e:
        raise InvalidField("prefix", str(e)) from None


@dataclass(frozen=True)
class Entry:
    id: int
    prefix: str


class Matcher:
    """Decides whether a parsed repository name matches one of the entries."""

    def __init__(self, entries: Iterable[Entry] = ()):
        self._components: dict[str, Entry] = {}
        self._strings: dict[str, Entry] = {}
        self.count = 0
        for e in entries:
            self.count += 1
            if e.prefix.endswith("*"):
                self._strings.setdefault(e.prefix[:-1], e)
            else:
                self._components.setdefault(e.prefix, e)

    def match(self, name: str) -> Optional[Entry]:
        """The most specific entry matching ``name`` (a parsed name), or None."""
        if not name:
            return None
        best: Optional[Entry] = None
        best_len = -1

        def consider(entry: Optional[Entry], length: int) -> None:
            nonlocal best, best_len
            if entry is not None and length > best_len:
                best, best_len = entry, length

        comps = name.split("/")
        if self._components:
            # every component-boundary prefix of the name: "a", "a/b", "a/b/c"
            for i in range(1, len(comps) + 1):
                p = "/".join(comps[:i])
                consider(self._components.get(p), len(p))
            # one-component entries also cover the official namespace
            if comps[0] == "library" and len(comps) >= 2:
                consider(self._components.get(comps[1]), len(LIBRARY) + len(comps[1]))
        if self._strings:
            # a "*" entry without "/" stays within Docker Hub (never "ghcr.io/...")
            other_ns = len(comps) > 1 and hostlike(comps[0])
            for i in range(1, len(name) + 1):
                e = self._strings.get(name[:i])
                if e is not None and not (other_ns and "/" not in e.prefix):
                    consider(e, i)
            if name.startswith(LIBRARY):
                rest = name[len(LIBRARY):]
                for i in range(1, len(rest) + 1):
                    e = self._strings.get(rest[:i])
                    if e is not None and "/" not in e.prefix:
                        consider(e, len(LIBRARY) + i)
        return best

    def allows(self, name: str) -> bool:
        return self.match(name) is not None

    def __len__(self) -> int:
        return self.count


class Whitelist:
    """The anonymous-pull whitelist in memory, following the store's enabled rows.

    Until the first load the matcher is empty (``loaded`` is False);
    :meth:`ready` runs that load once for all concurrent callers (a caller that
    goes away does not fail the others' wait).  Every later change made through
    the store, and every :meth:`load` (SIGHUP, the database watch), replaces the
    matcher after the commit.
    """

    def __init__(self, store: Any):
        self.store = store
        self._matcher: Optional[Matcher] = None
        self._loading: SingleFlight = SingleFlight()  # the first load, shared by concurrent callers
        self.unsubscribe = store.subscribe(self._rows)

    @property
    def loaded(self) -> bool:
        return self._matcher is not None

    @property
    def matcher(self) -> Matcher:
        """The current matcher (empty until the first load)."""
        return self._matcher if self._matcher is not None else Matcher()

    async def ready(self) -> Matcher:
        """The matcher, loading it first if this is the first use."""
        if self._matcher is None:
            await self._loading.run("load", self.load)
        return self.matcher

    async def load(self) -> Matcher:
        """Have the store re-read the enabled rows (they arrive through the subscription)."""
        await self.store.load()
        return self.matcher

    def match(self, name: str) -> Optional[Entry]:
        return self.matcher.match(name)

    def allows(self, name: str) -> bool:
        return self.matcher.allows(name)

    def _rows(self, rows: Iterable[dict]) -> None:
        self._matcher = Matcher(Entry(int(r["id"]), r["prefix"]) for r in rows)


def reference_match(prefix: str, name: str) -> bool:
    """Straightforward restatement of the matching rule (used by property tests)."""
    if prefix.endswith("*"):
        p = prefix[:-1]
        if "/" not in p and "/" in name and hostlike(name.split("/")[0]):
            return False
        return name.startswith(p) or ("/" not in p and name.startswith(LIBRARY + p))
    forms = [prefix]
    if "/" not in prefix:
        forms.append(LIBRARY + prefix)
    return any(name == f or name.startswith(f + "/") for f in forms)
