"""Access log records.

The registry routes fill one :class:`AccessRecord` per request a user cares
about and hand it to an ``AccessLog`` (anything with ``record(rec)``) when the
response ends, aborted downloads included.  ``record`` must never block or
fail: the batched SQLite writer queues it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


@dataclass
class AccessRecord:
    created_at: float
    client_ip: str = ""
    username: str = ""
    method: str = ""
    repository: str = ""
    reference: str = ""
    kind: str = ""  # manifest | blob | tags | token | denied | other
    status: int = 0
    bytes: int = 0
    duration_ms: float = 0.0
    upstream: str = ""
    cache_hit: Optional[bool] = None
    user_agent: str = ""

    def as_row(self) -> dict:
        row = dataclasses.asdict(self)
        if row["cache_hit"] is not None:
            row["cache_hit"] = int(row["cache_hit"])
        return row


COLUMNS = tuple(f.name for f in dataclasses.fields(AccessRecord))


class MemoryAccessLog:
    """Keeps records in a list (tests)."""

    def __init__(self):
        self.records: list[AccessRecord] = []

    def record(self, rec: AccessRecord) -> None:
        self.records.append(rec)
