"""The `htc` command. Calls the runtime only; user mistakes exit 2 with one clear line.

    htc demo                          the main job: an Ising-model sweep on the local backend
    htc status [--task P/T] [--json]  tasks and their jobs, from the ledger
    htc profiles list|show NAME       the site's hardware profiles
    htc submit FILE [--dry-run]       an HTC job batch (JSON or YAML) into a task
    htc registry up|down|status       the data root's container registry (one namespace per project)
    htc images push SRC REPO:TAG      put an image (OCI archive or layout, docker archive, root fs dir) there
    htc images list                   a project's images
    htc images prune [--unused-days N] the unpacked images no job has used for N days
    htc slurm up|down|status          the local multi-node SLURM test cluster (root)
"""

from __future__ import annotations

import argparse
import os
import functools
import json
import sys
import time
from typing import Sequence

from rich.console import Console
from rich.table import Table

from htc_notebook.errors import HTCError

console = Console()


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # the data root is private: what this command writes there is its user's alone
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except HTCError as exc:
        print(f"htc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("htc: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="htc", description="High-throughput computing: sweeps and batches "
                                "on SLURM or this machine, recorded in a durable ledger.")
    p.add_argument("--root", help="HTC data root (default: $HTC_ROOT or ./htc-data)")
    p.add_argument("--site", help="site YAML with hardware profiles (layered over the defaults)")
    sub = p.add_subparsers(metavar="COMMAND")

    d = sub.add_parser("demo", help="run the main job: a 2D Ising-model temperature sweep, locally")
    d.add_argument("--task", default=None, help="task name (default: a new one per run)")
    d.add_argument("--temperatures", type=int, default=16, help="number of temperatures (default 16)")
    d.add_argument("--seeds", type=int, default=4, help="seeds per temperature (default 4)")
    d.add_argument("--mc-sweeps", type=int, default=2000, help="Monte Carlo sweeps per job (default 2000)")
    d.set_defaults(func=_demo)

    dr = sub.add_parser("doctor", help="what this machine and site allow, probed; what the toolkit does about each gap")
    dr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dr.add_argument("--no-slurm", action="store_true", help="do not ask SLURM")
    dr.set_defaults(func=_doctor)

    s = sub.add_parser("status", help="tasks, or one task's jobs, from the ledger")
    s.add_argument("--task", help="PROJECT/TASK (or TASK in project 'default')")
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    s.set_defaults(func=_status)

    pr = sub.add_parser("profiles", help="the site's hardware profiles")
    psub = pr.add_subparsers(metavar="ACTION")
    pl = psub.add_parser("list", help="a table of profiles and their limits")
    pl.set_defaults(func=_profiles_list)
    ps = psub.add_parser("show", help="every field of one profile")
    ps.add_argument("name")
    ps.set_defaults(func=_profiles_show)
    pd = psub.add_parser("discover", help="read partitions from SLURM (sinfo) and write a site YAML")
    pd.add_argument("-o", "--output", help="write here instead of printing")
    pd.add_argument("--scheduler-host", help="address the nodes use to reach this machine's dask scheduler")
    pd.set_defaults(func=_profiles_discover)
    pr.set_defaults(func=_profiles_list)

    sb = sub.add_parser("submit", help="submit an HTC job batch file (JSON or YAML) to a task")
    sb.add_argument("file")
    sb.add_argument("--project", default="default")
    sb.add_argument("--task", default="default")
    sb.add_argument("--profile", default=None)
    sb.add_argument("--dry-run", action="store_true", help="validate and show what would run; write nothing")
    sb.set_defaults(func=_submit)

    sv = sub.add_parser("serve", help="serve the HTC REST API (/htc/api/v1) over this data root")
    sv.add_argument("--port", type=int, default=8750)
    sv.add_argument("--address", default="127.0.0.1")
    sv.add_argument("--allow-unconfined", action="store_true",
                    help="serve API users even where jobs run unconfined "
                         "(no sandbox: they could read each other's work)")
    sv.add_argument("--owner", metavar="USER", help="the API user who acts as the data root's owner: starts, "
                    "scales and stops clusters, sets the workspace's policy, member of every project (default: none)")
    sv.add_argument("--public-url", metavar="URL", help="scheme://host:port clients reach this server at, for "
                    "`next` links (default: http://ADDRESS:PORT)")
    sv.add_argument("--max-body-mib", type=int, default=None, metavar="N",
                    help="refuse request bodies above N MiB with 413 (default: 4)")
    sv.set_defaults(func=_serve)

    ky = sub.add_parser("keys", help="API keys for the REST API")
    ksub = ky.add_subparsers(metavar="ACTION")
    kc = ksub.add_parser("create", help="a new API key for USER (printed once)")
    kc.add_argument("user")
    kc.add_argument("--project", action="append", default=[], help="make USER a member of PROJECT")
    kc.set_defaults(func=_keys_create)
    kr = ksub.add_parser("revoke", help="revoke a key (its tokens stop working at once)")
    kr.add_argument("key_id", help="the id part of htc_<id>_<secret>")
    kr.set_defaults(func=_keys_revoke)
    kl = ksub.add_parser("list", help="keys: id, user, created, revoked")
    kl.set_defaults(func=_keys_list)
    ky.set_defaults(func=_keys_list)

    rg = sub.add_parser("registry", help="the data root's OCI registry and its token service")
    rsub = rg.add_subparsers(metavar="ACTION")
    ru = rsub.add_parser("up", help="start it (or say where it runs)")
    ru.add_argument("--host", default="127.0.0.1", help="the address clients and cluster nodes reach it at")
    ru.add_argument("--port", type=int, default=5050, help="the registry's port; its token service uses the next")
    ru.add_argument("--listen", default="0.0.0.0", help="the interface to listen on")
    ru.set_defaults(func=_registry_up)
    rsub.add_parser("down", help="stop it (images stay)").set_defaults(func=_registry_down)
    rsub.add_parser("status", help="where it runs, if it does").set_defaults(func=_registry_status)
    rg.set_defaults(func=_registry_status)

    im = sub.add_parser("images", help="a project's container images")
    isub = im.add_subparsers(metavar="ACTION")
    ip = isub.add_parser("push", help="copy SOURCE into the project's registry as REPO:TAG (with skopeo)")
    ip.add_argument("source", help="an OCI archive (.tar), an OCI layout dir[:tag], a docker archive "
                                   "(docker-archive:FILE), or a root file system directory")
    ip.add_argument("image", help="REPO:TAG in the project's registry")
    ip.add_argument("--project", default="default")
    ip.set_defaults(func=_images_push)
    il = isub.add_parser("list", help="the project's images (repo:tag)")
    il.add_argument("--project", default="default")
    il.set_defaults(func=_images_list)
    ipr = isub.add_parser("prune", help="remove unpacked images no job used for a while (they are pulled again "
                                        "when needed)")
    ipr.add_argument("--unused-days", type=float, default=7.0, help="not used for this many days (default 7)")
    ipr.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    ipr.set_defaults(func=_images_prune)
    im.set_defaults(func=_images_list, project="default")

    from htc_notebook.devcluster.cli import add_parser as _add_slurm_parser  # htc slurm up|down|status

    _add_slurm_parser(sub)
    return p


def _session(args, reconcile: bool = True):
    from htc_notebook.runtime import Session

    return Session(args.root, site=args.site, reconcile=reconcile)


# -- demo ---------------------------------------------------------------------------
def _demo(args) -> int:
    import numpy as np
    import pandas as pd

    from htc_notebook.examples.ising import T_CRITICAL, ising
    from htc_notebook.spec import Sweep

    if args.temperatures < 1 or args.seeds < 1 or args.mc_sweeps < 2:
        raise HTCError("--temperatures and --seeds must be at least 1, --mc-sweeps at least 2")
    temps = [round(float(t), 3) for t in np.linspace(1.5, 3.5, args.temperatures)]
    sweep = Sweep.grid(T=temps, seed=list(range(1, args.seeds + 1)))
    task_name = args.task or time.strftime("ising-%Y%m%d-%H%M%S")
    with _session(args) as session:
        task = session.project("demo").task(task_name)
        console.print(f"[bold]htc demo[/]: 2D Ising model, {len(temps)} temperatures x {args.seeds} seeds "
                      f"= {len(sweep)} jobs on profile '{session.site.default_profile}' "
                      f"(task demo/{task_name}, ledger {session.storage.ledger_path})")
        group = task.sweep(functools.partial(ising, sweeps=args.mc_sweeps), sweep, name="ising")
        if group.skipped:
            console.print(f"{group.skipped} members already succeeded in this task; they are not run again.")
        group.wait(progress=True)
        df = group.to_dataframe(results=True)
    failed = df[df.status != "SUCCEEDED"]
    ok = df[df.status == "SUCCEEDED"]
    if len(ok):
        vals = ok.join(pd.DataFrame(list(ok.pop("result")), index=ok.index))
        table = vals.groupby("T").agg(m=("magnetization", "mean"), m_sd=("magnetization", "std"),
                                      e=("energy", "mean"), chi=("susceptibility", "mean"),
                                      runs=("job_id", "count"), runtime=("runtime_s", "mean"))
        _print_ising(table, T_CRITICAL)
    if len(failed):
        console.print(f"[red]{len(failed)} jobs did not succeed:[/]")
        for _, r in failed.head(5).iterrows():
            console.print(f"  job {r.job_id} {r.status}: {r.reason}")
        return 1
    return 0


def _print_ising(table, tc: float) -> None:
    t = Table(title=f"2D Ising 32x32, mean over seeds (T_c = {tc:.3f})",
              caption="|m|: magnetization per spin, E: energy per spin, chi: susceptibility")
    for col in ("T", "|m|", "sd", "E/spin", "chi", "runs", "s/job"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("|m| 0..1", no_wrap=True)
    for T, r in table.iterrows():
        bar = "#" * int(round(r.m * 20))
        sd = "" if r.m_sd != r.m_sd else f"{r.m_sd:.3f}"  # NaN with one seed
        t.add_row(f"{T:.3f}", f"{r.m:.3f}", sd, f"{r.e:.3f}", f"{r.chi:.2f}", str(int(r.runs)),
                  f"{r.runtime:.2f}", f"[cyan]{bar}[/]")
    console.print(t)


# -- status -------------------------------------------------------------------------
def _split_task(text: str) -> tuple[str, str]:
    project, _, task = text.rpartition("/")
    return project or "default", task


def _doctor(args) -> int:
    import dataclasses

    from htc_notebook.runtime.doctor import doctor

    checks = doctor(_root(args), slurm=not args.no_slurm)
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in checks], indent=2))
        return 0
    import pwd

    t = Table(title=f"htc doctor: this machine and site, as {pwd.getpwuid(os.getuid()).pw_name}",
              show_lines=True)
    for title in ("check", "", "found", "the toolkit does instead", "ask the site for"):
        t.add_column(title, overflow="fold")
    for c in checks:
        mark = {True: "[green]ok[/]", False: "[red]no[/]", None: "-"}[c.ok]
        t.add_row(c.name, mark, c.found, c.instead, c.ask)
    console.print(t)
    return 0


def _status(args) -> int:

    # a look, not a worker: it writes nothing (the sessions that reconcile settle exited owners' jobs)
    with _session(args, reconcile=False) as session:
        reads = session.reads
        if args.task:
            project, name = _split_task(args.task)
            row = reads.find_task(project, name)
            if row is None:
                known = ", ".join(f"{t.project}/{t.name}" for t in reads.tasks()) or "(none)"
                raise HTCError(f"no task {project}/{name} in {session.storage.ledger_path}; known tasks: {known}")
            task = session.task(row)  # the task found, not made
            if args.json:  # every job, as asked: reads every row
                df = task.to_dataframe()
                print(json.dumps({"task": f"{project}/{name}", "counts": task.counts(),
                                  "jobs": json.loads(df.to_json(orient="records", date_format="iso"))}, indent=2))
                return 0
            # the table: indexed counts and the newest 50 rows, whatever the task's size
            counts = reads.counts(row.id)
            _print_counts([(f"{project}/{name}", counts)])
            jobs = reads.last_jobs(row.id, 50)
            params = list(dict.fromkeys(k for j in jobs for k in j.params))
            t = Table(title=f"jobs of {project}/{name}")
            for c in ("job_id", "index", "status", "reason", "exit_code", "attempts", "host", "started", "runtime_s",
                      *params):
                t.add_column(c)
            for j in jobs:
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(j.started)) if j.started else None
                runtime = j.ended - j.started if j.started and j.ended else None
                t.add_row(*["" if v is None else str(v) for v in (j.id, j.index, j.status, j.reason, j.exit_code,
                                                                  j.attempts, j.host, started, runtime,
                                                                  *(j.params.get(k) for k in params))])
            console.print(t)
            total = sum(counts.values())
            if total > 50:
                console.print(f"(last 50 of {total} jobs; --json for all)")
            return 0
        rows = [(f"{t.project}/{t.name}", reads.counts(t.id)) for t in reads.tasks()]
        if args.json:
            print(json.dumps([{"task": n, "counts": c} for n, c in rows], indent=2))
        else:
            _print_counts(rows)
    return 0


def _print_counts(rows) -> None:
    from htc_notebook.states import STATES as states
    t = Table(title="tasks")
    t.add_column("task")
    for s in states:
        t.add_column(s.lower(), justify="right")
    for name, counts in rows:
        t.add_row(name, *[str(counts.get(s, 0) or "") for s in states])
    console.print(t)


# -- profiles -------------------------------------------------------------------------
def _site(args):
    from htc_notebook.spec import SiteConfig

    return SiteConfig.load(args.site)


def _profiles_list(args) -> int:
    from htc_notebook.spec import format_walltime

    site = _site(args)
    t = Table(title="profiles")
    for col in ("name", "backend", "partition", "cores/node", "memory/node", "gpus/node", "max nodes",
                "arch", "max walltime", "launcher"):
        t.add_column(col)
    for name in site.names():
        p = site.profile(name)
        star = " (default)" if name == site.default_profile else ""
        t.add_row(name + star, p.backend, p.partition or "", str(p.cores_per_node),
                  f"{p.memory_per_node} MiB", str(p.gpus_per_node), str(p.max_nodes), p.architecture,
                  format_walltime(p.max_walltime) if p.max_walltime else "", p.launcher)
    console.print(t)
    return 0


def _profiles_show(args) -> int:
    p = _site(args).profile(args.name)
    for k, v in p.model_dump().items():
        console.print(f"[bold]{k}[/]: {v}")
    return 0


def _profiles_discover(args) -> int:
    import yaml

    from htc_notebook.backends.slurm.discover import discover
    from htc_notebook.spec import SiteConfig

    site = discover(scheduler_host=args.scheduler_host)
    text = ("# hardware profiles discovered from SLURM (sinfo); edit freely\n"
            + yaml.safe_dump(site, sort_keys=False))
    SiteConfig.from_yaml(text, file=args.output or "<discovered>")  # what we write must load
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        console.print(f"wrote {len(site['profiles'])} profiles to {args.output}")
    else:
        print(text, end="")
    return 0


# -- submit -------------------------------------------------------------------------
def _submit(args) -> int:
    from htc_notebook.runtime import Session
    from htc_notebook.runtime.plan import check_batches, render_batches
    from htc_notebook.spec import SiteConfig, load_batches

    batches = load_batches(args.file)
    site = SiteConfig.load(args.site)
    project = _project_name(args.project)
    if args.dry_run:  # what submit_batch would send, rendered by the backends (nothing is written)
        print(render_batches(site, _root(args), project, args.task, batches, args.profile))
        return 0
    check_batches(site, _root(args), project, batches, args.profile)  # all of them, before anything is written
    with Session(args.root, site=site) as session:
        task = session.project(args.project).task(args.task)
        groups = [task.submit_batch(b, profile=args.profile) for b in batches]
        console.print(f"submitted {sum(len(g) for g in groups)} jobs to {args.project}/{args.task}")
        failed = 0
        for g in groups:
            g.wait(progress=True)
            failed += sum(v for k, v in g.counts().items() if k != "SUCCEEDED")
        _print_counts([(f"{args.project}/{args.task}", task.counts())])
    return 1 if failed else 0


# -- REST API -----------------------------------------------------------------------------
def _serve(args) -> int:
    import dataclasses

    from htc_notebook.runtime.confinement import refuse_serving_unconfined
    from htc_notebook.server.settings import MAX_BODY_MIB, ServerSettings
    from htc_notebook.server.standalone import serve

    settings = ServerSettings(owner=args.owner, public_url=args.public_url,
                              max_body_mib=MAX_BODY_MIB if args.max_body_mib is None else args.max_body_mib)
    with _session(args) as session:
        users = sorted({k["user"] for k in _auth(args).keys() if k["revoked"] is None} - {args.owner})
        unconfined = session.unconfined()
        refuse_serving_unconfined(unconfined, users, args.allow_unconfined)
        if unconfined:
            print(f"htc: warning: {unconfined}", file=sys.stderr)
        if not args.allow_unconfined:  # keys made while it runs are refused as those above
            settings = dataclasses.replace(settings, unconfined=unconfined)
        session.resume()  # an earlier kernel's SLURM jobs and held work are watched and fed from here
        serve(session, args.port, args.address, settings)
    return 0


def _auth(args):
    import os

    from htc_notebook.server.auth import Auth

    return Auth(os.path.abspath(args.root or os.environ.get("HTC_ROOT") or "htc-data"))


# -- the container registry ------------------------------------------------------------------
def _root(args) -> str:
    import os

    return os.path.abspath(args.root or os.environ.get("HTC_ROOT") or "htc-data")


def _registry_up(args) -> int:
    from htc_notebook.registry import daemon

    state = daemon.up(_root(args), host=args.host, port=args.port, listen=args.listen)
    print(f"registry on {state.address} (tokens from {state.realm}); push to {state.address}/<project>/REPO:TAG")
    return 0


def _registry_down(args) -> int:
    from htc_notebook.registry import daemon

    print("registry stopped" if daemon.down(_root(args)) else "no registry was running")
    return 0


def _registry_status(args) -> int:
    from htc_notebook.registry import daemon

    state = daemon.status(_root(args))
    if state is None:
        print("no registry running (htc registry up)")
        return 1
    print(f"registry on {state.address} (pid {state.registry_pid}), tokens from {state.realm} (pid {state.token_pid})")
    return 0


def _images_push(args) -> int:
    from htc_notebook.registry import ProjectRegistry
    from htc_notebook.registry.push import push

    reg = ProjectRegistry(_root(args), _project_name(args.project))
    digest = push(reg, args.source, args.image)
    print(f"pushed {args.image} ({digest}) to {reg.prefix}{args.image}")
    return 0


def _images_list(args) -> int:
    from htc_notebook.registry import ProjectRegistry

    for image in ProjectRegistry(_root(args), _project_name(args.project)).images():
        print(image)
    return 0


def _images_prune(args) -> int:
    with _session(args, reconcile=False) as s:
        pruned = s.prune_images(args.unused_days, dry_run=args.dry_run)
    table = Table("image (digest)", "MiB", "unused (days)", title="would be removed" if args.dry_run else "removed")
    for p in pruned:
        table.add_row(p.digest, f"{p.mib:,.1f}", f"{p.unused_days:g}")
    console.print(table)
    print(f"{len(pruned)} image(s), {sum(p.mib for p in pruned):,.1f} MiB")
    return 0


def _project_name(name: str) -> str:
    from htc_notebook.spec import check_name

    return check_name(name, field="--project")


def _keys_create(args) -> int:
    key = _auth(args).create_key(args.user, args.project)
    print(key)
    print(f"# API key for {args.user}: shown once, stored hashed. Exchange it for a bearer token at "
          "GET /htc/api/v1/auth/token with `Authorization: Token <key>`.", file=sys.stderr)
    return 0


def _keys_revoke(args) -> int:
    if not _auth(args).revoke_key(args.key_id):
        raise HTCError(f"no active key {args.key_id!r} (see `htc keys list`)")
    print(f"revoked {args.key_id}")
    return 0


def _keys_list(args) -> int:
    table = Table("id", "user", "created", "revoked")
    for k in _auth(args).keys():
        table.add_row(k["id"], k["user"], _when(k["created"]), _when(k["revoked"]) if k["revoked"] else "")
    console.print(table)
    return 0


def _when(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


if __name__ == "__main__":
    raise SystemExit(main())
