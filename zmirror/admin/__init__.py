"""The admin API (``/api/*``) used by the web UI; see docs/api.md."""

from zmirror.admin.api import AdminAPI

__all__ = ["AdminAPI"]
