"""Input validation for the admin API.

A body schema maps field names to :class:`Field` s.  :func:`check` collects
*every* problem (missing, unknown, wrong type, out of range) into one
:class:`Invalid` whose ``fields`` dict becomes the ``"fields"`` of the 400 answer.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

MAX_BODY = 64 * 1024
MAX_ID = 2**63 - 1


class ApiError(Exception):
    """An error answer of the admin API: status, message, per-field details."""

    def __init__(self, status: int, message: str, fields: Optional[dict] = None,
                 headers: Optional[dict] = None, extra: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = dict(fields or {})
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict:
        return {"error": self.message, "fields": self.fields, **self.extra}


class Invalid(ApiError):
    """A 400 with per-field reasons; each reason is stated without its field's name
    (:func:`field_reason`), so that the UI can show it next to the field."""

    def __init__(self, message: str = "invalid input", fields: Optional[dict] = None):
        fields = {k: field_reason(k, v) if isinstance(v, str) else v
                  for k, v in (fields or {}).items()}
        super().__init__(400, message, fields)


# --- the wording of field problems ------------------------------------------------------

# how a reason that reads on after its field's name begins ("name must not be empty")
_PREDICATE = re.compile(
    r"(?:must|is|are|has|have|may|can|cannot|does|do|not|too|required|unknown|already)\b")


def field_reason(field: str, reason: str) -> str:
    """``reason`` without a leading repetition of ``field`` ("prefix must not be
    empty" for field "prefix" → "must not be empty"); a reason in which the name
    begins a longer subject ("proxy URL has no host") is kept whole."""
    head = field + " "
    if reason[:len(head)].lower() == head.lower() and _PREDICATE.match(reason[len(head):]):
        return reason[len(head):]
    return reason


def field_phrase(field: str, reason: str) -> str:
    """One problem in a summary, naming the field once: "prefix must not be empty"
    (never "prefix prefix …"), "proxy URL has no host" (the reason names it),
    "prefix: repository names are lower case" (a reason that does not read on
    after the name)."""
    reason = field_reason(field, reason)
    if _PREDICATE.match(reason):
        return f"{field} {reason}"
    if reason[:len(field) + 1].lower() == field.lower() + " ":
        return reason
    return f"{field}: {reason}"


def problems_message(errors: dict, what: str = "input") -> str:
    """"invalid input: name must not be empty, url is not a valid URL": every field's problem."""
    return f"invalid {what}: " + ", ".join(field_phrase(str(k), str(v)) for k, v in errors.items())


def invalid(errors: dict, what: str = "input") -> Invalid:
    """The 400 of ``errors`` (field → reason), its message naming each problem once."""
    return Invalid(problems_message(errors, what), errors)


# --- field validators: value -> converted value, or raise ValueError(reason) ----------


def string(min_len: int = 0, max_len: int = 255, strip: bool = True,
           pattern: Optional[re.Pattern] = None, pattern_msg: str = "has invalid characters"
           ) -> Callable[[Any], str]:
    def v(x: Any) -> str:
        if not isinstance(x, str):
            raise ValueError("must be a string")
        if strip:
            x = x.strip()
        if "\x00" in x:
            raise ValueError("must not contain NUL characters")
        if len(x) < min_len:
            raise ValueError("must not be empty" if min_len == 1
                             else f"must be at least {min_len} characters")
        if len(x) > max_len:
            raise ValueError(f"must be at most {max_len} characters")
        if pattern is not None and x and not pattern.match(x):
            raise ValueError(pattern_msg)
        return x

    return v


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def v(x: Any) -> int:
        if isinstance(x, bool) or not isinstance(x, int):
            raise ValueError("must be an integer")
        if not lo <= x <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return x

    return v


def boolean(x: Any) -> bool:
    if not isinstance(x, bool):
        raise ValueError("must be true or false")
    return x


def identifier(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= MAX_ID:
        raise ValueError("must be a positive integer id")
    return x


@dataclass(frozen=True)
class Field:
    validate: Callable[[Any], Any]
    required: bool = False
    default: Any = None


def check(body: Any, schema: dict[str, Field], *, partial: bool = False) -> dict:
    """Validate a decoded JSON body against ``schema``.

    Returns the converted values (defaults filled in unless ``partial``);
    raises :class:`Invalid` listing every bad field.
    """
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object", {})
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for key in body:
        if key not in schema:
            errors[str(key)[:100]] = "unknown field"
    for key, spec in schema.items():
        if key in body:
            try:
                out[key] = spec.validate(body[key])
            except ValueError as e:
                errors[key] = str(e)
        elif spec.required and not partial:
            errors[key] = "required"
        elif not partial and spec.default is not None:
            out[key] = spec.default
    if errors:
        raise invalid(errors)
    return out


def json_body(request) -> Any:
    """The request body decoded as JSON; raises :class:`ApiError` (400/413/415)."""
    ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
    if ctype.split(";")[0].strip().lower() != "application/json":
        # also what keeps a cross-site HTML form from posting here
        raise ApiError(415, "Content-Type must be application/json", {})
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body larger than {MAX_BODY} bytes", {})
    if not raw.strip():
        raise Invalid("the request body must be a JSON object", {})
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Invalid(f"invalid JSON: {_short(e)}", {}) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def path_id(raw: str) -> int:
    """An id from the URL path; anything else is an unknown id (404)."""
    if not raw.isdigit() or not raw.isascii() or len(raw) > 19 or int(raw) < 1 or int(raw) > MAX_ID:
        raise ApiError(404, "not found", {})
    return int(raw)


# --- query strings -------------------------------------------------------------------


def query(request, allowed: tuple[str, ...]) -> dict[str, str]:
    """Single-valued query parameters; unknown or repeated names are a 400."""
    out: dict[str, str] = {}
    errors: dict[str, str] = {}
    for k, values in (request.args or {}).items():
        try:
            key = k.decode("utf-8")
        except UnicodeDecodeError:
            errors["?"] = "query parameter name is not UTF-8"
            continue
        if key not in allowed:
            errors[key[:100]] = "unknown parameter"
            continue
        if len(values) != 1:
            errors[key] = "must be given once"
            continue
        try:
            out[key] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            errors[key] = "is not UTF-8"
    if errors:
        raise invalid(errors, "query")
    return out


def q_int(params: dict, key: str, default: int, lo: int, hi: Optional[int] = None,
          errors: Optional[dict] = None, clamp: bool = False) -> int:
    """The integer query parameter ``key`` (``default`` when absent or empty); out of
    ``lo``..``hi`` is an error in ``errors`` saying the bound (or, with ``clamp``,
    above ``hi`` is ``hi``)."""
    raw = params.get(key, "").strip()
    if raw == "":
        return default
    m = re.fullmatch(r"([+-]?)0*([0-9]+)", raw)
    if m is None:
        errors[key] = "must be an integer"
        return default
    digits = m.group(2)
    # beyond 18 digits the exact value does not matter: it is out of any range here
    n = int(digits) if len(digits) <= 18 else 10**18
    if m.group(1) == "-":
        n = -n
    if n < lo:
        errors[key] = f"must be at least {lo}"
        return default
    if hi is not None and n > hi:
        if clamp:
            return hi
        errors[key] = f"must be at most {hi}"
        return default
    return n


TIME_MAX = 1e11  # a Unix time in seconds: about the year 5138


def q_time(params: dict, key: str, errors: dict) -> Optional[float]:
    """The Unix time (seconds, fractions allowed) of query parameter ``key``, or None
    when absent or empty; a problem goes to ``errors``."""
    raw = params.get(key, "").strip()
    if raw == "":
        return None
    try:
        t = float(raw)
    except ValueError:
        t = math.nan
    if not math.isfinite(t):
        errors[key] = "must be a Unix time in seconds (a number)"
        return None
    if t < 0:
        errors[key] = "must not be negative (a Unix time in seconds)"
        return None
    if t > TIME_MAX:
        errors[key] = f"must be at most {TIME_MAX:.0f} (a Unix time in seconds)"
        return None
    return t
