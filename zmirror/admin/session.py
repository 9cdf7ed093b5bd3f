"""``/api/me``, ``/api/me/password`` and ``/api/version``: the admin's session and password."""

from __future__ import annotations

import platform
from typing import Any

import twisted
from zmirror import __version__
from zmirror.admin.http import route
from zmirror.admin.validate import Field, check, json_body, string
from zmirror.auth.adminaccount import AdminAccount, basic_credentials
from zmirror.config import admin_password_problem


def _new_admin_password(x: Any) -> str:
    problem = admin_password_problem(x)
    if problem is not None:
        raise ValueError(problem)
    return x


ADMIN_PASSWORD_FIELDS = {
    "current_password": Field(string(1, 1024, strip=False), required=True),
    "new_password": Field(_new_admin_password, required=True),
}


class SessionHandlers:
    def __init__(self, account: AdminAccount):
        self.account = account

    @route("/me", ["GET"], with_default_password=True)
    def me(self, request):
        _username, password = basic_credentials(request)
        return {"username": self.account.username,
                "default_password": self.account.default_password_in_use(password)}

    @route("/me/password", ["PUT"], with_default_password=True)
    async def change_password(self, request):
        """Change the admin password, applied at once (:meth:`AdminAccount.change_password`)."""
        values = check(json_body(request), ADMIN_PASSWORD_FIELDS)
        await self.account.change_password(values["current_password"], values["new_password"])
        return {"username": self.account.username, "default_password": False}

    @route("/version", ["GET"])
    def version(self, request):
        return {"version": __version__, "python": platform.python_version(),
                "twisted": twisted.__version__}
