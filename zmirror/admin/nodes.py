"""``/api/nodes``: the nodes sharing the database, from their heartbeats."""

from __future__ import annotations

from typing import Any

from zmirror.admin.http import route
from zmirror.admin.validate import query


class NodeHandlers:
    """``nodes``: this node's :class:`zmirror.nodes.NodeHeartbeat` (None: nothing
    is known of any node); ``node``: this node's name; ``clock``: for ``now``."""

    def __init__(self, nodes: Any, *, node: str, clock: Any):
        self.nodes = nodes
        self.node = node
        self.clock = clock

    @route("/nodes", ["GET"])
    async def list_all(self, request):
        """Every node's heartbeat row with its state (up / stale / stopped), by name."""
        query(request, ())
        if self.nodes is None:
            return {"items": [], "self": self.node, "now": self.clock.seconds(),
                    "heartbeat": None, "stale_after": None, "total": 0, "truncated": False}
        return await self.nodes.listing()
