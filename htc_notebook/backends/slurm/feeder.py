"""Feeding a site's limits: which chunks of a profile's command jobs go to sbatch now, which wait.

Chunks go out only while the site has room (design G8): never more of the user's jobs queued
than the tightest limit (`limits.py`: the QOS's and association's submit limits, MaxJobCount,
the profile's `max_queued`, or what sbatch's refusals taught). The rest wait HELD, with the
reason in words, and go out as the queue drains (`ArrayRunner` calls `feed()` every round). A
transient sbatch error is retried with backoff; a chunk whose sbatch gave no clear answer carries
its intent token and is looked up in squeue by its comment before it is sent again.

A large batch's first PROBES jobs go alone and are timed; the rest wait for them, then run
`bundle_size()` jobs to an array task (or the profile's `bundle`).
"""

from __future__ import annotations

import getpass
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from htc_notebook.backends.base import Launch, Reporter
from htc_notebook.backends.slurm import limits as site_limits
from htc_notebook.backends.slurm import scheduler
from htc_notebook.errors import BackendError
from htc_notebook.states import Outcome
from htc_notebook.spec import PartitionProfile

FEED_SECONDS = 2.0  # how often held work is looked at
PROBES = 8  # a large batch's first jobs run one per array task and are timed
PROBE_WAIT = 120.0  # seconds the rest of the batch waits for the probes before it is sent unbundled
BUNDLE_SECONDS = 20.0  # about this much work per array task when short jobs are bundled
MAX_BUNDLE = 200
LIMITS_TTL = 300.0  # seconds before the site's limits are read again (and a learned one forgotten)
MAX_BACKOFF = 60.0  # seconds between tries while sbatch fails transiently


def bundle_size(median: float | None, jobs: int, slots: int) -> int:
    """How many jobs of `median` seconds an array task runs in turn: about BUNDLE_SECONDS of work,
    but at least two array tasks per slot of the partition (so bundling never leaves it idle).

    >>> bundle_size(0.1, 10_000, 4), bundle_size(30.0, 10_000, 4), bundle_size(None, 50, 4), bundle_size(0.1, 40, 4)
    (200, 1, 1, 5)
    """
    if median is None:
        return 1
    by_time = int(BUNDLE_SECONDS / max(median, 0.01))
    return max(1, min(MAX_BUNDLE, by_time, jobs // (2 * max(slots, 1))))


@dataclass
class Chunk:
    """Launches that go out as one array (one script, consecutive HTC_JOB_INDEX), maybe not yet sent.

    `token` is set once an sbatch of it was attempted without a clear answer: it may be in SLURM
    (looked up by its comment before it is sent again)."""

    launches: list[Launch]
    qos: str | None
    token: str | None = None
    key: object = field(default=None)  # the submit() call that made it
    bundle: int | None = 1  # jobs per array task; None: decided once `probes` have run
    probes: frozenset[int] = frozenset()
    since: float = field(default_factory=time.monotonic)


class Feeder:
    """The held chunks of one profile's command jobs, sent as the site has room."""

    def __init__(self, profile: PartitionProfile, reporter: Reporter, *,
                 send: Callable[[list[Launch], "Chunk"], None], track: Callable[[list[Launch], str, int], None]):
        self.profile = profile
        self._reporter = reporter
        self._send = send  # sbatch part of a chunk (raises BackendError with sbatch's words)
        self._track = track  # watch an array found by its comment: (launches, array job id, bundle)
        self.max_array = 1001  # the cluster's MaxArraySize: set by the runner before chunks are made
        self._lock = threading.Lock()
        self._held: deque[Chunk] = deque()
        self._feed_lock = threading.Lock()
        self._limits: list[site_limits.Limit] = []
        self._limits_read = -LIMITS_TTL  # monotonic time of the last read
        self._learned: site_limits.Limit | None = None  # from sbatch refusing more
        self._retry_at = 0.0
        self._backoff = 1.0
        self._said: dict[int, str] = {}  # held job id -> the reason it was last reported HELD with
        self._timed: dict[int, float | None] = {}  # probe job id -> its run time (None: ended without one)

    def add(self, groups: list[list[Launch]]) -> object:
        """Queue one submission's groups (launches that share a script) as chunks; returns its key
        for `feed(call=...)`. A large group's first PROBES jobs go first, alone, and are timed."""
        call = object()
        with self._lock:
            for group in groups:
                qos, fixed = self._qos(group[0]), self.profile.bundle
                # jobs sent behind their parents (afterok) are not probed: they would wait for them
                if fixed is None and len(group) > 2 * PROBES and not group[0].mpi and not group[0].after:
                    probes, group = group[:PROBES], group[PROBES:]
                    self._timed.update(dict.fromkeys((launch.job_id for launch in probes), -1.0))
                    self._held.append(Chunk(probes, qos, key=call))
                    self._held.append(Chunk(group, qos, key=call, bundle=None,
                                            probes=frozenset(launch.job_id for launch in probes)))
                    continue
                step = self.max_array * (fixed or 1)
                for start in range(0, len(group), step):
                    self._held.append(Chunk(group[start:start + step], qos, key=call, bundle=fixed or 1))
        return call

    def hold(self, groups: list[list[Launch]], tokens: dict[int, str]) -> None:
        """Take over held work of an earlier session (`tokens`: job id -> the intent token of a chunk
        whose sbatch may have gone through); fed like this session's own."""
        with self._lock:
            for group in groups:
                by_token: dict[str | None, list[Launch]] = {}
                for launch in group:
                    by_token.setdefault(tokens.get(launch.job_id), []).append(launch)
                for token, part in by_token.items():
                    for start in range(0, len(part), self.max_array):
                        self._held.append(Chunk(part[start:start + self.max_array], self._qos(part[0]),
                                                token=token))

    def _decide(self, chunk: Chunk) -> bool:
        """Choose an undecided chunk's bundle size once its probes ran (or PROBE_WAIT passed), and
        split it into arrays of at most MaxArraySize tasks. False while it still waits."""
        times = [self._timed.get(j, -1.0) for j in chunk.probes]
        if any(t is not None and t < 0 for t in times) and time.monotonic() - chunk.since < PROBE_WAIT:
            return False
        ran = sorted(t for t in times if t is not None and t >= 0)
        p = self.profile
        slots = p.cores_per_node * p.max_nodes // max(1, chunk.launches[0].cores)
        k = bundle_size(ran[len(ran) // 2] if ran else None, len(chunk.launches), slots)
        step = (self.max_array) * k
        parts = [Chunk(chunk.launches[i:i + step], chunk.qos, key=chunk.key, bundle=k)
                 for i in range(0, len(chunk.launches), step)]
        with self._lock:
            if self._held and self._held[0] is chunk:
                self._held.popleft()
                self._held.extendleft(reversed(parts))
            for j in chunk.probes:
                self._timed.pop(j, None)
        return True

    def _qos(self, launch: Launch) -> str | None:
        p = self.profile
        return (p.economy_qos or p.qos) if launch.priority else p.qos

    # -- feeding ---------------------------------------------------------------------
    def _site(self) -> list[site_limits.Limit]:
        """The site's limits (read every LIMITS_TTL s), the profile's own cap, and a learned one."""
        now = time.monotonic()
        if now - self._limits_read > LIMITS_TTL:
            self._limits_read = now
            self._learned = None
            try:
                self._limits = site_limits.read_limits()
            except BackendError:
                self._limits = []  # the controller does not answer: refusals will teach us
        out = list(self._limits)
        if self.profile.max_queued:
            part = self.profile.partition or self.profile.name
            out.append(site_limits.Limit(f"partition:{part}", self.profile.max_queued,
                                         f"profile {self.profile.name} allows {self.profile.max_queued:,} "
                                         "(max_queued)"))
        if self._learned:
            out.append(self._learned)
        return out

    def room_for(self, launch: Launch, count: int) -> bool:
        """Is there room in the site's limits for `count` jobs like `launch` now (G8)?"""
        return self._room(Chunk([launch] * count, self._qos(launch)))[0] >= count

    def _room(self, chunk: Chunk) -> tuple[int, str | None]:
        limits = site_limits.for_qos(self._site(), chunk.qos)
        return site_limits.room(limits, site_limits.queued_counts()) if limits else (len(chunk.launches), None)

    def feed(self, call: object | None = None) -> None:
        """Send held chunks while there is room; say why the rest waits."""
        with self._feed_lock:
            sent_of_call = False
            while True:
                with self._lock:
                    chunk = self._held[0] if self._held else None
                if chunk is None or time.monotonic() < self._retry_at:
                    break
                if chunk.bundle is None and not self._decide(chunk):
                    self._say_held(f"held: timing the first {PROBES} jobs of the batch, to choose how many "
                                   "to run per array task")
                    break
                if chunk.bundle is None:
                    continue
                try:
                    if chunk.token and self._resolve(chunk):
                        continue
                    free, why = self._room(chunk)
                except BackendError as exc:  # squeue or the controller: try again later
                    self._transient(exc)
                    break
                if free <= 0:
                    assert why is not None  # room() names the limit that leaves none
                    self._say_held(why)
                    break
                part = chunk.launches[:free * chunk.bundle]
                try:
                    self._send(part, chunk)
                except BackendError as exc:
                    kind = site_limits.classify(str(exc))
                    if kind == "limit":  # the queue is full (maybe with others' jobs): wait a round
                        used = site_limits.queued_counts().get("user", 0)
                        self._learned = site_limits.Limit("user", max(used, 1),
                                                          f"sbatch refused more ({_first_line(exc)})")
                        self._retry_at = time.monotonic() + FEED_SECONDS
                        self._say_held(f"held: {used:,} of your jobs are queued; sbatch refused more "
                                       f"({_first_line(exc)})")
                        break
                    if kind == "transient":
                        self._transient(exc)
                        break
                    self._refused(chunk, exc, raise_it=call is not None and chunk.key is call and not sent_of_call,
                                  call=call)
                    continue
                sent_of_call = sent_of_call or chunk.key is call
                self._backoff = 1.0
                with self._lock:
                    chunk.launches = chunk.launches[len(part):]
                    chunk.token = None
                    if not chunk.launches and self._held and self._held[0] is chunk:
                        self._held.popleft()

    def _transient(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._say_held(f"held: SLURM does not answer ({_first_line(exc)}); trying again in {self._backoff / 2:.0f} s")

    def _refused(self, chunk: Chunk, exc: BackendError, *, raise_it: bool, call: object | None) -> None:
        """SLURM will not take this chunk: its jobs fail with sbatch's words; nothing else is touched."""
        with self._lock:
            if raise_it:  # the caller hears it: nothing of its call is held any longer
                self._held = deque(c for c in self._held if c.key is not call)
            else:
                self._held.popleft()
        if raise_it:
            raise exc
        for launch in chunk.launches:
            self._reporter.finished(Outcome(launch.job_id, launch.attempt, "FAILED", reason=f"not submitted: {exc}",
                                            ended=time.time(), cause="submit"))

    def _say_held(self, why: str) -> None:
        """Report held jobs HELD with `why` (each job once per new reason)."""
        with self._lock:
            ids = [launch.job_id for c in self._held for launch in c.launches]
        new = [i for i in ids if self._said.get(i) != why]
        if new:
            self._reporter.update(new, "HELD", reason=why)
        self._said = {i: self._said.get(i, why) for i in ids} | dict.fromkeys(new, why)

    def _resolve(self, chunk: Chunk) -> bool:
        """Was a chunk whose sbatch gave no clear answer accepted? Look for its comment in squeue.
        True (and tracked) if it was; False if SLURM answers without it (then it is sent again)."""
        found = scheduler.squeue_comments(getpass.getuser()).get(f"htc:{chunk.token}")
        if not found:
            chunk.token = None
            return False
        self._track(chunk.launches, found, chunk.bundle or 1)
        with self._lock:
            if self._held and self._held[0] is chunk:
                self._held.popleft()
        return True

    def cancel(self, job_ids: set[int]) -> None:
        """Held jobs just leave the queue (the ledger already says CANCELLED)."""
        with self._lock:
            for c in self._held:
                if c.token is None:  # a chunk that may be in SLURM is resolved first
                    c.launches = [launch for launch in c.launches if launch.job_id not in job_ids]
            self._held = deque(c for c in self._held if c.launches)

    def held(self) -> set[int]:
        with self._lock:
            return {launch.job_id for c in self._held for launch in c.launches}

    def timed(self, job_id: int, outcome: Outcome) -> None:
        """A probe ended: how long it ran decides its batch's bundle size."""
        with self._lock:
            if job_id in self._timed:
                self._timed[job_id] = (outcome.ended - outcome.started
                                       if outcome.started and outcome.ended else None)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
