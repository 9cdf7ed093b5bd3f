"""Signed tokens (PyJWT, HS256) for the Docker token flow.

The secret is ``<data_dir>/token.key``, or on PostgreSQL the cluster's shared
``cluster_secrets`` row (:func:`load_secret`).  Access tokens are short-lived
and carry Docker's ``access`` claim; a user's access and refresh tokens carry
its id and a fingerprint of its hash / enabled flag / scopes / last change, so
they die with the user and with a change of its scopes.  Expiry is checked
against the injected clock.

Design: docs/design/auth.md ("Tokens").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import jwt

from zmirror.config import ConfigError

SECRET_FILE = "token.key"
SECRET_BYTES = 32
TOKEN_MAX = 8192
ALGORITHM = "HS256"
ACCESS = "access"
REFRESH = "refresh"


class SecretError(ConfigError):
    """The token secret file is unusable (one line for the operator)."""


class InvalidToken(Exception):
    """A token that is malformed, forged, expired or of the wrong kind."""


def load_or_create_secret(data_dir: os.PathLike | str) -> bytes:
    """Read ``<data_dir>/token.key``, creating it (0600) with random bytes if missing."""
    path = Path(data_dir) / SECRET_FILE
    if not path.exists():
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(SECRET_BYTES) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic, never overwrites a concurrent first start
            except FileExistsError:
                pass
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
        text = path.read_text(encoding="ascii").strip()
        secret = bytes.fromhex(text)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise SecretError(f"{path}: unusable token secret ({e}); delete it to generate a new one") from None
    if len(secret) < 16:
        raise SecretError(f"{path}: token secret is too short; delete it to generate a new one")
    return secret


CLUSTER_SECRET = "token"  # cluster_secrets.name of the token signing secret


def shared_secret(conn: Any, local: Callable[[], bytes], *, now: float) -> bytes:
    """The token secret every node of a cluster shares: the ``cluster_secrets``
    row ``token`` (base64).  If it is missing, this node's ``local()`` secret is
    inserted (``ON CONFLICT DO NOTHING``) and the row read again, so nodes that
    start at once all end up with the secret of the one whose insert won.

    ``conn``: a blocking DB-API connection in autocommit mode taking ``?``
    placeholders (:func:`zmirror.db.engine.connect_config`).  Blocking: call at start.
    The secret is never put in an error message.
    """

    def read() -> Optional[str]:
        row = conn.execute("SELECT value FROM cluster_secrets WHERE name = ?",
                           (CLUSTER_SECRET,)).fetchone()
        return None if row is None else row[0]

    value = read()
    if value is None:
        seed = local()
        conn.execute("INSERT INTO cluster_secrets (name, value, created_at) VALUES (?, ?, ?)"
                     " ON CONFLICT (name) DO NOTHING",
                     (CLUSTER_SECRET, base64.b64encode(seed).decode("ascii"), float(now)))
        value = read()
    where = f"cluster_secrets row {CLUSTER_SECRET!r}"
    if not isinstance(value, str):
        raise SecretError(f"{where}: missing after it was inserted")
    try:
        secret = base64.b64decode(value.strip(), validate=True)
    except (ValueError, TypeError):
        raise SecretError(f"{where}: unusable token secret (not base64); delete the row to "
                          "seed it again from a node's token.key") from None
    if len(secret) < 16:
        raise SecretError(f"{where}: token secret is too short; delete the row to seed it again "
                          "from a node's token.key")
    return secret


def load_secret(config: Any, clock: Any) -> bytes:
    """The token signing secret of this node: ``<data_dir>/token.key`` on SQLite
    (one node; existing deployments keep their tokens), the shared
    :func:`shared_secret` on PostgreSQL (seeded from this node's ``token.key``,
    so a database moved over with ``zmirror db copy`` keeps the tokens of the
    node that first starts on it).  Blocking: call at start."""
    from zmirror.db.engine import connect_config, describe, is_postgresql
    from zmirror.db.errors import DatabaseError, one_line

    if not is_postgresql(config):
        return load_or_create_secret(config.data_dir)
    conn = connect_config(config)
    try:
        return shared_secret(conn, lambda: load_or_create_secret(config.data_dir),
                             now=clock.seconds())
    except SecretError:
        raise
    except Exception as e:  # the driver's error: one line, no secret in it
        raise DatabaseError(f"{describe(config)}: cannot read the token secret: "
                            f"{one_line(e)}") from None
    finally:
        conn.close()


def _derive(secret: bytes, label: str) -> bytes:
    return hmac.new(secret, label.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class Claims:
    """A verified access token."""

    subject: str  # username, "" for anonymous
    access: tuple = ()  # ((type, name, (actions...)), ...)
    uid: Optional[int] = None
    fp: Optional[str] = None
    expires_at: float = 0.0
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def anonymous(self) -> bool:
        return self.uid is None

    def allows(self, name: str, action: str = "pull") -> bool:
        for typ, n, actions in self.access:
            if typ == "repository" and n == name and (action in actions or "*" in actions):
                return True
        return False


class TokenIssuer:
    def __init__(self, secret: bytes, clock: Any, *, service: str = "zmirror",
                 issuer: str = "zmirror", access_ttl: int = 300,
                 refresh_ttl: int = 365 * 86400, leeway: int = 30):
        if len(secret) < 16:
            raise ValueError("token secret too short")
        self._sign_key = _derive(secret, "zmirror-jwt-signing-v1")
        self._fp_key = _derive(secret, "zmirror-user-fingerprint-v1")
        self.clock = clock
        self.service = service
        self.issuer = issuer
        self.access_ttl = int(access_ttl)
        self.refresh_ttl = int(refresh_ttl)
        self.leeway = leeway

    # --- user fingerprint ----------------------------------------------------

    def fingerprint(self, user: Mapping[str, Any]) -> str:
        """Changes whenever the user's password, enabled flag, scopes or record changes.

        The scopes count only when set (an unscoped user's fingerprint is what it
        was before scopes existed, so upgrading ends no token)."""
        parts = [
            str(int(user["id"])),
            str(user["password_hash"]),
            "1" if user["enabled"] else "0",
            repr(float(user["updated_at"])),
        ]
        scopes = user.get("scopes")
        if scopes:
            parts.append("scopes=" + json.dumps(list(scopes), separators=(",", ":")))
        material = "\0".join(parts)
        digest = hmac.new(self._fp_key, material.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode("ascii")

    def fingerprint_matches(self, user: Optional[Mapping[str, Any]], fp: Optional[str]) -> bool:
        if user is None or not fp or not user.get("enabled"):
            return False
        return hmac.compare_digest(self.fingerprint(user).encode(), fp.encode("utf-8", "replace"))

    # --- issuing ---------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock.seconds())

    def issue_access(self, *, subject: str, access: list[dict],
                     user: Optional[Mapping[str, Any]] = None) -> tuple[str, int]:
        """``(token, issued_at)``: an access token for ``access`` (Docker's claim format)."""
        now = self._now()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject or "",
            "aud": self.service,
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.access_ttl,
            "jti": secrets.token_urlsafe(12),
            "zt": ACCESS,
            "access": access,
        }
        if user is not None:
            claims["uid"] = int(user["id"])
            claims["fp"] = self.fingerprint(user)
        return jwt.encode(claims, self._sign_key, algorithm=ALGORITHM), now

    def issue_refresh(self, user: Mapping[str, Any]) -> str:
        now = self._now()
        claims = {
            "iss": self.issuer,
            "sub": str(user["username"]),
            "aud": self.service,
            "iat": now,
            "exp": now + self.refresh_ttl,
            "jti": secrets.token_urlsafe(12),
            "zt": REFRESH,
            "uid": int(user["id"]),
            "fp": self.fingerprint(user),
        }
        return jwt.encode(claims, self._sign_key, algorithm=ALGORITHM)

    # --- verifying -------------------------------------------------------

    def _decode(self, token: Any, kind: str) -> dict:
        if not isinstance(token, str) or not token or len(token) > TOKEN_MAX:
            raise InvalidToken("malformed token")
        try:
            claims = jwt.decode(
                token,
                self._sign_key,
                algorithms=[ALGORITHM],
                audience=self.service,
                issuer=self.issuer,
                options={
                    "verify_exp": False,  # checked below against the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iat", "aud", "iss", "zt"],
                },
            )
        except jwt.PyJWTError as e:
            raise InvalidToken(f"invalid token: {e.__class__.__name__}") from None
        except Exception:  # anything odd in a hostile token
            raise InvalidToken("invalid token") from None
        if claims.get("zt") != kind:
            raise InvalidToken("wrong token kind")
        now = self.clock.seconds()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or now > exp + self.leeway:
            raise InvalidToken("token expired")
        if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and now + self.leeway < nbf:
            raise InvalidToken("token not yet valid")
        uid = claims.get("uid")
        if uid is not None and (not isinstance(uid, int) or isinstance(uid, bool)):
            raise InvalidToken("invalid token")
        return claims

    def verify_access(self, token: Any) -> Claims:
        claims = self._decode(token, ACCESS)
        access = []
        for item in claims.get("access") or []:
            if not isinstance(item, dict):
                continue
            typ, name, actions = item.get("type"), item.get("name"), item.get("actions")
            if isinstance(typ, str) and isinstance(name, str) and isinstance(actions, list):
                access.append((typ, name, tuple(a for a in actions if isinstance(a, str))))
        fp = claims.get("fp")
        return Claims(
            subject=str(claims.get("sub") or ""),
            access=tuple(access),
            uid=claims.get("uid"),
            fp=fp if isinstance(fp, str) else None,
            expires_at=float(claims["exp"]),
            raw=claims,
        )

    def verify_refresh(self, token: Any) -> tuple[int, str]:
        """``(user id, fingerprint)`` of a valid refresh token."""
        claims = self._decode(token, REFRESH)
        uid, fp = claims.get("uid"), claims.get("fp")
        if not isinstance(uid, int) or not isinstance(fp, str):
            raise InvalidToken("invalid refresh token")
        return uid, fp
