"""``zmirror registry list|show|add|remove|enable|disable|set``: the upstream
registries and their connection settings.

Input is checked by the admin API's own field definitions and checks
(:data:`zmirror.admin.registries.REGISTRY_FIELDS`, ``resolve_settings``,
``settings_problems``), so the CLI and ``/api/registries`` accept and refuse the
same values with the same words; rows are written through the server's
:class:`~zmirror.db.registries.RegistryStore`, so a running server picks the
change up.  Secrets (the upstream password, a proxy URL with a password, the
client key) are read from stdin or a file, and shown as the API shows them:
``has_password``, ``has_client_key``, the proxy password as ``****``
(docs/design/cli.md)."""

from __future__ import annotations

import re
from contextlib import closing
from typing import Any

from zmirror.admin.registries import REGISTRY_FIELDS, REGISTRY_UPDATE_FIELDS, registry_out
from zmirror.admin.registrysettings import resolve_settings, settings_problems
from zmirror.admin.validate import Invalid, check
from zmirror.cli.common import CLIError, WallClock, audit, load, open_database, out
from zmirror.cli.rows import Inputs, applied_hint, as_cli_errors, find_row, print_json, print_table, yes_no
from zmirror.db.registries import RegistryStore
from zmirror.db.sync import result

WHAT = "registry"
# what the API answers of a row that the CLI cannot know (the running server's view)
SERVER_ONLY = ("health", "rate_limit")
# --proxy words for the API's null and ""
PROXY_DEFAULT, PROXY_DIRECT = "default", "direct"

_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def registry_json(row: dict) -> dict:
    """A row as ``GET /api/registries/{id}`` answers it (secrets masked), without
    the running server's health and rate limit."""
    obj = registry_out(row, {})
    for key in SERVER_ONLY:
        obj.pop(key, None)
    return obj


def _number(raw: str) -> Any:
    """An integer option as the API would get it: a number, else the text (which
    the field's check refuses in the API's words)."""
    return int(raw) if _INTEGER.fullmatch(raw.strip()) else raw


def _flag(raw: str) -> Any:
    word = raw.strip().lower()
    return True if word in _TRUE else False if word in _FALSE else raw


def _proxy(raw: str) -> Any:
    word = raw.strip()
    return None if word == PROXY_DEFAULT else "" if word == PROXY_DIRECT else raw


def _read_nonempty(inputs: Inputs, source: str, option: str, clear: str) -> str:
    text = inputs.text(source, option)
    if not text.strip():
        where = "stdin" if source == "-" else source
        hint = f" (to remove the stored value: {clear})" if clear else ""
        raise CLIError(f"{option}: {where} is empty{hint}")
    return text


def _body(args, body: dict) -> dict:
    """The JSON body of the API request the options make (values read from
    files and stdin; nothing is checked here)."""
    inputs = Inputs()
    updating = args.registry_command in ("set", "update")
    for key in ("url", "namespace", "username", "server_name"):
        if getattr(args, key, None) is not None:
            body[key] = getattr(args, key)
    if getattr(args, "new_name", None) is not None:
        body["name"] = args.new_name
    if args.priority is not None:
        body["priority"] = _number(args.priority)
    if args.tls_verify is not None:
        body["tls_verify"] = _flag(args.tls_verify)
    if args.password_stdin:
        body["password"] = inputs.line("--password-stdin")
        if not body["password"]:
            raise CLIError("--password-stdin: no password on stdin"
                           + (" (to remove the stored one: --clear-password)" if updating else ""))
    elif args.password_file is not None:
        body["password"] = _read_nonempty(inputs, args.password_file, "--password-file",
                                          "--clear-password" if updating else "").rstrip("\r\n")
    if args.proxy is not None:
        body["proxy"] = _proxy(args.proxy)
    elif args.proxy_file is not None:
        body["proxy"] = _read_nonempty(inputs, args.proxy_file, "--proxy-file",
                                       f"--proxy {PROXY_DEFAULT}" if updating else "").strip()
    for key in ("ca", "client_cert", "client_key"):
        option = "--" + key.replace("_", "-")
        source = getattr(args, key + "_file")
        if source is not None:
            body[key] = _read_nonempty(inputs, source, option + "-file",
                                       "--clear-" + option[2:] if updating else "")
    for key in ("password", "ca", "client_cert", "client_key"):
        if getattr(args, "clear_" + key, False):
            body[key] = ""
    return body


def _rows(db) -> tuple[RegistryStore, list[dict]]:
    store = RegistryStore(db, WallClock())
    return store, result(store.list())


def _find(rows: list[dict], args) -> dict:
    return find_row(rows, args.registry, what=WHAT, name_key="name",
                    name_of=lambda s: s.strip().lower(), by=args.by)


def _summary(row: dict) -> str:
    return (f"{row['name']} ({row['url']}, namespace {row['namespace']}, priority {row['priority']}"
            f"{'' if row['enabled'] else ', disabled'})")


def _done(cfg, args, verb: str, row: dict) -> int:
    if args.json:
        print_json(registry_json(row))
    else:
        out(f"{WHAT} {row['id']} {verb}: {_summary(row)}")
    applied_hint(cfg)
    return 0


def cmd_list(args) -> int:
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        rows = [registry_json(r) for r in _rows(db)[1]]
    if args.json:
        print_json(rows)
    elif not rows:
        out("no registries / 没有上游仓库")
    else:
        print_table(("ID", "NAME", "NAMESPACE", "PRIORITY", "ENABLED", "USERNAME", "URL"),
                    [(r["id"], r["name"], r["namespace"], r["priority"], yes_no(r["enabled"]),
                      r["username"] or "-", r["url"]) for r in rows], right=(0, 3))
    return 0


def _proxy_text(proxy: Any) -> str:
    if proxy is None:
        return f"{PROXY_DEFAULT} ([upstream] proxy, or the environment's)"
    return proxy or PROXY_DIRECT


def cmd_show(args) -> int:
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        r = registry_json(_find(_rows(db)[1], args))
    if args.json:
        print_json(r)
        return 0
    lines = [("id", r["id"]), ("name", r["name"]), ("url", r["url"]), ("namespace", r["namespace"]),
             ("priority", r["priority"]), ("enabled", yes_no(r["enabled"])),
             ("username", r["username"] or "-"), ("password", "set" if r["has_password"] else "-"),
             ("proxy", _proxy_text(r["proxy"])), ("tls_verify", yes_no(r["tls_verify"])),
             ("ca", "PEM" if r["ca"] else "-"), ("client_cert", "PEM" if r["client_cert"] else "-"),
             ("client_key", "set" if r["has_client_key"] else "-"),
             ("server_name", r["server_name"] or "-")]
    for key, value in lines:
        out(f"{key + ':':<13}{value}")
    return 0


def cmd_add(args) -> int:
    cfg = load(args)
    body = _body(args, {"name": args.name, "url": args.url, "enabled": not args.disabled})
    with as_cli_errors(WHAT):
        # as POST /api/registries
        values = check(body, REGISTRY_FIELDS)
        resolve_settings(values, None)
        settings_problems(values)
        with closing(open_database(cfg)) as db:
            row = result(RegistryStore(db, WallClock()).create(**values))
            audit(db, cfg, "registry.create", f"registries/{row['id']}", after=registry_json(row))
    return _done(cfg, args, "added", row)


def _update(args, body: dict, verb: str) -> int:
    """The ``PUT /api/registries/{id}`` of ``body`` on the registry ``args.registry``."""
    cfg = load(args)
    with as_cli_errors(WHAT):
        values = check(body, REGISTRY_UPDATE_FIELDS, partial=True)
        if not values:
            raise Invalid("nothing to update", {})
        with closing(open_database(cfg)) as db:
            store, rows = _rows(db)
            stored = _find(rows, args)
            resolve_settings(values, stored)
            settings_problems({**stored, **values}, changed=values)
            row = result(store.update(stored["id"], **values))
            audit(db, cfg, "registry.update", f"registries/{row['id']}",
                  before=registry_json(stored), after=registry_json(row))
    return _done(cfg, args, verb, row)


def cmd_set(args) -> int:
    body = _body(args, {})
    if not body:
        raise CLIError("nothing to update: give at least one option (zmirror registry set --help)")
    return _update(args, body, "updated")


def cmd_enable(args) -> int:
    return _update(args, {"enabled": True}, "enabled")


def cmd_disable(args) -> int:
    return _update(args, {"enabled": False}, "disabled")


def cmd_remove(args) -> int:
    cfg = load(args)
    with as_cli_errors(WHAT), closing(open_database(cfg)) as db:
        store, rows = _rows(db)
        row = _find(rows, args)
        result(store.delete(row["id"]))
        audit(db, cfg, "registry.delete", f"registries/{row['id']}", before=registry_json(row))
    if args.json:
        print_json(registry_json(row))
    else:
        out(f"{WHAT} {row['id']} removed: {row['name']}")
    applied_hint(cfg)
    return 0


def _settings_options(p, *, updating: bool) -> None:
    """The options of the API's fields besides name, url and enabled."""
    p.add_argument("--namespace", help="the registry host it mirrors (default docker.io)")
    p.add_argument("--priority", help="0-1000000, lower is tried first (default 100)")
    p.add_argument("--username", help="the upstream account")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password-stdin", action="store_true", help="read the upstream password from stdin")
    pw.add_argument("--password-file", metavar="FILE", help="read the upstream password from FILE ('-': stdin)")
    px = p.add_mutually_exclusive_group()
    px.add_argument("--proxy", help=f"http(s)/socks5(h) proxy URL, '{PROXY_DIRECT}', or '{PROXY_DEFAULT}' "
                                    "(the [upstream] proxy); put one with a password in --proxy-file")
    px.add_argument("--proxy-file", metavar="FILE", help="read the proxy URL from FILE ('-': stdin)")
    p.add_argument("--tls-verify", metavar="true|false", help="check the upstream's certificate (default true)")
    pems = {}
    for key, text in (("ca", "PEM CA bundle trusted besides the system's"),
                      ("client-cert", "PEM client certificate (chain) for mTLS"),
                      ("client-key", "unencrypted PEM key of the client certificate")):
        g = pems[key] = p.add_mutually_exclusive_group()
        g.add_argument(f"--{key}-file", metavar="FILE", help=f"read the {text} from FILE ('-': stdin)")
    p.add_argument("--server-name", help='TLS server name to send and check instead of the URL\'s host ("" clears)')
    if updating:
        pw.add_argument("--clear-password", action="store_true", help="remove the stored password")
        for key, group in pems.items():
            group.add_argument(f"--clear-{key}", action="store_true", help=f"remove the stored {key}")


def add_parser(sub) -> None:
    r = sub.add_parser("registry", help="upstream registries / 上游仓库",
                       description="Registries are named by id or by name (any case).")
    rsub = r.add_subparsers(dest="registry_command", required=True)

    def command(name, func, text, *, target=True, aliases=()):
        p = rsub.add_parser(name, help=text, aliases=list(aliases))
        if target:
            p.add_argument("registry", metavar="ID|NAME", help="the registry's id or name")
            p.add_argument("--by", choices=("id", "name"), help="read ID|NAME as this only (when a number is both)")
        p.add_argument("--json", action="store_true", help="print as the admin API answers (secrets masked)")
        p.set_defaults(func=func)
        return p

    command("list", cmd_list, "list registries / 列出上游仓库", target=False)
    command("show", cmd_show, "one registry / 查看上游仓库")
    a = command("add", cmd_add, "add a registry / 新增上游仓库", target=False)
    a.add_argument("name", metavar="NAME", help="1-100 characters, unique in any case")
    a.add_argument("url", metavar="URL", help="http(s)://host[:port][/path]")
    a.add_argument("--disabled", action="store_true", help="add it disabled")
    _settings_options(a, updating=False)
    s = command("set", cmd_set, "change a registry / 修改上游仓库", aliases=("update",))
    s.add_argument("--name", dest="new_name", help="the new name")
    s.add_argument("--url", help="the new URL")
    _settings_options(s, updating=True)
    command("enable", cmd_enable, "enable a registry / 启用上游仓库")
    command("disable", cmd_disable, "disable a registry / 禁用上游仓库")
    command("remove", cmd_remove, "remove a registry / 删除上游仓库")
