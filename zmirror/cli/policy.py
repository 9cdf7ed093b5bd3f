"""``zmirror policy list|add|remove|enable|disable``: the image policy's rules, checked by
the admin API's own field definitions (:data:`zmirror.admin.policy.RULE_FIELDS`) and
written through the server's :class:`~zmirror.db.policyrules.PolicyRuleStore`, so a
running server picks the change up (docs/design/auth.md "The image policy")."""

from __future__ import annotations

import functools
from contextlib import closing

from zmirror.admin.http import store_call
from zmirror.admin.policy import RULE_FIELDS, RULE_UPDATE_FIELDS, rule_out
from zmirror.admin.validate import check
from zmirror.cli.common import CLIError, WallClock, load, open_database, out
from zmirror.cli.rows import applied_hint, as_cli_errors, print_json, print_table, yes_no
from zmirror.db.errors import NotFound
from zmirror.db.policyrules import PolicyRuleStore
from zmirror.db.sync import result

WHAT = "policy rule"


def _id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 12 or int(raw) < 1:
        raise CLIError(f"{WHAT} ids are positive integers, not {raw[:40]!r}")
    return int(raw)


def _done(cfg, args, verb: str, row: dict) -> int:
    if args.json:
        print_json(rule_out(row))
    else:
        out(f"{WHAT} {row['id']} {verb}: {row['action']} {row['pattern']}"
            f"{'' if row['enabled'] else ' (disabled)'}")
    applied_hint(cfg)
    return 0


def cmd_list(args) -> int:
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        rows = [rule_out(r) for r in result(PolicyRuleStore(db, WallClock()).list())]
    if args.json:
        print_json(rows)
    elif not rows:
        out("no policy rules: everything may be pulled / 无策略规则：允许拉取所有镜像")
    else:
        print_table(("ID", "POS", "ACTION", "PATTERN", "ENABLED", "NOTE"),
                    [(r["id"], r["position"], r["action"], r["pattern"], yes_no(r["enabled"]),
                      r["note"]) for r in rows])
    return 0


def cmd_add(args) -> int:
    cfg = load(args)
    body = {"action": args.action, "pattern": args.pattern, "enabled": not args.disabled}
    if args.note is not None:
        body["note"] = args.note
    if args.position is not None:
        body["position"] = args.position
    with as_cli_errors(WHAT):
        values = check(body, RULE_FIELDS)
        action, pattern = values.pop("action"), values.pop("pattern")
        with closing(open_database(cfg)) as db:
            store = PolicyRuleStore(db, WallClock())
            row = result(store_call(functools.partial(store.create, action, pattern), values, "pattern"))
    return _done(cfg, args, "added", row)


def _update(args, body: dict, verb: str) -> int:
    cfg = load(args)
    rid = _id(args.rule)
    with as_cli_errors(WHAT):
        values = check(body, RULE_UPDATE_FIELDS, partial=True)
        with closing(open_database(cfg)) as db:
            store = PolicyRuleStore(db, WallClock())
            try:
                row = result(store_call(functools.partial(store.update, rid), values, "pattern"))
            except NotFound:
                raise CLIError(f"no {WHAT} {rid}") from None
    return _done(cfg, args, verb, row)


def cmd_enable(args) -> int:
    return _update(args, {"enabled": True}, "enabled")


def cmd_disable(args) -> int:
    return _update(args, {"enabled": False}, "disabled")


def cmd_remove(args) -> int:
    cfg = load(args)
    rid = _id(args.rule)
    with as_cli_errors(WHAT), closing(open_database(cfg)) as db:
        store = PolicyRuleStore(db, WallClock())
        try:
            row = result(store.get(rid))
            result(store.delete(rid))
        except NotFound:
            raise CLIError(f"no {WHAT} {rid}") from None
    if args.json:
        print_json(rule_out(row))
    else:
        out(f"{WHAT} {rid} removed: {row['action']} {row['pattern']}")
    applied_hint(cfg)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("policy", help="image policy rules / 镜像策略规则",
                       description="allow/deny rules on reference patterns, per namespace: a matching "
                                   "deny refuses; a namespace with allow rules allows only what they match.")
    psub = p.add_subparsers(dest="policy_command", required=True)

    def command(name, func, text, *, rule=True):
        c = psub.add_parser(name, help=text)
        if rule:
            c.add_argument("rule", metavar="ID", help="the rule's id")
        c.add_argument("--json", action="store_true", help="print as the admin API answers")
        c.set_defaults(func=func)
        return c

    command("list", cmd_list, "list the rules / 列出规则", rule=False)
    a = command("add", cmd_add, "add a rule / 新增规则", rule=False)
    a.add_argument("action", choices=("allow", "deny"))
    a.add_argument("pattern", metavar="PATTERN",
                   help="library/*, ghcr.io/org/**, *:latest, library/nginx@sha256:...")
    a.add_argument("--note", help="a note for admins")
    a.add_argument("--position", type=int, help="its place in the list (default: last)")
    a.add_argument("--disabled", action="store_true", help="add it disabled")
    command("enable", cmd_enable, "enable a rule / 启用规则")
    command("disable", cmd_disable, "disable a rule / 禁用规则")
    command("remove", cmd_remove, "remove a rule / 删除规则")
