"""Python jobs on any dask cluster: a LocalCluster here, dask-jobqueue pilots on SLURM (and there the
short command jobs of a `commands: pilots` profile, a dask task each: `pilot_commands`).

`DaskJobs` maps launches onto a dask Client and reports each job's outcome.
The cluster is created by a factory on first use, so nothing starts until a
Python job is submitted. Quick jobs are packed several to a dask task (see
PROBE_JOBS below); on a packed MPI allocation, Python MPI jobs run on its rank
pool (`mpi_pool`) and MPI programs as launcher steps, each holding `slots`.
At most `window` dask tasks are in flight; the rest wait here (not as futures)
and are handed to dask as results come back (see WINDOW below).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby, pairwise
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence

import cloudpickle

from htc_notebook.backends.base import PER_JOB_ENV, Feed, Launch, Reporter, call_outcome, end_untaken, take_from
from htc_notebook.backends.pilot_commands import run_on_worker, task_key
from htc_notebook.backends.dask_chain import Behind, Chains
from htc_notebook.backends.dask_security import dashboard_link
from htc_notebook.backends.mpi_jobs import for_task
from htc_notebook.backends.mpi_pool import PoolSpec, run_pooled
from htc_notebook.backends.mpi_ranks import run_step
from htc_notebook.backends.worker import TIMED_CALLS, JobRunner, p95, run_after
from htc_notebook.errors import BackendError
from htc_notebook.states import Outcome

if TYPE_CHECKING:  # imported where used: workers import this module too (`_run_pack`)
    from distributed import Client


log = logging.getLogger(__name__)

SLOTS = "slots"  # the dask worker resource a packed MPI allocation offers: one per core

# Packing quick jobs. dask spends about a millisecond of scheduler and worker time per task,
# which is most of a trivial job's cost. So the first PROBE_JOBS jobs of a large submission
# run one per dask task and are timed; if every one took less than PACK_BELOW seconds, the
# rest run several to a dask task (about PACK_SECONDS of work each, and at least
# PACKS_PER_THREAD tasks per worker thread so no thread idles). Each job keeps its own
# attempt, logs, outcome and ledger row. Slower jobs, and small submissions, run one per task.
PROBE_JOBS = 8
PACK_BELOW = 0.01
PACK_SECONDS = 0.05
PACKS_PER_THREAD = 4
MAX_PACK = 1000
PROBE_WAIT = 0.5  # seconds the rest of a submission waits for its other probes once one is timed: those timed decide
PROBE_CAP = 5.0  # seconds it waits, a worker up, for any probe to end: then it runs one job to a task
# (a worker's first confined call waits for its sandbox's zygote: on a pilot of a loaded node that takes
# longer than PROBE_WAIT, and a cold sweep then ran one trivial call to a dask task)
# A confined call (backends/call_sandbox.py) costs its dask task a fork of its view's zygote more
# (~3-6 ms; ~11 ms before zygotes, when this was chosen), so confined calls are packed up to
# CONFINED_SCALE times longer: under 0.2 s, ~1 s of work a pack (the fork then costs under 1 %;
# bench/results.md, call-sandbox and throughput-20ms).
CONFINED_SCALE = 20
# The runtime hands a large sweep over in slices (`Session.dispatch`), inside `one_submission()`:
# there a slice of the same function, directory and environment as an earlier one joins it while
# it waits for its probes, or runs as they decided. So a sweep is probed once, not once per slice.

# Windows. dask keeps a few kB per task on the scheduler and on the client, so a sweep handed
# over whole costs memory in proportion to its size. At most WINDOW dask tasks (a profile's
# `dask_window`) are in flight; the rest wait in DaskJobs' queue (small records, not futures) and are submitted
# as results come back. Probes go to the front of the queue: they decide how the rest runs.
WINDOW = 4000
REFILL_EVERY = 0.2  # seconds at most between looks while launches wait for room
# A pack holds up to MAX_PACK calls, so WINDOW packs could be a whole sweep of a million calls sent
# to the scheduler (in this process) at once, each call pickled there (~0.4 kB). At most PACKS_AHEAD
# packs per worker thread are in flight: a thread runs one while the next waits on its worker, and
# a few more cover the look between results; the rest wait here as small records.
PACKS_AHEAD = 2 * PACKS_PER_THREAD
THREADS_EVERY = 2.0  # seconds between looks at how many worker threads the cluster has
# dask keeps each comm's last messages under 1 MB for its developers (`distributed.admin.low-level-
# log-length`, 1,000 by default): each of ours carries a pack of calls, so the client's log alone
# kept a sweep's arguments in the kernel (~140 B a call, growing with every sweep up to 1,000
# packs). Lowered to this in the process that starts a cluster (and so in its local workers).
RECENT_MESSAGES = 4
# Results are not taken in faster than the ledger commits them: while more reports than this wait
# for the recorder, no more work goes to dask (at a million calls the recorder is the bottleneck,
# and its queue held ~0.25 kB a call: the outcome, its report and its value).
BACKLOG = 10_000
# A large sweep is fed (`feed`): its calls are made into Launches and queued here a slice at a time,
# while fewer than FEED_AHEAD wait here (queued or held for their probes), instead of a million at once.
FEED_AHEAD = 10_000
TIMED_FUNCTIONS = 256  # how many functions' call times are kept (each its last TIMED_CALLS)

# A worker that dies under a call ends that call's attempt at once (cause "lost"; the reconcile
# loop requeues it): dask's own reruns (allowed-failures, 3 by default) would run the call again
# inside one attempt, where the ledger cannot see it.
ALLOWED_FAILURES = 0


def _collect_interval(pending: int) -> float:
    """Seconds between looks at pending dask tasks (a new submission wakes the collector early).

    Every gather is a round trip through the event loop the scheduler runs on,
    so with thousands of tasks in flight a look per ~second is cheaper for the
    scheduler than many small ones; a handful of tasks are looked at every 5 ms.

    >>> _collect_interval(0), _collect_interval(1), _collect_interval(100), _collect_interval(5000)
    (1.0, 0.005, 0.05, 1.0)
    """
    return 1.0 if not pending else min(1.0, max(0.005, pending * 5e-4))


def pack_size(durations: Sequence[float], jobs: int, threads: int, scale: float = 1) -> int:
    """How many jobs to run per dask task, from the probes' durations (seconds); `scale` stretches
    PACK_BELOW and PACK_SECONDS (CONFINED_SCALE for confined calls).

    >>> pack_size([0.0001] * 8, jobs=2000, threads=2)
    250
    >>> pack_size([0.0001, 0.5], jobs=2000, threads=2)   # one slow probe: no packing
    1
    >>> pack_size([0.002] * 8, jobs=100_000, threads=64)
    25
    >>> pack_size([0.02] * 8, jobs=300, threads=2), pack_size([0.02] * 8, jobs=300, threads=2, scale=CONFINED_SCALE)
    (1, 38)
    """
    slowest = max(durations, default=PACK_BELOW * scale)
    if slowest >= PACK_BELOW * scale:
        return 1
    by_time = int(PACK_SECONDS * scale / max(slowest, 1e-5))
    by_threads = -(-jobs // (PACKS_PER_THREAD * max(1, threads)))
    return max(1, min(MAX_PACK, by_time, by_threads))


class _Call(NamedTuple):
    """A Python call waiting or in flight: what its worker needs and its Outcome names (a Launch is
    several times larger, and a sweep's calls may wait here a long time)."""

    job_id: int
    attempt: int
    job_index: int  # HTC_JOB_INDEX (`index` would hide tuple.index)
    args: tuple
    kwargs: dict[str, Any]
    log_prefix: str  # its logs are f"{log_prefix}{job_id}.out" and ".err": one string a task (`_interned`)

    @property
    def logs(self) -> tuple[str, str]:
        return f"{self.log_prefix}{self.job_id}.out", f"{self.log_prefix}{self.job_id}.err"


Job = Launch | _Call  # packed MPI launches stay Launches: few, and they need all of it


@dataclass(eq=False)  # compared by identity
class _Held:
    """The rest of a submission, waiting for its probe jobs' timings."""

    runner: JobRunner
    launches: list[_Call]
    probes: set[int]  # job ids still running
    group: tuple = ()  # what its jobs share: (id of the function, cwd, environment)
    durations: list[float] = field(default_factory=list)
    since: float | None = None  # when its probes left the queue (handed to dask or cancelled), a worker up
    timed: float | None = None  # when its first probe was timed


@dataclass(eq=False)
class _Verdict:
    """How the probes of a submission decided its jobs run, for the submissions that continue it."""

    runner: JobRunner
    durations: list[float] | None  # None: run one per task
    threads: int


@dataclass(frozen=True)
class _Mpi:
    """How a packed MPI launch runs: holding `cores` of the allocation's slots."""

    cores: int


@dataclass(frozen=True)
class _Command:
    """A command job (on a pilot): run by `pilot_commands.run_on_worker`."""


How = JobRunner | _Mpi | _Command  # what a waiting dask task runs: a JobRunner over its pack, or a Launch


def log_prefix(job_id: int, out: str, err: str) -> str:
    """The prefix p of a call's logs `out` and `err`, f"{p}{job_id}.out" and ".err" (as dispatch names them).

    >>> log_prefix(7, "/logs/j7.out", "/logs/j7.err")
    '/logs/j'
    >>> log_prefix(7, "/logs/a.out", "/logs/a.err")
    Traceback (most recent call last):
    htc_notebook.errors.BackendError: job 7's logs are not <prefix>7.out and .err: '/logs/a.out', '/logs/a.err'
    """
    prefix = out[:len(out) - len(f"{job_id}.out")]
    if out != f"{prefix}{job_id}.out" or err != f"{prefix}{job_id}.err":
        raise BackendError(f"job {job_id}'s logs are not <prefix>{job_id}.out and .err: {out!r}, {err!r}")
    return prefix


class DaskJobs:
    """Runs Python launches on the cluster `make_cluster()` returns, started on first use."""

    def __init__(self, make_cluster: Callable[[], Any], reporter: Reporter, *, pool: PoolSpec | None = None,
                 window: int | None = None, call_times: Callable[[int, str], list[float]] | None = None,
                 on_client: Callable[[Any, Any], None] | None = None):
        """`call_times(job_id, payload)`: how long that function's calls took before (the ledger's
        `call_durations`), so a new session's pilots know what to expect before they time any.
        `on_client(client, cluster)` is called once the client is made, however it was started
        (a submission, `scale`, `start`)."""
        self._make_cluster = make_cluster
        self._on_client = on_client
        self._call_times = call_times
        self._reporter = reporter
        self._pool = pool  # packed allocations: where Python MPI jobs run (an MPI rank pool)
        self.window = window or WINDOW  # at most this many dask tasks in flight
        self.peak_in_flight = 0  # the most dask tasks that were in flight at once (for tests and benchmarks)
        self.peak_packs_in_flight = 0  # the most packs (dask tasks of more than one call) in flight at once (likewise)
        self._threads, self._threads_seen = 0, -THREADS_EVERY  # the cluster's worker threads, when last looked
        self._client: Client | None = None
        self._cluster = None
        self._tasks: dict[str, tuple[list[Job], object]] = {}  # dask key -> (its jobs, future): in flight
        self._key_of: dict[int, str] = {}  # job id -> dask key
        self._place: dict[int, int] = {}  # job id -> its place in its dask task's pack (with _key_of)
        self._runner_of: dict[str, JobRunner] = {}  # dask key -> the JobRunner of its calls, in flight
        # a function's digest -> how long its last calls took (of the TIMED_FUNCTIONS timed last)
        self._took: OrderedDict[str, deque[float]] = OrderedDict()
        self._queue: deque[tuple[How, Sequence[Job]]] = deque()  # dask tasks waiting for room in the window
        self._waiting: dict[int, int] = {}  # job id -> attempt, for jobs queued or held that are still to run
        self._held: list[_Held] = []
        self._feeds: deque[Feed] = deque()  # the rest of large submissions, taken from as the queue drains
        self._taking: set[int] | None = None  # while a feed's slice is made: the jobs cancelled meanwhile
        self._feeder: threading.Thread | None = None  # takes from the feeds while they last (`_feed_loop`)
        self._feed_now = threading.Event()  # set when the queue runs low: the feeder looks at once
        self._verdicts: dict[tuple, _Verdict] = {}  # in one_submission(): group -> how its probes decided
        self._open = 0  # one_submission() contexts open
        self._prefixes: dict[str, str] = {}  # the log prefixes of queued calls, one string each
        self._collector: threading.Thread | None = None
        self._wake = threading.Event()  # set by a submission: the collector looks at once
        # keys whose results died with a worker (dask's "remove-worker" event), appended on the
        # client's event loop: dask runs them again, within the same attempt, unless they count as lost
        self._lost_keys: deque[list] = deque()
        self._rounds = 0
        self._chains = Chains()  # calls sent behind their parents' dask tasks (dask_chain.py)
        self._lock = threading.Lock()

    @property
    def cluster(self):
        self.client  # noqa: B018 - starts it
        return self._cluster

    @property
    def client(self):
        """The dask Client, with its cluster started on first use (the Client takes the cluster's
        TLS credentials from it: `dask_security`)."""
        with self._lock:
            if self._client is None:
                from distributed import Client

                from htc_notebook.backends.stop_cancelled import NAME, StopCancelledCalls

                import dask

                if dask.config.get("distributed.admin.low-level-log-length", RECENT_MESSAGES) > RECENT_MESSAGES:
                    dask.config.set({"distributed.admin.low-level-log-length": RECENT_MESSAGES})
                self._cluster = self._make_cluster()
                self._client = Client(self._cluster)
                self._client.subscribe_topic("all", self._on_event)
                self._client.register_plugin(StopCancelledCalls(), name=NAME)
                if self._on_client is not None:
                    self._on_client(self._client, self._cluster)
            return self._client

    @property
    def dashboard_link(self) -> str | None:
        """The cluster's dashboard (on loopback, `dask_security`), the cluster started on first use."""
        return dashboard_link(self.client.scheduler_info().get("services", {}).get("dashboard"))

    def _on_event(self, event) -> None:
        """dask's cluster events (on the client's event loop: no lock taken here). A worker removed
        with finished results nobody collected yet: those calls are lost, even if dask runs them
        again before the collector looks (it sends this before it reschedules them)."""
        msg = event[1]
        if isinstance(msg, dict) and msg.get("action") == "remove-worker" and msg.get("lost-computed-tasks"):
            self._lost_keys.append(list(msg["lost-computed-tasks"]))
            self._wake.set()

    @property
    def started(self) -> bool:
        return self._client is not None

    def submit(self, launches: Sequence[Launch]) -> None:
        """Queue these launches (probes of a large submission first) and hand dask what fits the window."""
        if launches:
            self.client  # noqa: B018 - starts the cluster
            self._submit(launches)
            self._refill()
            self._start_collector()

    def feed(self, source: Feed) -> None:
        """Queue `source`'s calls a slice at a time, while fewer than FEED_AHEAD wait here. Until it is
        used up, the submission it continues stays open (`one_submission`): its slices join the probed
        ones or run as their probes decided."""
        self.client  # noqa: B018 - starts the cluster
        with self._lock:
            self._feeds.append(source)
            self._open += 1
            if self._feeder is None:
                self._feeder = threading.Thread(target=self._feed_loop, name="htc-feed", daemon=True)
                self._feeder.start()
        self._feed_now.set()
        self._start_collector()

    def _feed_loop(self) -> None:
        """The feeder thread: slices are made here, beside the collector (which hands them to dask),
        as they were made beside it when a sweep was handed over whole; it ends with the last feed."""
        while True:
            self._feed_now.wait(REFILL_EVERY)
            self._feed_now.clear()
            with self._lock:
                if not self._feeds:  # used up, or the backend closed
                    self._feeder = None
                    return
            self._top_up()

    def _top_up(self) -> None:
        """Take slices from the first feed while fewer than FEED_AHEAD calls wait here (on the feeder
        thread only). A job cancelled while its slice is made is dropped as a queued one is (`_taking`)."""
        while True:
            with self._lock:
                if not self._feeds or self._client is None or len(self._waiting) >= FEED_AHEAD:
                    return
                source, self._taking = self._feeds[0], set()
            launches = take_from(source, self._reporter, "sweep")  # the ledger read and the Launches, outside the lock
            if launches:
                self._submit(launches, fed=True)
                del launches  # queued as small records: gone before the next slice is made
                self._wake.set()  # the collector hands them to dask now
                continue
            with self._lock:  # used up
                self._taking = None
                if source in self._feeds:  # (not if the backend closed meanwhile)
                    self._feeds.remove(source)
                    self._close_submission()
            source.close()

    def _close_submission(self) -> None:
        """One `one_submission` (or feed) less open; with the lock held."""
        self._open -= 1
        if not self._open:
            self._verdicts = {}

    def _submit(self, launches: Sequence[Launch], fed: bool = False) -> None:
        """Queue launches (see `submit`); `fed`: a feed's slice, made while `_taking` collected cancels."""
        steps: dict[int, list[Launch]] = {}
        commands: list[Launch] = []
        calls: dict[tuple, list[Launch]] = {}
        behind: list[Behind] = []
        prefixes: dict[int, str] = {}  # job id -> its logs' prefix (`log_prefix`), for the queued calls
        runners: dict[tuple, JobRunner] = {}  # one per function and what its calls share, as for the others
        for launch in launches:
            if launch.after_jobs and launch.mpi is None:  # behind its parents' dask tasks (dask_chain.py)
                behind.append(self._behind(launch, runners))
            elif launch.mpi is not None:  # packed MPI (SLURM)
                steps.setdefault(launch.cores, []).append(launch)
            elif launch.kind == "command":  # on a pilot (SLURM)
                commands.append(launch)
            else:
                shared = frozenset((k, v) for k, v in launch.env.items() if k not in PER_JOB_ENV)
                group_key = (id(launch.call.fn), launch.cwd, shared, launch.view, launch.memory)
                prefixes[launch.job_id] = log_prefix(launch.job_id, launch.log_out, launch.log_err)  # or refused
                calls.setdefault(group_key, []).append(launch)  # before anything is queued
        with self._lock:
            dropped: set[int] = set()
            if fed:
                dropped, self._taking = self._taking or set(), None
                if self._client is None:  # closed while the slice was made: never run
                    unrun = [launch for launch in launches if launch.job_id not in dropped]
                    for launch in unrun:
                        self._reporter.finished(Outcome(launch.job_id, launch.attempt, "CANCELLED",
                                                        reason="session closed before the job finished"))
                    return
            self._waiting.update((launch.job_id, launch.attempt) for launch in launches if launch.job_id not in dropped)
            self._chains.behind += behind
            self._queue.extend((_Mpi(cores), [launch]) for cores, group in steps.items() for launch in group)
            self._queue.extend((_Command(), [launch]) for launch in commands)
            for key, same in calls.items():
                group = [_Call(launch.job_id, launch.attempt, int(launch.env.get("HTC_JOB_INDEX", 0)), launch.call.args,
                               launch.call.kwargs, self._interned(prefixes[launch.job_id]))
                         for launch in same]
                held = next((h for h in self._held if h.group == key), None) if self._open else None
                verdict = self._verdicts.get(key)
                if held is not None:  # continues a submission waiting for its probes: wait with it
                    held.launches += group
                    continue
                if verdict is not None:  # continues a submission its probes decided: run as they said
                    self._queue_packed(verdict.runner, group, verdict.durations, verdict.threads)
                    continue
                runner = JobRunner(same[0].call.fn, str(key[1]), dict(key[2]),
                                   max((launch.timeout for launch in same if launch.timeout), default=None),
                                   view=key[3], memory_mib=key[4])
                took = self._took.get(runner.digest)
                if took:
                    runner.expected = p95(took)
                elif self._call_times is not None and same[0].spec.payload:  # not timed here yet: as before
                    self._time(runner, [{"ok": True, "started": 0.0, "ended": t}
                                        for t in self._call_times(same[0].job_id, same[0].spec.payload)])
                if len(group) > 2 * PROBE_JOBS:
                    probes, rest = group[:PROBE_JOBS], group[PROBE_JOBS:]
                    self._held.append(_Held(runner, rest, {launch.job_id for launch in probes}, key))
                    self._queue.extendleft((runner, [launch]) for launch in reversed(probes))
                else:
                    self._queue.extend((runner, [launch]) for launch in group)

    def _interned(self, prefix: str) -> str:
        """One string for a log prefix all calls of a task share (`log_prefix`): a queued call keeps
        it, not two paths of its own (~0.2 kB). With the lock held."""
        return self._prefixes.setdefault(prefix, prefix)

    def _behind(self, launch: Launch, runners: dict[tuple, JobRunner]) -> Behind:
        """A call to send behind its parents' dask tasks, as it waits for them (`runners`: those made
        for this submission's calls so far, by what they share)."""
        shared = frozenset((k, v) for k, v in launch.env.items() if k not in PER_JOB_ENV)
        group = (id(launch.call.fn), launch.cwd, shared, launch.view, launch.memory, launch.timeout)
        runner = runners.get(group)
        if runner is None:
            runner = runners[group] = JobRunner(launch.call.fn, str(launch.cwd), dict(shared), launch.timeout,
                                                view=launch.view, memory_mib=launch.memory)
            took = self._took.get(runner.digest)
            runner.expected = p95(took) if took else None
        log_prefix(launch.job_id, launch.log_out, launch.log_err)  # or refused before anything is queued
        job = (launch.job_id, int(launch.env.get("HTC_JOB_INDEX", 0)), launch.call.args, launch.call.kwargs,
               (launch.log_out, launch.log_err))
        return Behind(job, launch.attempt, runner, launch.after_jobs)

    @contextmanager
    def one_submission(self) -> Iterator[None]:
        """The submissions made inside are one (a sweep handed over in slices): a group of calls
        probed by the first slice is not probed again; later slices run as its probes decide."""
        with self._lock:
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._close_submission()

    def _refill(self) -> None:
        """Hand waiting dask tasks to dask while fewer than `window` are in flight, fewer than
        PACKS_AHEAD packs per worker thread, and the recorder has at most BACKLOG reports to commit.

        Under the lock from queue to tracking, so a cancel finds each job either
        waiting or in flight.
        """
        if self._feeds and len(self._waiting) < FEED_AHEAD:
            self._feed_now.set()
        threads = self._worker_threads() if self._queue else self._threads
        behind = self._reporter.backlog() > BACKLOG  # the recorder's: more waits here meanwhile
        with self._lock:
            client, room = self._client, 0 if behind else self.window - len(self._tasks)
            ready: list[tuple[How, list]] = []  # a pack: Launches for an _Mpi, _Calls for a JobRunner
            if client is None:
                return
            packed = sum(1 for pack, _ in self._tasks.values() if len(pack) > 1)  # packs in flight
            packs_room = PACKS_AHEAD * max(1, threads) - packed
            while room > 0 and self._queue:
                if len(self._queue[0][1]) > 1 and packs_room <= 0:
                    break  # in order: what is queued behind a pack waits with it
                how, pack = self._queue.popleft()
                # cancelled ones never run
                pack = [launch for launch in pack if self._waiting.get(launch.job_id) == launch.attempt]
                if pack:
                    for launch in pack:
                        del self._waiting[launch.job_id]
                    ready.append((how, pack))
                    room -= 1
                    packs_room -= len(pack) > 1
                    packed += len(pack) > 1
            for (how, many), group in groupby(ready, key=lambda item: (item[0], len(item[1]) > 1)):
                packs = [pack for _, pack in group]
                if isinstance(how, _Mpi):
                    futures = self._map_mpi(client, how.cores, [p[0] for p in packs])
                elif isinstance(how, _Command):
                    futures = client.map(run_on_worker, [p[0] for p in packs], key=[task_key(p[0]) for p in packs],
                                         pure=False)
                else:
                    futures = self._map(client, how, packs, many)
                for pack, fut in zip(packs, futures, strict=True):
                    self._tasks[fut.key] = (pack, fut)
                    if isinstance(how, JobRunner):
                        self._runner_of[fut.key] = how
                    for i, launch in enumerate(pack):
                        self._key_of[launch.job_id] = fut.key
                        self._place[launch.job_id] = i
            unfound = self._send_behind(client, room) if self._chains.behind else []
            self.peak_in_flight = max(self.peak_in_flight, len(self._tasks))
            self.peak_packs_in_flight = max(self.peak_packs_in_flight, packed)
            now = time.monotonic()
            up = self._workers_up() if any(held.since is None for held in self._held) else False
            for held in self._held:  # its probes' time starts once none of them waits for room, and workers are up
                if held.since is None and up and self._waiting.keys().isdisjoint(held.probes):
                    held.since = now
        for b in unfound:  # requeued (not its fault), it then waits in the ledger for its parents
            self._reporter.finished(Outcome(b.job[0], b.attempt, "FAILED", cause="lost", reason=(
                "not run: the result of a job it depends on was no longer held by this session's dask client "
                "when it was sent behind it")))

    def _worker_threads(self) -> int:
        """The cluster's worker threads, looked up at most every THREADS_EVERY s (a round trip that
        carries only the totals); 0 before the cluster starts. Not with the lock held."""
        client, now = self._client, time.monotonic()
        if client is not None and now - self._threads_seen >= THREADS_EVERY:
            self._threads_seen = now
            try:
                self._threads = int(client.scheduler_info(n_workers=0).get("total_threads") or 0)
            except Exception as exc:  # noqa: BLE001 - a closing client: the last count stands
                log.debug("could not read the cluster's threads: %s", exc)
        return self._threads

    def _workers_up(self) -> bool:
        """Has the cluster a worker yet? (Pilots take seconds to start: PROBE_WAIT counts from then, or a
        cold sweep's probes would time out while no worker runs them, and the sweep run one call to a
        dask task: 400 trivial calls on the test cluster's pilots took 4.5 s after the first started.)"""
        info = getattr(self._cluster, "scheduler_info", None)
        return not isinstance(info, dict) or bool(info.get("workers"))

    def _send_behind(self, client, room: int) -> list[Behind]:
        """Hand dask, within `room`, the calls waiting behind parents that are all dask tasks (or
        collected) by now; with the lock held. Returns those a parent of which is found nowhere."""
        still, unfound, ready = [], [], []
        now = time.monotonic()
        for b in self._chains.behind:
            if self._waiting.get(b.job[0]) != b.attempt:
                continue  # cancelled
            got = self._chains.inputs(b, {p: where for p in b.parents if (where := self._in_flight(p))},
                                      self._waiting, now) if room > 0 else None
            if got is None:
                still.append(b)
                continue
            del self._waiting[b.job[0]]
            if got is False:
                unfound.append(b)
                continue
            ready.append((b, got))
            room -= 1
        self._chains.behind = still
        for _, group in groupby(ready, key=lambda item: id(item[0].runner)):  # one client call a runner
            items = list(group)
            calls = [_Call(b.job[0], b.attempt, b.job[1], b.job[2], b.job[3],
                           self._interned(log_prefix(b.job[0], *b.job[4]))) for b, _ in items]
            futures = client.map(partial(run_after, items[0][0].runner), [b.job for b, _ in items],
                                 [got for _, got in items], key=[_key([c]) for c in calls], pure=False)
            for (b, got), call, fut in zip(items, calls, futures, strict=True):
                self._tasks[fut.key] = ([call], fut)
                self._runner_of[fut.key] = b.runner
                self._key_of[call.job_id] = fut.key
                self._place[call.job_id] = 0
                self._chains.follows[fut.key] = [f for f, _ in got.values() if not isinstance(f, dict)]
        return unfound

    def _in_flight(self, job_id: int) -> tuple[Any, int] | None:
        """The dask task running job `job_id` and the job's place in its pack; with the lock held."""
        key = self._key_of.get(job_id)
        if key is None or key not in self._tasks:
            return None
        return self._tasks[key][1], self._place[job_id]

    def _map_mpi(self, client, cores: int, group: list[Launch]) -> list:
        """Packed MPI launches, each holding `cores` of the allocation's slots while it runs:
        Python functions on the allocation's rank pool, programs as launcher steps.
        One future per launch, in `group`'s order."""
        futures = []
        for launch in group:  # few and long: one client call each keeps the order simple
            if launch.command:  # a launcher line; the rest are functions (`mpi_jobs.pooled`)
                futures.append(client.submit(run_step, launch.command, launch.env, str(launch.cwd),
                                             (launch.log_out, launch.log_err), launch.timeout, key=_key([launch]),
                                             resources={SLOTS: cores}, pure=False))
            else:
                payload = cloudpickle.dumps((launch.call.fn, launch.call.args, launch.call.kwargs))
                layout = (launch.mpi.nodes, launch.mpi.ranks_per_node, launch.mpi.cpus_per_rank)
                assert self._pool is not None  # Python MPI functions are packed only where there is a rank pool
                pool = for_task(self._pool, launch.view)  # the task's own pool
                futures.append(client.submit(run_pooled, pool, payload, layout, str(launch.cwd), launch.env,
                                             (launch.log_out, launch.log_err), launch.timeout, key=_key([launch]),
                                             resources={SLOTS: cores}, pure=False))
        return futures

    def _map(self, client, runner: JobRunner, packs: list[list[_Call]], many: bool) -> list:
        """One dask task per pack of jobs (packs of one, or `many` quick ones each).

        A pack of many travels as one pickle that `_run_pack` loads on the worker: the scheduler
        keeps its recent messages to each worker (dask's low-level log, 1,000 per worker), and there
        a pack's jobs as Python objects would cost ~0.6 kB each, as bytes ~0.15 kB."""
        jobs = [[(c.job_id, c.job_index, c.args, c.kwargs, c.logs) for c in pack] for pack in packs]
        keys = [_key(pack) for pack in packs]
        if many:
            return client.map(partial(_run_pack, runner), [cloudpickle.dumps(j) for j in jobs], key=keys, pure=False)
        return client.map(runner, jobs, key=keys, pure=False)

    def _start_collector(self) -> None:
        self._wake.set()
        with self._lock:
            if self._collector is None:
                self._collector = threading.Thread(target=self._collect, name="htc-collect", daemon=True)
                self._collector.start()

    def _collect(self) -> None:
        """Report finished tasks in bulk, then sleep a while; until the backend closes.

        Polls each future's state (an attribute read, no round trip) and gathers
        the finished ones with one call: per-future callbacks would wake the
        client's event loop once per job, which costs more than trivial jobs do.
        """
        while True:
            if self._collect_once() is None:
                return
            self._refill()  # after the round: the futures it reported are released by now
            interval = _collect_interval(len(self._tasks))
            self._wake.wait(0.02 if self._held else min(interval, REFILL_EVERY) if self._queue or self._feeds
                            else interval)
            self._wake.clear()

    def _collect_once(self) -> int | None:
        """Report every task that is no longer pending, and release held submissions whose probes
        are timed; None once the backend is closed.

        A round of its own so no reference to a future (which keeps its result
        alive on a worker) outlives it.
        """
        with self._lock:
            if self._client is None:
                self._collector = None
                return None
            self._rounds += 1
            client = self._client
            done = _not_pending(self._tasks.values(), full=self._rounds % 8 == 0)
            gone = set()
            while self._lost_keys:
                gone.update(self._lost_keys.popleft())
            seen = {fut.key for _, fut in done}
            done += [self._tasks[k] for k in gone if k in self._tasks and k not in seen]
            wanted = []  # per task: which of its jobs are still wanted (not cancelled meanwhile)
            runners = []
            chained, orphaned = set(), set()  # tasks of calls sent behind parents; those whose parent's task failed
            for pack, fut in done:
                del self._tasks[fut.key]
                runners.append(self._runner_of.pop(fut.key, None))
                wanted.append(self._claim(pack, fut.key))
                self._chains.collecting.update(launch.job_id for launch in pack)
                if fut.key in self._chains.follows:
                    chained.add(fut.key)
                    if fut.key not in gone and self._chains.orphaned(fut.key):
                        orphaned.add(fut.key)
                    del self._chains.follows[fut.key]
        outcomes = []
        # read once: a finished future turns "lost" if its worker dies
        status = ["lost" if f.key in gone else f.status for _, f in done]
        finished = [f for (_, f), st in zip(done, status, strict=True) if st == "finished"]
        values = iter(self._gather(client, finished))
        lost = []
        for (pack, fut), keep, st, runner in zip(done, wanted, status, runners, strict=True):
            value = next(values) if st == "finished" else None
            if st == "lost" or isinstance(value, Exception):  # finished, but its worker died before the gather
                lost.append(fut)
                outcomes += [_lost(launch) for launch, k in zip(pack, keep, strict=True) if k]
            elif fut.key in orphaned or (fut.key in chained and st == "finished" and _for_a_parent(value)):
                with self._lock:  # a parent did not succeed (or its task was lost): the ledger decides for it
                    self._chains.orphans.update((launch.job_id, launch.attempt)
                                                for launch, k in zip(pack, keep, strict=True) if k)
            elif st == "finished":
                reports = value if isinstance(value, list) else [value] * len(pack)  # a pack's list, or one report
                outcomes += [_outcome(launch, fut, r) for launch, r, k in zip(pack, reports, keep, strict=True) if k]
                if runner is not None:
                    self._time(runner, reports)
                    with self._lock:  # for calls sent behind these after they ended
                        for launch, r in zip(pack, reports, strict=True):
                            self._chains.collected(launch.job_id, r)
            else:
                outcomes += [_outcome(launch, fut, _exception(fut)) for launch, k in zip(pack, keep, strict=True) if k]
        if lost:  # dask would run them again within the same attempt, where the ledger cannot see it
            client.cancel(lost)
        for outcome in outcomes:
            self._reporter.finished(outcome)
        with self._lock:
            self._chains.collecting.clear()  # their reports are in `recent` by now (those to keep)
        if self._held:
            self._release(client, outcomes)
        return len(done)

    def _time(self, runner: JobRunner, reports: list) -> None:
        """Learn how long the runner's calls take: the p95 of its last calls that succeeded, carried by
        the dask tasks submitted from now on (a pilot near its deadline starts none that would not fit)."""
        took = self._took.setdefault(runner.digest, deque(maxlen=TIMED_CALLS))
        self._took.move_to_end(runner.digest)
        if len(self._took) > TIMED_FUNCTIONS:
            self._took.popitem(last=False)
        took.extend(r["ended"] - r["started"] for r in reports if isinstance(r, dict) and r.get("ok"))
        if took:
            runner.expected = p95(took)

    def _claim(self, pack: list[Job], key: str) -> list[bool]:
        """Which jobs of a finished task are still its own (not cancelled or resubmitted since),
        forgetting them; called with the lock held."""
        keep = [self._key_of.get(launch.job_id) == key for launch in pack]
        for launch, k in zip(pack, keep, strict=True):
            if k:
                del self._key_of[launch.job_id]
                del self._place[launch.job_id]
        return keep

    def _release(self, client, outcomes: list[Outcome]) -> None:
        """Time the probes that ended, and queue the rest of a submission once that decides how:
        packed when every probe was quick; one job per task as soon as one probe was slow; as the
        probes timed say PROBE_WAIT after the first was timed; one job per task if none was timed
        PROBE_CAP after the probes were handed to dask with a worker up."""
        ready = []
        with self._lock:
            now = time.monotonic()
            for held in self._held:
                for o in outcomes:
                    if o.job_id in held.probes:
                        held.probes.discard(o.job_id)
                        if o.started is not None and o.ended is not None:
                            held.durations.append(o.ended - o.started)
                            held.timed = held.timed or now
                slow = max(held.durations, default=0) >= PACK_BELOW * _scale(held.runner)  # decided: no packing
                late = (held.timed is not None and now - held.timed > PROBE_WAIT) or (
                    held.since is not None and now - held.since > PROBE_CAP)
                if slow or not held.probes or late:
                    ready.append(held)
        # the ready ones stay held while the scheduler is asked for its threads (a round trip, long
        # under load): a slice of the same submission arriving meanwhile joins them, where it would
        # otherwise find neither them nor their verdict and be probed again
        threads = sum(client.nthreads().values()) if any(h.durations for h in ready) else 0
        with self._lock:
            self._held = [h for h in self._held if h not in ready]
            for held in ready:
                durations = held.durations or None  # probes still out: those timed decide; none: unpacked
                log.debug("%d jobs after probes of %s s: packs of %d", len(held.launches), durations,
                          1 if durations is None else pack_size(durations, len(held.launches), threads,
                                                                _scale(held.runner)))
                if self._open:
                    self._verdicts[held.group] = _Verdict(held.runner, durations, threads)
                self._queue_packed(held.runner, held.launches, durations, threads)

    def _queue_packed(self, runner: JobRunner, calls: list[_Call], durations: list[float] | None, threads: int) -> None:
        """Queue calls packed as their probes' `durations` say (None: one per task); with the lock held.
        Cancelled ones are dropped when their pack leaves the queue."""
        n = 1 if durations is None else pack_size(durations, len(calls), threads, _scale(runner))
        self._queue.extend((runner, pack) for pack in _even(calls, n))

    def _gather(self, client: Client, futures: list) -> list:
        try:
            return client.gather(futures, errors="raise") if futures else []
        except Exception as exc:  # noqa: BLE001 - a worker died after finishing: which results are gone?
            log.info("gathering %d finished calls: %s: %s", len(futures), type(exc).__name__, exc)
        out = []
        for fut in futures:
            try:
                out.append(fut.result(timeout=30) if fut.status == "finished" else LookupError(fut.status))
            except Exception as exc:  # noqa: BLE001 - the call's own exception, or the lost worker's: reported per job
                out.append(exc)
        return out

    def cancel(self, job_ids: Sequence[int]) -> None:
        """Stop these jobs: a dask task is cancelled once none of its jobs is wanted."""
        drop, futures = set(job_ids), []
        with self._lock:
            if self._taking is not None:  # a feed's slice is being made: dropped once it is queued
                self._taking.update(drop)
            for j in drop:  # queued, held or behind their parents: dropped when they would leave the queue
                self._waiting.pop(j, None)
                self._chains.orphans.pop(j, None)
            keys = {self._key_of.pop(j) for j in drop if j in self._key_of}
            for j in drop:
                self._place.pop(j, None)
            # a pack keeps its jobs in order (its reports line up with them); it ends once none is wanted
            for key in keys:
                pack, fut = self._tasks[key]
                if not any(self._key_of.get(launch.job_id) == key for launch in pack):
                    del self._tasks[key]
                    self._runner_of.pop(key, None)
                    futures.append(fut)
        if futures and self._client is not None:
            self._client.cancel(futures)

    def running(self) -> set[int]:
        with self._lock:
            return set(self._key_of) | self._waiting.keys() | self._chains.orphans.keys()

    def count(self) -> int:
        """How many jobs run here or will: `running()` and those its feeds have not given yet."""
        with self._lock:
            fed = sum(len(source.left()) for source in self._feeds)
        return len(self.running()) + fed

    def close(self) -> None:
        """Stop the cluster; jobs still pending end CANCELLED."""
        with self._lock:
            client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
            pending = [launch for pack, _ in self._tasks.values() for launch in pack]
            waiting = ([launch for _, pack in self._queue for launch in pack]
                       + [launch for h in self._held for launch in h.launches])
            pending += [launch for launch in waiting if self._waiting.get(launch.job_id) == launch.attempt]
            ended = [(launch.job_id, launch.attempt) for launch in pending]
            ended += [(b.job[0], b.attempt) for b in self._chains.behind if self._waiting.get(b.job[0]) == b.attempt]
            ended += list(self._chains.orphans.items())
            self._tasks, self._key_of, self._held, self._queue, self._waiting = {}, {}, [], deque(), {}
            self._place = {}
            self._verdicts, self._chains = {}, Chains()
            feeds, self._feeds = list(self._feeds), deque()
            self._open -= len(feeds)
            feeder = self._feeder
        self._feed_now.set()  # the feeder ends, once the slice it may be making is reported
        if feeder is not None and feeder is not threading.current_thread():
            feeder.join(timeout=60)
        for source in feeds:  # what they did not give yet never runs
            end_untaken(source, self._reporter, "CANCELLED", "session closed before the job finished")
            source.close()
        for job_id, attempt in ended:
            self._reporter.finished(Outcome(job_id, attempt, "CANCELLED",
                                            reason="session closed before the job finished"))
        if client is not None:
            try:  # or the scheduler's own "remove-client" event goes to this closing client (a CRITICAL traceback)
                client.unsubscribe_topic("all")
            except Exception as exc:  # noqa: BLE001 - a client whose scheduler is gone already
                log.info("unsubscribing from dask's events: %s: %s", type(exc).__name__, exc)
            client.close()
        if cluster is not None:
            try:
                cluster.close()
            except Exception as exc:  # noqa: BLE001 - e.g. a pilot SLURM refused never started; nothing to stop
                log.info("closing the dask cluster: %s: %s", type(exc).__name__, exc)


def _scale(runner: JobRunner) -> float:
    """How much longer a pack of `runner`'s calls may be: confined calls cost their dask task more."""
    return CONFINED_SCALE if runner.view is not None else 1


def _run_pack(runner: JobRunner, jobs: bytes) -> list[dict[str, Any]]:
    """On a worker: run a pack of jobs sent as one pickle (see `DaskJobs._map`)."""
    return runner(cloudpickle.loads(jobs))


def _even(calls: list[_Call], n: int) -> list[list[_Call]]:
    """`calls` in packs of at most `n`, as even as can be (no short pack left at the end).

    >>> [len(p) for p in _even(list(range(10)), 4)]   # not [4, 4, 2]
    [4, 3, 3]
    """
    count = -(-len(calls) // n)
    size, extra = divmod(len(calls), count) if calls else (0, 0)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [calls[a:b] for a, b in pairwise(bounds)]


def _key(pack: Sequence[Job]) -> str:
    """The dask key of a task running these jobs: htc-job-<id>-<attempt>[-x<count>]."""
    first = pack[0]
    return f"htc-job-{first.job_id}-{first.attempt}" + (f"-x{len(pack)}" if len(pack) > 1 else "")


def _not_pending(items, full: bool, look: int = 256) -> list:
    """The (jobs, future) pairs whose future has ended.

    dask runs equal-priority tasks roughly in submission order, so a look
    stops after `look` pending futures in a row; every few rounds a full
    look catches the ones that finished out of order.
    """
    done, streak = [], 0
    for jobs, fut in items:
        if fut.status != "pending":
            done.append((jobs, fut))
            streak = 0
        else:
            streak += 1
            if not full and streak >= look:
                break
    return done


def _for_a_parent(value: Any) -> bool:
    """Did a call sent behind its parents not run because one of them did not succeed (`run_after`)?"""
    first = value[0] if isinstance(value, list) and value else None
    return isinstance(first, dict) and first.get("cause") == "dependency"


def _exception(fut) -> BaseException | None:
    if fut.status == "cancelled":
        return None
    try:
        return fut.exception(timeout=30)
    except Exception as exc:  # noqa: BLE001 - a future whose worker is gone: reported as the job's failure
        return exc


def _lost(launch: Job) -> Outcome:
    """A call that ran, but whose result died with its worker before it was collected."""
    return Outcome(launch.job_id, launch.attempt, "FAILED", cause="lost",
                   reason="the worker holding the finished call's result died before the result was collected")


def _outcome(launch: Job, fut, res) -> Outcome:
    """Translate what dask gave back into an Outcome."""
    if isinstance(res, Outcome):  # a command job's (`pilot_commands.run_on_worker`)
        return res
    if isinstance(res, dict) and res.get("mpi_step"):
        from htc_notebook.backends.mpi_jobs import verdict  # here: workers import this module (_run_pack)

        assert isinstance(launch, Launch)  # MPI steps stay Launches (`Job`)
        return verdict(launch, res["exit_code"], res["reason"], host=res["host"], started=res["started"],
                       ended=res["ended"])
    if isinstance(res, dict) and "ok" in res:
        return call_outcome(launch, res)  # reads only job_id and attempt: a _Call will do
    if fut.status == "cancelled":
        return Outcome(launch.job_id, launch.attempt, "CANCELLED", reason="cancelled")
    # dask itself failed: worker died (KilledWorker), the call could not be unpickled, ...
    lost = type(res).__name__ == "KilledWorker"  # its workers died under it (pilot ended, node lost, ...)
    return Outcome(launch.job_id, launch.attempt, "FAILED", cause="lost" if lost else None,
                   reason=f"the worker could not run the job: {type(res).__name__}: {res}")
