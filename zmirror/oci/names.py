"""Namespaces: which registry a repository belongs to, and its canonical name.

Every upstream mirrors one *namespace* (``docker.io``, ``ghcr.io``, any
``host[:port]``).  The canonical name of a repository is bare on docker.io
(with Docker Hub's ``library/`` rule) and carries its host elsewhere
(``ghcr.io/owner/img``); :class:`Repo` is that name as a ``str`` that also
knows its ``namespace`` and its name there (``remote``).  Requests are routed
to a namespace by :class:`zmirror.registry.routing.RoutingTable`.

Design: docs/design/namespaces.md.
"""

from __future__ import annotations

import re
from typing import Any

from zmirror.oci.errors import RegistryError

DOCKER_HUB = "docker.io"
DOCKER_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
LIBRARY = "library/"
NAMESPACE_MAX = 253

# Anchored with \Z, not $: "$" also matches before a trailing newline.
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_PORT = re.compile(rf"^({_LABEL}(?:\.{_LABEL})*)(?::([0-9]{{1,5}}))?\Z")


def hostlike(component: str) -> bool:
    """Whether a name's first component reads as a registry host (docker's rule:
    it holds a '.' or a ':', or is ``localhost``)."""
    return "." in component or ":" in component or component == "localhost"


def normalize_namespace(raw: Any) -> str:
    """A namespace as an admin (or containerd's ``?ns=``) writes it: ``host[:port]``,
    lower-cased; Docker Hub's aliases become ``docker.io``.  Raises ValueError
    with a one-line reason."""
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    ns = raw.strip().lower()
    if not ns:
        raise ValueError("must not be empty")
    if len(ns) > NAMESPACE_MAX:
        raise ValueError(f"must be at most {NAMESPACE_MAX} characters")
    m = _HOST_PORT.match(ns)
    if not m:
        raise ValueError("must be a registry host name, optionally with :port (e.g. ghcr.io)")
    port = m.group(2)
    if port is not None and not 0 < int(port) <= 65535:
        raise ValueError("has an invalid port")
    if not hostlike(ns):
        # a bare word would take Docker Hub's user names away from it (/v2/<word>/img)
        raise ValueError("must contain a '.' or a port, or be localhost (e.g. ghcr.io, registry:5000)")
    if ns in DOCKER_ALIASES:
        return DOCKER_HUB
    return ns


def host_key(value: str) -> str:
    """A host name as a lookup key: trimmed, lower-cased, no trailing dot."""
    return value.strip().lower().rstrip(".")


def normalize_host(raw: Any) -> str:
    """A host name clients address us by (``[routing] hosts`` keys): ``name[:port]``,
    lower-cased.  Raises ValueError with a one-line reason."""
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    host = host_key(raw)
    if not host or len(host) > NAMESPACE_MAX:
        raise ValueError(f"must be 1 to {NAMESPACE_MAX} characters")
    m = _HOST_PORT.match(host)
    if not m or (m.group(2) is not None and not 0 < int(m.group(2)) <= 65535):
        raise ValueError("is not a host name (letters, digits, '-' and '.', optionally :port)")
    return host


def canonical(namespace: str, remote: str) -> str:
    """The canonical name of repository ``remote`` (already validated) of ``namespace``."""
    if namespace == DOCKER_HUB:
        return LIBRARY + remote if "/" not in remote else remote
    return f"{namespace}/{remote}"


class Repo(str):
    """A canonical repository name that knows its ``namespace`` and its name
    there (``remote``).  Compares, hashes and stores as the canonical string."""

    __slots__ = ("namespace", "remote")

    def __new__(cls, namespace: str, remote: str) -> "Repo":
        if namespace == DOCKER_HUB and "/" not in remote:
            remote = LIBRARY + remote
        obj = super().__new__(cls, canonical(namespace, remote))
        obj.namespace = namespace
        obj.remote = remote
        return obj

    def __reduce__(self):
        return (Repo, (self.namespace, self.remote))

    def __repr__(self) -> str:
        return f"Repo({self.namespace!r}, {self.remote!r})"


def namespace_of(name: str) -> str:
    """The namespace of a name: a :class:`Repo`'s own, else docker.io."""
    return getattr(name, "namespace", DOCKER_HUB)


def remote_of(name: str) -> str:
    """The repository name to send to the namespace's upstreams."""
    return getattr(name, "remote", name)


def check_components(raw: str, *, host_first: bool = False) -> list[str]:
    """``raw``'s components, each checked against the name grammar; with
    ``host_first`` the first of several may also be a ``host:port``."""
    if not raw or len(raw) > 255:
        raise RegistryError("NAME_INVALID", detail={"name": raw[:300]})
    parts = raw.split("/")
    for i, part in enumerate(parts):
        if _COMPONENT.match(part):
            continue
        if host_first and i == 0 and len(parts) > 1 and _HOST_PORT.match(part):
            continue
        raise RegistryError("NAME_INVALID", detail={"name": raw})
    return parts


def canonical_name(raw: str) -> str:
    """A canonical name as a client or an admin writes it (a token scope, a cache
    or whitelist query): validated; ``docker.io/`` (or an alias) in front is
    dropped and Docker Hub's ``library/`` rule applied to a one-component name.
    Raises RegistryError NAME_INVALID."""
    parts = check_components(raw, host_first=True)
    if len(parts) > 1 and parts[0] in DOCKER_ALIASES:
        parts = parts[1:]
        if hostlike(parts[0]) and len(parts) > 1:
            raise RegistryError("NAME_INVALID", detail={"name": raw})
        check_components("/".join(parts))
    if len(parts) == 1:
        name = LIBRARY + parts[0]
        if len(name) > 255:
            raise RegistryError("NAME_INVALID", detail={"name": raw})
        return name
    return "/".join(parts)


__all__ = ["DOCKER_HUB", "DOCKER_ALIASES", "Repo", "canonical", "canonical_name", "normalize_namespace",
           "normalize_host", "namespace_of", "remote_of", "hostlike", "check_components"]
