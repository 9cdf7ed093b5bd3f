"""Files only their owner may read: private directories and files (0700 / 0600
whatever the umask, looser modes fixed with a warning), and the atomic rewrite
of a file that keeps its mode and owner."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path, what: str = "directory") -> list[str]:
    """Create the directory ``path`` mode 0700 whatever the umask, or restrict
    an existing one that group or others may use (chmod 0700).  Returns
    warnings (a loose mode found and fixed, or one that cannot be fixed).
    Missing parents are created as ``mkdir -p`` does; existing ones are never
    touched.  Raises OSError when the directory cannot be created."""
    path = Path(path)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(path, PRIVATE_DIR_MODE)  # the umask may have taken owner bits
        return []
    return _restrict(path, PRIVATE_DIR_MODE, what)


def private_file(path: Path, what: str = "file", *, create: bool = True) -> list[str]:
    """Create the (empty) file ``path`` mode 0600 whatever the umask unless it
    exists, or restrict an existing one that group or others may read (chmod
    0600).  ``create=False``: only restrict it if it exists.  Returns warnings
    as :func:`private_dir` does."""
    path = Path(path)
    if create:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:
            pass
        else:
            try:
                os.fchmod(fd, PRIVATE_FILE_MODE)
            finally:
                os.close(fd)
            return []
    try:
        return _restrict(path, PRIVATE_FILE_MODE, what)
    except FileNotFoundError:
        return []


def _restrict(path: Path, mode: int, what: str) -> list[str]:
    current = stat.S_IMODE(path.stat().st_mode)
    if not current & 0o077:
        return []
    try:
        os.chmod(path, mode)
    except OSError as e:
        return [f"{what} {path} has mode {current:04o} (group or others may read it) and cannot "
                f"be restricted to {mode:04o}: {e.strerror}"]
    return [f"{what} {path} had mode {current:04o} (group or others could read it); "
            f"now {mode:04o}"]


def write_preserving_mode(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (a temporary file in the same
    directory, fsync, rename): the same mode (0600 if new), the owner kept when
    possible.  A reader sees the old or the new file, never a part."""
    path = Path(path)
    try:
        st = path.stat()
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    except FileNotFoundError:
        mode, uid, gid = 0o600, None, None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            if uid is not None:
                try:
                    os.fchown(f.fileno(), uid, gid)
                except PermissionError:
                    pass
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself survives a crash
        dfd = os.open(str(path.parent), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)

