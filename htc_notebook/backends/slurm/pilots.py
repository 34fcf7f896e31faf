"""Pilot jobs for Python calls on SLURM: a profile compiled to a dask-jobqueue SLURMCluster.

A pilot is one SLURM job per node running dask workers (one process per core)
that take Python jobs until its deadline: its start plus its walltime less a
margin (10 %, at least 2 minutes: `pilot_lifetime`). A worker starts no call
expected to end after the deadline; it hands the call back, drains and leaves
(`worker.leave_if_late`), so SLURM's time limit does not kill running calls (which
dask would report as KilledWorker). The client asks for a pilot's replacement a
queue wait ahead of its deadline (`replace_pilots_in_time`, `pilot_lifetimes`), so
the replacement is working when the old pilot leaves; the old one works on until
then. A pilot that drains earlier than that is replaced at once
(`replace_draining_pilots`); one that ends without draining (scancelled, its node lost)
once none of its workers came back for a while (`pilot_lifetimes.LOST_AFTER`).

Every pilot cluster speaks mutual TLS with credentials of its own (`dask_security`): its scheduler
listens on the profile's `scheduler_host` (where the nodes reach it), its dashboard on loopback; the
workers read their copy of the credentials from a private directory of the data root.
"""

from __future__ import annotations

import functools
import getpass
import itertools
import logging
import os
import shlex
import sys
from typing import Any, Callable

from distributed.diagnostics.plugin import SchedulerPlugin

from htc_notebook.backends.dask_jobs import ALLOWED_FAILURES
from htc_notebook.backends.dask_security import DASHBOARD_ADDRESS, WORKER_HTTP_ARGS, cluster_security, dashboard_link
from htc_notebook.backends.images import node_local, on_node, with_binds, worker_argv
from htc_notebook.backends.memory_limit import clear_on_exit
from htc_notebook.backends.slurm import jobqueue, scheduler
from htc_notebook.backends.slurm.pilot_lifetimes import LOST_AFTER, MARGIN, PilotLifetimes
from htc_notebook.backends.worker import DRAIN_TOPIC, PILOT_DEADLINE, PILOT_LIFETIME
from htc_notebook.errors import BackendError
from htc_notebook.spec import PartitionProfile, format_walltime

log = logging.getLogger(__name__)

DEFAULT_WALLTIME = 3600
LIFETIME_MARGIN = 0.1  # fraction of the walltime kept free at the end (at least 2 min)


def pilot_options(profile: PartitionProfile, *, log_directory: str | None = None,
                  python: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `dask_jobqueue.SLURMCluster` (pure: no cluster is made). `python`: the
    command the workers start with (`image_python` for a pilot_image), else the profile's `python`."""
    walltime = pilot_walltime(profile)
    lifetime = pilot_lifetime(profile)
    directives = []
    if profile.qos:
        directives.append(f"--qos={profile.qos}")
    if profile.constraints:
        directives.append(f"--constraint={'&'.join(profile.constraints)}")
    if profile.gpus_per_node:
        directives.append(f"--gres=gpu:{profile.gpus_per_node}")
    directives += profile.sbatch_options
    options: dict[str, Any] = {
        "queue": profile.partition or profile.name,
        "account": profile.account,
        "cores": profile.cores_per_node,
        "processes": pilot_workers(profile),
        "memory": f"{profile.memory_per_node}MiB",
        "job_mem": f"{profile.memory_per_node}M",  # exact: dask-jobqueue would round it up
        "walltime": format_walltime(walltime),
        "job_extra_directives": directives,
        "job_script_prologue": [*profile.setup, clear_on_exit(),
                                *(['export USER="${USER:-$(id -un)}"'] if python else []),  # ch-run wants it
                                # the deadline counts from the job's start
                                f"export {PILOT_LIFETIME}={lifetime} {PILOT_DEADLINE}=$(( $(date +%s) + {lifetime} ))"],
        "python": python or profile.python or sys.executable,
        "scheduler_options": {"dashboard_address": DASHBOARD_ADDRESS, "allowed_failures": ALLOWED_FAILURES,
                              **({"host": profile.scheduler_host} if profile.scheduler_host else {})},
        "job_name": f"htc-pilot-{profile.name}",
        # a GPU pilot: one worker per GPU, each seeing only its own (slurm/gpu_worker.py)
        "worker_extra_args": [*WORKER_HTTP_ARGS, *(["--preload", "htc_notebook.backends.slurm.gpu_worker"]
                                                   if profile.gpus_per_node else [])],
    }
    if log_directory:
        options["log_directory"] = log_directory
    return {k: v for k, v in options.items() if v is not None}


def pilot_walltime(profile: PartitionProfile) -> int:
    """A pilot's walltime in seconds: the profile's default, else an hour within its maximum."""
    return profile.default_walltime or min(DEFAULT_WALLTIME, profile.max_walltime or DEFAULT_WALLTIME)


def pilot_lifetime(profile: PartitionProfile) -> int:
    """Seconds from a pilot's start to its deadline: its walltime less a margin (10 %, at least
    2 min), at least 1 min."""
    walltime = pilot_walltime(profile)
    return max(60, walltime - max(120, int(walltime * LIFETIME_MARGIN)))


def pilot_workers(profile: PartitionProfile) -> int:
    """dask worker processes per pilot: one per GPU on a GPU profile, else `pilot_workers`, else one per core."""
    if profile.gpus_per_node:
        return min(profile.gpus_per_node, profile.cores_per_node)
    return min(profile.pilot_workers or profile.cores_per_node, profile.cores_per_node)


def pack_options(profile: PartitionProfile, *, log_directory: str | None = None) -> dict[str, Any]:
    """SLURMCluster arguments for a packed MPI allocation (pure).

    One SLURM job of `pack_nodes` nodes runs one dask worker on its first node. The
    worker offers one `slots` resource per core of the allocation and one thread per
    slot; each MPI task holds as many slots as it has cores while its launcher runs
    an `srun --exact` step inside the allocation. So many small MPI tasks share one
    allocation, and dask never starts more than fit.
    """
    options = pilot_options(profile, log_directory=log_directory)
    nodes = profile.nodes_per_pack
    slots = nodes * profile.cores_per_node
    options.update(
        cores=slots, processes=1, job_name=f"htc-mpi-{profile.name}",
        job_directives_skip=["-n 1", "--cpus-per-task"],  # dask-jobqueue's one-task defaults
        job_extra_directives=[*options["job_extra_directives"], f"--nodes={nodes}",
                              f"--ntasks-per-node={profile.cores_per_node}"],
        worker_extra_args=[*WORKER_HTTP_ARGS, "--resources", f"slots={slots}"],
    )
    return options


def image_python(profile: PartitionProfile, rootfs: str, data_root: str) -> str:
    """The command a pilot of `profile` starts Python with in its `pilot_image`, unpacked at `rootfs`:
    the profile's container runtime over a copy of it with mount points for the data root and the
    container_binds (made once, `images.with_binds`), or over the node's copy of that with an
    `image_cache`, its `python` (default python3) inside."""
    shared = str(with_binds(rootfs, [data_root, *profile.container_binds]))
    root = node_local(shared, profile.image_cache) if profile.image_cache else shared
    argv = worker_argv(profile.container_runtime, root, data_root, profile.python or "python3", profile.container_binds)
    return shlex.join(on_node(shared, root, argv) if root != shared else argv)  # a node's copy: made by its first pilot


VERSIONS = ("import json, platform, dask, distributed, htc_notebook; print(json.dumps("
            "[platform.python_version(), dask.__version__, distributed.__version__, htc_notebook.__version__, "
            "getattr(htc_notebook, 'code_digest', lambda: 'none')()]))")


def check_python(python: str, what: str | None = None) -> None:
    """Refuse the command pilots start Python with (`what` it is: the profile's `python`, or its
    `pilot_image`) if its Python (major.minor: cloudpickle's code objects differ between them), dask,
    distributed or htc_notebook (its version, then its code: `htc_notebook.code_digest`) differ from
    this kernel's, or it cannot import them, naming both: a pilot running other code than its kernel
    fails every call. Run here: the path (or the image's unpack) must also exist for the nodes (a
    shared file system). Checked once per command and kernel (the pilots and the MPI packs of a
    profile start the same one)."""
    _check_python(python, what or f"the profile's python {python!r}")


@functools.cache  # a refusal raises, and is not remembered: it is checked again next time
def _check_python(python: str, what: str) -> None:
    import json
    import platform
    import subprocess

    import dask
    import distributed

    import htc_notebook

    if python == sys.executable:
        return
    ours = [platform.python_version(), dask.__version__, distributed.__version__, htc_notebook.__version__,
            htc_notebook.code_digest()]
    try:
        out = subprocess.run([*shlex.split(python), "-c", VERSIONS], capture_output=True, text=True, timeout=120,
                             cwd="/",  # not a checkout of htc_notebook the kernel runs in
                             env={"USER": getpass.getuser(), **os.environ})  # ch-run wants it
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"{what} cannot be run here: {exc}") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"{what} cannot load what pilots run ({last}); install htc_notebook[slurm] "
                           f"{ours[3]} with dask {ours[1]} for it, or leave it unset")
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    names = ("Python", "dask", "distributed", "htc_notebook", "htc_notebook code")

    def key(versions: list[str]) -> list[str]:  # Python by major.minor
        return [".".join(versions[0].split(".")[:2]), *versions[1:]]

    differ = [f"{n} {t} (this kernel: {o})"
              for n, t, o, kt, ko in zip(names, theirs, ours, key(theirs), key(ours), strict=True) if kt != ko]
    if differ:
        raise BackendError(f"{what} has {', '.join(differ)}: pilots must run the kernel's versions "
                           "(dask refuses mismatched workers, and calls would fail)")


def make_pilot_cluster(profile: PartitionProfile, credentials: str | os.PathLike, *, log_directory: str | None = None,
                       packed: bool = False, python: str | None = None):
    """A SLURMCluster for the profile (`packed`: MPI allocations), its job script under test by `sbatch --test-only`.
    `python`: what the workers start with (`image_python`); it is checked first (`check_python`).
    `credentials`: a private directory the nodes see (`dask_security.private_directory`), where
    dask-jobqueue writes the workers' copy of the cluster's TLS credentials (0600).

    dask-jobqueue does not surface an sbatch rejection (the client would just
    wait for workers); testing the rendered script turns it into an error
    carrying the scheduler's message, within seconds. The test runs while the
    dask scheduler and client start; `check_probe` reads its verdict before
    the first pilot is asked for.
    """
    try:
        SLURMJob = jobqueue.slurm().SLURMJob
    except ImportError:
        raise BackendError("Python jobs on SLURM need dask-jobqueue: pip install 'htc_notebook[slurm]'") from None
    options = (pack_options(profile, log_directory=log_directory) if packed
               else pilot_options(profile, log_directory=log_directory, python=python))
    check_python(options["python"], python and f"pilot_image {profile.pilot_image!r}")
    probe = {k: v for k, v in options.items() if k not in ("scheduler_options", "log_directory")}
    test = scheduler.start(["sbatch", "--test-only"],
                           input=SLURMJob(scheduler="tcp://scheduler:8786", name="probe", **probe).job_script())
    cluster = _cluster_class()(job_cls=_clean_job_class(), security=cluster_security(),
                               shared_temp_directory=str(credentials), **options)
    cluster.htc_probe = test  # its verdict is read by check_probe() before the first pilot is asked for
    return cluster


@functools.cache
def _cluster_class():
    """dask-jobqueue's SLURMCluster, linking its dashboard where it listens (loopback): dask would
    name the scheduler's host, where nothing listens for it. Its Client's link is the cluster's.
    Each new pilot gets a name the cluster never gave before: dask's SpecCluster gives a pilot's name
    to the next one once it left the plan, but a pilot left out of the plan (replaced) works on
    beside its replacement, and dask's scheduler refuses a worker whose name is taken.
    The names of the workers that arrived are noted for `replace_pilots_in_time` (`htc_arrivals`): a
    pilot may come and go between two of its looks, and then it must still count as lost."""
    class PilotSLURMCluster(jobqueue.slurm().SLURMCluster):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any):
            self._numbers = itertools.count()
            self.htc_arrivals: list[str] = []  # names of the workers that arrived since the last look
            super().__init__(*args, **kwargs)

        def _update_worker_status(self, op: str, msg: Any) -> None:
            if op == "add":
                self.htc_arrivals += [w.get("name") for w in msg.get("workers", {}).values()]
            super()._update_worker_status(op, msg)

        @property
        def dashboard_link(self) -> str:
            return dashboard_link(self.scheduler_info.get("services", {}).get("dashboard")) or ""

        def new_worker_spec(self) -> dict[str, dict]:
            return {self._new_worker_name(next(self._numbers)): self.new_spec}

    return PilotSLURMCluster


@functools.cache
def _clean_job_class():
    """dask-jobqueue's SLURMJob, calling sbatch and scancel with `scheduler.clean_env()`: a kernel
    inside an allocation must not hand its SLURM_* variables to the pilots it submits."""
    SLURMJob = jobqueue.slurm().SLURMJob

    class CleanEnvSLURMJob(SLURMJob):  # type: ignore[valid-type,misc]
        @staticmethod
        async def _call(cmd, *, shell=False, **kwargs):
            return await SLURMJob._call(cmd, shell=shell, env=scheduler.clean_env(), **kwargs)

    return CleanEnvSLURMJob


def start_adapting(cluster, profile: PartitionProfile) -> None:
    """Let the pilot count follow the work. Called once the first pilots are asked for: an
    adaptive loop running while the first pilot starts delays it (~0.15 s measured). A pilot is
    released only after ~10 s without work, so a fresh one is not cancelled before its task lands,
    and never while one of its workers has a task (`KeepBusyPilots`)."""
    keep = KeepBusyPilots(lambda worker: _pilot_of(cluster, worker) or worker)
    cluster.loop.add_callback(lambda: cluster.scheduler.add_plugin(keep, name=keep.name))  # on the scheduler's loop
    cluster.adapt(minimum_jobs=0, maximum_jobs=profile.max_pilots, interval="1s", wait_count=10)


class KeepBusyPilots(SchedulerPlugin):
    """Offers dask's adaptive scaling no worker of a pilot that has a task. The scheduler counts a task
    that has run longer than its kind's average as no work left, so a lone long call or command looks
    like an idle cluster, and scaling down closes a pilot whole: every worker of its job (seen: a 30 s
    command on a two-worker pilot, its pilot retired after 10 s, again at every requeue).
    `pilot_of(worker name)`: the pilot job the worker belongs to."""

    name = "htc-keep-busy-pilots"

    def __init__(self, pilot_of: Callable[[str], str]):
        self._pilot_of = pilot_of

    def valid_workers_downscaling(self, scheduler: Any, workers: list) -> list:
        busy = {self._pilot_of(ws.name) for ws in scheduler.workers.values() if ws.processing}
        return [ws for ws in workers if self._pilot_of(ws.name) not in busy]


def replace_draining_pilots(client, cluster) -> None:
    """Ask for a pilot's replacement as soon as one of its workers starts draining (`worker.leave_if_late`),
    not once it has left, unless it was asked for already (`replace_pilots_in_time`)."""

    def draining(event) -> None:
        job = _pilot_of(cluster, event[1]["name"])
        if job is None:  # replaced already, or another of its workers reported first
            return
        log.info("pilot %s drains before its deadline: asking for its replacement", job)
        _leave_plan(cluster, job)

    client.subscribe_topic(DRAIN_TOPIC, draining)


def replace_pilots_in_time(cluster, lifetime: float, interval: float = 1.0) -> None:
    """Every `interval` s, on the cluster's event loop until it closes: ask for the replacement of
    each pilot a queue wait ahead of its deadline (`pilot_lifetimes.PilotLifetimes`; `lifetime`:
    `pilot_lifetime`), and of each pilot lost (its workers gone, none back): that one is scancelled,
    in case its job lingers without them. Called before the cluster's first pilot is asked for, so
    that one's queue wait is measured too."""
    from distributed.core import Status

    lifetimes = PilotLifetimes(lifetime)

    def look() -> None:
        names = [w["name"] for w in list(cluster.scheduler_info["workers"].values())] + cluster.htc_arrivals
        cluster.htc_arrivals = []  # on the event loop that notes them (the first look: before any pilot is asked)
        arrived = {job for name in names if (job := _pilot_of(cluster, name)) is not None}
        for job, left in lifetimes.due(list(cluster.worker_spec), arrived).items():
            log.info("pilot %s (SLURM job %s) reaches its deadline in %.0f s, within the queue wait expected for a "
                     "new one (%.0f s; measured: %s) plus %.0f s: asking for its replacement now",
                     job, getattr(cluster.workers.get(job), "job_id", "?"), left, lifetimes.expected_wait(),
                     ", ".join(f"{w:.0f} s" for w in lifetimes.waits) or "none yet", MARGIN)
            _leave_plan(cluster, job)
        for job in lifetimes.lost():
            pilot = cluster.workers.get(job)
            log.warning("pilot %s (SLURM job %s) has had no worker for %.0f s: it ended before its deadline "
                        "(cancelled, its node lost, or its workers failed); asking for its replacement",
                        job, getattr(pilot, "job_id", "?"), LOST_AFTER)
            _leave_plan(cluster, job)
            if pilot is not None:
                cluster.loop.add_callback(pilot.close)

    def tick() -> None:
        try:
            look()
        except Exception:  # logged; the next look may well succeed
            log.exception("looking at the pilots' deadlines failed")
        if cluster.status not in (Status.closing, Status.closed, Status.failed):
            cluster.loop.call_later(interval, tick)

    look()  # the first look, here: nothing is asked for yet
    cluster.loop.add_callback(tick)


def _pilot_of(cluster, worker: str) -> str | None:
    """The pilot job in the cluster's plan that the worker named `worker` belongs to, if any."""
    return next((job for job, spec in list(cluster.worker_spec.items())  # a copy: scale() may run in another thread
                 if worker == job or worker in {f"{job}{suffix}" for suffix in spec.get("group", ())}), None)


def _leave_plan(cluster, job: str) -> None:
    """Take a pilot out of the cluster's plan, so adapting, or a fixed scale, asks for a new one now;
    it works on and ends by itself (at its deadline)."""
    del cluster.worker_spec[job]
    cluster.workers.pop(job, None)  # so correcting the plan neither scancels it nor asks for it again
    if getattr(cluster, "_adaptive", None) is None:  # a fixed scale: keep the count
        cluster.scale(jobs=len(cluster.worker_spec) + 1)


def check_probe(cluster) -> None:
    """Raise BackendError with SLURM's message if it rejected the pilot script (read once per cluster)."""
    test = getattr(cluster, "htc_probe", None)
    if test is None:
        return
    cluster.htc_probe = None
    out, err = test.communicate(timeout=60)
    if test.returncode != 0:
        raise BackendError(f"SLURM rejects this profile's pilot job: {err.strip() or out.strip()}")
