"""Routing a request to a namespace: :class:`RoutingTable` turns the ``Host``,
the ``?ns=`` parameter or a path prefix into a canonical
:class:`~zmirror.oci.names.Repo`.

Design: docs/design/namespaces.md ("Routing a request to a namespace").
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

from zmirror.oci.errors import RegistryError
from zmirror.oci.names import (DOCKER_ALIASES, DOCKER_HUB, NAMESPACE_MAX, Repo, check_components,
                               host_key, hostlike, normalize_host, normalize_namespace)


class RoutingTable:
    """Resolves a request's repository to a :class:`Repo`.

    ``namespaces``: a callable answering the configured namespaces (those of the
    registries table; ``docker.io`` always counts); ``hosts``: the ``[routing]
    hosts`` table (Host name → namespace), replaced on reload."""

    def __init__(self, namespaces: Callable[[], Iterable[str]] = lambda: (),
                 hosts: Optional[Mapping[str, str]] = None):
        self._namespaces = namespaces
        self.hosts: dict[str, str] = {}
        self.set_hosts(hosts or {})

    def set_hosts(self, hosts: Mapping[str, str]) -> None:
        """Replace the host table (``[routing] hosts``, on start and SIGHUP)."""
        table = {}
        for host, ns in dict(hosts).items():
            table[normalize_host(host)] = normalize_namespace(ns)
        self.hosts = table

    def known(self, namespace: str) -> bool:
        return (namespace == DOCKER_HUB or namespace in set(self._namespaces())
                or namespace in self.hosts.values())

    def by_host(self, host: Optional[str]) -> Optional[str]:
        """The namespace the ``Host`` (``name[:port]``) selects, or None."""
        if not host or not self.hosts:
            return None
        key = host_key(host)
        if key in self.hosts:
            return self.hosts[key]
        if key.startswith("["):  # an IPv6 literal: [::1]:5000
            bare = key.split("]", 1)[0] + "]"
        else:
            bare = key.rsplit(":", 1)[0] if ":" in key else key
        return self.hosts.get(bare)

    def resolve(self, raw: str, *, host: Optional[str] = None, ns: Optional[str] = None) -> Repo:
        """The :class:`Repo` for the raw repository name of a ``/v2/`` path.

        ``host``: the host the client addressed; ``ns``: the ``?ns=`` value.
        Raises RegistryError (NAME_INVALID, NAME_UNKNOWN) for what names no
        repository."""
        selected = self.by_host(host)
        if ns is not None:
            try:
                asked = normalize_namespace(ns)
            except ValueError as e:
                raise RegistryError("NAME_INVALID", f"invalid ns parameter: {e}",
                                    {"ns": ns[:300]}) from None
            if selected is not None and asked != selected:
                raise RegistryError("NAME_UNKNOWN", f"this host serves namespace {selected}, not {asked}",
                                    {"namespace": asked})
            selected = asked
        if selected is None:
            parts = check_components(raw, host_first=True)
            first = parts[0]
            if len(parts) > 1 and hostlike(first):
                if first in DOCKER_ALIASES:
                    selected, parts = DOCKER_HUB, parts[1:]
                elif self.known(first):
                    selected, parts = first, parts[1:]
            remote = "/".join(parts)
        else:
            remote = raw
        selected = selected or DOCKER_HUB
        parts = check_components(remote)
        if selected == DOCKER_HUB and len(parts) > 1 and hostlike(parts[0]) and (
                parts[0] in DOCKER_ALIASES or self.known(parts[0])):
            # its canonical name would be that namespace's (or docker.io/docker.io/...)
            raise RegistryError("NAME_UNKNOWN", f"{parts[0]} is a namespace of this mirror, not a "
                                "Docker Hub repository", {"name": remote})
        repo = Repo(selected, remote)
        if len(repo) > 255 + NAMESPACE_MAX + 1:
            raise RegistryError("NAME_INVALID", detail={"name": str(repo)[:300]})
        return repo


__all__ = ["RoutingTable"]
