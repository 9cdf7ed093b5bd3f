"""``zmirror retention rules|add|edit|remove|pins|pin|unpin|dry-run|run``: retention
rules per namespace and pins, checked by the admin API's own field definitions
(:mod:`zmirror.admin.retention`) and written through the server's
:class:`~zmirror.db.retention.RetentionStore`; the dry run and the run plan with
the server's planner (:mod:`zmirror.cache.retentionpass`) on the database and the
node's blob index.  ``run`` needs the cache directory: with the server running,
its pass runs every 10 minutes (or ``POST /api/cache/retention/run``)."""

from __future__ import annotations

import functools
import sqlite3
from contextlib import closing
from typing import Any

from zmirror.admin.http import store_call
from zmirror.admin.retention import (PIN_FIELDS, RULE_FIELDS, RULE_UPDATE_FIELDS, _limits_given, pin_out,
                                     rule_out)
from zmirror.admin.validate import check
from zmirror.cache.blobindex import blob_relpath, delete_blob_rows, delete_repo_rows
from zmirror.cache.dirlock import CacheDirInUse, CacheDirLock
from zmirror.cache.download import silent_unlink
from zmirror.cache.index import index_path
from zmirror.cache.pins import InvalidPin, parse_pin
from zmirror.cache.retention import BlobView, Rule, human_size
from zmirror.cache.retentionpass import RetentionPass
from zmirror.cli.common import CLIError, WallClock, audit, err, load, open_database, out
from zmirror.cli.rows import as_cli_errors, find_row, print_json, print_table, yes_no
from zmirror.db.engine import is_postgresql
from zmirror.db.retention import RetentionStore
from zmirror.db.sqlite import configure
from zmirror.db.sync import SyncDatabase, result

RULE = "retention rule"
PIN = "pin"


def _size(n: Any) -> str:
    return "-" if n is None else human_size(n)


def _days(n: Any) -> str:
    return "-" if n is None else str(n)


def _print_rule(args, cfg, verb: str, row: dict) -> int:
    if args.json:
        print_json(rule_out(row))
    else:
        out(f"{RULE} {row['id']} {verb}: {row['namespace']} (not pulled within {_days(row['max_age_days'])}"
            f" days, quota {_size(row['max_size'])}){'' if row['enabled'] else ' (disabled)'}")
    applied_hint_retention(cfg)
    return 0


def applied_hint_retention(cfg) -> None:
    who = "every running node applies" if is_postgresql(cfg) else "a running server applies"
    err(f"note: {who} the rules and pins at its next retention pass (every 10 minutes).")


def _ns_key(text: str) -> str:
    return text.strip().lower()


def _pattern_key(text: str) -> str:
    try:
        return parse_pin(text).pattern
    except InvalidPin:
        return text.strip()


def _limit(value: Any, what: str):
    """A --max-age-days / --max-size value: "none" clears it."""
    if value is None:
        return None
    if value.strip().lower() in ("none", "off", "-"):
        return "clear"
    if what == "days":
        try:
            return int(value)
        except ValueError:
            return value  # refused by the field's own check
    return int(value) if value.strip().isdigit() else value.strip()


def cmd_rules(args) -> int:
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        rows = [rule_out(r) for r in result(RetentionStore(db, WallClock()).rules())]
    if args.json:
        print_json({"rules": rows, "max_size": cfg.cache.max_size})
        return 0
    if not rows:
        out("no retention rules / 没有保留规则")
    else:
        print_table(("ID", "NAMESPACE", "MAX AGE (DAYS)", "QUOTA", "ENABLED", "NOTE"),
                    [(r["id"], r["namespace"], _days(r["max_age_days"]), _size(r["max_size"]),
                      yes_no(r["enabled"]), r["note"]) for r in rows])
    out(f"global max_size ([cache] max_size): {human_size(cfg.cache.max_size)}")
    return 0


def cmd_add(args) -> int:
    cfg = load(args)
    body: dict = {"namespace": args.namespace, "enabled": not args.disabled}
    for key, value, what in (("max_age_days", args.max_age_days, "days"), ("max_size", args.max_size, "size")):
        v = _limit(value, what)
        if v is not None and v != "clear":
            body[key] = v
    if args.note is not None:
        body["note"] = args.note
    with as_cli_errors(RULE):
        values = check(body, RULE_FIELDS)
        _limits_given(values)
        with closing(open_database(cfg)) as db:
            row = result(store_call(RetentionStore(db, WallClock()).create_rule, values, "namespace"))
            audit(db, cfg, "cache.rule.create", f"cache/rules/{row['id']}", after=rule_out(row))
    return _print_rule(args, cfg, "added", row)


def _find_rule(store: RetentionStore, args) -> dict:
    return find_row(result(store.rules()), args.rule, what=RULE, name_key="namespace", name_of=_ns_key)


def cmd_edit(args) -> int:
    cfg = load(args)
    body: dict = {}
    for key, value, what in (("max_age_days", args.max_age_days, "days"), ("max_size", args.max_size, "size")):
        v = _limit(value, what)
        if v is not None:
            body[key] = None if v == "clear" else v
    if args.namespace is not None:
        body["namespace"] = args.namespace
    if args.enabled is not None:
        body["enabled"] = args.enabled
    if args.note is not None:
        body["note"] = args.note
    if not body:
        raise CLIError("nothing to change: give --max-age-days, --max-size, --namespace, --enable, "
                       "--disable or --note")
    with as_cli_errors(RULE):
        values = check(body, RULE_UPDATE_FIELDS, partial=True)
        with closing(open_database(cfg)) as db:
            store = RetentionStore(db, WallClock())
            current = _find_rule(store, args)
            _limits_given(values, current)
            row = result(store_call(functools.partial(store.update_rule, current["id"]), values, "namespace"))
            audit(db, cfg, "cache.rule.update", f"cache/rules/{row['id']}", before=rule_out(current),
                  after=rule_out(row))
    return _print_rule(args, cfg, "updated", row)


def cmd_remove(args) -> int:
    cfg = load(args)
    with as_cli_errors(RULE), closing(open_database(cfg)) as db:
        store = RetentionStore(db, WallClock())
        row = _find_rule(store, args)
        result(store.delete_rule(row["id"]))
        audit(db, cfg, "cache.rule.delete", f"cache/rules/{row['id']}", before=rule_out(row))
    if args.json:
        print_json(rule_out(row))
    else:
        out(f"{RULE} {row['id']} removed: {row['namespace']}")
    return 0


def cmd_pins(args) -> int:
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        rows = [pin_out(r) for r in result(RetentionStore(db, WallClock()).pins())]
    if args.json:
        print_json({"pins": rows})
    elif not rows:
        out("no pins / 没有固定的镜像")
    else:
        print_table(("ID", "PATTERN", "SOURCE", "NOTE"), [(r["id"], r["pattern"], r["source"], r["note"])
                                                          for r in rows])
    return 0


def cmd_pin(args) -> int:
    cfg = load(args)
    body = {"pattern": args.pattern}
    if args.note is not None:
        body["note"] = args.note
    with as_cli_errors(PIN):
        values = check(body, PIN_FIELDS)
        with closing(open_database(cfg)) as db:
            row = result(store_call(RetentionStore(db, WallClock()).create_pin, values, "pattern"))
            audit(db, cfg, "cache.pin.create", f"cache/pins/{row['id']}", after=pin_out(row))
    if args.json:
        print_json(pin_out(row))
    else:
        out(f"{PIN} {row['id']} added: {row['pattern']}")
    applied_hint_retention(cfg)
    return 0


def cmd_unpin(args) -> int:
    cfg = load(args)
    with as_cli_errors(PIN), closing(open_database(cfg)) as db:
        store = RetentionStore(db, WallClock())
        row = find_row(result(store.pins()), args.pin, what=PIN, name_key="pattern", name_of=_pattern_key)
        result(store.delete_pin(row["id"]))
        audit(db, cfg, "cache.pin.delete", f"cache/pins/{row['id']}", before=pin_out(row))
    if args.json:
        print_json(pin_out(row))
    else:
        out(f"{PIN} {row['id']} removed: {row['pattern']}")
    return 0


# -- the dry run and the run, outside the server ---------------------------------------

class _Manifests:
    """The manifest cache's rows for the pass (no memory copies here)."""

    def __init__(self, db):
        self.db = db

    async def ready(self):
        return None

    async def flush_pulls(self):
        return None

    def pulled_since(self, since, **_kw) -> bool:
        return False

    def forget_retained(self, tags, digests) -> None:
        return None


class _Blobs:
    """The node's blob index as rows and its files (no readers: the server is not
    running for a run; a dry run cannot see the server's readers)."""

    def __init__(self, db, root, max_size: int):
        self.db = db
        self.root = root
        self.max_size = max_size
        self.pinned = None
        rows = result(db.query("SELECT digest, size, last_access FROM cache_blobs ORDER BY last_access"))
        repos: dict = {}
        for r in result(db.query("SELECT digest, repository FROM cache_blob_repos")):
            repos.setdefault(r["digest"], set()).add(r["repository"])
        self.rows = [BlobView(r["digest"], int(r["size"]), float(r["last_access"]),
                              frozenset(repos.get(r["digest"], ())), False) for r in rows]

    def views(self) -> list:
        return list(self.rows)

    async def apply_retention(self, actions) -> dict:
        deleted, pairs, freed = [], [], 0
        for a in actions:
            if a.delete:
                deleted.append(a.digest)
                freed += a.size
                silent_unlink(self.root / blob_relpath(a.digest))
            else:
                pairs.extend((a.digest, r) for r in a.drop)

        def write(txn):
            delete_blob_rows(txn, deleted)
            delete_repo_rows(txn, pairs)

        await self.db.write(write)
        return {"blobs": len(deleted), "bytes": freed, "memberships": len(pairs)}


def _index_db(cfg, main):
    """The node's blob index: the main database on SQLite, index.sqlite on PostgreSQL."""
    if not is_postgresql(cfg):
        return main, False
    path = index_path(cfg)
    if not path.is_file():
        raise CLIError(f"{path}: no blob index here (the server creates it on its first start)")
    conn = sqlite3.connect(str(path), isolation_level=None)
    configure(conn)
    return SyncDatabase(conn, path=path), True


def _print_summary(args, summary: dict, verb: str) -> None:
    if args.json:
        print_json(summary)
        return
    out(f"{verb} {summary['blobs']} blobs ({human_size(summary['bytes'])}), {summary['tags']} tags, "
        f"{summary['manifests']} manifests / 释放 {human_size(summary['bytes'])}")
    for i in summary["items"][:args.limit]:
        name = i["repository"] + (f":{i['tag']}" if i["tag"] else "")
        out(f"  {i['kind']:<4}  {human_size(i['size']):>9}  {name}  {i['digest'][:19]}  {i['reason']}")


def _with_pass(cfg, f):
    with closing(open_database(cfg)) as db:
        index, own = _index_db(cfg, db)
        try:
            store = RetentionStore(db, WallClock())
            blobs = _Blobs(index, cfg.cache_dir, cfg.cache.max_size)
            return f(RetentionPass(store, blobs, _Manifests(db), WallClock()))
        finally:
            if own:
                index.close()


def cmd_dry_run(args) -> int:
    cfg = load(args)
    rule = None
    if args.namespace is not None or args.max_age_days is not None or args.max_size is not None:
        body: dict = {"namespace": args.namespace or ""}
        for key, value, what in (("max_age_days", args.max_age_days, "days"),
                                 ("max_size", args.max_size, "size")):
            v = _limit(value, what)
            if v is not None and v != "clear":
                body[key] = v
        with as_cli_errors(RULE):
            values = check(body, RULE_FIELDS)
            _limits_given(values)
        rule = Rule(values["namespace"], values.get("max_age_days"), values.get("max_size"))
    summary = _with_pass(cfg, lambda p: result(p.dry_run(rule)))
    _print_summary(args, summary, "would remove")
    return 0


def cmd_run(args) -> int:
    cfg = load(args)
    try:
        lock = CacheDirLock.take(cfg.cache_dir)
    except CacheDirInUse:
        raise CLIError(f"{cfg.cache_dir} is in use by a running server: it applies the rules every 10 "
                       f"minutes; to run them now: POST /api/cache/retention/run") from None
    try:
        summary = _with_pass(cfg, lambda p: result(p.run()))
    finally:
        lock.release()
    _print_summary(args, summary, "removed")
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("retention", help="cache retention rules and pins / 缓存保留规则与固定",
                       description="Rules are named by id or namespace, pins by id or pattern.")
    rsub = r.add_subparsers(dest="retention_command", required=True)

    def command(name, func, text):
        p = rsub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="print what the admin API answers")
        p.set_defaults(func=func)
        return p

    def limits(p):
        p.add_argument("--max-age-days", metavar="N", help="evict what was not pulled within N days "
                       "(none: no age limit)")
        p.add_argument("--max-size", metavar="SIZE", help="the namespace's quota: bytes or 10GB, 512MiB "
                       "(none: no quota)")

    command("rules", cmd_rules, "list the rules / 列出规则")
    a = command("add", cmd_add, "add a rule for a namespace / 新增规则")
    a.add_argument("namespace", metavar="NAMESPACE", help="docker.io, ghcr.io, registry:5000, ...")
    limits(a)
    a.add_argument("--note", help="a note for admins")
    a.add_argument("--disabled", action="store_true", help="add it disabled")
    e = command("edit", cmd_edit, "change a rule / 修改规则")
    e.add_argument("rule", metavar="ID|NAMESPACE")
    limits(e)
    e.add_argument("--namespace", help="the new namespace")
    e.add_argument("--enable", dest="enabled", action="store_const", const=True, help="enable it")
    e.add_argument("--disable", dest="enabled", action="store_const", const=False, help="disable it")
    e.add_argument("--note", help='the new note ("" clears it)')
    rm = command("remove", cmd_remove, "remove a rule / 删除规则")
    rm.add_argument("rule", metavar="ID|NAMESPACE")
    command("pins", cmd_pins, "list the pins / 列出固定项")
    p = command("pin", cmd_pin, "pin images: never evicted / 固定镜像（永不清理）")
    p.add_argument("pattern", metavar="PATTERN",
                   help="library/nginx:1.27, ghcr.io/o/img@sha256:..., library/redis, ghcr.io/o/**")
    p.add_argument("--note", help="a note for admins")
    u = command("unpin", cmd_unpin, "remove a pin / 取消固定")
    u.add_argument("pin", metavar="ID|PATTERN")
    d = command("dry-run", cmd_dry_run, "what the rules would remove now / 预演清理")
    d.add_argument("--namespace", help="plan only this (unsaved) rule: its namespace")
    limits(d)
    d.add_argument("--limit", type=int, default=20, help="items listed (default 20)")
    rr = command("run", cmd_run, "apply the rules now (server stopped) / 立即清理（需停止服务）")
    rr.add_argument("--limit", type=int, default=20, help="items listed (default 20)")


__all__ = ["add_parser"]
