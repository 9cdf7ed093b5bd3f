"""When a scheduled job fires next: an interval, or a five-field cron expression
in UTC (parsed by ``croniter``).  Pure functions of the time they are given, so
the service's injected clock decides everything.

Design: docs/design/sync.md ("Scheduling").
"""

from __future__ import annotations

from typing import Optional

from croniter import croniter


def next_fire(schedule: Optional[dict], now: float, previous: Optional[float] = None) -> Optional[float]:
    """The next time after ``now`` at which ``schedule`` fires (None: manual only).

    ``previous``: the tick that just fired, if any.  An interval keeps its
    rhythm from it (previous + interval) unless that is already past (ticks
    missed while no node ran are skipped, never run in a burst)."""
    if not schedule:
        return None
    if "interval" in schedule:
        step = float(schedule["interval"])
        if previous is not None and previous + step > now:
            return previous + step
        return now + step
    return float(croniter(schedule["cron"], now).get_next(float))


__all__ = ["next_fire"]
