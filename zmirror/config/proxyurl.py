"""Egress proxy URLs as the configuration and the admin API take them
(``[upstream] proxy``, a registry's ``proxy``): the form checked, the
password masked for display, and ``no_proxy`` lists.

A proxy URL is ``http://[user:pass@]host[:port]``, ``socks5://…`` or
``socks5h://…`` (remote DNS); "" means direct.  The reasons given never repeat
the value (it may hold a password).  What connects through it:
:mod:`zmirror.upstream.egress`.
"""

from __future__ import annotations

import re
from typing import Any, Optional
from urllib.parse import urlsplit

PROXY_SCHEMES = ("http", "socks5", "socks5h")
MASK = "****"  # what a proxy password looks like in answers, and sent back: "keep it"
INVALID = "(invalid proxy URL)"
PROXY_URL_MAX = 2048
NO_PROXY_MAX = 8192
_NO_PROXY_ITEM = re.compile(r"^[A-Za-z0-9._*:/\[\]%-]{1,255}$")


def check_proxy_url(value: Any) -> str:
    """``value`` as a proxy URL (scheme and host lower-cased, no trailing
    slash), or "" (direct).  Raises ValueError with a one-line reason."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if not value:
        return ""
    if len(value) > PROXY_URL_MAX:
        raise ValueError(f"must be at most {PROXY_URL_MAX} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain whitespace or control characters")
    if "\\" in value:
        raise ValueError("must not contain backslashes")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ValueError("is not a valid URL (http://user:password@host:3128)") from None
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES or "://" not in value:
        raise ValueError("must start with http://, socks5:// or socks5h://")
    if not parts.hostname:
        raise ValueError("must name the proxy host (http://host:3128)")
    if port == 0:
        raise ValueError("has an invalid port")
    if parts.path not in ("", "/") or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("must be scheme://[user:password@]host:port with nothing after the port")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    return f"{scheme}://{userinfo}{at}{hostport.lower()}"


def proxy_password(url: Optional[str]) -> str:
    """The password part of a proxy URL ("" without one)."""
    if not url:
        return ""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # not a URL (a row written by hand): nothing to show or keep
        return ""
    userinfo, at, _ = netloc.rpartition("@")
    return userinfo.partition(":")[2] if at else ""


def with_proxy_password(url: str, password: str) -> str:
    """``url`` (with a user) with its password replaced by ``password``."""
    parts = urlsplit(url)
    userinfo, _at, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{parts.scheme}://{user}:{password}@{hostport}"


def mask_proxy_url(url: Optional[str]) -> Optional[str]:
    """``url`` with its password shown as ``****`` (None and "" unchanged; a
    value that is no URL as a placeholder that shows nothing of it)."""
    if not url:
        return url
    try:
        check_proxy_url(url)
    except ValueError:  # a row written by hand: it might hold a password anywhere
        return INVALID
    if not proxy_password(url):
        return url
    return with_proxy_password(url, MASK)


def check_no_proxy(value: Any) -> str:
    """``no_proxy``: host names, ``.domain`` suffixes, IP addresses, CIDRs (each
    optionally ``:port``) or ``*``, separated by commas or spaces; returned
    comma-separated.  Raises ValueError with a one-line reason."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value) > NO_PROXY_MAX:
        raise ValueError(f"must be at most {NO_PROXY_MAX} characters")
    items = [x for x in re.split(r"[,\s]+", value) if x]
    for item in items:
        if not _NO_PROXY_ITEM.match(item):
            raise ValueError(f"{item[:60]!r} is not a host name, domain, IP address or CIDR")
    return ",".join(items)


__all__ = ["MASK", "PROXY_SCHEMES", "check_no_proxy", "check_proxy_url", "mask_proxy_url",
           "proxy_password", "with_proxy_password"]
