"""Talking to upstream registries: the registry list and requests (pool.py,
client.py), health and rate limits (health.py, shared.py), failover and the
remote manifest and blob sources; built by build.py (docs/design/upstream.md)."""
