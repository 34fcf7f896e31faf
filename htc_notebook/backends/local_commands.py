"""Command jobs on this machine: subprocesses with core slots, timeouts and logs.

Each job runs in its own session (process group) in its task directory, with
stdout/stderr in per-job log files (`command_run`; confined ones: `zygote_jobs`).
A timeout or a cancel kills the whole group.
Jobs wait until enough of the profile's cores are free; lower `priority`
values start first (ON_DEMAND_PRIORITY before ON_DEMAND_ECONOMY).

A large batch is fed (`feed`): a feeder thread makes its next slice into Launches whenever fewer than
FEED_LOW of them wait in the queue, so a million-job batch waits as its rows and a position, not as a
million queued Launches (each ~2 kB with its sandbox line and environment).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import subprocess
import threading
import time
from dataclasses import replace
from typing import Callable, Sequence

import cloudpickle

from htc_notebook.backends.base import Feed, Launch, Reporter, call_outcome, end_untaken, take_from
from htc_notebook.backends.command_run import outcome, run_command
from htc_notebook.backends.mpi_jobs import verdict
from htc_notebook.backends.mpi_pool import RankPool
from htc_notebook.backends.mpi_ranks import kill_group
from htc_notebook.backends.zygote_jobs import ZygoteJobs
from htc_notebook.states import Outcome

log = logging.getLogger(__name__)

FEED_LOW = 1000  # a feed's next slice is made once fewer launches than this wait in the queue


class CommandRunner:
    """Runs command launches as local subprocesses within `cores` slots."""

    def __init__(self, cores: int, reporter: Reporter, *, pools: Callable[[Launch], RankPool]):
        self.cores = cores
        self._pools = pools  # where each Python MPI launch (no command) runs: its task's rank pool
        self._reporter = reporter
        self._free = cores
        self._queue: list[tuple[int, int, Launch]] = []
        self._order = itertools.count()
        self._procs: dict[int, subprocess.Popen] = {}
        self._starting: set[int] = set()  # taken from the queue, their process not yet registered
        self._on_pool: set[int] = set()  # jobs running on the rank pool
        self._cancelled: set[int] = set()
        self._lock = threading.Condition()
        self._closed = False
        self._host = socket.gethostname()
        self._zygote_jobs = ZygoteJobs(reporter, self._host, self._lock, self._ended)  # confined commands
        self._feeds: list[Feed] = []  # the rest of large submissions, taken from as the queue drains
        self._taking: set[int] | None = None  # while a feed's slice is made: the jobs cancelled meanwhile
        self._feeder: threading.Thread | None = None  # takes from the feeds while they last (`_feed_loop`)
        self._thread = threading.Thread(target=self._dispatch_loop, name="htc-commands", daemon=True)
        self._thread.start()

    def submit(self, launches: Sequence[Launch]) -> None:
        with self._lock:
            for launch in launches:
                heapq.heappush(self._queue, (launch.priority, next(self._order), launch))
            self._lock.notify_all()

    def feed(self, source: Feed) -> None:
        """Queue `source`'s launches a slice at a time, whenever fewer than FEED_LOW wait here. Jobs it
        has not given yet are not `running()`: the dispatcher counts them as this process's
        (`TaskRows.runs_here`), and a job cancelled meanwhile is left out of its slice (`Feed.take`)."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._feeds.append(source)
                if self._feeder is None:
                    self._feeder = threading.Thread(target=self._feed_loop, name="htc-command-feed", daemon=True)
                    self._feeder.start()
                self._lock.notify_all()
        if closed:
            self._end_untaken([source])

    def _feed_loop(self) -> None:
        """The feeder thread: a slice is made (outside the lock) whenever the queue runs low; it ends
        with the last feed, or when the runner closes."""
        while True:
            with self._lock:
                while not self._closed and self._feeds and len(self._queue) >= FEED_LOW:
                    self._lock.wait()
                if self._closed or not self._feeds:
                    self._feeder = None
                    return
                source, self._taking = self._feeds[0], set()
            launches = take_from(source, self._reporter, "batch")
            with self._lock:
                dropped, self._taking = self._taking or set(), None
                unrun = [launch for launch in launches if launch.job_id not in dropped]
                if not self._closed:
                    for launch in unrun:
                        heapq.heappush(self._queue, (launch.priority, next(self._order), launch))
                    unrun = []
                    self._lock.notify_all()
                if not launches and source in self._feeds:  # used up
                    self._feeds.remove(source)
            for launch in unrun:  # closed while the slice was made: never run
                self._reporter.finished(Outcome(launch.job_id, launch.attempt, "CANCELLED",
                                                reason="session closed before the job started"))
            if not launches:
                source.close()

    def _end_untaken(self, feeds: Sequence[Feed]) -> None:
        """What these feeds have not given yet never runs: the session closed."""
        for source in feeds:
            end_untaken(source, self._reporter, "CANCELLED", "session closed before the job started")
            source.close()

    def cancel(self, job_ids: Sequence[int]) -> None:
        ids = set(job_ids)
        with self._lock:
            if self._taking is not None:  # a feed's slice is being made: dropped once it is made
                self._taking.update(ids)
            dropped = [item[2] for item in self._queue if item[2].job_id in ids]
            if dropped:
                self._queue = [item for item in self._queue if item[2].job_id not in ids]
                heapq.heapify(self._queue)
            procs = [(jid, p) for jid, p in self._procs.items() if jid in ids]
            self._cancelled.update(jid for jid, _ in procs)
            self._cancelled.update(ids & (self._on_pool | self._starting))  # those starting are killed once started
        for launch in dropped:
            self._reporter.finished(Outcome(launch.job_id, launch.attempt, "CANCELLED",
                                            reason="cancelled before it started"))
        for _, proc in procs:
            kill_group(proc)
        self._zygote_jobs.cancel(ids)

    def running(self) -> set[int]:
        in_zygotes = self._zygote_jobs.running()
        with self._lock:
            return (set(self._procs) | self._on_pool | self._starting | {item[2].job_id for item in self._queue}
                    | in_zygotes)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._zygote_jobs.closing()
            queued = [item[2] for item in self._queue]
            self._queue.clear()
            procs = list(self._procs.items())
            self._cancelled.update(jid for jid, _ in procs)
            self._cancelled.update(self._starting)
            feeds, self._feeds, feeder = self._feeds, [], self._feeder
            self._lock.notify_all()
        if feeder is not None:  # once the slice it may be making is queued (or reported, the runner being closed)
            feeder.join(timeout=60)
        self._end_untaken(feeds)
        for launch in queued:
            self._reporter.finished(Outcome(launch.job_id, launch.attempt, "CANCELLED",
                                            reason="session closed before the job started"))
        for _, proc in procs:
            kill_group(proc)
        self._thread.join(timeout=10)
        self._zygote_jobs.close()

    # -- internals ---------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not (self._queue and self._queue[0][2].cores <= self._free):
                    self._lock.wait()
                if self._closed:
                    return
                _, _, launch = heapq.heappop(self._queue)
                self._free -= launch.cores
                self._starting.add(launch.job_id)
                if self._feeds and len(self._queue) < FEED_LOW:
                    self._lock.notify_all()  # the feeder makes the next slice
            if launch.zygote is not None:  # confined: its view's zygote forks it, no thread of its own
                self._zygote_jobs.start(launch, self._registered)
                continue
            threading.Thread(target=self._run, args=(launch,), name=f"htc-job-{launch.job_id}",
                             daemon=True).start()

    def _registered(self, job_id: int) -> bool:
        """A job is its zygote's (called under the lock): no longer starting; whether it was stopped meanwhile."""
        self._starting.discard(job_id)
        return job_id in self._cancelled

    def _ended(self, launch: Launch) -> None:
        """A job of the zygotes ended: its cores are free."""
        with self._lock:
            self._free += launch.cores
            self._starting.discard(launch.job_id)
            self._cancelled.discard(launch.job_id)
            self._lock.notify_all()

    def _run(self, launch: Launch) -> None:
        if not launch.command:  # a Python MPI function (`mpi_jobs.pooled`); wrapped ones have a launcher line
            return self._run_on_pool(launch)

        def registered(proc: subprocess.Popen) -> bool:
            with self._lock:
                self._starting.discard(launch.job_id)
                self._procs[launch.job_id] = proc
                doomed = launch.job_id in self._cancelled  # cancelled, or the runner closed, while it was starting
            self._reporter.started(launch.job_id, launch.attempt, self._host, f"pid:{proc.pid}")
            return doomed

        def unregistered() -> bool:
            with self._lock:
                self._procs.pop(launch.job_id, None)
                return launch.job_id in self._cancelled

        try:
            ran = run_command(launch, registered=registered, unregistered=unregistered)
        finally:
            with self._lock:
                self._free += launch.cores
                self._starting.discard(launch.job_id)
                self._cancelled.discard(launch.job_id)
                self._lock.notify_all()
        if launch.mpi is None:
            self._reporter.finished(outcome(launch, ran, self._host))
            return
        # an MPI job: the ranks' own reports decide (and carry rank 0's value)
        ranks = verdict(launch, ran.exit_code, ran.reason, host=self._host, started=ran.started, ended=ran.ended)
        self._reporter.finished(replace(ranks, memory_held=ran.memory.how, max_rss_mib=ran.memory.peak_mib,
                                        cause="memory" if ran.cause == "memory" else ranks.cause))

    def _run_on_pool(self, launch: Launch) -> None:
        """A Python MPI launch on the rank pool, holding its cores meanwhile (a cancel drops its result)."""
        with self._lock:
            self._starting.discard(launch.job_id)
            self._on_pool.add(launch.job_id)
        self._reporter.started(launch.job_id, launch.attempt, self._host, "rank pool")
        try:
            report = self._pools(launch).run(cloudpickle.dumps((launch.call.fn, launch.call.args, launch.call.kwargs)),
                                    nodes=1, ranks_per_node=launch.mpi.ranks_per_node,
                                    cpus_per_rank=launch.mpi.cpus_per_rank, cwd=str(launch.cwd), env=launch.env,
                                    logs=(launch.log_out, launch.log_err), timeout=launch.timeout)
        except Exception as exc:  # noqa: BLE001 - a runner bug must still end the job
            report = {"ok": False, "message": f"runner error: {type(exc).__name__}: {exc}", "host": self._host,
                      "started": None, "ended": time.time()}
        finally:
            with self._lock:
                self._free += launch.cores
                self._on_pool.discard(launch.job_id)
                cancelled = launch.job_id in self._cancelled
                self._cancelled.discard(launch.job_id)
                self._lock.notify_all()
        outcome = (Outcome(launch.job_id, launch.attempt, "CANCELLED", reason="cancelled while running")
                   if cancelled else call_outcome(launch, report))
        # the pool's ranks serve many calls: nothing holds one call's memory there
        self._reporter.finished(replace(outcome, memory_held="none") if launch.memory else outcome)

