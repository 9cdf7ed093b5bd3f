"""``zmirror whitelist list|show|add|remove|enable|disable|set``: the
anonymous-pull whitelist, checked by the admin API's own field definitions
(:data:`zmirror.admin.whitelists.WHITELIST_FIELDS`) and written through the
server's :class:`~zmirror.db.whitelists.WhitelistStore`, so a running server
picks the change up (docs/design/cli.md)."""

from __future__ import annotations

import functools
from contextlib import closing

from zmirror.admin.http import store_call
from zmirror.admin.validate import Invalid, check
from zmirror.admin.whitelists import WHITELIST_FIELDS, WHITELIST_UPDATE_FIELDS, whitelist_out
from zmirror.auth.whitelist import InvalidPrefix, normalize_prefix
from zmirror.cli.common import CLIError, WallClock, audit, load, open_database, out
from zmirror.cli.rows import applied_hint, as_cli_errors, find_row, print_json, print_table, yes_no
from zmirror.db.sync import result
from zmirror.db.whitelists import WhitelistStore

WHAT = "whitelist entry"


def _prefix_key(text: str) -> str:
    """A prefix as the store holds it (``docker.io/x`` is ``x``), to find an entry by."""
    try:
        return normalize_prefix(text)
    except InvalidPrefix:
        return text.strip()


def _find(store: WhitelistStore, args) -> dict:
    rows = result(store.list())
    return find_row(rows, args.entry, what=WHAT, name_key="prefix", name_of=_prefix_key, by=args.by)


def _done(cfg, args, verb: str, row: dict) -> int:
    if args.json:
        print_json(whitelist_out(row))
    else:
        out(f"{WHAT} {row['id']} {verb}: {row['prefix']}{'' if row['enabled'] else ' (disabled)'}")
    applied_hint(cfg)
    return 0


def cmd_list(args) -> int:
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        rows = [whitelist_out(r) for r in result(WhitelistStore(db, WallClock()).list())]
    if args.json:
        print_json(rows)
    elif not rows:
        out("no whitelist entries / 白名单为空")
    else:
        print_table(("ID", "PREFIX", "ENABLED", "NOTE"),
                    [(r["id"], r["prefix"], yes_no(r["enabled"]), r["note"]) for r in rows])
    return 0


def cmd_show(args) -> int:
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        row = whitelist_out(_find(WhitelistStore(db, WallClock()), args))
    if args.json:
        print_json(row)
    else:
        for key in ("id", "prefix", "enabled", "note"):
            value = yes_no(row[key]) if key == "enabled" else row[key]
            out(f"{key + ':':<9}{value}")
    return 0


def cmd_add(args) -> int:
    cfg = load(args)
    body = {"prefix": args.prefix, "enabled": not args.disabled}
    if args.note is not None:
        body["note"] = args.note
    with as_cli_errors(WHAT):
        values = check(body, WHITELIST_FIELDS)
        with closing(open_database(cfg)) as db:
            row = result(store_call(WhitelistStore(db, WallClock()).create, values, "prefix"))
            audit(db, cfg, "whitelist.create", f"whitelists/{row['id']}", after=whitelist_out(row))
    return _done(cfg, args, "added", row)


def _update(args, body: dict, verb: str) -> int:
    """The ``PUT /api/whitelists/{id}`` of ``body`` on the entry ``args.entry``."""
    cfg = load(args)
    with as_cli_errors(WHAT):
        values = check(body, WHITELIST_UPDATE_FIELDS, partial=True)
        if not values:
            raise Invalid("nothing to update", {})
        with closing(open_database(cfg)) as db:
            store = WhitelistStore(db, WallClock())
            old = _find(store, args)
            wid = old["id"]
            row = result(store_call(functools.partial(store.update, wid), values, "prefix"))
            audit(db, cfg, "whitelist.update", f"whitelists/{wid}", before=whitelist_out(old),
                  after=whitelist_out(row))
    return _done(cfg, args, verb, row)


def cmd_set(args) -> int:
    body = {}
    if args.prefix is not None:
        body["prefix"] = args.prefix
    if args.note is not None:
        body["note"] = args.note
    if not body:
        raise CLIError("nothing to update: give --prefix and/or --note")
    return _update(args, body, "updated")


def cmd_enable(args) -> int:
    return _update(args, {"enabled": True}, "enabled")


def cmd_disable(args) -> int:
    return _update(args, {"enabled": False}, "disabled")


def cmd_remove(args) -> int:
    cfg = load(args)
    with as_cli_errors(WHAT), closing(open_database(cfg)) as db:
        store = WhitelistStore(db, WallClock())
        row = _find(store, args)
        result(store.delete(row["id"]))
        audit(db, cfg, "whitelist.delete", f"whitelists/{row['id']}", before=whitelist_out(row))
    if args.json:
        print_json(whitelist_out(row))
    else:
        out(f"{WHAT} {row['id']} removed: {row['prefix']}")
    applied_hint(cfg)
    return 0


def add_parser(sub) -> None:
    w = sub.add_parser("whitelist", help="anonymous-pull whitelist / 匿名拉取白名单",
                       description="Entries are named by id or by prefix (docker.io/x and x are one prefix).")
    wsub = w.add_subparsers(dest="whitelist_command", required=True)

    def command(name, func, text, *, entry=True, json=True, aliases=()):
        p = wsub.add_parser(name, help=text, aliases=list(aliases))
        if entry:
            p.add_argument("entry", metavar="ID|PREFIX", help="the entry's id or prefix")
            p.add_argument("--by", choices=("id", "prefix"),
                           help="read ID|PREFIX as this only (when a number is both)")
        if json:
            p.add_argument("--json", action="store_true", help="print the entry as the admin API answers it")
        p.set_defaults(func=func)
        return p

    command("list", cmd_list, "list the entries / 列出条目", entry=False)
    command("show", cmd_show, "one entry / 查看条目")
    a = command("add", cmd_add, "add an entry / 新增条目", entry=False)
    a.add_argument("prefix", metavar="PREFIX",
                   help="a repository name or its prefix: library/nginx, ghcr.io/owner, team/*")
    a.add_argument("--note", help="a note for admins")
    a.add_argument("--disabled", action="store_true", help="add it disabled")
    s = command("set", cmd_set, "change an entry's prefix or note / 修改条目", aliases=("update",))
    s.add_argument("--prefix", help="the new prefix")
    s.add_argument("--note", help='the new note ("" clears it)')
    command("enable", cmd_enable, "enable an entry / 启用条目")
    command("disable", cmd_disable, "disable an entry / 禁用条目")
    command("remove", cmd_remove, "remove an entry / 删除条目")
