"""The standard e2e environment the suite shares (:class:`E2EEnvironment`), built once per
process by :func:`shared` and stopped at exit.

``python tests/e2e/environment.py up`` starts it plus the main zmirror instance and prints the
addresses (handy for ``clients-e2e.sh``-style manual runs); Ctrl-C stops it.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from tests.e2e.harness import (PASSWORD, USER, Harness, Registry, Upstream, ZMirror,  # noqa: E402
                               serve_until_interrupted)
from tests.e2e.images import DEFAULT_BIG_MIB, Image, build_images  # noqa: E402
from tests.e2e.processes import HarnessError  # noqa: E402


class E2EEnvironment(Harness):
    """The suite's standard set, started once per process by :func:`shared`.

    Upstreams (distribution 2.8):

    - ``open``: no auth; holds dockerv2, oci, ociindex, dockerlist (as
      ``library/e2elist``) and big;
    - ``open2``: no auth; holds only ``e2e/onlyb`` (so ``open`` answers 404 for it);
    - ``token``: token auth (anonymous pull allowed); holds dockerv2 and ociindex;
    - ``basic``: htpasswd; holds oci and dockerlist.

    zmirror instances (started on first use, see :meth:`proxy`):

    - ``main``: upstreams [dead (connection refused), open, open2] in that priority order;
    - ``token``: [token], anonymous to the upstream;
    - ``basic``: [basic] with the user's credentials in the registries row.
    """

    PROXIES = ("main", "token", "basic")

    def __init__(self, big_mib: int = DEFAULT_BIG_MIB, **kw):
        super().__init__(**kw)
        self.big_mib = big_mib
        self.images: dict[str, Image] = {}
        self.dead = ""
        self.timings: dict[str, float] = {}
        self._extra_lock = threading.Lock()
        self._extra_keys: dict[str, tuple[str, ...]] = {}

    def setup(self) -> E2EEnvironment:
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as ex:
            fut = ex.submit(build_images, self.root / "images", self.big_mib)
            self.start_open("open")
            self.start_open("open2")
            self.start_token("token")
            self.start_basic("basic")
            self.images = fut.result()
        self.timings["start+build"] = time.monotonic() - t0
        self.dead = self.dead_url()
        i, r = self.images, self.registries
        t1 = time.monotonic()
        self.push_many([
            (i["dockerv2"], r["open"]), (i["oci"], r["open"]), (i["ociindex"], r["open"]),
            (i["dockerlist"], r["open"]), (i["big"], r["open"]),
            (i["onlyb"], r["open2"]),
            (i["dockerv2"], r["token"]), (i["ociindex"], r["token"]),
            (i["oci"], r["basic"]), (i["dockerlist"], r["basic"]),
        ])
        self.timings["push"] = time.monotonic() - t1
        return self

    def extra_open(self, name: str, keys: Iterable[str]) -> Registry:
        """An open registry of its own (own port and storage) holding the built images ``keys``,
        for tests that stop and restart their upstream without disturbing the shared ones.
        Started and seeded once per process; started again here if a test left it stopped."""
        keys = tuple(keys)
        with self._extra_lock:
            reg = self.registries.get(name)
            if reg is None:
                if name in ("open", "open2", "token", "basic"):
                    raise HarnessError(f"{name} is a shared registry")
                reg = self.start_open(name)
                self.push_many([(self.images[k], reg) for k in keys])
                self._extra_keys[name] = keys
            elif self._extra_keys.get(name) != keys:
                raise HarnessError(f"extra registry {name} holds {self._extra_keys.get(name)}, not {keys}")
            return self.resume_registry(reg)

    def proxy(self, name: str) -> ZMirror:
        with self._lock:
            zm = self.zmirrors.get(name)
        if zm is not None and zm.proc.alive():
            return zm
        r = self.registries
        if name == "main":
            ups = [Upstream("dead", self.dead), Upstream("open", r["open"].url), Upstream("open2", r["open2"].url)]
        elif name == "token":
            ups = [Upstream("token", r["token"].url)]
        elif name == "basic":
            ups = [Upstream("basic", r["basic"].url, username=USER, password=PASSWORD)]
        else:
            raise KeyError(name)
        return self.start_zmirror(name, ups)


_shared: E2EEnvironment | None = None
_shared_error: BaseException | None = None
_shared_lock = threading.Lock()


def shared() -> E2EEnvironment:
    """The process-wide environment: built on first call, stopped at interpreter exit.

    A failed setup is remembered, so later tests fail fast with the same error.
    """
    global _shared, _shared_error
    with _shared_lock:
        if _shared_error is not None:
            raise HarnessError(f"e2e environment failed to start: {_shared_error}")
        if _shared is None:
            env = E2EEnvironment()
            atexit.register(env.stop)
            try:
                env.setup()
            except BaseException as e:
                _shared_error = e
                env.stop()
                raise
            _shared = env
        return _shared


def _up_main() -> None:
    env = shared()
    zm = env.proxy("main")
    print(f"root      {env.root}")
    for r in env.registries.values():
        extra = f" (issuer :{r.issuer_port})" if r.issuer_port else ""
        print(f"{r.name:9} {r.url}{extra} creds={r.creds_arg or '-'}")
    print(f"zmirror   {zm.url}  upstreams: " + ", ".join(f"{u.name}={u.url}" for u in zm.upstreams))
    serve_until_interrupted(env.images, env.timings)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "up":
        _up_main()
    else:
        print(__doc__)
        sys.exit(2)
