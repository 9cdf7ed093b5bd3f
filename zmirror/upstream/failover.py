"""One request answered by the first upstream that can: priority order, failover,
health and rate limits; when none can, one :class:`~zmirror.oci.errors.RegistryError`
whose client-facing part is generic (design: docs/design/upstream.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence

from twisted.logger import Logger

from zmirror.oci.errors import RegistryError
from zmirror.oci.names import namespace_of, remote_of
from zmirror.upstream.models import Upstream, UpstreamError
from zmirror.upstream.pool import UpstreamPool

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
        ups, attempts = self._order(namespace, candidates, counted)
        for up in ups:
            outcome = await self._ask(up, method, path, headers, scope, ok_codes=ok_codes,
                                      terminal_codes=terminal_codes, validate=validate,
                                      limits=limits, counted=counted)
            if isinstance(outcome, Attempt):
                attempts.append(outcome)
                continue
            if record is not None:
                record.upstream = up.name
            return outcome
        raise final_error(attempts, unknown_code, name=name, what=what)

    async def _ask(self, up: Upstream, method: bytes, path: str, headers: dict, scope: str, *,
                   ok_codes: tuple[int, ...], terminal_codes: tuple[int, ...],
                   validate: Optional[Callable[[Upstream, Any], Awaitable[Any]]],
                   limits: bool, counted: bool):
        """Ask one upstream: ``(upstream, response, validated)`` for an acceptable
        or terminal answer, else the :class:`Attempt` that says why not; either
        way what it answered goes into the health memory."""
        health = self.pool.health
        token = health.sending(up)
        if token is None:  # a backoff rest began, or another request is its probe
            wait = up.health.wait(self.clock.seconds(), counted)
            return Attempt(up, "ratelimited", "rate-limit backoff", str(int(math.ceil(wait))))
        started = self.clock.seconds()
        try:
            try:
                resp = await self.pool.request(up, method, path, headers=headers, scope=scope)
            except UpstreamError as e:
                return self._failed(up, e)
            code = resp.code
            health.answered(up, code)
            left = None
            if limits or code == 429:
                left = health.note_rate_limit(up, code, resp.headers, counted=counted, probe=bool(token))
            if code not in ok_codes and code not in terminal_codes:
                self.pool.discard(resp)  # small error bodies are read: the connection is reused
                return self._refused(up, code, left, started)
            try:
                validated = await validate(up, resp) if validate and code in ok_codes else None
            except UpstreamError as e:
                return self._failed(up, e)
        finally:  # answered, failed or cancelled: a probe is over either way
            health.sent(up, token)
        health.mark_ok(up, self.clock.seconds() - started)
        return up, resp, validated

    def _failed(self, up: Upstream, e: UpstreamError) -> Attempt:
        """The attempt of an upstream that failed (no answer, or a bad one), marked failed."""
        self.pool.health.mark_failed(up, str(e))
        return Attempt(up, "error", str(e))

    def _order(self, namespace: str, candidates: Optional[Sequence[Upstream]],
               counted: bool) -> tuple[list[Upstream], list[Attempt]]:
        """The upstreams of ``namespace`` to ask, in order, and an attempt for each
        one left out (rate-limit cool-down); RegistryError when there is none."""
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
        return ups, attempts

    def _refused(self, up: Upstream, code: int, left: Optional[float], started: float) -> Attempt:
        """The attempt of an answer that is neither acceptable nor terminal (its
        body discarded), recorded in the health memory as what it says."""
        health = self.pool.health
        if code == 404:
            health.mark_ok(up, self.clock.seconds() - started)
            return Attempt(up, "notfound", "404")
        if code in (401, 403):
            return Attempt(up, "denied", f"{code} after authentication")
        if code == 429:
            # not a failure: the rate-limit book holds it until its window resets
            return Attempt(up, "ratelimited", "429", str(int(math.ceil(left))) if left is not None else None)
        if code >= 500:
            health.mark_failed(up, f"HTTP {code}")
            return Attempt(up, "error", f"HTTP {code}")
        return Attempt(up, "error", f"unexpected HTTP {code}")


def final_error(attempts: list[Attempt], unknown_code: str, *, name: str = "",
                what: tuple[str, str] = ("", "")) -> RegistryError:
    """The client's error after every upstream was tried.

    What each upstream answered (names, hosts, reasons) is logged here, once,
    and kept on the error as ``internal`` (and in the health memory for
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
