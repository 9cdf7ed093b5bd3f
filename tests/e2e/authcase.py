"""The access-control e2e case (:class:`AuthE2ECase`): a zmirror in ``[access] anonymous =
"whitelist"`` mode whose whitelist and registry users are created through the admin API, as an
operator would, and the client daemons its tests pull with.

- whitelisted: ``e2e/oci`` (which also proves the path-component boundary: ``e2e/ociindex`` stays
  private) and ``e2elist`` (allows ``library/e2elist``, pulled by its short name);
- private: ``e2e/dockerv2`` and ``e2e/ociindex``;
- one registry user per client (alice: skopeo and podman, dora: docker, carl: containerd), so
  lockout counters, access-log rows and the docker test's "disable the user" step never mix.

dockerd and containerd (:func:`dockerd`, :func:`containerd`) are started once per test process on
first use, with all their state and their sockets in one short temporary directory, and stopped
at exit; podman (:func:`podman`) keeps its storage, configuration and auth files there.
``ZMIRROR_E2E_KEEP=1`` keeps the directory (daemon logs included).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

from twisted.trial import unittest

from tests.e2e import harness as H
from tests.e2e.clients import Containerd, Dockerd, Podman
from tests.e2e.environment import shared
from tests.e2e.processes import HarnessError

SKIP = H.missing_tools()

WHITELIST = ("e2e/oci", "e2elist")
USERS = {
    "alice": "alice-pw-4Kd9",  # skopeo, podman
    "dora": "dora-pw-8Zq1",  # docker
    "carl": "carl-pw-2Hs7",  # containerd
}
WRONG_PASSWORD = "not-the-password-1"
# what the clients print for a refused pull or login (zmirror's error texts, HTTP 401)
AUTH_ERRORS = ("unauthorized", "authentication required", "incorrect username or password",
               "invalid username/password", "insufficient_scope", "401")


# --------------------------------------------------------------------------- module state


class _State:
    lock = threading.Lock()
    zm: H.ZMirror | None = None
    root: Path | None = None
    dockerd: Dockerd | None = None
    containerd: Containerd | None = None
    podman: Podman | None = None
    failed: ClassVar[dict[str, str]] = {}


def _root() -> Path:
    """A short directory (unix socket paths are limited to 108 bytes), removed at exit."""
    if _State.root is None:
        base = tempfile.gettempdir()
        if len(base) > 40:
            base = "/tmp"
        _State.root = Path(tempfile.mkdtemp(prefix="zm-auth-", dir=base))
        atexit.register(_cleanup)
    return _State.root


def _cleanup() -> None:
    for daemon in (_State.dockerd, _State.containerd):
        if daemon is not None:
            try:
                daemon.stop()
            except Exception as e:  # noqa: BLE001 -- never let one daemon keep the other running
                print(f"zmirror auth e2e: stopping {daemon.dir.name} failed: {e}", file=sys.stderr)
    if _State.root is None:
        return
    if os.environ.get("ZMIRROR_E2E_KEEP") == "1":
        print(f"zmirror auth e2e: kept {_State.root}", file=sys.stderr)
    else:
        shutil.rmtree(_State.root, ignore_errors=True)


def auth_proxy() -> H.ZMirror:
    """The module's zmirror: whitelist mode, upstream the shared open registry, users and whitelist set."""
    env = shared()
    with _State.lock:
        zm = _State.zm
        if zm is None or not zm.proc.alive():
            zm = env.start_zmirror_access("auth", [H.Upstream("open", env.registries["open"].url)],
                                          whitelist=WHITELIST, users=USERS.items())
            _State.zm = zm
        return zm


def _once(name: str, start):
    """Starts a daemon once per process; a failed start is remembered (later tests fail fast)."""
    with _State.lock:
        if name in _State.failed:
            raise HarnessError(f"{name} failed to start earlier: {_State.failed[name]}")
        current = getattr(_State, name)
        if current is not None:
            return current
        try:
            obj = start()
        except BaseException as e:
            _State.failed[name] = str(e)
            raise
        setattr(_State, name, obj)
        return obj


def dockerd(zm: H.ZMirror) -> Dockerd:
    def start():
        d = Dockerd(_root(), zm.host)
        _State.dockerd = d  # stopped at exit even if it never got ready
        try:
            return d.start()
        except BaseException:
            d.stop()
            raise
    return _once("dockerd", start)


def containerd() -> Containerd:
    def start():
        c = Containerd(_root())
        _State.containerd = c
        try:
            return c.start()
        except BaseException:
            c.stop()
            raise
    return _once("containerd", start)


def podman() -> Podman:
    return _once("podman", lambda: Podman(_root()))


# --------------------------------------------------------------------------- the case


class AuthE2ECase(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.env = shared()
        self.zm = self.start_proxy()
        self.images = self.env.images

    def start_proxy(self) -> H.ZMirror:
        """The zmirror instance the tests of this case pull through."""
        return auth_proxy()

    def workdir(self) -> Path:
        d = Path(self.mktemp()).resolve()
        d.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def creds(self, user: str, password: str | None = None) -> str:
        return f"{user}:{USERS[user] if password is None else password}"

    def admin_creds(self) -> str:
        user, password = self.zm.admin_credentials()
        return f"{user}:{password}"

    def diag(self, *daemons) -> str:
        out = f"\n--- zmirror log tail ---\n{self.zm.tail(30)}"
        for d in daemons:
            if d is not None:
                out += f"\n--- {d.dir.name} log tail ---\n{d.tail()}"
        return out

    def assertAuthError(self, text: str, what: str) -> None:
        low = text.lower()
        self.assertTrue(any(m in low for m in AUTH_ERRORS), f"{what}: expected an authentication error, got:\n{text}")

    def wait_log(self, what: str, pred, timeout: float = 15.0, **query) -> dict:
        """The first ``/api/logs`` row (``query`` filters) for which ``pred(row)`` holds."""
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = self.zm.access_logs(**query)
            hits = [r for r in rows if pred(r)]
            if hits:
                return hits[0]
            time.sleep(0.25)
        self.fail(f"no access-log row for {what} after {timeout}s; rows ({query}): "
                  f"{json.dumps(rows[:20], indent=1)}{self.diag()}")

    def user_id(self, username: str) -> int:
        r = self.zm.api("GET", "/users")
        self.assertEqual(r.status, 200, r.describe())
        return next(u["id"] for u in r.json()["items"] if u["username"] == username)
