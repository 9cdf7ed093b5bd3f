"""ZMirror: a Docker/OCI registry pull proxy on Twisted."""

__version__ = "0.1.0"
