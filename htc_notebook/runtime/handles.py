"""Future-like handles over jobs in the ledger.

A handle holds only ids: everything it shows is read from the ledger, so a
handle rebuilt after a kernel restart (`session.job(id)`, `task.jobs()`) is as
good as the original.
"""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Generator, Iterator, Sequence


from htc_notebook.errors import JobFailed
from htc_notebook.ledger import JobRow
from htc_notebook.runtime.parts import Parts
from htc_notebook.runtime.results import load_result, read_log
from htc_notebook.states import STATES, TERMINAL_NAMES
from htc_notebook.storage.log_packs import log_lines

if TYPE_CHECKING:
    import pandas

    from htc_notebook.runtime.efficiency import Efficiency

PAGE = 5000  # jobs whose rows (and results) a group reads at a time
CHANGES_PAGE = 20_000  # changed jobs' statuses a group reads at a time (~2 MB)
REFRESH_MIN_INTERVAL = 0.02  # seconds between two looks at the ledger while waiting
TERMINAL = TERMINAL_NAMES
_STATUS = {s: s for s in STATES}  # one string per state, however many jobs are in it


async def _ended(handle: JobHandle) -> Any:
    """The job's value once it has ended, waiting without blocking the running event loop."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()

    def settle(job_id: int, status: str) -> None:  # in the watcher's thread
        loop.call_soon_threadsafe(_set_once, ended, status)

    watcher = handle.parts.completions
    watcher.watch(handle.id, handle.task_id, settle)
    try:
        await ended
    finally:
        watcher.forget(handle.id, settle)
    return handle.result(timeout=0)


def _set_once(future: "asyncio.Future[str]", value: str) -> None:
    if not future.done():
        future.set_result(value)


async def _all_ended(group: "JobGroup") -> list[Any]:
    await asyncio.gather(*(_ended(h) for h in group), return_exceptions=True)  # every one ended
    return group.results(timeout=0)


def failure(row: JobRow) -> JobFailed:
    """The error that explains why a job did not succeed (design G4)."""
    hints = {
        "FAILED": "read its log (job.logs('err'): the file named is packed with others soon after the job "
                  "ends), fix the cause, then retry (task.retry() or re-run the sweep; "
                  "members that succeeded are not run again)",
        "CANCELLED": "retry it if it should run",
        "LOST": "retry it (task.retry() or re-run the sweep)",
    }
    reason = row.reason or ""
    if reason.startswith("timeout"):
        hints["FAILED"] = "raise execTimeoutSeconds (or the walltime), or make the job faster, then retry"
    return JobFailed(row.id, row.status, row.reason, attempt=row.attempts, host=row.host,
                     native_id=row.native_id, log_path=row.log_err, hint=hints.get(row.status))


class JobHandle:
    """One job: `result()`, `done()`, `cancel()`, `status`, `attempts`."""

    def __init__(self, parts: Parts, job_id: int, task_id: int | None = None):
        self.parts, self.id = parts, job_id
        self.task_id = task_id if task_id is not None else parts.ledger.job(job_id).task_id

    def __repr__(self) -> str:
        row = self.row
        return f"<JobHandle {self.id} {row.name} {row.status}{': ' + row.reason if row.reason else ''}>"

    @property
    def row(self) -> JobRow:
        return self.parts.ledger.job(self.id)

    @property
    def status(self) -> str:
        return self.row.status

    @property
    def attempts(self) -> list:
        return self.parts.ledger.attempts(self.id)

    def done(self) -> bool:
        return self.status in TERMINAL

    def wait(self, timeout: float | None = None) -> JobRow:
        """Block until the job ends (or `timeout` seconds; then TimeoutError). Only reads: the
        session's reconcile loop (started here if need be) resolves jobs whose owner has exited."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.parts.reconciler.start()
        while True:
            mark = self.parts.changes.mark()
            row = self.row
            if row.status in TERMINAL:
                return row
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} is still {row.status} after {timeout} s")
            self.parts.changes.wait(since=mark)

    def result(self, timeout: float | None = None) -> Any:
        """The job's value; raises JobFailed (with reason, host, log path) if it did not succeed."""
        row = self.wait(timeout)
        if row.status != "SUCCEEDED":
            raise failure(row)
        return load_result(self.parts.ledger, row)

    def exception(self, timeout: float | None = None) -> JobFailed | None:
        row = self.wait(timeout)
        return None if row.status == "SUCCEEDED" else failure(row)

    def __await__(self) -> Generator[Any, None, Any]:
        """`await handle` in a coroutine (a notebook cell): the job's value, JobFailed if it did not
        succeed; the event loop runs on meanwhile (the session's Completions watcher tells it)."""
        return _ended(self).__await__()

    def cancel(self) -> bool:
        return bool(self.parts.dispatcher.cancel([self.id]))

    def retry(self) -> bool:
        return bool(self.parts.dispatcher.retry([self.id]))

    @property
    def __htc_job_id__(self) -> int:
        """What a Sweep keeps of a handle it ranges over (spec/sweep.py: a job reference)."""
        return self.id

    def parents(self) -> list["JobHandle"]:
        """The jobs this one depends on (whose results it took, or named in `after=`)."""
        return [JobHandle(self.parts, j) for j in self.parts.ledger.parents(self.id)]

    def children(self) -> list["JobHandle"]:
        """The jobs that depend on this one."""
        return [JobHandle(self.parts, j) for j in self.parts.ledger.children(self.id)]

    def logs(self, stream: str = "out", tail: int | None = None) -> str:
        """The job's stdout (`stream="out"`) or stderr (`"err"`), optionally the last `tail` lines:
        at most its last 8 MiB, after a line saying what was left out."""
        row = self.row
        text = read_log(row.log_out if stream == "out" else row.log_err)
        return "".join(text.splitlines(keepends=True)[-tail:]) if tail else text

    def log_page(self, stream: str, end: int | None, count: int) -> tuple[list[tuple[int, str]], int | None]:
        """Up to `count` lines of the job's log ending at byte `end` (None: its end), newest first,
        as (line number, text), and the `end` of the page before (None: none): only that page is
        read, backwards from `end` (`storage.log_packs.log_lines`, loose or packed). [] if there is no log yet."""
        row = self.row
        path = row.log_out if stream == "out" else row.log_err
        lines, before = log_lines(path, end, count) if path else ([], None)
        return [(n, text.decode(errors="replace")) for n, text in lines], before


class JobGroup(Sequence[JobHandle]):
    """Many jobs (a sweep, a batch, a task): counts, waiting with progress, results, a DataFrame."""

    def __init__(self, parts: Parts, task_id: int, job_ids: Sequence[int], name: str, *, skipped: int = 0):
        self.parts, self.task_id, self.name = parts, task_id, name
        self._ids: Sequence[int] = _compact(job_ids)  # a range when consecutive (a new sweep's)
        self.skipped = skipped
        # each member's last known state: a byte each for a range of ids, else by id
        self._status: _StateBytes | dict[int, str] = (_StateBytes(self._ids) if isinstance(self._ids, range)
                                                      else {})
        self._counts: dict[str, int] = dict.fromkeys(STATES, 0)
        self._seen = (-1, 0)  # the (seq, job id) of the last change read (`Ledger.status_page`)
        self._members: range | set[int] | None = None

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts().items() if v)
        return f"<JobGroup {self.name}: {len(self)} jobs ({counts or 'none'})>"

    @property
    def ids(self) -> list[int]:
        """The members' job ids, in order (a new list)."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return JobGroup(self.parts, self.task_id, self._ids[i], self.name)
        return JobHandle(self.parts, self._ids[i], self.task_id)

    def __iter__(self) -> Iterator[JobHandle]:
        return (JobHandle(self.parts, j, self.task_id) for j in self._ids)

    @property
    def parent_id(self) -> int | None:
        """The batch of a group made by `submit_batch` (the HTC API's parentJobId); None for others."""
        return self.parts.ledger.job(self._ids[0]).batch_id if self._ids else None

    # -- state ------------------------------------------------------------------
    def rows(self) -> list[JobRow]:
        return [row for page in self._pages() for row in page]

    def _pages(self) -> Iterator[list[JobRow]]:
        """The members' rows in member order, PAGE jobs at a time (ids not in the task are left out).
        A page of a sweep's ids, numbered consecutively, is one query over their range."""
        ledger = self.parts.ledger
        for start in range(0, len(self._ids), PAGE):
            ids = self._ids[start:start + PAGE]
            by_id: dict[int, JobRow] = {}
            for first, last in _spans(ids, PAGE):
                by_id.update((r.id, r) for r in ledger.jobs(self.task_id, after_id=first - 1, limit=last - first + 1))
            yield [by_id[j] for j in ids if j in by_id]

    def _wanted(self) -> range | set[int]:
        """The members' ids, to test membership: a range when they are consecutive (a new sweep)."""
        if self._members is None:
            self._members = self._ids if isinstance(self._ids, range) else set(self._ids)
        return self._members

    def refresh(self) -> None:
        """Bring the status of every member up to date, reading only rows that changed."""
        wanted, counts, known = self._wanted(), self._counts, self._status
        while True:  # a page at a time: the first look at a million jobs reads them all
            changed = self.parts.ledger.status_page(self.task_id, self._seen, CHANGES_PAGE)
            for job_id, status, _ in changed:
                if job_id in wanted:
                    status = _STATUS.get(status, status)
                    old = known.get(job_id)
                    if old is not None:
                        counts[old] -= 1
                    counts[status] = counts.get(status, 0) + 1
                    known[job_id] = status
            if changed:
                self._seen = (changed[-1][2], changed[-1][0])
            if len(changed) < CHANGES_PAGE:
                return

    def counts(self) -> dict[str, int]:
        """Jobs per state (kept up to date incrementally from the ledger's changes)."""
        self.refresh()
        return dict(self._counts)

    def done(self) -> bool:
        counts = self.counts()  # of distinct members
        return sum(counts[s] for s in TERMINAL) == len(self._wanted())

    def wait(self, timeout: float | None = None, *, progress: bool = False) -> "JobGroup":
        """Block until every job has ended; `progress=True` shows a progress bar. A job waiting for
        its retry has not ended. Only reads (see JobHandle.wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        total = len(self._wanted())  # distinct jobs: a group may name one twice
        bar = _Progress(total, self.name) if progress else None
        self.parts.reconciler.start()
        try:
            while True:
                mark = self.parts.changes.mark()
                counts = self.counts()
                ended = sum(counts[s] for s in TERMINAL)
                if bar:
                    bar.update(ended, counts)
                if ended >= total:
                    return self
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"{total - ended} of {total} jobs still running after {timeout} s")
                # at most ~50 looks a second: each look takes the GIL from the scheduler's loop
                time.sleep(REFRESH_MIN_INTERVAL)
                self.parts.changes.wait(since=mark)
        finally:
            if bar:
                bar.close()

    def __await__(self) -> Generator[Any, None, list[Any]]:
        """`await group`: every job's value in member order (the first failure raises JobFailed)."""
        return _all_ended(self).__await__()

    def results(self, timeout: float | None = None, *, errors: str = "raise") -> list[Any]:
        """Values in member order. `errors`: "raise" the first failure, or "return" JobFailed objects.

        Rows and stored results are read a page at a time: beyond the values, it holds one page."""
        self.wait(timeout)
        out = []
        for page in self._pages():
            stored = self.parts.ledger.results(r.id for r in page if r.kind == "python" and r.status == "SUCCEEDED")
            for row in page:
                if row.status == "SUCCEEDED":
                    out.append(load_result(self.parts.ledger, row, stored.get(row.id)))
                elif errors == "return":
                    out.append(failure(row))
                else:
                    raise failure(row)
        return out

    def efficiency(self) -> "Efficiency":
        """What the members that ended used against what they asked for, with the requests worth
        changing (`print(group.efficiency())`; runtime/efficiency.py)."""
        from htc_notebook.runtime.efficiency import Usage, summarize

        return summarize(Usage(r.spec.memory, r.max_rss_mib, r.spec.cores, r.cpu_s,
                               r.ended - r.started if r.started and r.ended else None, r.spec.timeout)
                         for page in self._pages() for r in page if r.status == "SUCCEEDED")

    def cancel(self) -> list[int]:
        return self.parts.dispatcher.cancel(self._ids)

    def retry(self) -> list[int]:
        return self.parts.dispatcher.retry(self._ids)

    def to_dataframe(self, results: bool = False) -> "pandas.DataFrame":
        """One row per job; parameters become columns; `results=True` adds a `result` column.

        `memory_mib`, `cores` and `timeout_s` are what the job asks for now (a retry may have raised
        them); `max_rss_mib`, `cpu_s` and `cpu_efficiency` (CPU time / (runtime x cores)) what its last
        attempt used, where measured; `memory_held` how its last attempt's memory limit was held
        (`cgroup`, `watched` by the memory watchdog, `none`; None: it asked for no limit); `sandbox`
        the sandbox its last attempt ran in (`bwrap`, or `none`: unconfined; None: not started);
        `history` tells each attempt of a job tried more than once:
        "1 FAILED (memory, 128 MiB) · 2 ..."."""
        import pandas as pd

        records = []
        for page in self._pages():
            retried = self.parts.ledger.attempts_of(r.id for r in page if r.attempts > 1)
            for row in page:
                records.append(self._record(pd, row, retried.get(row.id), results))
        return pd.DataFrame.from_records(records)

    def plot(self, x: str, y: str = "result", *, by: str | None = None, ax: Any = None) -> Any:
        """Plot `y` (the result, or a key of mapping results) against parameter `x` for the jobs that
        succeeded; members that differ in other parameters are averaged (error bars: their std);
        `by` draws a line per value of another parameter. Returns the matplotlib Axes.

        >>> group.plot(x="T", y="pressure")  # doctest: +SKIP
        """
        from htc_notebook.runtime.plots import plot_results

        return plot_results(self.to_dataframe(results=True), x, y, by=by, ax=ax, title=self.name)

    def graph(self, ax: Any = None) -> Any:
        """Draw the group's jobs and the jobs they depend on as a DAG, coloured by state, each
        column a generation (matplotlib; returns the Axes).

        >>> group.graph()  # doctest: +SKIP
        """
        from htc_notebook.runtime.plots import plot_dag

        ledger = self.parts.ledger
        mine = set(self._ids)
        ids = mine | {p for p, c in ledger.edges(mine) if c in mine}  # and the jobs they depend on
        edges = [(p, c) for p, c in ledger.edges(ids) if p in ids and c in ids]
        return plot_dag(ledger.statuses(sorted(ids)), edges, ax=ax, title=self.name)

    def _record(self, pd, row: JobRow, attempts, results: bool) -> dict[str, Any]:
        rec = {"job_id": row.id, "name": row.name, "index": row.index, "status": row.status,
               "reason": row.reason, "exit_code": row.exit_code, "attempts": row.attempts,
               "host": row.host,
               "started": pd.to_datetime(row.started, unit="s") if row.started else pd.NaT,
               "runtime_s": (row.ended - row.started) if row.started and row.ended else None,
               "memory_mib": row.spec.memory, "max_rss_mib": row.max_rss_mib,
               "memory_held": row.memory_held, "sandbox": row.sandbox, "cores": row.spec.cores, "cpu_s": row.cpu_s,
               "cpu_efficiency": _efficiency(row), "timeout_s": row.spec.timeout,
               "history": " · ".join(map(_attempt_text, attempts)) if attempts else None}
        for k, v in row.params.items():
            rec[k if k not in rec else f"param_{k}"] = v
        if results:
            rec["result"] = load_result(self.parts.ledger, row) if row.status == "SUCCEEDED" else None
        return rec


def _efficiency(row: JobRow) -> float | None:
    """CPU time over what the job held: runtime x cores (None where not measured)."""
    if row.cpu_s is None or not row.started or not row.ended or row.ended <= row.started:
        return None
    return round(row.cpu_s / ((row.ended - row.started) * (row.spec.cores)), 3)


def _attempt_text(a) -> str:
    """One attempt, short: `2 FAILED (memory, 256 MiB)`."""
    asked = a.request or {}
    parts = [a.cause] if a.cause else []
    parts += [f"{asked['memory']} MiB"] if asked.get("memory") else []
    parts += [f"{asked['timeout']} s"] if asked.get("timeout") and a.cause == "timeout" else []
    return f"{a.number} {a.status}" + (f" ({', '.join(parts)})" if parts else "")


def _compact(ids: Sequence[int]) -> Sequence[int]:
    """`ids` as a range when they are consecutive (a new sweep's: a million ids in a few bytes), else a list.

    >>> _compact([4, 5, 6]), _compact(range(3)), _compact([4, 6]), _compact([])
    (range(4, 7), range(0, 3), [4, 6], [])
    """
    if isinstance(ids, range) and ids.step == 1:
        return ids
    ids = list(ids)
    if ids and ids[-1] - ids[0] == len(ids) - 1 and all(b == a + 1 for a, b in pairwise(ids)):
        return range(ids[0], ids[-1] + 1)
    return ids


_CODES = {state: code for code, state in enumerate(STATES, 1)}


class _StateBytes:
    """The last known state of each job of a range of ids, a byte each (0: not seen yet): what a
    sweep's group keeps of a million jobs is 1 MB, not a dict of a million entries.

    >>> known = _StateBytes(range(10, 13)); known[11] = "RUNNING"; known.get(11), known.get(12)
    ('RUNNING', None)
    """

    __slots__ = ("first", "codes")

    def __init__(self, ids: range):
        self.first, self.codes = ids.start, bytearray(len(ids))

    def get(self, job_id: int) -> str | None:
        code = self.codes[job_id - self.first]
        return STATES[code - 1] if code else None

    def __setitem__(self, job_id: int, state: str) -> None:
        self.codes[job_id - self.first] = _CODES[state]


def _spans(ids: Sequence[int], width: int) -> list[tuple[int, int]]:
    """The distinct ids as runs (first, last) no wider than `width`, to read a range each.

    >>> _spans([7, 5, 6, 40, 5], 10)
    [(5, 7), (40, 40)]
    """
    runs: list[list[int]] = []
    for j in sorted(set(ids)):
        if runs and j - runs[-1][0] < width:
            runs[-1][1] = j
        else:
            runs.append([j, j])
    return [(a, b) for a, b in runs]


class _Progress:
    """A terminal (or notebook) progress bar with counts by state, via rich."""

    def __init__(self, total: int, name: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("{task.fields[states]}"), transient=False)
        self._p.start()
        self._task = self._p.add_task(name, total=total, states="")

    def update(self, ended: int, counts: dict[str, int]) -> None:
        states = " ".join(f"{k.lower()}={v}" for k, v in counts.items() if v)
        self._p.update(self._task, completed=ended, states=states)

    def close(self) -> None:
        self._p.refresh()  # the final counts: in Jupyter, rich's stop() does not draw them (it did show 7/9 of 9)
        self._p.stop()
