"""Pre-warm and scheduled sync jobs (docs/design/sync.md)."""
