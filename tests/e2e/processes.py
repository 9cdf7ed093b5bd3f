"""Child processes of the e2e tests: started with ``PR_SET_PDEATHSIG`` (``setpriv``) so they die
with the test process even when it is killed, their output in a log file; waiting until one
answers HTTP (:func:`wait_http`) or passes a check of its own (:func:`wait_ready`)."""

from __future__ import annotations

import atexit
import http.client
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ProcessWide:
    """One thing per test process (a world of servers several tests share): made by ``make``
    on first use, stopped by its ``stop()`` at interpreter exit; a failed start is remembered,
    so the later tests fail fast with the same error instead of starting it again."""

    def __init__(self, what: str, make: Callable[[], object]):
        self.what = what
        self._make = make
        self._made: object | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._error is not None:
                raise HarnessError(f"{self.what} failed to start: {self._error}")
            if self._made is None:
                try:
                    made = self._make()
                except BaseException as e:
                    self._error = e
                    raise
                atexit.register(made.stop)
                self._made = made
            return self._made


class HarnessError(Exception):
    pass


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig TERM``: the child dies with us even if we are SIGKILLed (no preexec_fn,
    which is unsafe while other threads run)."""
    return ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []


def log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 40) -> str:
        return log_tail(self.log, n)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def spawn(name: str, argv: list[str], log: Path, *, env: dict | None = None, cwd: Path | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        p = subprocess.Popen(_pdeathsig_prefix() + argv, stdin=subprocess.DEVNULL, stdout=f,
                             stderr=subprocess.STDOUT, env=env, cwd=str(cwd) if cwd else None)
    return Proc(name, p, log)


def wait_http(url: str, proc: Proc, timeout: float = 30.0) -> None:
    """Until ``url`` answers any HTTP status (401 included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise HarnessError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
    raise HarnessError(f"{proc.name} not answering {url} after {timeout}s:\n{proc.tail()}")


def wait_ready(what: str, proc: Proc, check, timeout: float) -> None:
    """Until ``check()`` holds (``proc`` must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise HarnessError(f"{what} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if check():
            return
        time.sleep(0.2)
    raise HarnessError(f"{what} not ready after {timeout}s:\n{proc.tail()}")
