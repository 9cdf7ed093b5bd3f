"""Where ZMirror's log observer writes, chosen from twistd's options.

twistd installs its observer after ``makeService`` returns; the top service
(:class:`zmirror.service.ZMirrorService`) hands ZMirror's (``[log]`` format and
level, secret redaction) to the application instead, when there is one to hand
(docs/design/operations.md).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from twisted.logger import ILogObserver

from zmirror.logs import LogControl


def log_stream(options: Any):
    """Where ZMirror's observer writes, from twistd's options (``options.parent``).

    Returns a writable stream, or None to leave twistd's observer in place.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return sys.stdout  # zmirror.tac / embedding: stdout
    try:
        if parent.get("logger") or parent.get("syslog"):
            return None
        logfile = parent.get("logfile")
        nodaemon = parent.get("nodaemon")
    except Exception:
        return None
    if nodaemon and (not logfile or logfile == "-"):
        return sys.stdout
    if logfile == "-":
        return None  # twistd refuses this for daemons itself
    from twisted.python.logfile import LogFile

    return LogFile.fromFullPath(logfile or "twistd.log")


def log_observer(options: Any, config: Any, control: LogControl) -> Optional[ILogObserver]:
    """ZMirror's observer (filtered by ``control``) for the twistd application, or
    None to keep twistd's own."""
    parent = getattr(options, "parent", None)
    if parent is None and config.log.format == "text" and config.log.level == "info":
        # zmirror.tac with the defaults: keep twistd's own observer (honours --logfile)
        return None
    stream = log_stream(options)
    return control.observer(stream) if stream is not None else None


__all__ = ["log_observer", "log_stream"]
