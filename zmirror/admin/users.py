"""``/api/users``: the registry users (passwords hashed by :class:`zmirror.auth.users.UserAccounts`)."""

from __future__ import annotations

import functools
from typing import Any

from zmirror.admin.http import maybe, need, route, store_call, update_values
from zmirror.admin.validate import Field, Invalid, boolean, check, identifier, json_body, path_id
from zmirror.auth.scopes import MAX_SCOPES, validate_scopes
from zmirror.auth.users import PASSWORD_POLICY, validate_password
from zmirror.db.users import validate_username

# usernames: the store's own constraint (the admin's name: the handler);
# passwords: zmirror.auth.users, which hashes them (the one password policy, the
# admin's too: a new or changed password is checked, a stored one never);
# scopes: zmirror.auth.scopes (repository patterns; [] or null: everything)
USER_FIELDS = {
    "username": Field(validate_username, required=True),
    "password": Field(validate_password, required=True),
    "enabled": Field(boolean, default=True),
    "scopes": Field(validate_scopes, default=()),
}
USER_UPDATE_FIELDS = {
    "id": Field(identifier),
    "password": Field(validate_password),
    "enabled": Field(boolean),
    "scopes": Field(validate_scopes),
}


def user_out(row: dict) -> dict:
    return {"id": row["id"], "username": row["username"], "enabled": bool(row["enabled"]),
            "created_at": row["created_at"], "updated_at": row["updated_at"],
            "last_login_at": row.get("last_login_at"), "scopes": list(row.get("scopes") or ())}


class UserHandlers:
    """``users``: the store (rows); ``accounts``: create/update with hashed
    passwords; ``account``: the admin account (whose name no user may take).
    None stores: the routes answer 503."""

    def __init__(self, users: Any, accounts: Any, account: Any):
        self.users = users
        self.accounts = accounts
        self.account = account

    @route("/users", ["GET"])
    async def list_all(self, request):
        rows = await maybe(need(self.users, "users").list())
        # the rule a new password follows (the web UI shows it in the Users dialog)
        # and the most patterns a user's scopes may hold
        return {"items": [user_out(r) for r in rows], "password_policy": PASSWORD_POLICY.describe(),
                "max_scopes": MAX_SCOPES}

    @route("/users", ["POST"])
    async def create(self, request):
        accounts = need(self.accounts, "users")
        values = check(json_body(request), USER_FIELDS)
        if values["username"].lower() == self.account.username.lower():
            raise Invalid("invalid input: username is the admin account's name",
                          {"username": "is the admin account's name, which cannot be a"
                                       " registry user"})
        row = await store_call(accounts.create, values, "password")
        return 201, user_out(row)

    @route("/users/<uid>", ["GET"])
    async def get(self, request, uid):
        store = need(self.users, "users")
        return user_out(await maybe(store.get(path_id(uid))))

    @route("/users/<uid>", ["PUT"])
    async def update(self, request, uid):
        accounts = need(self.accounts, "users")
        uid, values = update_values(request, USER_UPDATE_FIELDS, path_id(uid))
        row = await store_call(functools.partial(accounts.update, uid), values, "password")
        return user_out(row)

    @route("/users/<uid>", ["DELETE"])
    async def delete(self, request, uid):
        await maybe(need(self.users, "users").delete(path_id(uid)))
        return None
