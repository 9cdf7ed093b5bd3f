"""``zmirror user add|edit|passwd|disable|enable|list``: registry users (their
password and scopes), written and read through the server's
:class:`~zmirror.db.users.UserStore`; ``zmirror user
locked|unlock``: the login lockout's locks (accounts and addresses), read and
released in the ``lockouts`` table (:class:`~zmirror.db.lockouts.LockoutStore`),
which every running node follows within 2 s."""

from __future__ import annotations

import json
import time
from contextlib import closing
from datetime import datetime, timezone
from typing import Optional

from zmirror.auth.passwords import is_legacy_md5, make_context
from zmirror.admin.users import user_out
from zmirror.auth.scopes import validate_scopes
from zmirror.auth.users import validate_password
from zmirror.cli.common import (
    audit,
    CLIError,
    WallClock,
    load,
    open_database,
    out,
    read_password,
    reload_hint,
)
from zmirror.auth.lockout import parse_key, printable_name
from zmirror.db.errors import Conflict, InvalidField, NotFound
from zmirror.db.lockouts import LockoutStore, row_out
from zmirror.db.sync import result
from zmirror.db.users import UserStore, validate_username


def _hash_user_password(password: str) -> str:
    return make_context().hash(password)


def _validate_user(cfg, name: str, password: Optional[str] = None) -> None:
    try:
        validate_username(name, cfg.admin.username)
        if password is not None:
            validate_password(password)
    except InvalidField as e:
        raise CLIError(f"{e.field}: {e.message}") from None


def _scopes(args) -> Optional[list[str]]:
    """The normalized ``--scope`` patterns (``[]`` for ``--all-scopes``), None when neither
    was given; a bad pattern is the command's error."""
    if getattr(args, "all_scopes", False):
        return []
    if not args.scope:
        return None
    try:
        return validate_scopes(args.scope)
    except InvalidField as e:
        raise CLIError(f"{e.field}: {e.message}") from None


def _describe_scopes(scopes) -> str:
    return ", ".join(scopes) if scopes else "all / 全部"


def _store(db, cfg) -> UserStore:
    return UserStore(db, WallClock(), admin_username=cfg.admin.username)


def cmd_user_add(args) -> int:
    cfg = load(args)
    _validate_user(cfg, args.name)
    scopes = _scopes(args) or []
    with closing(open_database(cfg)) as db:
        users = _store(db, cfg)
        if result(users.find(args.name)):
            raise CLIError(f"user {args.name!r} already exists")
        password = read_password(args)
        _validate_user(cfg, args.name, password)
        password_hash = _hash_user_password(password)
        try:
            row = result(users.create_with_hash(args.name, password_hash,
                                                enabled=not args.disabled, scopes=scopes))
        except Conflict:
            raise CLIError(f"user {args.name!r} already exists") from None
        audit(db, cfg, "user.create", f"users/{row['id']}", after=user_out(row))
    out(f"user {args.name} created{' (disabled)' if args.disabled else ''}"
        f"{'; scopes: ' + _describe_scopes(scopes) if scopes else ''}")
    reload_hint(cfg)
    return 0


def _update_user(args, *, password: bool = False, enabled: Optional[bool] = None,
                 scopes: Optional[list[str]] = None):
    """Change the user ``args.name`` (its outstanding tokens stop working: the store
    moves ``updated_at``); returns the configuration."""
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        users = _store(db, cfg)
        row = result(users.find(args.name))
        if row is None:
            raise CLIError(f"no user named {args.name!r}")
        password_hash = None
        if password:
            new_password = read_password(args)
            _validate_user(cfg, row["username"], new_password)
            password_hash = _hash_user_password(new_password)
        try:
            new = result(users.update(row["id"], password_hash=password_hash, enabled=enabled,
                                      scopes=scopes))
        except NotFound:
            raise CLIError(f"no user named {args.name!r}") from None
        after = user_out(new)
        if password:
            after["password"] = "changed"  # masked by the audit trail
        audit(db, cfg, "user.update", f"users/{row['id']}", before=user_out(row), after=after)
    return cfg


def cmd_user_passwd(args) -> int:
    cfg = _update_user(args, password=True)
    out(f"password of {args.name} changed (its tokens are revoked)")
    reload_hint(cfg)
    return 0


def cmd_user_edit(args) -> int:
    scopes = _scopes(args)
    if scopes is None:
        raise CLIError("nothing to change: give --scope PATTERN (repeatable) or --all-scopes")
    cfg = _update_user(args, scopes=scopes)
    out(f"scopes of {args.name}: {_describe_scopes(scopes)} (its tokens are revoked)")
    reload_hint(cfg)
    return 0


def cmd_user_disable(args) -> int:
    cfg = _update_user(args, enabled=False)
    out(f"user {args.name} disabled")
    reload_hint(cfg)
    return 0


def cmd_user_enable(args) -> int:
    cfg = _update_user(args, enabled=True)
    out(f"user {args.name} enabled")
    reload_hint(cfg)
    return 0


def _fmt_time(t: Optional[float]) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_user_list(args) -> int:
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        rows = result(_store(db, cfg).list_with_hashes())
    users = [{"id": r["id"], "username": r["username"], "enabled": r["enabled"],
              "created_at": r["created_at"], "updated_at": r["updated_at"],
              "last_login_at": r["last_login_at"], "scopes": r["scopes"],
              "legacy_md5": is_legacy_md5(r["password_hash"])}
             for r in rows]
    if args.json:
        out(json.dumps(users, ensure_ascii=False, indent=2))
        return 0
    if not users:
        out("no users / 没有用户")
        return 0
    w = max(8, max(len(u["username"]) for u in users))
    out(f"{'ID':>5}  {'USERNAME':<{w}}  {'ENABLED':<7}  {'CREATED':<20}  {'LAST LOGIN':<20}  SCOPES")
    for u in users:
        note = "  (MD5, re-hashed at next login)" if u["legacy_md5"] else ""
        out(f"{u['id']:>5}  {u['username']:<{w}}  {'yes' if u['enabled'] else 'no':<7}  "
            f"{_fmt_time(u['created_at']):<20}  {_fmt_time(u['last_login_at']):<20}  "
            f"{' '.join(u['scopes']) if u['scopes'] else 'all'}{note}")
    return 0


def cmd_user_locked(args) -> int:
    cfg = load(args)
    now = time.time()
    with closing(open_database(cfg)) as db:
        rows = result(LockoutStore(db).locked(now))
    locks = [row_out(r, now) for r in rows]
    if args.json:
        out(json.dumps(locks, ensure_ascii=False, indent=2))
        return 0
    if not locks:
        out("nothing is locked / 没有被锁定的账号或地址")
        return 0
    w = max(8, max(len(x["name"] or "") for x in locks))
    out(f"{'KIND':<8}  {'NAME':<{w}}  {'LOGIN':<8}  {'FAILURES':>8}  {'RETRY IN':>8}  ID")
    for x in locks:
        out(f"{x['kind']:<8}  {x['name'] or '-':<{w}}  {x['login'] or '-':<8}  "
            f"{x['failures']:>8}  {str(x['retry_after']) + 's':>8}  {x['id']}")
    return 0


def cmd_user_unlock(args) -> int:
    cfg = load(args)
    target = args.name.strip()
    if not target or len(target) > 200 or printable_name(target, 200) != target:
        raise CLIError("give an account name, an address or a lock's id (see `zmirror user locked`)")
    now = time.time()
    by_key = parse_key(target) is not None
    with closing(open_database(cfg)) as db:
        rows = result(LockoutStore(db).release(now, name="" if by_key else target,
                                               keys=[target] if by_key else []))
        if rows:
            audit(db, cfg, "lockout.delete", f"lockouts/{target}",
                  before=[{k: r.get(k) for k in ("kind", "name", "login")} for r in rows])
    if not rows:
        raise CLIError(f"nothing named {target!r} is locked (see `zmirror user locked`)")
    for r in rows:
        out(f"unlocked {r['kind']} {r['name'] or r['key']}"
            f"{' (' + r['login'] + ' logins)' if r['login'] else ''}")
    out("running servers lift the lock within 2 s / 运行中的服务在 2 秒内解除锁定")
    return 0


SCOPE_HELP = ("a repository pattern the user may pull (repeatable): library/nginx, "
              "docker.io/library/*, ghcr.io/myorg/** ('*' within a component, '**' for "
              "components); none: everything / 可拉取的仓库模式（可重复）；不设则不限")


def _scope_arguments(parser, *, clear: bool) -> None:
    if clear:
        g = parser.add_mutually_exclusive_group()
        g.add_argument("--scope", action="append", default=[], metavar="PATTERN", help=SCOPE_HELP)
        g.add_argument("--all-scopes", action="store_true",
                       help="remove every scope: the user may pull everything / 清除范围（不限）")
    else:
        parser.add_argument("--scope", action="append", default=[], metavar="PATTERN", help=SCOPE_HELP)


def add_parser(sub) -> None:
    u = sub.add_parser("user", help="registry users / 仓库用户")
    usub = u.add_subparsers(dest="user_command", required=True)
    a = usub.add_parser("add", help="create a user / 新建用户")
    a.add_argument("name")
    a.add_argument("--stdin", "--password-stdin", action="store_true", help="read the password from stdin")
    a.add_argument("--disabled", action="store_true", help="create it disabled")
    _scope_arguments(a, clear=False)
    a.set_defaults(func=cmd_user_add)
    ed = usub.add_parser("edit", help="change a user's scopes / 修改用户可拉取的范围")
    ed.add_argument("name")
    _scope_arguments(ed, clear=True)
    ed.set_defaults(func=cmd_user_edit)
    pw = usub.add_parser("passwd", help="set a user's password / 修改密码")
    pw.add_argument("name")
    pw.add_argument("--stdin", "--password-stdin", action="store_true", help="read the password from stdin")
    pw.set_defaults(func=cmd_user_passwd)
    for name, func, text in (("disable", cmd_user_disable, "disable a user / 禁用用户"),
                             ("enable", cmd_user_enable, "enable a user / 启用用户")):
        x = usub.add_parser(name, help=text)
        x.add_argument("name")
        x.set_defaults(func=func)
    ls = usub.add_parser("list", help="list users / 用户列表")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_user_list)
    lk = usub.add_parser("locked", help="accounts and addresses locked after failed logins / "
                                        "登录失败被锁定的账号和地址")
    lk.add_argument("--json", action="store_true")
    lk.set_defaults(func=cmd_user_locked)
    un = usub.add_parser("unlock", help="unlock an account or an address / 解除锁定")
    un.add_argument("name", help="an account name, an address, or a lock's id")
    un.set_defaults(func=cmd_user_unlock)
