"""Store-level errors, mapped to HTTP answers by the admin API."""


def is_unique_violation(e: BaseException) -> bool:
    """A UNIQUE constraint failed (SQLite or PostgreSQL)."""
    from zmirror.db import is_unique_violation as check

    return check(e)


class StoreError(Exception):
    pass


class NotFound(StoreError):
    """No row with that id (→ 404)."""


class Conflict(StoreError):
    """A unique value already exists (→ 409).  ``field`` names it."""

    def __init__(self, field: str, message: str = "already exists"):
        self.field = field
        super().__init__(f"{field}: {message}")


class InvalidField(ValueError):
    """Bad input for one field; ``str(e)`` is the reason, ``field`` names the field (→ 400)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(message)
