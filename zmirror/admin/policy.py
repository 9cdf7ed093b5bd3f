"""``/api/policy``: the image policy's rules, and what the mirror makes of one
reference (``POST /api/policy/test``): the policy's answer and its rule, whether
anonymous clients may pull it (whitelist / ``[access] anonymous``), and what a
given user's scopes say.

Design: docs/design/auth.md ("The image policy").
"""

from __future__ import annotations

import functools
from typing import Any

from zmirror.admin.http import maybe, need, route, store_call, update_values
from zmirror.admin.validate import Field, Invalid, boolean, check, identifier, json_body, path_id
from zmirror.auth.scopes import user_scopes
from zmirror.db.policyrules import check_action, check_pattern, check_position
from zmirror.db.whitelists import validate_note
from zmirror.sync.spec import parse_image

RULE_FIELDS = {
    "action": Field(check_action, required=True),
    "pattern": Field(check_pattern, required=True),
    "enabled": Field(boolean, default=True),
    "note": Field(validate_note, default=""),
    "position": Field(check_position),
}
RULE_UPDATE_FIELDS = {
    "id": Field(identifier),
    "action": Field(check_action),
    "pattern": Field(check_pattern),
    "enabled": Field(boolean),
    "note": Field(validate_note),
    "position": Field(check_position),
}
USERNAME_MAX = 64


def _reference(raw: Any):
    try:
        ref = parse_image(raw)
    except ValueError as e:
        raise ValueError(str(e)) from None
    if ref.pattern is not None:
        raise ValueError("names a tag pattern; test one tag or digest")
    return ref


def _username(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("must be a non-empty string")
    if len(raw) > USERNAME_MAX or "\x00" in raw:
        raise ValueError(f"must be a user name of at most {USERNAME_MAX} characters")
    return raw.strip()


TEST_FIELDS = {
    "reference": Field(_reference, required=True),
    "user": Field(_username),
}


def rule_out(row: dict) -> dict:
    return {"id": row["id"], "action": row["action"], "pattern": row["pattern"],
            "enabled": bool(row["enabled"]), "note": row.get("note", ""),
            "position": row["position"], "created_at": row["created_at"],
            "updated_at": row["updated_at"]}


class PolicyHandlers:
    """``policy``: the registry's :class:`~zmirror.auth.policy.AccessPolicy`, whose
    ``image_policy`` (rules and evaluator), whitelist mode and users the routes use.
    None (or no image policy): the routes answer 503."""

    def __init__(self, policy: Any, users: Any):
        self.policy = policy
        self.users = users

    def _image_policy(self):
        return need(getattr(self.policy, "image_policy", None), "policy rules")

    def _store(self):
        return need(getattr(self._image_policy(), "store", None), "policy rules")

    @route("/policy/rules", ["GET"])
    async def list_all(self, request):
        rows = await maybe(self._store().list())
        return {"items": [rule_out(r) for r in rows]}

    @route("/policy/rules", ["POST"])
    async def create(self, request):
        store = self._store()
        values = check(json_body(request), RULE_FIELDS)
        action, pattern = values.pop("action"), values.pop("pattern")
        row = await store_call(functools.partial(store.create, action, pattern), values, "pattern")
        return 201, rule_out(row)

    @route("/policy/rules/<rid>", ["GET"])
    async def get(self, request, rid):
        return rule_out(await maybe(self._store().get(path_id(rid))))

    @route("/policy/rules/<rid>", ["PUT"])
    async def update(self, request, rid):
        store = self._store()
        rid, values = update_values(request, RULE_UPDATE_FIELDS, path_id(rid))
        row = await store_call(functools.partial(store.update, rid), values, "pattern")
        return rule_out(row)

    @route("/policy/rules/<rid>", ["DELETE"])
    async def delete(self, request, rid):
        await maybe(self._store().delete(path_id(rid)))
        return None

    @route("/policy/test", ["POST"])
    async def test(self, request):
        image_policy = self._image_policy()
        values = check(json_body(request), TEST_FIELDS)
        ref = values["reference"]
        user = None
        if "user" in values:
            users = need(self.users, "users")
            row = await maybe(users.get_by_username(values["user"]))
            if row is None:
                raise Invalid("invalid input: user: no such user", {"user": "no such user"})
            user = row
        await image_policy.ready()
        await self.policy.ready()
        decision = image_policy.decide(ref.repository, tag=ref.tag, digest=ref.digest)
        anonymous = self.policy.anonymous_allows(ref.repository)
        out = {
            "reference": str(ref),
            "repository": ref.repository,
            "allowed": decision.allowed,
            "reason": decision.reason,
            "rule": decision.rule,
            "anonymous": anonymous,
            "user": None,
        }
        if user is not None:
            scopes = user_scopes(user)
            out["user"] = {
                "username": user["username"],
                "enabled": bool(user["enabled"]),
                "scopes": list(scopes.texts),
                "in_scope": scopes.allows(ref.repository),
                # what /v2 lets this user pull (scopes or the anonymous rules), before the policy
                "may_pull": bool(user["enabled"]) and self.policy.may_pull(user, ref.repository),
            }
        return out


__all__ = ["PolicyHandlers", "rule_out"]
