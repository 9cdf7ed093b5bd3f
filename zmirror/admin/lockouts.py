"""``/api/lockouts``: the accounts and addresses the login lockout holds locked,
and the admin's unlock (:class:`zmirror.auth.lockoutrecords.LockoutRecords`:
every node lifts it within 2 s)."""

from __future__ import annotations

from typing import Any

from zmirror.admin.http import need, route
from zmirror.admin.validate import ApiError, Invalid, query

MAX_TARGET = 200


class LockoutHandlers:
    """``lockouts``: the :class:`~zmirror.auth.lockoutrecords.LockoutRecords` (None: 503)."""

    def __init__(self, lockouts: Any):
        self.lockouts = lockouts

    @route("/lockouts", ["GET"])
    async def list_all(self, request):
        """The locks in force: ``{"items": [{id, kind, name, login, failures,
        locked_at, until, retry_after, node}]}``."""
        query(request, ())
        items = await need(self.lockouts, "lockouts").list()
        return {"items": items}

    @route("/lockouts/<target>", ["DELETE"])
    async def unlock(self, request, target):
        """Unlock an account (its name), an address (IPv4, or an IPv6 address of
        the /64 it is counted under) or one lock (its ``id``); 404 when none of
        them is locked.  ``{"released": [the locks lifted]}``."""
        records = need(self.lockouts, "lockouts")
        if isinstance(target, bytes):
            target = target.decode("utf-8", "replace")
        target = str(target).strip()
        if not target or len(target) > MAX_TARGET or not target.isprintable():
            raise Invalid("invalid input: name must be an account name, an address or a lock id",
                          {"name": "must be an account name, an address or a lock id"})
        released = await records.unlock(target)
        if not released:
            raise ApiError(404, "no account or address of this name is locked")
        return {"released": released}


__all__ = ["LockoutHandlers"]
