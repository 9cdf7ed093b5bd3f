"""Talking to upstream registries: auth challenges and tokens, requests with
redirects and failover health, and the streaming relay."""
