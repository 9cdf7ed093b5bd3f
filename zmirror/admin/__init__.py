"""The admin API (``/api/*``) used by the web UI: :class:`zmirror.admin.api.AdminAPI`
and its route groups; see docs/api.md and docs/design/admin.md."""
