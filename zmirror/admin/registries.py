"""``/api/registries``: the upstream registries, with their health and a probe."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from zmirror.admin.http import maybe, route, update_values
from zmirror.admin.validate import (
    ApiError,
    Field,
    boolean,
    check,
    identifier,
    integer,
    json_body,
    path_id,
    string,
)
from zmirror.db.registries import normalize_url
from zmirror.oci.names import normalize_namespace

log = Logger()

UNKNOWN_HEALTH = {"state": "unknown", "last_error": None, "last_latency_ms": None,
                  "last_checked_at": None, "consecutive_failures": 0}
RATE_LIMIT_KEYS = ("limit", "remaining", "window", "reset_at", "updated_at")
PROBE_KEYS = {"ok": False, "status": None, "latency_ms": None, "auth": "unknown", "error": None}

_NO_COLON = re.compile(r"^[^:\x00-\x1f\x7f]*$")

REGISTRY_FIELDS = {
    "name": Field(string(1, 100), required=True),
    "url": Field(normalize_url, required=True),
    # the registry host this upstream mirrors; index.docker.io / registry-1.docker.io mean docker.io
    "namespace": Field(normalize_namespace, default="docker.io"),
    "priority": Field(integer(0, 1_000_000), default=100),
    "enabled": Field(boolean, default=True),
    "username": Field(string(0, 255, pattern=_NO_COLON,
                             pattern_msg="must not contain ':' or control characters"), default=""),
    "password": Field(string(0, 4096, strip=False), default=""),
}
REGISTRY_UPDATE_FIELDS = {"id": Field(identifier), **REGISTRY_FIELDS}


def registry_out(row: dict, health: dict) -> dict:
    h = dict(UNKNOWN_HEALTH)
    got = health.get(row["id"])
    rate_limit = None
    if isinstance(got, dict):
        h.update({k: got[k] for k in UNKNOWN_HEALTH if k in got})
        rl = got.get("rate_limit")
        if isinstance(rl, dict):
            # what the upstream last said (ratelimit-* headers) and, while it is
            # skipped for pulls (state "ratelimited"), when that ends
            rate_limit = {k: rl.get(k) for k in RATE_LIMIT_KEYS}
    return {
        "id": row["id"], "name": row["name"], "url": row["url"],
        "namespace": row.get("namespace") or "docker.io",
        "priority": row["priority"], "enabled": bool(row["enabled"]),
        "username": row["username"], "has_password": bool(row["password"]),
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "health": h, "rate_limit": rate_limit,
    }


class RegistryHandlers:
    """``registries``: the store (:class:`zmirror.db.registries.RegistryStore`);
    ``upstreams``: the proxy core's pool (health, probe), or None (health
    "unknown", the probe answers 503)."""

    def __init__(self, registries: Any, upstreams: Any = None):
        self.registries = registries
        self.upstreams = upstreams

    def _health(self) -> dict:
        if self.upstreams is None:
            return {}
        try:
            return dict(self.upstreams.health.report() or {})
        except Exception:
            log.failure("admin API: upstream health failed")
            return {}

    @route("/registries", ["GET"])
    async def list_all(self, request):
        rows = await self.registries.list()
        health = self._health()
        return {"items": [registry_out(r, health) for r in rows]}

    @route("/registries", ["POST"])
    async def create(self, request):
        values = check(json_body(request), REGISTRY_FIELDS)
        row = await self.registries.create(**values)
        return 201, registry_out(row, self._health())

    @route("/registries", ["PUT"])
    async def update_by_body(self, request):
        return await self._update(*update_values(request, REGISTRY_UPDATE_FIELDS))

    @route("/registries/<rid>", ["GET"])
    async def get(self, request, rid):
        row = await self.registries.get(path_id(rid))
        return registry_out(row, self._health())

    @route("/registries/<rid>", ["PUT"])
    async def update(self, request, rid):
        return await self._update(*update_values(request, REGISTRY_UPDATE_FIELDS, path_id(rid)))

    async def _update(self, rid: int, values: dict):
        row = await self.registries.update(rid, **values)
        return registry_out(row, self._health())

    @route("/registries/<rid>", ["DELETE"])
    async def delete(self, request, rid):
        await self.registries.delete(path_id(rid))
        return None

    @route("/registries/<rid>/test", ["POST"])
    async def probe(self, request, rid):
        row = await self.registries.get(path_id(rid))
        if self.upstreams is None:
            raise ApiError(503, "the proxy core is not available")
        try:
            result = await maybe(self.upstreams.probe(row))
        except CancelledError:
            raise
        except Exception as e:
            log.failure("admin API: probe of registry {id} failed", id=row["id"])
            result = {"ok": False, "error": f"probe failed: {type(e).__name__}"}
        out = dict(PROBE_KEYS)
        if isinstance(result, dict):
            out.update({k: result[k] for k in PROBE_KEYS if k in result})
        record = getattr(getattr(self.upstreams, "health", None), "record_probe", None)
        if record is not None:
            record(row["id"], out)  # the health column shows what the test found
        return out
