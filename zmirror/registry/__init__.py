"""The Docker Registry HTTP API V2 (pull side)."""
