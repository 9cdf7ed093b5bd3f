"""Process log output: text or JSON lines, a level filter, secret redaction.

``[log] format = "json"`` writes one JSON object per line (twisted.logger's
``eventAsJSON`` with ``recordSeparator=""``) plus three flat keys for log
shippers: ``time`` (ISO 8601, UTC), ``level`` and ``text`` (the formatted
message).  ``[log] level`` drops events below it; :meth:`LogControl.set_level`
changes it live (SIGHUP reload).

Every event passes :func:`redact` first: values of keys that name a secret
(password, token, secret, authorization, cookie ...) are replaced before
anything is formatted.  The code never logs such values; this is the second
line of defence.
"""

from __future__ import annotations

import re
import time
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
)
from zope.interface import implementer

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

_SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|authorization|cookie|credential)",
                         re.IGNORECASE)
REDACTED = "[redacted]"
# the password of a URL with credentials (a database URL): scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s]*@")


def redact_text(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL masked."""
    return _URL_PASSWORD.sub(lambda m: m.group(1) + "***@", text) if "://" in text else text


def redact(event: dict) -> dict:
    """A copy of ``event`` whose secret-named fields are masked and whose string
    fields have URL passwords masked (log_* keys kept)."""
    out = None
    for key, value in event.items():
        if key.startswith("log_"):
            continue
        if _SECRET_KEY.search(key):
            new = REDACTED
        elif isinstance(value, str) and "://" in value:
            new = redact_text(value)
            if new == value:
                continue
        else:
            continue
        if out is None:
            out = dict(event)
        out[key] = new
    return out if out is not None else event


@implementer(ILogObserver)
class _Redacting:
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, event: dict) -> None:
        self.inner(redact(event))


@implementer(ILogObserver)
class _Flat:
    """Adds ``time``, ``level`` and ``text`` to each event before the JSON observer."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, event: dict) -> None:
        e = dict(event)
        # objects that serialize to {"unpersistable": true}: noise for a log shipper
        e.pop("log_logger", None)
        e.pop("log_source", None)
        t = e.get("log_time") or time.time()
        e["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
        level = e.get("log_level")
        e["level"] = getattr(level, "name", "info")
        try:
            e["text"] = formatEvent(event)
        except Exception:
            e["text"] = ""
        failure = e.get("log_failure")
        if failure is not None:
            try:
                e["traceback"] = failure.getTraceback()
            except Exception:
                pass
        self.inner(e)


def json_observer(stream: IO[Any]) -> ILogObserver:
    """JSON lines (no record separator) on ``stream``."""
    return _Flat(jsonFileLogObserver(stream, recordSeparator=""))


class LogControl:
    """The level filter and observer factory for ``[log]`` (format, level)."""

    def __init__(self, fmt: str = "text", level: str = "info"):
        if fmt not in ("text", "json"):
            raise ValueError(f"unknown log format {fmt!r}")
        self.format = fmt
        self.predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
        self.level = level

    @classmethod
    def from_config(cls, config: Any) -> "LogControl":
        return cls(config.log.format, config.log.level)

    def set_level(self, level: str) -> None:
        self.predicate.setLogLevelForNamespace("", LEVELS[level])
        self.level = level

    def reload(self, config: Any) -> None:
        """Apply ``[log] level`` (the format needs a restart)."""
        if config.log.level != self.level:
            self.set_level(config.log.level)

    def observer(self, stream: IO[Any]) -> ILogObserver:
        inner = json_observer(stream) if self.format == "json" else textFileLogObserver(stream)
        return FilteringLogObserver(_Redacting(inner), [self.predicate])


__all__ = ["LogControl", "json_observer", "redact", "LEVELS"]
