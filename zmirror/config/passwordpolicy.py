"""The one password policy: the admin's password and the registry users' ones.

:data:`PASSWORD_POLICY` says what a *new* password must be (a stored one is
never re-checked: an account created under an older, looser rule keeps
working).  The admin API, the ``zmirror`` CLI and the web UI (through
``GET /api/users``' ``password_policy``) all apply it; the admin's password
also must not be the well-known default (:mod:`zmirror.config.adminpassword`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = 8
    max_length: int = 1024

    def problem(self, password: Any) -> Optional[str]:
        """Why ``password`` cannot be a new password (a field message), or None."""
        if not isinstance(password, str):
            return "must be a string"
        if not password:
            return "must not be empty"
        if len(password) < self.min_length:
            return f"must be at least {self.min_length} characters"
        if len(password) > self.max_length:
            return f"must be at most {self.max_length} characters"
        if _CONTROL.search(password):
            return "must not contain control characters"
        try:
            password.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode text"
        return None

    def describe(self) -> dict:
        """The rule for clients (the web UI shows it beside the password field)."""
        return {"min_length": self.min_length, "max_length": self.max_length}


PASSWORD_POLICY = PasswordPolicy()


def password_problem(password: Any) -> Optional[str]:
    """:meth:`PasswordPolicy.problem` of :data:`PASSWORD_POLICY`."""
    return PASSWORD_POLICY.problem(password)


__all__ = ["PASSWORD_POLICY", "PasswordPolicy", "password_problem"]
