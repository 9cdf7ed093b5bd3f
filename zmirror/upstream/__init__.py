"""Talking to upstream registries: auth challenges and tokens, requests with
redirects and health, failover (failover.py) and the remote blob source (blobs.py)."""
