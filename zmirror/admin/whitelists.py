"""``/api/whitelists``: the whitelist entries, and what the anonymous access mode
makes of a repository name (``/api/whitelists/match``)."""

from __future__ import annotations

import functools
from typing import Any

from zmirror.admin.http import maybe, need, route, store_call, update_values
from zmirror.admin.validate import Field, Invalid, boolean, check, identifier, json_body, path_id, query
from zmirror.auth.whitelist import validate_prefix
from zmirror.db.whitelists import validate_note
from zmirror.oci.errors import RegistryError
from zmirror.oci.names import canonical_name

# the validators of the layers the handlers call: prefixes, zmirror.auth.whitelist
# (the matcher's syntax); notes, the store's own constraint
WHITELIST_FIELDS = {
    "prefix": Field(validate_prefix, required=True),
    "enabled": Field(boolean, default=True),
    "note": Field(validate_note, default=""),
}
WHITELIST_UPDATE_FIELDS = {
    "id": Field(identifier),
    "prefix": Field(validate_prefix),
    "enabled": Field(boolean),
    "note": Field(validate_note),
}


def whitelist_out(row: dict) -> dict:
    return {"id": row["id"], "prefix": row["prefix"], "enabled": bool(row["enabled"]),
            "note": row.get("note", ""), "created_at": row["created_at"],
            "updated_at": row["updated_at"]}


class WhitelistHandlers:
    """``whitelists``: the store (rows); ``whitelist``: the live matcher
    (:class:`zmirror.auth.whitelist.Whitelist`); ``policy``: the access policy,
    whose ``mode`` (``[access] anonymous``, reloaded on SIGHUP) the match reports.
    None: those routes answer 503."""

    def __init__(self, whitelists: Any, whitelist: Any, policy: Any):
        self.whitelists = whitelists
        self.whitelist = whitelist
        self.policy = policy

    def _store(self):
        return need(self.whitelists, "whitelists")

    @route("/whitelists", ["GET"])
    async def list_all(self, request):
        rows = await maybe(self._store().list())
        return {"items": [whitelist_out(r) for r in rows]}

    @route("/whitelists", ["POST"])
    async def create(self, request):
        store = self._store()
        values = check(json_body(request), WHITELIST_FIELDS)
        row = await store_call(store.create, values, "prefix")
        return 201, whitelist_out(row)

    @route("/whitelists/match", ["GET"])
    async def match(self, request):
        whitelist = need(self.whitelist, "whitelists")
        policy = need(self.policy, "whitelists")
        params = query(request, ("repository",))
        repo = params.get("repository", "").strip()
        if not repo:
            raise Invalid("invalid query: repository required", {"repository": "required"})
        try:
            name = canonical_name(repo)
        except RegistryError:
            raise Invalid("invalid query: repository is not a valid repository name",
                          {"repository": "is not a valid repository name"}) from None
        await whitelist.ready()
        matched = whitelist.match(name)
        mode = policy.mode
        if mode == "all":
            allowed = True
        elif mode == "none":
            allowed = False
        else:
            allowed = matched is not None
        return {
            "repository": name,
            "allowed": allowed,
            "matched": ({"id": matched.id, "prefix": matched.prefix}
                        if matched is not None else None),
            "mode": mode,
        }

    @route("/whitelists/<wid>", ["GET"])
    async def get(self, request, wid):
        return whitelist_out(await maybe(self._store().get(path_id(wid))))

    @route("/whitelists/<wid>", ["PUT"])
    async def update(self, request, wid):
        store = self._store()
        wid, values = update_values(request, WHITELIST_UPDATE_FIELDS, path_id(wid))
        row = await store_call(functools.partial(store.update, wid), values, "prefix")
        return whitelist_out(row)

    @route("/whitelists/<wid>", ["DELETE"])
    async def delete(self, request, wid):
        await maybe(self._store().delete(path_id(wid)))
        return None
