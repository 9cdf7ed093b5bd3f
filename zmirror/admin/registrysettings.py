"""A registry's connection settings in the admin API: the egress ``proxy`` and
the TLS fields (``tls_verify``, ``ca``, ``client_cert``, ``client_key``,
``server_name``) — checked, their secrets masked in answers, and the masked or
left-out secrets of an update resolved to the stored ones.

``proxy``: null = the ``[upstream]`` default (or the environment's), "" =
direct, else ``http://[user:pass@]host:port``, ``socks5://…``, ``socks5h://…``;
answered with its password as ``****``, and ``****`` sent back keeps the
stored password.  ``client_key`` is write-only (``has_client_key``); an update
without it keeps it, "" clears it.
"""

from __future__ import annotations

from typing import Any, Optional

from zmirror.admin.validate import Field, Invalid, boolean, invalid, string
from zmirror.config.proxyurl import MASK, check_proxy_url, mask_proxy_url, proxy_password, with_proxy_password
from zmirror.upstream.tlsconfig import MAX_PEM, server_name_error, tls_field_errors

TLS_FIELDS = ("tls_verify", "ca", "client_cert", "client_key", "server_name")


def proxy_field(x: Any) -> Optional[str]:
    """null (the default proxy) or a proxy URL in its normal form ("" =
    direct): :func:`~zmirror.config.proxyurl.check_proxy_url`."""
    return None if x is None else check_proxy_url(x)


def pem_field(x: Any) -> str:
    """A PEM text ("" = none), surrounding blank space dropped; what it holds
    is checked with the other TLS fields (:func:`tls_problems`)."""
    x = string(0, MAX_PEM)(x)
    return x + "\n" if x else ""


def server_name_field(x: Any) -> str:
    """"" (the URL's host) or a DNS name or IP address."""
    x = string(0, 253)(x)
    if x:
        problem = server_name_error(x)
        if problem:
            raise ValueError(problem)
    return x


REGISTRY_SETTINGS_FIELDS = {
    "proxy": Field(proxy_field),  # absent on create: null
    "tls_verify": Field(boolean, default=True),
    "ca": Field(pem_field, default=""),
    "client_cert": Field(pem_field, default=""),
    "client_key": Field(pem_field, default=""),
    "server_name": Field(server_name_field, default=""),
}


def registry_settings_out(row: dict) -> dict:
    """The settings of a ``registries`` row as the API answers them (no secrets)."""
    return {
        "proxy": mask_proxy_url(row.get("proxy")),
        "tls_verify": bool(row.get("tls_verify", True)),
        "ca": row.get("ca") or "",
        "client_cert": row.get("client_cert") or "",
        "has_client_key": bool(row.get("client_key")),
        "server_name": row.get("server_name") or "",
    }


def resolve_settings(values: dict, stored: Optional[dict]) -> None:
    """A proxy password sent back masked becomes ``stored``'s (in place);
    with none stored that is an error.  (A left-out ``client_key`` is simply
    not updated.)"""
    proxy = values.get("proxy")
    if proxy and proxy_password(proxy) == MASK:
        kept = proxy_password((stored or {}).get("proxy"))
        if not kept:
            raise Invalid("invalid input: proxy password is masked",
                          {"proxy": f"the password is masked ({MASK}): enter it"})
        values["proxy"] = with_proxy_password(proxy, kept)


def tls_problems(row: dict) -> dict[str, str]:
    """What is wrong with the TLS settings of ``row`` (merged: what would be
    stored), by field ({} when they can be used); never quotes the PEMs."""
    return tls_field_errors(ca=row.get("ca") or "", client_cert=row.get("client_cert") or "",
                            client_key=row.get("client_key") or "", server_name=row.get("server_name") or "")


def settings_problems(row: dict, changed: Optional[dict] = None) -> None:
    """Raise :class:`Invalid` for TLS settings of ``row`` that cannot be used
    (checked only when ``changed``, the update's values, touches them)."""
    if changed is not None and not any(k in changed for k in TLS_FIELDS):
        return
    problems = tls_problems(row)
    if problems:
        raise invalid(problems)


__all__ = ["REGISTRY_SETTINGS_FIELDS", "TLS_FIELDS", "registry_settings_out", "resolve_settings",
           "settings_problems", "tls_problems"]
