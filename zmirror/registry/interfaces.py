"""What the ``/v2/`` routes ask of the pull path: one interface, so the routes never
know whether an answer is proxied, cached or made up by a test."""

from __future__ import annotations

from zope.interface import Interface


class IPullService(Interface):
    """Answers one registry pull (:class:`zmirror.registry.routes.PullRequest`)."""

    def pull(pull):
        """A coroutine giving a result whose ``send(request)`` writes the answer's
        headers and body (a :class:`~zmirror.registry.proxy.BytesResult` or a
        :class:`~zmirror.transfer.interfaces.IBlobBody`), or raising
        :class:`~zmirror.oci.errors.RegistryError`."""


__all__ = ["IPullService"]
