"""Shared test helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def twistd_bin() -> str:
    cand = Path(sys.executable).parent / "twistd"
    return str(cand) if cand.exists() else "twistd"


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def start_twistd(workdir: Path, *args: str, env=None) -> subprocess.Popen:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    return subprocess.Popen(
        [twistd_bin(), "-n", "--pidfile=", *args],
        cwd=str(workdir),
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> bytes:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or b""


def spy_constructor(case, module, name: str, record=None) -> list:
    """Patch ``module.name`` (a class) for the duration of test ``case`` with a
    subclass that notes every construction; returns the list of notes:
    ``record(*args, **kwargs)`` of each call, or the new instances."""
    real = getattr(module, name)
    notes: list = []

    class Spy(real):
        def __init__(self, *a, **kw):
            notes.append(self if record is None else record(*a, **kw))
            super().__init__(*a, **kw)

    case.patch(module, name, Spy)
    return notes


def temp_database(case, reactor):
    """A migrated SQLite database in a fresh temp dir of test ``case``, started
    and closed with the test: returns (the dir, the zmirror.db.Database)."""
    from zmirror.db import Database, migrate

    base = Path(case.mktemp()).resolve()
    base.mkdir()
    migrate(base / "db.sqlite")
    db = Database(base / "db.sqlite", reactor)
    db.start()
    case.addCleanup(db.close)
    return base, db


def write_default_config(data: Path, replacements: dict | None = None) -> Path:
    """``data/config.toml``: the generated default config with each ``old → new``
    of ``replacements`` applied (each must be there), mode 0600."""
    from zmirror.config import DEFAULT_CONFIG

    text = DEFAULT_CONFIG
    for old, new in (replacements or {}).items():
        if old not in text:
            raise AssertionError(f"not in the default config: {old!r}")
        text = text.replace(old, new)
    data.mkdir(parents=True, exist_ok=True)
    path = data / "config.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def admin_password_line(password: str) -> dict:
    """The replacement for :func:`write_default_config` that sets the admin password
    (tests of the admin API: while it is the default, the API only lets it be changed)."""
    return {'password = "admin123"': f'password = "{password}"'}


def start_services(components: dict):
    """A started MultiService holding the services of ``zmirror.wiring.build``."""
    from twisted.application.service import MultiService

    top = MultiService()
    for svc in components["services"]:
        svc.setServiceParent(top)
    top.startService()
    return top
