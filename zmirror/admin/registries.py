"""``/api/registries``: the upstream registries, with their health and a probe.

Secrets are write-only: ``password`` and ``client_key`` are never returned
(``has_password``, ``has_client_key``), the ``proxy`` URL's password comes
back as ``****``; a PUT that sends ``****`` back, or leaves ``password`` /
``client_key`` out, keeps what is stored.  The probe (``test``) tries what a
save would store, before it is saved."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from zmirror.admin.http import maybe, route, update_values
from zmirror.admin.validate import (
    ApiError,
    Field,
    Invalid,
    boolean,
    check,
    identifier,
    integer,
    json_body,
    path_id,
    string,
)
from zmirror.admin.registrysettings import (
    REGISTRY_SETTINGS_FIELDS,
    registry_settings_out,
    resolve_settings,
    settings_problems,
)
from zmirror.db.registries import normalize_url
from zmirror.oci.names import normalize_namespace

log = Logger()

UNKNOWN_HEALTH = {"state": "unknown", "last_error": None, "last_latency_ms": None,
                  "last_checked_at": None, "consecutive_failures": 0}
RATE_LIMIT_KEYS = ("limit", "remaining", "window", "reset_at", "updated_at")
PROBE_KEYS = {"ok": False, "status": None, "latency_ms": None, "auth": "unknown", "error": None}
STEP_NAMES = ("dns", "tcp", "proxy", "tls", "v2")
STEP_DETAIL_MAX = 500

_NO_COLON = re.compile(r"^[^:\x00-\x1f\x7f]*$")
# the longest registry name (the web UI's name field has the same maxlength)
NAME_MAX = 100

REGISTRY_FIELDS = {
    "name": Field(string(1, NAME_MAX), required=True),
    "url": Field(normalize_url, required=True),
    # the registry host this upstream mirrors; index.docker.io / registry-1.docker.io mean docker.io
    "namespace": Field(normalize_namespace, default="docker.io"),
    "priority": Field(integer(0, 1_000_000), default=100),
    "enabled": Field(boolean, default=True),
    "username": Field(string(0, 255, pattern=_NO_COLON,
                             pattern_msg="must not contain ':' or control characters"), default=""),
    "password": Field(string(0, 4096, strip=False), default=""),
    **REGISTRY_SETTINGS_FIELDS,
}
REGISTRY_UPDATE_FIELDS = {"id": Field(identifier), **REGISTRY_FIELDS}
# an unsaved registry to test: the name may still be empty; with ``id`` the stored
# values fill in what the body leaves out (as a PUT would)
REGISTRY_TEST_FIELDS = {**REGISTRY_UPDATE_FIELDS, "name": Field(string(0, NAME_MAX), default="")}


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
        **registry_settings_out(row),
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
        resolve_settings(values, None)
        settings_problems(values)
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
        stored = await self.registries.get(rid)
        resolve_settings(values, stored)
        settings_problems({**stored, **values}, changed=values)
        row = await self.registries.update(rid, **values)
        return registry_out(row, self._health())

    @route("/registries/<rid>", ["DELETE"])
    async def delete(self, request, rid):
        await self.registries.delete(path_id(rid))
        return None

    @route("/registries/<rid>/test", ["POST"])
    async def probe(self, request, rid):
        row = await self.registries.get(path_id(rid))
        out = await self._probe(row)
        record = getattr(getattr(self.upstreams, "health", None), "record_probe", None)
        if record is not None:
            record(row["id"], out)  # the health column shows what the test found
        return out

    @route("/registries/test", ["POST"])
    async def probe_unsaved(self, request):
        """Test a registry as the dialog has it, before it is saved: with ``id``,
        what a PUT of this body would store (secrets left out or masked are
        the stored ones); without, what a POST would create."""
        values = check(json_body(request), REGISTRY_TEST_FIELDS, partial=True)
        rid = values.pop("id", None)
        if rid is None:
            if "url" not in values:
                raise Invalid("invalid input: url required", {"url": "required"})
            row = {k: f.default for k, f in REGISTRY_FIELDS.items() if f.default is not None}
            row.update(values)
            resolve_settings(row, None)
            settings_problems(row)
        else:
            stored = await self.registries.get(rid)
            resolve_settings(values, stored)
            row = {**stored, **values}
            settings_problems(row, changed=values)
        row.setdefault("id", rid or 0)
        return await self._probe(row)

    async def _probe(self, row: dict) -> dict:
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
        out["steps"] = probe_steps(result.get("steps") if isinstance(result, dict) else None)
        return out


def probe_steps(steps: Any) -> list:
    """The probe's ``steps`` as the API answers them: ``{"step", "ok", "ms",
    "detail"}`` each, in order, ending at the first failed one."""
    out: list = []
    for s in steps if isinstance(steps, list) else []:
        if not isinstance(s, dict) or s.get("step") not in STEP_NAMES:
            continue
        ms = s.get("ms")
        ms = round(float(ms), 1) if isinstance(ms, (int, float)) and not isinstance(ms, bool) else None
        ok = s.get("ok") is True
        out.append({"step": s["step"], "ok": ok, "ms": ms, "detail": str(s.get("detail") or "")[:STEP_DETAIL_MAX]})
        if not ok:
            break
    return out
