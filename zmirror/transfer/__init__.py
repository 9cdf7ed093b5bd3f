"""The transfer of blob bodies to clients, shared by the cache and the upstreams.

Interfaces and Content-Type (:mod:`~zmirror.transfer.interfaces`), ranges
(:mod:`~zmirror.transfer.ranges`), connections
(:mod:`~zmirror.transfer.connections`), the client-side follower
(:mod:`~zmirror.transfer.follower`), the cache's bodies
(:mod:`~zmirror.transfer.bodies`) and the transfer threads
(:mod:`~zmirror.transfer.threads`); design: docs/design/transfer.md.
"""
