"""One run of a sync job: resolve its images' tags, fetch their manifests through
the proxy's manifest source (a fresh cached tag costs nothing, a stale one a
HEAD), select the platforms of an index, and prefetch every config and layer
into the cache, at most ``concurrency`` at a time.

Progress is the run JSON of docs/api.md, kept live in :attr:`SyncRun.state`
(the service writes it to ``sync_runs``).  An item's failure is recorded (at
most :data:`MAX_ERRORS`) and the run goes on; a rate limit
(RegistryError TOOMANYREQUESTS with its Retry-After) pauses the run until
the window has passed, then the same item is tried again.

Design: docs/design/sync.md ("A run").
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.task import deferLater
from twisted.logger import Logger

from zmirror.db.syncjobs import empty_progress
from zmirror.oci.errors import RegistryError
from zmirror.oci.mediatypes import DOCKER_LIST, OCI_INDEX
from zmirror.oci.reference import parse_digest
from zmirror.sync.spec import ImageRef, parse_image, platform_matches, repo_of, select_tags

log = Logger()

MAX_ERRORS = 50
MAX_TAG_PAGES = 100  # 100 pages of 1000 tags
TAG_PAGE = "1000"
MAX_INDEX_DEPTH = 2  # an index of indexes, at most
DEFAULT_WAIT = 60


class UpstreamCounter:
    """Stands in for a pull's access-log record: the sources set ``upstream`` each
    time an upstream answered, which is what the run counts."""

    def __init__(self, state: dict):
        self._state = state
        self.cache_hit = None

    @property
    def upstream(self) -> Optional[str]:
        return None

    @upstream.setter
    def upstream(self, name: Optional[str]) -> None:
        if name:
            self._state["upstream_requests"] += 1


def error_text(e: BaseException) -> str:
    """What an item's error says in the run JSON: the registry error's code and
    its client-safe message, or a short description (never upstream secrets)."""
    if isinstance(e, RegistryError):
        return f"{e.code}: {e.message}"
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def retry_after(e: RegistryError) -> int:
    raw = (getattr(e, "headers", None) or {}).get(b"Retry-After", b"")
    try:
        return max(1, int(raw))
    except (TypeError, ValueError):
        return DEFAULT_WAIT


class SyncRun:
    """One run: ``state`` is its run JSON (docs/api.md), updated as it goes.

    ``manifests``: a ManifestSource (PullThroughManifests); ``tags``: the tag
    source (RemoteTags); ``blobs``: what prefetches one blob —
    ``fetch(repo, digest, size, record)`` → True (fetched) / False (was cached);
    ``clock``: the injected clock; ``on_change``: called when the state changes
    in a way worth writing at once (a pause, its end)."""

    def __init__(self, state: dict, spec: dict, *, manifests: Any, tags: Any, blobs: Any, clock: Any,
                 on_change: Optional[Callable[[], Any]] = None):
        self.state = state
        for k, v in empty_progress().items():
            state.setdefault(k, v)
        self.spec = spec
        self.manifests = manifests
        self.tags = tags
        self.blobs = blobs
        self.clock = clock
        self.on_change = on_change or (lambda: None)
        self.record = UpstreamCounter(state)
        self.pinned: list[str] = []  # <repo>@<digest> of every manifest fetched
        self._seen: set[str] = set()
        self._paused = 0
        self._cancelled = False
        self._sem = DeferredSemaphore(int(spec.get("concurrency") or 1))
        self._tasks: list[Deferred] = []
        self._downloads: dict[str, tuple[Any, int]] = {}  # digest → (download, size) being waited for

    # --- the run ---------------------------------------------------------------------------

    async def run(self) -> str:
        """Fetch everything; the final state (succeeded | failed).  Cancelled:
        raises CancelledError (the caller cancels the Deferred of this coroutine)."""
        st = self.state
        refs = []
        for raw in self.spec.get("images") or []:
            try:
                refs.append(parse_image(raw))
            except ValueError as e:
                self._error(str(raw), e)
        st["images"]["total"] = len(refs)
        for ref in refs:
            st["current"] = str(ref)
            try:
                await self._image(ref)
            except CancelledError:
                raise
            except Exception as e:
                self._error(str(ref), e)
            st["images"]["done"] += 1
        st["current"] = None
        did_something = st["manifests"]["done"] or st["blobs"]["done"]
        return "failed" if st["errors"] and not did_something else "succeeded"

    def snapshot(self) -> dict:
        """A copy of the run JSON whose ``bytes.done`` includes what the running
        downloads of this run have written so far."""
        st = self.state
        out = dict(st)
        for k in ("images", "manifests", "blobs", "bytes"):
            out[k] = dict(st[k])
        out["errors"] = list(st["errors"])
        partial = sum(min(max(getattr(dl, "written", 0) or 0, 0), size) for dl, size in self._downloads.values())
        out["bytes"]["done"] = min(out["bytes"]["done"] + partial, out["bytes"]["total"])
        return out

    def cancel_tasks(self) -> None:
        for d in list(self._tasks):
            d.cancel()

    async def _image(self, ref: ImageRef) -> None:
        repo = repo_of(ref.repository)
        if ref.digest:
            references = [ref.digest]
        elif ref.tag:
            references = [ref.tag]
        else:
            references = await self._resolve(repo, ref)
            if not references:
                raise LookupError(f"no tag of {ref.repository} matches {ref.pattern}")
        st = self.state
        st["manifests"]["total"] += len(references)
        self._tasks = []
        for reference in references:
            label = f"{ref.repository}@{reference}" if ":" in reference else f"{ref.repository}:{reference}"
            try:
                await self._manifest(repo, reference, label, 0)
            except CancelledError:
                raise
            except Exception as e:
                self._error(label, e)
        try:
            await DeferredList(list(self._tasks), consumeErrors=True)  # cancelled: cancels each
        finally:
            self._tasks = []
        if self._cancelled:
            raise CancelledError()

    async def _resolve(self, repo: Any, ref: ImageRef) -> list[str]:
        """The tags of ``ref.repository`` its pattern selects (every page of the list)."""
        tags: list[str] = []
        last = None
        for _ in range(MAX_TAG_PAGES):
            page = await self._call(repo, lambda after=last: self.tags.list(
                repo, n=TAG_PAGE, last=after, record=self.record))
            try:
                doc = json.loads(page.body)
            except ValueError:
                raise ValueError("the tag list is not JSON") from None
            got = doc.get("tags") if isinstance(doc, dict) else None
            got = [t for t in (got or []) if isinstance(t, str)]
            tags.extend(got)
            nxt = _next_last(page.link)
            if not got or nxt is None or nxt == last:
                break
            last = nxt
        return select_tags(tags, ref.pattern, self.spec.get("newest"))

    async def _manifest(self, repo: str, reference: str, label: str, depth: int) -> None:
        st = self.state
        st["current"] = label
        m = await self._call(repo, lambda: self.manifests.get(repo, reference, [], record=self.record))
        st["manifests"]["done"] += 1
        self.pinned.append(f"{repo}@{m.digest}")
        try:
            doc = json.loads(m.body or b"")
        except ValueError:
            raise ValueError("the manifest is not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("the manifest is not a JSON object")
        if m.media_type in (OCI_INDEX, DOCKER_LIST) or isinstance(doc.get("manifests"), list):
            if depth >= MAX_INDEX_DEPTH:
                raise ValueError("indexes nested too deep")
            wanted = self.spec.get("platforms") or []
            children = [d for d in doc.get("manifests") or []
                        if isinstance(d, dict) and platform_matches(d.get("platform"), wanted)]
            st["manifests"]["total"] += len(children)
            for child in children:
                digest = _digest_of(child)
                child_label = f"{repo}@{digest}"
                try:
                    await self._manifest(repo, digest, child_label, depth + 1)
                except CancelledError:
                    raise
                except Exception as e:
                    self._error(child_label, e)
            return
        descriptors = [doc.get("config"), *(doc.get("layers") or [])]
        for d in descriptors:
            if not isinstance(d, dict):
                continue
            digest = _digest_of(d)
            if digest in self._seen:
                continue
            self._seen.add(digest)
            size = d.get("size")
            size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0
            st["blobs"]["total"] += 1
            st["bytes"]["total"] += size
            self._tasks.append(Deferred.fromCoroutine(self._blob(repo, digest, size)))

    async def _blob(self, repo: str, digest: str, size: int) -> None:
        st = self.state
        await self._sem.acquire()
        try:
            if self._cancelled:
                raise CancelledError()
            label = f"{repo}@{digest}"
            st["current"] = label
            def watch(dl: Any) -> None:
                self._downloads[digest] = (dl, size)

            try:
                fetched = await self._call(repo, lambda: self.blobs.fetch(repo, digest, size, self.record,
                                                                          on_download=watch))
            finally:
                self._downloads.pop(digest, None)
            st["blobs"]["done"] += 1
            if not fetched:
                st["blobs"]["skipped"] += 1
            st["bytes"]["done"] += size
        except CancelledError:
            self._cancelled = True
            raise
        except Exception as e:
            self._error(f"{repo}@{digest}", e)
        finally:
            self._sem.release()

    # --- rate limits -------------------------------------------------------------------

    async def _call(self, repo: Any, f: Callable[[], Awaitable[Any]]) -> Any:
        """``f()``, after any pause; a rate limit pauses the run and tries again."""
        while True:
            await self._wait_pause()
            try:
                return await f()
            except RegistryError as e:
                if e.code != "TOOMANYREQUESTS":
                    raise
                await self._pause(repo, retry_after(e))

    async def _wait_pause(self) -> None:
        resume_at = self.state.get("resume_at")
        if resume_at is not None:
            delay = resume_at - self.clock.seconds()
            if delay > 0:
                await deferLater(self.clock, delay, lambda: None)

    async def _pause(self, repo: Any, wait: int) -> None:
        st = self.state
        now = self.clock.seconds()
        st["state"] = "paused"
        st["pause_reason"] = f"rate limited by {repo.namespace}"
        st["resume_at"] = max(st.get("resume_at") or 0, now + wait)
        log.info("sync run {id} paused for {wait} s: {why}", id=st.get("id"), wait=wait,
                 why=st["pause_reason"])
        self.on_change()
        self._paused += 1
        try:
            await deferLater(self.clock, st["resume_at"] - now, lambda: None)
        finally:
            self._paused -= 1
            if self._paused == 0 and st["state"] == "paused":
                st["state"] = "running"
                st["pause_reason"] = None
                st["resume_at"] = None
                self.on_change()

    def _error(self, item: str, e: BaseException) -> None:
        errors = self.state["errors"]
        if len(errors) < MAX_ERRORS:
            errors.append({"item": item[:300], "error": error_text(e)})
        log.info("sync run {id}: {item}: {err}", id=self.state.get("id"), item=item, err=error_text(e))


def _digest_of(descriptor: dict) -> str:
    digest = descriptor.get("digest")
    if not isinstance(digest, str):
        raise ValueError("a descriptor without a digest")
    try:
        return parse_digest(digest)
    except RegistryError:
        raise ValueError("a descriptor with an invalid digest") from None


def _next_last(link: Optional[str]) -> Optional[str]:
    """The ``last`` of the tag list's next-page link (our own rewritten Link)."""
    if not link:
        return None
    from urllib.parse import parse_qs, urlsplit

    target = link.split(">", 1)[0].lstrip(" <")
    values = parse_qs(urlsplit(target).query).get("last")
    return values[0] if values else None


__all__ = ["SyncRun", "UpstreamCounter", "MAX_ERRORS", "error_text", "retry_after"]
