"""One process per cache directory: the exclusive ``flock`` on
``<cache dir>/zmirror.lock`` (see docs/design/cache.md)."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Optional

from twisted.logger import Logger

from zmirror.config import ConfigError, private_dir

log = Logger()

LOCK_FILE = "zmirror.lock"


class CacheDirInUse(ConfigError):
    """Another process holds the cache directory's lock."""


class CacheDirLock:
    """The exclusive ``flock`` on ``<cache dir>/zmirror.lock`` (docs/design/cache.md).

    :meth:`acquire` (blocking file system calls: at start, before the reactor
    runs) creates the directory (0700) and the file (0600), takes the lock or
    raises :class:`CacheDirInUse`, and writes this process's id into the file
    (only for the message another process shows).  A file system without
    locks, or a lock file that cannot be created, is logged and not held: the
    cache's own start then meets the same disk.  :meth:`release` (or the
    process's end) lets it go.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None  # written into the file

    @property
    def held(self) -> bool:
        return self._fd is not None

    @classmethod
    def take(cls, root: Path) -> "CacheDirLock":
        lock = cls(root)
        lock.acquire()
        return lock

    def acquire(self) -> None:
        """Take the lock (see the class doc); when held already, only write this
        process's id again (twistd takes it in the process that forks the daemon)."""
        if self._fd is not None:
            self._write_pid()
            return
        try:
            for w in private_dir(self.root, "cache directory"):
                log.warn("{problem}", problem=w)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.warn("cache directory {root}: cannot create its lock file ({error}); not checking "
                     "that no other process uses it", root=str(self.root), error=e.strerror or e)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _lock_holder(fd) if e.errno in (errno.EAGAIN, errno.EACCES) else None
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):  # ENOLCK, EOPNOTSUPP: no locks here
                log.warn("cache directory {root}: cannot lock {file} ({error}); not checking "
                         "that no other process uses it", root=str(self.root), file=LOCK_FILE,
                         error=e.strerror or e)
                return
            raise CacheDirInUse(
                f"cache directory {self.root} is in use by another zmirror process"
                f"{f' (pid {holder})' if holder else ''}: each node needs its own [cache] dir"
            ) from None
        self._fd = fd
        self._write_pid()

    def _write_pid(self) -> None:
        pid = os.getpid()
        if self._fd is None or self._pid == pid:
            return
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{pid}\n".encode(), 0)
            self._pid = pid
        except OSError:
            pass  # only informative

    def release(self) -> None:
        fd, self._fd, self._pid = self._fd, None, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the open file releases the lock

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass


def _lock_holder(fd: int) -> Optional[int]:
    """The process id the holder wrote into the lock file, if readable."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and len(text) <= 10 else None
