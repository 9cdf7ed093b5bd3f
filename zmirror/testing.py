"""Fakes shipped with the package for tests without a network.

- :class:`FakeRegistry`: an in-memory upstream registry (Klein app): optional
  token or Basic auth, blob redirects to a "CDN" host, injected faults (status
  codes, truncated or corrupt bodies, requests never answered).
- :class:`HostAgent`: an ``IAgent`` routing by URL host to in-memory resources,
  refusing connections to unknown hosts.
- :class:`FakeManifestSource` (a remote
  :class:`~zmirror.registry.manifests.ManifestSource`) and
  :class:`MemoryManifests` (a local manifest store), for the manifest flow.
- :class:`MemoryBlobs`: a blob source (:class:`~zmirror.transfer.interfaces.IBlobSource`)
  over a dict.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Optional
from urllib.parse import urlsplit

from klein import Klein
from treq.testing import RequestTraversalAgent
from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.web.iweb import IAgent
from zope.interface import implementer

from zmirror.cache.gate import LoadGate
from zmirror.cache.manifests import Manifest, TagEntry
from zmirror.oci.errors import RegistryError
from zmirror.oci.mediatypes import DEFAULT_ACCEPT, acceptable
from zmirror.upstream.manifests import ManifestResult
from zmirror.transfer.interfaces import BlobInfo, IBlobBody, IBlobSource
from zmirror.transfer.ranges import range_headers

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """A tiny upstream registry.  ``requests`` records (method, host, path, headers)."""

    app = Klein()

    def __init__(self, *, auth: Optional[str] = None, realm: str = "http://auth.fake/token",
                 service: str = "fake-registry", credentials: Optional[tuple[str, str]] = None,
                 cdn: Optional[str] = None):
        self.auth = auth  # None | "token" | "basic"
        self.realm = realm
        self.service = service
        self.credentials = credentials
        self.cdn = cdn  # e.g. "http://cdn.fake": blobs answer 307 there
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}
        self.tags: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str, str, dict]] = []
        self.token_requests: list[dict] = []
        self.issued: set[str] = set()
        # fault injection: path -> list of actions consumed one per request
        # actions: int status | ("status", code, headers) | "429-bare" | "hang" | "truncate" | "stall" | "corrupt"
        # blob bodies also: "reset" (half, then RST) | "norange" (a 200 that ignores Range) |
        # "badstart" / "othertotal" (a 206 whose Content-Range starts elsewhere / has another total) |
        # "extra" (no Content-Length, more bytes than the blob)
        self.faults: dict[str, list[Any]] = {}
        self.omit_digest = False

    # -- content ----------------------------------------------------------
    def add_manifest(self, name: str, tag: Optional[str], body: bytes, media_type: str = DOCKER_V2) -> str:
        digest = sha256(body)
        self.manifests[(name, digest)] = (media_type, body)
        if tag:
            self.manifests[(name, tag)] = (media_type, body)
            self.tags.setdefault(name, []).append(tag)
        return digest

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def resource(self):
        return self.app.resource()

    # -- helpers ------------------------------------------------------------
    def _log(self, request):
        hdrs = {k.decode("latin-1").lower(): [x.decode("latin-1") for x in v] for k, v in request.requestHeaders.getAllRawHeaders()}
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        self.requests.append((request.method.decode(), host, request.uri.decode(), hdrs))

    def _fault(self, request) -> Any:
        actions = self.faults.get(request.path.decode())
        if actions:
            return actions.pop(0)
        return None

    def _error(self, request, status: int, code: str, headers: Optional[dict] = None):
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        for k, v in (headers or {}).items():
            request.setHeader(k, v)
        return json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()

    def _authorized(self, request, scope: Optional[str]) -> bool:
        if self.auth is None:
            return True
        got = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if self.auth == "basic":
            user, pw = self.credentials or ("", "")
            return got == "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
        return got.startswith("Bearer ") and got[7:] in self.issued

    def _challenge(self, request, scope: Optional[str]):
        if self.auth == "basic":
            value = 'Basic realm="fake"'
        else:
            value = f'Bearer realm="{self.realm}",service="{self.service}"'
            if scope:
                value += f',scope="{scope}"'
        return self._error(request, 401, "UNAUTHORIZED", {b"WWW-Authenticate": value.encode()})

    def _gate(self, request, name: Optional[str]):
        self._log(request)
        scope = f"repository:{name}:pull" if name else None
        if not self._authorized(request, scope):
            return self._challenge(request, scope)
        fault = self._fault(request)
        if isinstance(fault, int):
            headers = {b"Retry-After": b"7"} if fault == 429 else {}
            return self._error(request, fault, "FAULT", headers)
        if fault == "429-bare":  # a 429 that says nothing (no Retry-After, no ratelimit-*)
            return self._error(request, 429, "TOOMANYREQUESTS")
        if fault == "hang":
            return Deferred()
        return fault

    # -- routes ----------------------------------------------------------
    @app.route("/v2/", methods=["GET"])
    def ping(self, request):
        r = self._gate(request, None)
        if r is not None:
            return r
        return b"{}"

    @app.route("/token", methods=["GET"])
    def token(self, request):
        self._log(request)
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        args["authorization"] = (request.getHeader(b"authorization") or b"").decode()
        self.token_requests.append(args)
        if self.credentials and args["authorization"]:
            user, pw = self.credentials
            if args["authorization"] != "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode():
                return self._error(request, 401, "UNAUTHORIZED")
        tok = f"tok{len(self.issued) + 1}"
        self.issued.add(tok)
        return json.dumps({"token": tok, "expires_in": 300}).encode()

    @app.route("/v2/<path:name>/manifests/<ref>", methods=["GET", "HEAD"])
    def manifest(self, request, name, ref):
        r = self._gate(request, name)
        if r is not None and not isinstance(r, str):
            return r
        entry = self.manifests.get((name, ref))
        if entry is None:
            return self._error(request, 404, "MANIFEST_UNKNOWN")
        media_type, body = entry
        accept = ",".join(x.decode("latin-1") for x in request.requestHeaders.getRawHeaders(b"accept") or [])
        if media_type not in accept:
            return self._error(request, 404, "MANIFEST_UNKNOWN")
        if r == "corrupt":
            body = body[:-1] + b" "
        request.setHeader(b"Content-Type", media_type.encode())
        if not self.omit_digest:
            request.setHeader(b"Docker-Content-Digest", sha256(entry[1]).encode())
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body

    @app.route("/v2/<path:name>/blobs/<digest>", methods=["GET", "HEAD"])
    def blob(self, request, name, digest):
        r = self._gate(request, name)
        if r is not None and not isinstance(r, str):
            return r
        data = self.blobs.get(digest)
        if data is None:
            return self._error(request, 404, "BLOB_UNKNOWN")
        if self.cdn and r is None:
            request.setResponseCode(307)
            request.setHeader(b"Location", f"{self.cdn}/cdn/{digest}".encode())
            return b""
        return self._send_blob(request, data, r)

    @app.route("/cdn/<digest>", methods=["GET", "HEAD"])
    def cdn_blob(self, request, digest):
        self._log(request)
        data = self.blobs.get(digest)
        if data is None:
            return self._error(request, 404, "BLOB_UNKNOWN")
        return self._send_blob(request, data, self._fault(request))

    def _send_blob(self, request, data: bytes, fault):
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Docker-Content-Digest", sha256(data).encode())
        rng = request.getHeader(b"range")
        if fault == "norange":
            rng = None
        if rng and rng.startswith(b"bytes="):
            start_s, _, end_s = rng[6:].decode("latin-1").partition("-")
            try:
                start = int(start_s)
                end = int(end_s) if end_s else len(data) - 1
            except ValueError:
                start = end = len(data)  # what this fake cannot parse it does not satisfy
            if start >= len(data) or start < 0 or end < start:
                request.setResponseCode(416)
                request.setHeader(b"Content-Range", f"bytes */{len(data)}".encode())
                return b""
            end = min(end, len(data) - 1)
            request.setResponseCode(206)
            first, total = start + (fault == "badstart"), len(data) + (fault == "othertotal")
            request.setHeader(b"Content-Range", f"bytes {first}-{end}/{total}".encode())
            data = data[first:end + 1]
        if fault == "extra":
            request.write(data + b"more than announced")  # no Content-Length: chunked
            request.finish()
            return Deferred()
        request.setHeader(b"Content-Length", str(len(data)).encode())
        if fault == "truncate":
            request.write(data[: len(data) // 2])
            transport = request.channel.transport
            if getattr(transport, "producer", None) is not None:
                # over real TCP a (paused) producer would keep the close from happening
                transport.unregisterProducer()
            transport.loseConnection()
            return Deferred()  # never finishes
        if fault == "reset":
            request.write(data[: len(data) // 2])
            transport = request.channel.transport
            if getattr(transport, "producer", None) is not None:
                transport.unregisterProducer()
            handle = getattr(transport, "getHandle", lambda: None)()
            if hasattr(handle, "setsockopt"):
                # real TCP: the written bytes go out, then close with RST (SO_LINGER 0)
                import socket
                import struct

                handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.loseConnection()
            else:
                (getattr(transport, "abortConnection", None) or transport.loseConnection)()
            return Deferred()
        if fault == "stall":  # half the body, then silence with the connection open
            request.write(data[: len(data) // 2])
            return Deferred()
        if fault == "corrupt":
            data = data[:-1] + bytes([data[-1] ^ 1])
        return data

    @app.route("/v2/<path:name>/tags/list", methods=["GET"])
    def tags_list(self, request, name):
        r = self._gate(request, name)
        if r is not None:
            return r
        if name not in self.tags:
            return self._error(request, 404, "NAME_UNKNOWN")
        tags = sorted(self.tags[name])
        n = request.args.get(b"n")
        last = request.args.get(b"last")
        if last:
            tags = [t for t in tags if t > last[0].decode("latin-1")]
        if n:
            try:
                k = int(n[0])
            except ValueError:
                return self._error(request, 400, "PAGINATION_NUMBER_INVALID")
            if len(tags) > k > 0:
                tags = tags[:k]
                request.setHeader(
                    b"Link", f'</v2/{name}/tags/list?last={tags[-1]}&n={k}>; rel="next"'.encode())
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"name": name, "tags": tags}).encode()


@implementer(IAgent)
class HostAgent:
    """Routes requests by host to in-memory resources; unknown hosts refuse."""

    def __init__(self, hosts: dict[str, Any]):
        self.agents = {host: RequestTraversalAgent(res) for host, res in hosts.items()}
        self.sent: list[tuple[bytes, bytes, Any]] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.sent.append((method, uri, headers))
        host = urlsplit(uri.decode()).netloc
        agent = self.agents.get(host)
        if agent is None:
            return fail(error.ConnectionRefusedError(host))
        return agent.request(method, uri, headers, bodyProducer)

    def flush(self):
        for a in self.agents.values():
            a.flush()


class FakeManifestSource:
    """A remote :class:`~zmirror.registry.manifests.ManifestSource` answering
    from memory.  ``calls`` records ``(repository, reference, "HEAD" | "GET")``;
    ``errors[(repository, reference)]`` is a list of RegistryErrors raised one
    per call before it answers again; a HEAD answers without a body."""

    def __init__(self):
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.errors: dict[tuple[str, str], list[RegistryError]] = {}
        self.calls: list[tuple[str, str, str]] = []

    def add(self, repository: str, tag: Optional[str], body: bytes, media_type: str = DOCKER_V2) -> str:
        digest = sha256(body)
        self.manifests[(repository, digest)] = (media_type, body)
        if tag:
            self.manifests[(repository, tag)] = (media_type, body)
        return digest

    def fail(self, repository: str, reference: str, *errors: RegistryError) -> None:
        self.errors.setdefault((repository, reference), []).extend(errors)

    async def get(self, repository: str, reference: str, accept: list[str], *, head: bool = False,
                  record: Any = None) -> ManifestResult:
        self.calls.append((repository, reference, "HEAD" if head else "GET"))
        pending = self.errors.get((repository, reference))
        if pending:
            raise pending.pop(0)
        entry = self.manifests.get((repository, reference))
        if entry is None or not acceptable(entry[0], accept or DEFAULT_ACCEPT):
            raise RegistryError("MANIFEST_UNKNOWN")
        media_type, body = entry
        return ManifestResult(sha256(body), media_type, None if head else body, len(body))


class MemoryManifests:
    """A local manifest store in memory with the methods
    :class:`~zmirror.registry.manifests.PullThroughManifests` uses (those of
    :class:`~zmirror.cache.manifests.ManifestCache`), its TTL on ``clock``."""

    def __init__(self, clock: Any, *, ttl: float = 300.0):
        self.clock = clock
        self.ttl = ttl
        self.bodies: dict[str, Manifest] = {}
        self.tags: dict[tuple[str, str], dict[str, TagEntry]] = {}
        self.repos: set[tuple[str, str]] = set()  # (digest, repository)
        self.stats = {"hits": 0, "misses": 0, "stale_served": 0, "revalidated": 0}
        self.loading = LoadGate()

    async def ready(self) -> None:
        if self.loading.closed:
            await self.loading.wait()

    async def get(self, digest: str) -> Optional[Manifest]:
        return self.bodies.get(digest)

    async def has_repo(self, digest: str, repository: str) -> bool:
        return (digest, repository) in self.repos

    async def tag(self, repository: str, tag: str, accept: list[str]) -> Optional[TagEntry]:
        ok = [e for e in self.tags.get((repository, tag), {}).values() if acceptable(e.media_type, accept)]
        return max(ok, key=lambda e: e.fetched_at) if ok else None

    def fresh(self, entry: TagEntry) -> bool:
        return self.clock.seconds() - entry.fetched_at < self.ttl

    def add_repo(self, digest: str, repository: str) -> None:
        self.repos.add((digest, repository))

    def refresh(self, entry: TagEntry) -> None:
        entry.fetched_at = self.clock.seconds()
        self.stats["revalidated"] += 1

    def store(self, repository: str, tag: Optional[str], m: Manifest) -> None:
        self.bodies.setdefault(m.digest, m)
        self.repos.add((m.digest, repository))
        if tag is not None:
            entry = TagEntry(repository, tag, m.media_type, m.digest, self.clock.seconds())
            self.tags.setdefault((repository, tag), {})[m.media_type] = entry

    def drop_tag(self, repository: str, tag: str) -> None:
        self.tags.pop((repository, tag), None)

    def count_hit(self, *, stale: bool = False) -> None:
        self.stats["hits"] += 1
        if stale:
            self.stats["stale_served"] += 1

    def count_miss(self) -> None:
        self.stats["misses"] += 1


@implementer(IBlobBody)
class MemoryBlobBody:
    """An :class:`~zmirror.transfer.interfaces.IBlobBody` of bytes held in memory (tests)."""

    def __init__(self, status: int, headers: dict, data: bytes, *, verified: bool = True):
        self.status = status
        self.headers = headers
        self.data = data
        self.verified = verified

    async def send(self, request):
        request.setResponseCode(self.status)
        for k, v in self.headers.items():
            request.setHeader(k, v)
        request.write(self.data)
        return None


@implementer(IBlobSource)
class MemoryBlobs:
    """An :class:`~zmirror.transfer.interfaces.IBlobSource` over a dict ``{(repo, digest): bytes}``
    (tests): ranges are answered as an upstream would (206, unverified);
    ``requests`` records ``(method, repo, digest, byte_range)``."""

    def __init__(self, blobs: Optional[dict] = None):
        self.blobs: dict = dict(blobs or {})
        self.requests: list = []

    def _get(self, repo: str, digest: str) -> bytes:
        data = self.blobs.get((repo, digest))
        if data is None:
            raise RegistryError("BLOB_UNKNOWN")
        return data

    async def stat(self, repo, digest, *, record=None):
        self.requests.append(("HEAD", repo, digest, None))
        return BlobInfo(len(self._get(repo, digest)))

    async def open(self, repo, digest, byte_range, *, record=None):
        self.requests.append(("GET", repo, digest, byte_range))
        data = self._get(repo, digest)
        status, start, end, headers = range_headers(byte_range, len(data))
        headers[b"Content-Type"] = b"application/octet-stream"
        part = data if end is None else data[start:end + 1]
        return MemoryBlobBody(status, headers, part, verified=status == 200)
