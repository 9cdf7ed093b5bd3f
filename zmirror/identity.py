"""Who is pulling, and the policy used when access control is off.

Below both the HTTP routes (``zmirror.registry.routes``, which carry an
:class:`Identity` in every ``PullRequest``) and the access policy
(``zmirror.auth.policy``, which decides it): neither imports the other for it.
This module imports nothing of ZMirror.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class Identity:
    """Who is pulling: ``username`` None for anonymous."""

    username: Optional[str] = None
    # True when the response must not be cached publicly (private content).
    private: bool = False


class AllowAll:
    """The policy used when access control is off: everyone may pull anything."""

    async def authorize_ping(self, request: Any) -> Identity:
        return Identity()

    async def authorize(self, request: Any, path: Any) -> Identity:
        return Identity()


__all__ = ["Identity", "AllowAll"]
