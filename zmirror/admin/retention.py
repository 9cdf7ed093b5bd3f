"""``/api/cache/rules``, ``/api/cache/pins``, ``/api/cache/retention/*``:
retention rules per namespace, pins, the dry run and the run (docs/api.md
"Retention rules and pins")."""

from __future__ import annotations

import functools
from typing import Any

from zmirror.admin.http import maybe, need, route, store_call, update_values
from zmirror.admin.validate import (ApiError, Field, Invalid, boolean, check, identifier, integer, invalid,
                                    json_body, path_id)
from zmirror.cache.pins import InvalidPin, parse_pin
from zmirror.cache.retention import Rule
from zmirror.config.parse import parse_size
from zmirror.db.whitelists import validate_note
from zmirror.oci.names import normalize_namespace

AGE_MAX = 36500  # days (100 years)
SIZE_MAX = 1 << 60


def namespace(x: Any) -> str:
    return normalize_namespace(x)


def max_age_days(x: Any):
    if x is None:
        return None
    return integer(1, AGE_MAX)(x)


def max_size(x: Any):
    """Bytes (an integer) or a size such as "10GB" / "512MiB"; null: no quota."""
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, str)):
        raise ValueError("must be a number of bytes or a size such as \"10GB\"")
    if isinstance(x, str) and len(x) > 40:
        raise ValueError("is not a size")
    try:
        n = parse_size(x)
    except ValueError:
        raise ValueError("must be a number of bytes or a size such as \"10GB\"") from None
    if not 1 <= n <= SIZE_MAX:
        raise ValueError(f"must be between 1 and {SIZE_MAX} bytes")
    return n


def pin_pattern(x: Any) -> str:
    try:
        return parse_pin(x).pattern
    except InvalidPin as e:
        raise ValueError(str(e)) from None


RULE_FIELDS = {
    "namespace": Field(namespace, required=True),
    "max_age_days": Field(max_age_days),
    "max_size": Field(max_size),
    "enabled": Field(boolean, default=True),
    "note": Field(validate_note, default=""),
}
RULE_UPDATE_FIELDS = {"id": Field(identifier), **{k: Field(f.validate) for k, f in RULE_FIELDS.items()}}
# a rule in a dry run's body may be a saved one as the API showed it
DRY_RUN_RULE_FIELDS = {**RULE_FIELDS, "id": Field(lambda x: x), "created_at": Field(lambda x: x),
                       "updated_at": Field(lambda x: x)}
PIN_FIELDS = {
    "pattern": Field(pin_pattern, required=True),
    "note": Field(validate_note, default=""),
}


def _limits_given(values: dict, current: dict | None = None) -> None:
    merged = {**(current or {}), **values}
    if merged.get("max_age_days") is None and merged.get("max_size") is None:
        raise invalid({"max_age_days": "give max_age_days or max_size (or both)",
                       "max_size": "give max_age_days or max_size (or both)"})


def rule_out(row: dict) -> dict:
    return {k: row[k] for k in ("id", "namespace", "max_age_days", "max_size", "enabled", "note",
                                "created_at", "updated_at")}


def pin_out(row: dict) -> dict:
    return {k: row[k] for k in ("id", "pattern", "source", "note", "created_at")}


class RetentionHandlers:
    """``store``: :class:`zmirror.db.retention.RetentionStore`; ``retention``: the
    node's :class:`~zmirror.cache.retentionpass.RetentionPass` (None: the cache is
    disabled, the dry run and the run answer 503); ``max_size``: the global
    ``[cache] max_size`` shown beside the rules."""

    def __init__(self, store: Any, retention: Any = None, max_size: Any = None):
        self.store = store
        self.retention = retention
        self.max_size = max_size

    def _store(self):
        return need(self.store, "retention rules")

    @route("/cache/rules", ["GET"])
    async def rules(self, request):
        rows = await maybe(self._store().rules())
        return {"rules": [rule_out(r) for r in rows], "max_size": self.max_size}

    @route("/cache/rules", ["POST"])
    async def create_rule(self, request):
        store = self._store()
        values = check(json_body(request), RULE_FIELDS)
        _limits_given(values)
        return 201, rule_out(await store_call(store.create_rule, values, "namespace"))

    @route("/cache/rules/<rid>", ["GET"])
    async def rule(self, request, rid):
        return rule_out(await maybe(self._store().rule(path_id(rid))))

    @route("/cache/rules/<rid>", ["PUT"])
    async def update_rule(self, request, rid):
        store = self._store()
        rid, values = update_values(request, RULE_UPDATE_FIELDS, path_id(rid))
        current = await maybe(store.rule(rid))
        _limits_given(values, current)
        return rule_out(await store_call(functools.partial(store.update_rule, rid), values, "namespace"))

    @route("/cache/rules/<rid>", ["DELETE"])
    async def delete_rule(self, request, rid):
        await maybe(self._store().delete_rule(path_id(rid)))
        return None

    @route("/cache/pins", ["GET"])
    async def pins(self, request):
        return {"pins": [pin_out(r) for r in await maybe(self._store().pins())]}

    @route("/cache/pins", ["POST"])
    async def create_pin(self, request):
        store = self._store()
        values = check(json_body(request), PIN_FIELDS)
        row = await store_call(store.create_pin, values, "pattern")
        await self._pins_changed()
        return 201, pin_out(row)

    @route("/cache/pins/<pid>", ["DELETE"])
    async def delete_pin(self, request, pid):
        await maybe(self._store().delete_pin(path_id(pid)))
        await self._pins_changed()
        return None

    async def _pins_changed(self) -> None:
        if self.retention is not None:
            await self.retention.refresh_pins()  # the global LRU skips them from now on

    @route("/cache/retention/dry-run", ["POST"])
    async def dry_run(self, request):
        body = json_body(request)
        values = check(body, {"rule": Field(lambda x: x)})
        rule = None
        if "rule" in values:
            r = values["rule"]
            if not isinstance(r, dict):
                raise Invalid("invalid input: rule must be an object", {"rule": "must be an object"})
            try:
                r = check(r, DRY_RUN_RULE_FIELDS)
                _limits_given(r)
            except Invalid as e:
                raise Invalid(e.message, {f"rule.{k}": v for k, v in e.fields.items()}) from None
            rule = Rule(r["namespace"], r.get("max_age_days"), r.get("max_size"))
        return await self._pass().dry_run(rule)

    @route("/cache/retention/run", ["POST"])
    async def run(self, request):
        body = json_body(request)
        check(body, {})
        return await self._pass().run()

    def _pass(self):
        if self.retention is None:
            raise ApiError(503, "the cache is disabled ([cache] enabled = false)", {})
        return self.retention
