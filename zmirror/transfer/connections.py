"""What a transfer does to the connections under it: drop a client's
connection without ending its response, and read an upstream's body in
larger pieces."""

from __future__ import annotations

# Socket read size for upstream blob bodies: Twisted reads 64 KiB per call by
# default; 256 KiB-1 MiB cut the per-byte overhead of a relay by ~25 % here.
READ_SIZE = 1 << 20


def abort_client(request) -> None:
    """Drop a client's connection without ending the response: a client must
    never take a truncated or unverified body for a complete one."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None) or getattr(request, "transport", None)
    if transport is not None:
        abort = getattr(transport, "abortConnection", None) or transport.loseConnection
        abort()


def enlarge_reads(transport) -> None:
    """Raise the read size of the TCP connection under a response's transport
    (``TransportProxyProducer`` → the connection, possibly under TLS)."""
    t = getattr(transport, "_producer", None)
    for _ in range(3):
        if t is None:
            return
        if hasattr(t, "bufferSize") and hasattr(t, "doRead"):
            if t.bufferSize < READ_SIZE:
                t.bufferSize = READ_SIZE
            return
        t = getattr(t, "transport", None)
