"""``zmirror sync list|show|add|edit|remove|run|cancel|runs``: pre-warm and sync jobs,
checked by the admin API's field definitions (:data:`zmirror.admin.sync.JOB_FIELDS`)
and written through :class:`~zmirror.db.syncjobs.SyncJobStore`.  The CLI needs no
running server: ``run`` queues a run in the database, which a running node starts
within a few seconds (docs/design/sync.md)."""

from __future__ import annotations

from contextlib import closing
from datetime import datetime, timezone
from typing import Any, Optional

from zmirror.admin.sync import (
    JOB_UPDATE_FIELDS,
    create_job,
    job_out,
    new_job_values,
    run_out,
    update_job,
)
from zmirror.admin.validate import Invalid, check
from zmirror.cli.common import CLIError, WallClock, audit, load, open_database, out
from zmirror.cli.rows import as_cli_errors, find_row, print_json, print_table, yes_no
from zmirror.db.sync import result
from zmirror.db.syncjobs import ActiveRun, SyncJobStore

WHAT = "sync job"


def _when(t: Optional[float]) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _schedule_text(s: Optional[dict]) -> str:
    if not s:
        return "manual"
    return f"every {s['interval']} s" if "interval" in s else f"cron {s['cron']}"


def _find(store: SyncJobStore, args) -> dict:
    rows = result(store.list_jobs())
    return find_row(rows, args.job, what=WHAT, name_key="name", name_of=lambda s: s.strip(), by=args.by)


def _schedule_arg(args) -> Any:
    if args.manual:
        return None
    if args.interval is not None:
        return {"interval": args.interval}
    if args.cron is not None:
        return {"cron": args.cron}
    return ...


def _body(args, *, new: bool) -> dict:
    body: dict = {}
    if new:
        body["name"] = args.name
    elif args.name is not None:
        body["name"] = args.name
    if args.image:
        body["images"] = list(args.image)
    if args.newest is not None:
        body["newest"] = None if args.newest == 0 else args.newest
    if args.platforms is not None:
        body["platforms"] = [p for p in args.platforms.split(",") if p.strip()]
    sched = _schedule_arg(args)
    if sched is not ...:
        body["schedule"] = sched
    if args.pin is not None:
        body["pin"] = args.pin == "yes"
    if args.concurrency is not None:
        body["concurrency"] = args.concurrency
    if args.enabled is not None:
        body["enabled"] = args.enabled == "yes"
    return body


def _print_job(job: dict) -> None:
    last = job.get("last_run")
    for key, value in (("id", job["id"]), ("name", job["name"]), ("enabled", yes_no(job["enabled"])),
                       ("images", ", ".join(job["images"])),
                       ("newest", job["newest"] if job["newest"] else "all matching"),
                       ("platforms", ", ".join(job["platforms"]) or "all"),
                       ("schedule", _schedule_text(job["schedule"])), ("pin", yes_no(job["pin"])),
                       ("concurrency", job["concurrency"]), ("next run", _when(job["next_run_at"])),
                       ("last run", f"{last['id']} {last['state']}" if last else "-")):
        out(f"{key + ':':<13}{value}")


def _run_line(r: dict) -> tuple:
    return (r["id"], r["job_name"], r["state"], r["trigger"], r["node"] or "-", _when(r["started_at"]),
            f"{r['blobs']['done']}/{r['blobs']['total']}", f"{r['bytes']['done']}/{r['bytes']['total']}",
            len(r["errors"]))


def cmd_list(args) -> int:
    cfg = load(args)
    with closing(open_database(cfg)) as db:
        jobs = [job_out(j) for j in result(SyncJobStore(db, WallClock()).list_jobs())]
    if args.json:
        print_json(jobs)
    elif not jobs:
        out("no sync jobs / 没有同步任务")
    else:
        print_table(("ID", "NAME", "ENABLED", "SCHEDULE", "NEXT RUN", "LAST RUN"),
                    [(j["id"], j["name"], yes_no(j["enabled"]), _schedule_text(j["schedule"]),
                      _when(j["next_run_at"]),
                      f"{j['last_run']['state']}" if j["last_run"] else "-") for j in jobs])
    return 0


def cmd_show(args) -> int:
    cfg = load(args)
    with as_cli_errors(WHAT), closing(open_database(cfg)) as db:
        job = job_out(_find(SyncJobStore(db, WallClock()), args))
    if args.json:
        print_json(job)
    else:
        _print_job(job)
    return 0


def cmd_add(args) -> int:
    cfg = load(args)
    body = _body(args, new=True)
    clock = WallClock()
    with as_cli_errors(WHAT):
        values = new_job_values(body)
        with closing(open_database(cfg)) as db:
            job = job_out(result(create_job(SyncJobStore(db, clock), values, clock.seconds())))
            audit(db, cfg, "sync.job.create", f"sync/jobs/{job['id']}", after=job)
    return _done(args, "added", job)


def cmd_edit(args) -> int:
    cfg = load(args)
    body = _body(args, new=False)
    clock = WallClock()
    with as_cli_errors(WHAT):
        values = check(body, JOB_UPDATE_FIELDS, partial=True)
        if not values:
            raise Invalid("nothing to update", {})
        with closing(open_database(cfg)) as db:
            store = SyncJobStore(db, clock)
            old = _find(store, args)
            jid = old["id"]
            job = job_out(result(update_job(store, jid, values, clock.seconds())))
            audit(db, cfg, "sync.job.update", f"sync/jobs/{jid}", before=job_out(old), after=job)
    return _done(args, "updated", job)


def cmd_remove(args) -> int:
    cfg = load(args)
    with as_cli_errors(WHAT), closing(open_database(cfg)) as db:
        store = SyncJobStore(db, WallClock())
        job = _find(store, args)
        result(store.delete_job(job["id"]))
        audit(db, cfg, "sync.job.delete", f"sync/jobs/{job['id']}", before=job_out(job))
    if args.json:
        print_json(job_out(job))
    else:
        out(f"{WHAT} {job['id']} removed: {job['name']}")
    return 0


def _done(args, verb: str, job: dict) -> int:
    if args.json:
        print_json(job)
    else:
        out(f"{WHAT} {job['id']} {verb}: {job['name']} ({_schedule_text(job['schedule'])})")
    return 0


def cmd_run(args) -> int:
    cfg = load(args)
    with as_cli_errors(WHAT), closing(open_database(cfg)) as db:
        store = SyncJobStore(db, WallClock())
        job = _find(store, args)
        try:
            run = run_out(result(store.queue_run(job["id"], "cli")))
            audit(db, cfg, "sync.job.run", f"sync/jobs/{job['id']}", after=run)
        except ActiveRun as e:
            raise CLIError(f"run {e.run_id} of {WHAT} {job['name']!r} is not finished") from None
    if args.json:
        print_json(run)
    else:
        out(f"run {run['id']} of {WHAT} {job['name']} queued: a running node starts it within a few seconds"
            f" / 已排队")
    return 0


def cmd_cancel(args) -> int:
    cfg = load(args)
    if not args.run.isascii() or not args.run.isdigit():
        raise CLIError("RUN must be a run id (see zmirror sync runs)")
    with as_cli_errors("sync run"), closing(open_database(cfg)) as db:
        run = run_out(result(SyncJobStore(db, WallClock()).request_cancel(int(args.run))))
        audit(db, cfg, "sync.run.cancel", f"sync/runs/{run['id']}", after=run)
    if args.json:
        print_json(run)
    elif run["state"] in ("running", "paused"):
        out(f"run {run['id']}: cancel requested; its node ({run['node']}) stops it within a few seconds")
    else:
        out(f"run {run['id']}: {run['state']}")
    return 0


def cmd_runs(args) -> int:
    cfg = load(args)
    with as_cli_errors(WHAT), closing(open_database(cfg)) as db:
        store = SyncJobStore(db, WallClock())
        jid = _find(store, args)["id"] if args.job else None
        runs = [run_out(r) for r in result(store.list_runs(jid, max(1, min(args.limit, 500))))]
    if args.json:
        print_json(runs)
    elif not runs:
        out("no runs / 没有运行记录")
    else:
        print_table(("ID", "JOB", "STATE", "TRIGGER", "NODE", "STARTED", "BLOBS", "BYTES", "ERRORS"),
                    [_run_line(r) for r in runs], right=(0, 6, 7, 8))
        for r in runs:
            for e in r["errors"][:5] if args.errors else []:
                out(f"  run {r['id']}: {e['item']}: {e['error']}")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("sync", help="pre-warm and sync jobs / 预热与同步任务",
                       description="Jobs are named by id or by name. Runs are started by a running node.")
    ssub = s.add_subparsers(dest="sync_command", required=True)

    def command(name, func, text, *, job=True):
        p = ssub.add_parser(name, help=text)
        if job:
            p.add_argument("job", metavar="ID|NAME", help="the job's id or name")
            p.add_argument("--by", choices=("id", "name"), help="read ID|NAME as this only")
        p.add_argument("--json", action="store_true", help="print what the admin API answers")
        p.set_defaults(func=func)
        return p

    def job_options(p, *, new: bool):
        if not new:
            p.add_argument("--name", help="the new name")
        p.add_argument("--image", action="append", required=new,
                       help="an image: library/nginx:1.27, ghcr.io/o/img@sha256:..., library/python:3.13-*"
                            " (repeat; on edit: replaces the list)")
        p.add_argument("--newest", type=int, help="keep the N highest matching tags (0: every match)")
        p.add_argument("--platforms", help="linux/amd64,linux/arm64 (empty: all platforms)")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--interval", type=int, help="run every N seconds (at least 60)")
        g.add_argument("--cron", help='run on a cron schedule in UTC, e.g. "0 3 * * *"')
        g.add_argument("--manual", action="store_true", help="no schedule: runs only when asked")
        p.add_argument("--pin", choices=("yes", "no"), help="pin what a run fetched (retention keeps it)")
        p.add_argument("--concurrency", type=int, help="blob fetches at a time (1 to 8, default 2)")
        p.add_argument("--enabled", choices=("yes", "no"), help="a disabled job's schedule does not fire")

    command("list", cmd_list, "list the jobs / 列出任务", job=False)
    command("show", cmd_show, "one job / 查看任务")
    a = command("add", cmd_add, "add a job / 新增任务", job=False)
    a.add_argument("name", metavar="NAME", help="the job's name")
    job_options(a, new=True)
    e = command("edit", cmd_edit, "change a job / 修改任务")
    job_options(e, new=False)
    command("remove", cmd_remove, "remove a job, its runs and its pins / 删除任务")
    command("run", cmd_run, "queue a run now / 立即运行")
    c = ssub.add_parser("cancel", help="cancel a run / 取消运行")
    c.add_argument("run", metavar="RUN", help="the run's id")
    c.add_argument("--json", action="store_true", help="print what the admin API answers")
    c.set_defaults(func=cmd_cancel)
    r = ssub.add_parser("runs", help="the history of runs, newest first / 运行记录")
    r.add_argument("job", metavar="ID|NAME", nargs="?", help="only this job's runs")
    r.add_argument("--by", choices=("id", "name"), help="read ID|NAME as this only")
    r.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    r.add_argument("--errors", action="store_true", help="also print the first errors of each run")
    r.add_argument("--json", action="store_true", help="print what the admin API answers")
    r.set_defaults(func=cmd_runs)


__all__ = ["add_parser"]
