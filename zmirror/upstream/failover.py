"""One request answered by the first upstream that can: priority order, failover, health.

:meth:`Failover.fetch` sends a request to the pool's candidates in order until
one answers with an acceptable status (and, when given, passes ``validate``);
what every upstream answered goes into the health memory and, when none could,
into one :class:`~zmirror.oci.errors.RegistryError` whose client-facing
part is generic (the names, hosts and reasons are logged once and kept on the
error's ``internal`` field for the admin side).

Used by the manifest, tag-list and blob sources alike; a caller that resumes a
broken blob body passes its own ``candidates`` order (the same upstream first,
then the others).

Rate limits: a 429 from any upstream, and the ``ratelimit-*`` headers of every
manifest answer (``limits``), go to the pool's rate-limit memory
(:meth:`~zmirror.upstream.client.UpstreamPool.note_rate_limit`); a 429 is not
a failure of the upstream.  A request that counts against a pull limit
(``counted``: manifest GETs) skips the upstreams in a rate-limit cool-down
(every request does when the 429 came for one that does not count, e.g. a
HEAD); each skipped one counts as a rate-limited attempt, so when no other upstream can answer
the client gets ``429 TOOMANYREQUESTS`` with the shortest wait as
``Retry-After`` (and the manifest cache serves its stale copy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence

from twisted.logger import Logger

from zmirror.oci.errors import RegistryError
from zmirror.oci.names import namespace_of, remote_of
from zmirror.upstream.client import Upstream, UpstreamError, UpstreamPool

log = Logger()

MAX_RETRY_AFTER = 86400
DEFAULT_RETRY_AFTER = 60


def header(resp, name: bytes) -> Optional[str]:
    """The first value of a response header, decoded as Latin-1 (None if absent)."""
    v = resp.headers.getRawHeaders(name)
    return v[0].decode("latin-1") if v else None


@dataclass
class Attempt:
    upstream: Upstream
    kind: str  # notfound | denied | ratelimited | error
    detail: str = ""
    retry_after: Optional[str] = None


class Failover:
    def __init__(self, pool: UpstreamPool, clock: Any):
        self.pool = pool
        self.clock = clock

    async def fetch(
        self,
        method: bytes,
        path: str,
        headers: dict,
        *,
        name: str,
        unknown_code: str,
        what: tuple[str, str] = ("", ""),
        record: Any = None,
        ok_codes: tuple[int, ...] = (200,),
        terminal_codes: tuple[int, ...] = (),
        validate: Optional[Callable[[Upstream, Any], Awaitable[Any]]] = None,
        candidates: Optional[Sequence[Upstream]] = None,
        limits: bool = False,
        counted: bool = False,
    ):
        """Try upstreams in order; returns ``(upstream, response, validated)``.

        ``name``: the repository's canonical name (a
        :class:`~zmirror.oci.names.Repo`; a plain ``str`` is a
        docker.io name): only the upstreams of its namespace are asked, and the
        upstream token scope names the repository within it; ``what``: (kind,
        reference) for the log; ``record``: an access-log record whose
        ``upstream`` is set to the one that answered.  ``validate(up, resp)``
        may read the body and raise UpstreamError to fail over to the next
        upstream (e.g. a digest mismatch).  ``candidates``: the upstreams to
        try, in order (default: the pool's of the namespace, healthy ones
        first); one of another namespace is never asked.
        ``limits``: record the upstreams' ``ratelimit-*`` headers (manifest
        answers); ``counted``: the request counts against a pull limit (a
        manifest GET), so upstreams in a rate-limit cool-down are skipped.
        """
        namespace = namespace_of(name)
        scope = f"repository:{remote_of(name)}:pull"
        attempts: list[Attempt] = []
        if candidates is None:
            ups = list(self.pool.candidates(namespace, counted=counted))
            for up, left in self.pool.rate_limited(namespace, counted=counted):  # the ones left out
                attempts.append(Attempt(up, "ratelimited", "rate-limit cool-down", str(int(math.ceil(left)))))
        else:
            ups = [u for u in candidates if getattr(u, "namespace", "docker.io") == namespace]
        if not ups and not attempts:
            raise RegistryError("NAME_UNKNOWN", f"no upstream registry is enabled for namespace {namespace}",
                                {"namespace": namespace})
        for up in ups:
            started = self.clock.seconds()
            try:
                resp = await self.pool.request(up, method, path, headers=headers, scope=scope)
            except UpstreamError as e:
                self.pool.mark_failed(up, str(e))
                attempts.append(Attempt(up, "error", str(e)))
                continue
            code = resp.code
            left = None
            if limits or code == 429:
                left = self.pool.note_rate_limit(up, code, resp.headers, counted=counted)
            if code in ok_codes or code in terminal_codes:
                try:
                    validated = await validate(up, resp) if validate and code in ok_codes else None
                except UpstreamError as e:
                    self.pool.mark_failed(up, str(e))
                    attempts.append(Attempt(up, "error", str(e)))
                    continue
                self.pool.mark_ok(up, self.clock.seconds() - started)
                if record is not None:
                    record.upstream = up.name
                return up, resp, validated
            self.pool.discard(resp)  # small error bodies are read: the connection is reused
            if code == 404:
                self.pool.mark_ok(up, self.clock.seconds() - started)
                attempts.append(Attempt(up, "notfound", "404"))
            elif code in (401, 403):
                attempts.append(Attempt(up, "denied", f"{code} after authentication"))
            elif code == 429:
                # not a failure: the pool's rate-limit memory holds it until its window resets
                attempts.append(Attempt(up, "ratelimited", "429",
                                        str(int(math.ceil(left))) if left is not None else None))
            elif code >= 500:
                self.pool.mark_failed(up, f"HTTP {code}")
                attempts.append(Attempt(up, "error", f"HTTP {code}"))
            else:
                attempts.append(Attempt(up, "error", f"unexpected HTTP {code}"))
        raise final_error(attempts, unknown_code, name=name, what=what)


def final_error(attempts: list[Attempt], unknown_code: str, *, name: str = "",
                what: tuple[str, str] = ("", "")) -> RegistryError:
    """The client's error after every upstream was tried.

    What each upstream answered (names, hosts, reasons) is logged here, once,
    and kept on the error as ``internal`` (and in the pool's health memory for
    the admin API); the client only gets the code and a generic message.
    """
    kinds = {a.kind for a in attempts}
    internal = [{"upstream": a.upstream.name, "result": a.kind, "detail": a.detail} for a in attempts]
    if kinds <= {"notfound", "denied"}:
        err = RegistryError(unknown_code, internal=internal)
    elif "ratelimited" in kinds and kinds <= {"ratelimited", "notfound", "denied"}:
        # the ones that may have it are rate-limiting us: "retry later" is the honest answer
        waits = []
        for a in attempts:
            if a.kind != "ratelimited":
                continue
            try:
                waits.append(min(max(int(a.retry_after), 1), MAX_RETRY_AFTER))
            except (TypeError, ValueError):
                pass
        retry = str(min(waits)) if waits else str(DEFAULT_RETRY_AFTER)
        err = RegistryError("TOOMANYREQUESTS", "every upstream registry is rate-limiting us",
                            internal=internal, headers={b"Retry-After": retry.encode()})
    elif "error" in kinds:
        err = RegistryError("UPSTREAM_ERROR", "no upstream registry could answer", internal=internal,
                            status=502)
    else:
        err = RegistryError("UNAVAILABLE", "no upstream registry could answer", internal=internal,
                            status=503)
    emit = log.debug if kinds <= {"notfound"} else log.info
    kind, ref = what
    emit("{kind} {name}:{ref}: {code} after trying {attempts}", kind=kind, name=name, ref=ref or "-",
         code=err.code,
         attempts="; ".join(f"{a['upstream']}: {a['result']} ({a['detail']})" for a in internal))
    return err


__all__ = ["Failover", "Attempt", "final_error", "header"]
