"""``zmirror cache show|purge|invalidate``: the cache figures every node wrote
with its heartbeat and the shared manifest rows; purges and invalidations as a
row of ``cache_purges`` (with the shared rows' part done at once) that every
running node applies within 2 s (zmirror/cache/purge.py).  The CLI runs without
the service: the nodes' blob files are theirs to delete."""

from __future__ import annotations

import time
from contextlib import closing
from datetime import datetime, timezone
from urllib.parse import urlencode

from zmirror.admin.cache import purge_scope, repository_of, tag_of
from zmirror.admin.validate import invalid
from zmirror.cache.purge import Scope, history, record
from zmirror.cache.view import CacheView
from zmirror.cli.common import CLIError, WallClock, audit, err, load, open_database, out
from zmirror.cli.rows import as_cli_errors, print_json, print_table
from zmirror.db.engine import is_postgresql
from zmirror.db.sync import result


def _when(t) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _applied_hint(cfg) -> None:
    who = "every running node applies" if is_postgresql(cfg) else "a running server applies"
    err(f"note: {who} this to its blob files and memory within 2 s.")


def cmd_show(args) -> int:
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        view = CacheView(db, WallClock(), blobs=None, node=None, ttl=cfg.cache.manifest_ttl)
        if args.repository:
            with as_cli_errors("repository"):
                errors: dict = {}
                repo = repository_of(args.repository, errors)
                if errors:
                    raise invalid(errors)
            tags = result(view.tags(repo))
            if args.json:
                print_json({"repository": repo, "tags": tags})
            elif not tags:
                out(f"no cached tags of {repo} / 没有缓存的标签")
            else:
                print_table(("TAG", "DIGEST", "FETCHED", "LAST PULL", "FRESH"),
                            [(t["tag"], t["digest"][:19], _when(t["fetched_at"]), _when(t["last_pull"]),
                              "yes" if t["fresh"] else "no") for t in tags])
            return 0
        stats = result(view.stats())
        namespaces = result(view.namespaces())
        purges = result(db.read(history, 10))
    if args.json:
        print_json({"stats": stats, "namespaces": namespaces, "purges": purges})
        return 0
    out("nodes / 节点 (figures since each node's start, as of its last heartbeat):")
    print_table(("NODE", "SIZE", "BLOBS", "HIT RATIO", "FROM CACHE", "FROM UPSTREAM", "GETS AVOIDED",
                 "UPDATED"),
                [(n["node"], _size(n["size"]), n["entries"],
                  "-" if n["hit_ratio"] is None else f"{n['hit_ratio'] * 100:.1f}%",
                  _size(n["bytes_from_cache"]), _size(n["bytes_from_upstream"]),
                  n["manifest_gets_avoided"], _when(n["updated_at"])) for n in stats["nodes"]],
                right=(1, 2, 3, 4, 5, 6))
    out()
    out("namespaces / 命名空间 (shared manifest rows):")
    print_table(("NAMESPACE", "REPOSITORIES", "TAGS", "MANIFESTS"),
                [(n["namespace"], n["repositories"], n["tags"], n["manifests"]) for n in namespaces],
                right=(1, 2, 3))
    if purges:
        out()
        out("recent purges / 最近的清除:")
        print_table(("ID", "ACTION", "WHAT", "BY", "AT"),
                    [(p["id"], p["action"], _what(p), p["origin"], _when(p["created_at"])) for p in purges])
    return 0


def _what(p: dict) -> str:
    if p.get("digest"):
        return p["digest"]
    if p.get("repository"):
        return p["repository"] + (f":{p['tag']}" if p.get("tag") else "")
    if p.get("namespace"):
        return f"namespace {p['namespace']}"
    return "everything"


def cmd_purge(args) -> int:
    cfg = load(args)
    params = {k: v for k, v in (("namespace", args.namespace), ("repository", args.repository),
                                ("tag", args.tag), ("digest", args.digest)) if v is not None}
    if not params and not args.all:
        raise CLIError("say what to purge: --namespace, --repository [--tag], --digest, or --all")
    if params and args.all:
        raise CLIError("--all purges everything: give it alone")
    with as_cli_errors("purge"):
        scope = purge_scope(params)
    with closing(open_database(cfg)) as db:
        done = result(db.write(record, scope, "cli", time.time()))
        audit(db, cfg, "cache.purge", "cache" + ("?" + urlencode(sorted(params.items())) if params else ""),
              after={"deleted": {"manifests": done["manifests"], "tags": done["tags"]}})
    if args.json:
        print_json({"id": done["id"], "deleted": {"manifests": done["manifests"], "tags": done["tags"]}})
    else:
        out(f"purge {done['id']} ({_what(scope.__dict__)}): {done['manifests']} manifests, "
            f"{done['tags']} tags deleted")
    _applied_hint(cfg)
    return 0


def cmd_invalidate(args) -> int:
    cfg = load(args)
    with as_cli_errors("invalidate"):
        errors: dict = {}
        repo = repository_of(args.repository, errors)
        tag = tag_of(args.tag, errors)
        if repo is None and "repository" not in errors:
            errors["repository"] = "required"
        if errors:
            raise invalid(errors)
    with closing(open_database(cfg)) as db:
        done = result(db.write(record, Scope(action="invalidate", repository=repo, tag=tag), "cli",
                               time.time()))
        audit(db, cfg, "cache.invalidate", "cache/invalidate",
              after={"repository": repo, "tag": tag, "invalidated": done["tags"]})
    if args.json:
        print_json({"id": done["id"], "invalidated": done["tags"]})
    else:
        out(f"invalidated {done['tags']} tag(s) of {repo}: the next pull revalidates upstream")
    _applied_hint(cfg)
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("cache", help="the pull-through cache / 缓存",
                       description="Figures, purges and invalidations of the cache of every node.")
    csub = c.add_subparsers(dest="cache_command", required=True)
    s = csub.add_parser("show", help="figures per node and namespace / 查看缓存")
    s.add_argument("--repository", help="list the cached tags of this repository with their last pull")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)
    p = csub.add_parser("purge", help="delete cached data on every node / 清除缓存")
    p.add_argument("--namespace", help="a whole namespace (e.g. ghcr.io)")
    p.add_argument("--repository", help="a repository (e.g. library/nginx)")
    p.add_argument("--tag", help="with --repository: only this tag")
    p.add_argument("--digest", help="one blob or manifest (sha256:...)")
    p.add_argument("--all", action="store_true", help="everything")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_purge)
    i = csub.add_parser("invalidate", help="make the next pull revalidate upstream / 使标签失效")
    i.add_argument("repository", help="the repository (e.g. library/nginx)")
    i.add_argument("--tag", help="one tag (default: every cached tag of the repository)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_invalidate)
