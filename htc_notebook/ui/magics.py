"""`%htc` and `%%htc`: the notebook's command line (`%load_ext htc_notebook`).

User text is split with shlex and parsed with argparse, never evaluated. A misuse
raises IPython's UsageError with the usage text. Submissions return the handle
(a `LiveGroup`: a JobGroup that displays as the live jobs table).

    %htc profiles
    %htc clusters
    %htc cluster start|scale|adapt|stop PROFILE [--jobs N] [--min A] [--max B]
    %htc use PROJECT/TASK
    %htc submit [--profile P] [--task T] [--sweep NAME=SPEC ...] [--image REPO:TAG] [--nodes N --ranks-per-node R]
                [--cores C] [--memory M] [--timeout S] [--dry-run] -- COMMAND ...
    %%htc submit [...]                 (the cell is a bash script; sweep parameters are its variables)
    %htc status [TASK]  |  %htc cancel JOB|TASK  |  %htc retry JOB|TASK
    %htc logs JOB [--err] [--tail N]  |  %htc attach TASK  |  %htc launcher
"""

from __future__ import annotations

import argparse
import shlex
import weakref
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from htc_notebook.errors import HTCError
from htc_notebook.runtime import JobGroup, JobHandle, Project, Task
from htc_notebook.runtime.task import DryRun
from htc_notebook.runtime.decorators import current_task, use
from htc_notebook.spec import JobDefinition, Sweep

USAGE = __doc__.split("\n\n", 2)[2]


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (with the usage text) instead of exiting."""

    def error(self, message: str):
        raise UsageError(f"%htc: {message}\n\n{self.format_usage()}\n{USAGE}")

    def exit(self, status: int = 0, message: str | None = None):
        raise UsageError(message or self.format_help())


def _parser() -> _Parser:
    p = _Parser(prog="%htc", add_help=False)
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    sub.add_parser("profiles")
    sub.add_parser("clusters")
    sub.add_parser("launcher")
    c = sub.add_parser("cluster")
    c.add_argument("action", choices=("start", "scale", "adapt", "stop"))
    c.add_argument("profile")
    c.add_argument("--jobs", type=_whole)
    c.add_argument("--min", type=_whole, default=0)
    c.add_argument("--max", type=_whole)
    u = sub.add_parser("use")
    u.add_argument("task", help="PROJECT/TASK")
    s = sub.add_parser("submit")
    s.add_argument("--profile")
    s.add_argument("--task")
    s.add_argument("--name")
    s.add_argument("--sweep", action="append", default=[], metavar="NAME=SPEC")
    s.add_argument("--nodes", type=_whole)
    s.add_argument("--ranks-per-node", type=_whole)
    s.add_argument("--cpus-per-rank", type=_whole, default=1)
    s.add_argument("--cores", type=_whole)
    s.add_argument("--memory")
    s.add_argument("--timeout", type=_whole)
    s.add_argument("--image", help="REPO:TAG of the project's registry to run the command in")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("command", nargs=argparse.REMAINDER)
    for name in ("status", "attach"):
        q = sub.add_parser(name)
        q.add_argument("task", nargs="?" if name == "status" else None)
    for name in ("cancel", "retry"):
        q = sub.add_parser(name)
        q.add_argument("target", help="a job id, or a task name")
    lg = sub.add_parser("logs")
    lg.add_argument("job", type=_whole)
    lg.add_argument("--err", action="store_true")
    lg.add_argument("--tail", type=_whole, default=50)
    return p


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: a whole number >= 1")
    return value


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """NAME=SPEC: `a,b,c` (a list), `start:stop:step` (inclusive numeric range) or one value.

    >>> parse_axis("T=300:330:10"), parse_axis("seed=1,2"), parse_axis("mode=fast")
    (('T', [300, 310, 320, 330]), ('seed', [1, 2]), ('mode', ['fast']))
    """
    name, sep, spec = text.partition("=")
    if not sep or not name.isidentifier() or not spec:
        raise UsageError(f"%htc submit: --sweep {text!r} is not NAME=SPEC (SPEC: a,b,c or start:stop:step)")
    if spec.count(":") == 2:
        start, stop, step = (_number(v, text) for v in spec.split(":"))
        if not isinstance(start, (int, float)) or step <= 0 or stop < start:
            raise UsageError(f"%htc submit: --sweep {text!r}: start:stop:step needs numbers, step > 0, stop >= start")
        n = int(round((stop - start) / step)) + 1
        values = [start + i * step for i in range(n) if start + i * step <= stop + 1e-9 * abs(step)]
        if all(isinstance(v, int) for v in (start, step)):
            values = [int(v) for v in values]
        else:
            values = [round(v, 12) for v in values]
        return name, values
    return name, [_number(v, text) for v in spec.split(",")]


def _number(text: str, whole: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if ":" in whole and whole.count(":") == 2:
        raise UsageError(f"%htc submit: --sweep {whole!r}: {text!r} is not a number")
    return text


@magics_class
class HTCMagics(Magics):
    """The `%htc` line magic and `%%htc` cell magic."""

    @line_cell_magic
    def htc(self, line: str, cell: str | None = None) -> Any:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%htc: cannot split the line: {exc}\n\n{USAGE}") from None
        if not argv:
            raise UsageError(USAGE)
        args = _parser().parse_args(argv)
        if cell is not None and args.cmd != "submit":
            raise UsageError("%%htc (cell magic) only takes `submit`: the cell is the job's bash script")
        try:
            return getattr(self, f"_{args.cmd}")(args, cell)
        except HTCError as exc:  # a clear message, no traceback (design G4)
            raise UsageError(str(exc)) from None

    # -- subcommands ------------------------------------------------------------------
    def _profiles(self, args, cell):
        import pandas as pd

        site = current_task().parts.site
        rows = []
        for name in site.names():
            p = site.profile(name)
            rows.append({"profile": name, "backend": p.backend, "partition": p.partition or "",
                         "cores/node": p.cores_per_node, "memory/node MiB": p.memory_per_node,
                         "gpus/node": p.gpus_per_node, "max nodes": p.max_nodes, "launcher": p.launcher,
                         "packing": p.packing, "max walltime": p.max_walltime or ""})
        return pd.DataFrame(rows).set_index("profile")

    def _clusters(self, args, cell):
        import pandas as pd

        rows = current_task().parts.backends.clusters()
        return pd.DataFrame(rows, columns=["profile", "kind", "workers", "dashboard", "jobs"])

    def _cluster(self, args, cell):
        backends = current_task().parts.backends
        prof = backends.profiles.get(args.profile)
        if args.action == "stop":
            return _Text(f"stopped {prof.name}" if backends.stop(prof.name) else f"{prof.name} was not running")
        if prof.backend == "local":
            if args.action != "start":
                raise UsageError(f"profile {prof.name!r} is the local machine: only start and stop apply")
            backends.start(prof.name)
            local: Any = backends.get(prof)  # a LocalBackend (ui/ does not import backends/)
            return local.client
        if args.action == "start":
            backends.start(prof.name, args.jobs)
        elif args.action == "scale":
            if args.jobs is None:
                raise UsageError("%htc cluster scale PROFILE --jobs N")
            backends.scale(prof.name, args.jobs)
        else:
            backends.adapt(prof.name, args.min, args.max or prof.max_pilots)
        return backends.pilots(prof.name)

    def _use(self, args, cell):
        project, sep, name = args.task.partition("/")
        if not sep or not project or not name:
            raise UsageError("%htc use PROJECT/TASK")
        task = Project(current_task().parts, project).task(name)
        use(task)
        return task

    def _task(self, name: str | None) -> Task:
        task = current_task()
        if not name:
            return task
        project, name = self._task_name(name)
        return Project(task.parts, project).task(name)

    @staticmethod
    def _task_name(name: str | None) -> tuple[str, str]:
        """(project, task) that `--task` names: PROJECT/TASK, TASK (of the task in use), or none."""
        task = current_task()
        if not name:
            return task.project, task.name
        project, sep, rest = name.partition("/")
        return (project, rest) if sep else (task.project, name)

    def _submit(self, args, cell):
        from htc_notebook.runtime.commands import template_argv

        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if cell is not None:
            if command:
                raise UsageError("%%htc submit: the cell is the script; give no COMMAND")
            # the script's variables come from the sweep: env NAME=value ... bash -c SCRIPT
            body = cell.replace("{", "{{").replace("}", "}}")
            axes_names = [parse_axis(a)[0] for a in args.sweep]
            command = ["env", *[f"{n}={{{n}}}" for n in axes_names], "bash", "-c", body, "htc-script"]
        if not command:
            raise UsageError(f"%htc submit: give a COMMAND after --\n\n{USAGE}")
        axes: dict[str, Any] = dict(parse_axis(a) for a in args.sweep)
        if "limit" in axes:  # Sweep.grid would take it for its own limit= (the most members it allows)
            raise UsageError("%htc submit: --sweep cannot name an axis `limit`; call it something else")
        sweep = Sweep.grid(**axes) if axes else None
        argv = template_argv(command)
        name = args.name or argv[0].rsplit("/", 1)[-1]
        mpi = args.nodes is not None or args.ranks_per_node is not None
        if args.dry_run:  # the same submission, rendered by its backends instead of recorded and sent
            dry = DryRun(current_task().parts, *self._task_name(args.task))
            self._send(dry, argv, sweep, args, mpi, name)
            return _Text(dry.text)
        return self._send(self._task(args.task), argv, sweep, args, mpi, name)

    def _send(self, task: Task, argv, sweep, args, mpi: bool, name: str) -> "LiveGroup":
        from htc_notebook.runtime.commands import render_command

        if mpi and sweep is not None and not args.image:  # a sweep of MPI programs: members keep their parameters
            group = task.sweep(list(argv), sweep, profile=args.profile, name=name, resources={
                "nodes": args.nodes or 1, "ranks_per_node": args.ranks_per_node or 1,
                "cpus_per_rank": args.cpus_per_rank, "memory": args.memory, "walltime": args.timeout})
            return LiveGroup(group.parts, group.task_id, group.ids, group.name, skipped=group.skipped)
        if mpi:
            members = sweep.members if sweep else [None]
            handles = [task.mpi(list(render_command(argv, m.params)) if m else list(argv),
                                nodes=args.nodes or 1, ranks_per_node=args.ranks_per_node or 1,
                                cpus_per_rank=args.cpus_per_rank, memory=args.memory, walltime=args.timeout,
                                profile=args.profile, name=name, image=args.image) for m in members]
            return LiveGroup(task.parts, task.id, [h.id for h in handles], name)
        definition = JobDefinition.model_validate({"commands": list(argv), "maxVCpus": args.cores or 1,
                                                   **({"maxMemory": _mib(args.memory)} if args.memory else {}),
                                                   **({"execTimeoutSeconds": args.timeout} if args.timeout else {}),
                                                   **({"imageName": args.image} if args.image else {})})
        if sweep is None:
            group = task.submit_batch({"jobName": name, "batchSize": 1,
                                       "htcJobDefinition": definition.to_wire()}, profile=args.profile)
        else:
            group = task.sweep(list(argv), sweep, profile=args.profile, definition=definition, name=name)
        return LiveGroup(group.parts, group.task_id, group.ids, group.name, skipped=group.skipped)

    def _status(self, args, cell):
        task = self._task(args.task)
        return LiveGroup(task.parts, task.id, task.parts.reads.job_ids(task.id), task.name)

    def _attach(self, args, cell):
        """After a kernel restart: the task's jobs and live table, rebuilt from the ledger."""
        task = self._task(args.task)
        use(task)
        task.parts.reconciler.resume()  # what the earlier kernel left: watched, fed, retried, or LOST
        group = task.jobs()
        return LiveGroup(group.parts, group.task_id, group.ids, task.name)

    def _cancel(self, args, cell):
        return self._act(args.target, "cancel")

    def _retry(self, args, cell):
        return self._act(args.target, "retry")

    def _act(self, target: str, action: str):
        task = current_task()
        if target.isdigit():
            job = JobHandle(task.parts, int(target))
            ok = job.cancel() if action == "cancel" else job.retry()
            return _Text(f"job {target}: {'done' if ok else 'nothing to ' + action} ({job.status})")
        t = self._task(target)
        done = t.cancel() if action == "cancel" else t.retry()
        n = len(done) if isinstance(done, (list, JobGroup)) else done
        return _Text(f"task {t.project}/{t.name}: {action} {n} job(s)")

    def _logs(self, args, cell):
        job = JobHandle(current_task().parts, args.job)
        return _Text(job.logs("err" if args.err else "out", tail=args.tail))

    def _launcher(self, args, cell):
        from htc_notebook.ui.launcher import ClusterLauncher

        return ClusterLauncher(current_task().parts)


def _mib(text: str) -> int:
    from htc_notebook.spec import parse_memory_mib

    return parse_memory_mib(text, field="memory")


class _Text(str):
    """A string that displays as itself (no quotes) in a notebook."""

    def __repr__(self) -> str:
        return str(self)


class LiveGroup(JobGroup):
    """A JobGroup that displays as the live jobs table; `wait()` leaves its tables showing the end
    (read at once on the caller's thread, so the cell that waited carries the table's last state:
    a notebook saved with its widget state shows it)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._shown: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # table -> its DisplayHandle

    def _ipython_display_(self) -> None:
        from IPython.display import display

        from htc_notebook.ui.jobs_widget import live_table

        table = live_table(self)
        self._shown[table] = display(table, display_id=True)

    def wait(self, timeout: float | None = None, *, progress: bool = False) -> "JobGroup":
        try:
            return super().wait(timeout, progress=progress)
        finally:  # the widget's state, and the static HTML a viewer without widgets shows, as things are now
            for table, shown in list(self._shown.items()):
                table.settle()
                if shown is not None:
                    shown.update(table)


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(HTCMagics)
