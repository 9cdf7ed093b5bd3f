"""Serves the built web UI (``zmirror/webui``, produced from ``web/`` by Vite)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from twisted.web.resource import Resource
from twisted.web.static import File

WEBUI_DIR = Path(__file__).parent / "webui"


class SPAFile(File):
    """Static files with an ``index.html`` fallback for client-side routes."""

    def getChild(self, path, request):
        child = super().getChild(path, request)
        if not isinstance(child, File):
            return self.createSimilarFile(str(Path(self.path) / "index.html"))
        return child


def ui_resource(directory: Path = WEBUI_DIR) -> Optional[Resource]:
    if not (directory / "index.html").exists():
        return None
    return SPAFile(str(directory))
