"""The live jobs table's data: counts for the whole view and one window of rows, in a compact wire form.

`TableModel` holds what a browser shows, never every job: the count per status of the task's
jobs (or of a group of them), and one window of rows (`PAGE` at most) of a `View` (a status, a
text filter, a sort, an offset). It looks for changes by the ledger's change sequence number and
re-reads the counts and the window when a job of its view changed, at most as often as it is
polled (the widget's thread sets the pace) and never more than ~10 % of the time (`COST_SHARE`:
a million-job task's counts take tens of milliseconds), so its cost and memory are bounded by
the window, not the task.
A refresh sends only the window's rows that changed; the ids in view only when they changed.
No widget code here: the widget (`jobs_widget.py`) sends what this returns, and the
plain-text/HTML fallback renders from it too.

Row layout on the wire (`COLUMNS`): [id, status, host, attempts, started, duration, reason,
result, used] where status indexes `STATES`, host indexes the interned host list (-1: none), started
is tenths of a second since `t0` (null: not started), duration is tenths of a second (null:
not ended), reason is text or null, result is a short preview of a small Python result
(null for commands, large results and jobs not done), and used says what the last attempt used
against what it asked for ("612/4096 MiB, CPU 93%"; null where not measured). A job's name (interned)
and parameters travel in `new` when it comes into view.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from typing import Any, Iterable

import cloudpickle

from htc_notebook.errors import SpecError
from htc_notebook.runtime.reads import VIEW_SORTS, Reads, id_ranges
from htc_notebook.states import STATES

COLUMNS = ("id", "status", "host", "attempts", "started", "duration", "reason", "result", "used")
PREVIEW_CHARS = 40
PAGE = 200          # rows a window holds at most
COST_SHARE = 0.1    # a view re-reads at most this share of the time (its last re-read's cost sets the next wait)
_STATUS = {s: i for i, s in enumerate(STATES)}


@dataclasses.dataclass(frozen=True)
class View:
    """Which rows a table shows: of one status (or all), with `text` in the name, parameters,
    host or reason, ordered by `sort` (a column of `runtime.reads.VIEW_SORTS`), from `offset`."""

    status: str = ""
    text: str = ""
    sort: str = "id"
    descending: bool = False
    offset: int = 0
    limit: int = PAGE

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or len(self.text) > 200:
            raise SpecError("View", "text", self.text, "text of at most 200 characters")
        if not isinstance(self.descending, bool):
            raise SpecError("View", "descending", self.descending, "true or false")
        if self.status and self.status not in STATES:
            raise SpecError("View", "status", self.status, f"a job status ({', '.join(STATES)}) or empty")
        if self.sort not in VIEW_SORTS:
            raise SpecError("View", "sort", self.sort, f"a column the table sorts by ({', '.join(VIEW_SORTS)})")
        if not isinstance(self.offset, int) or self.offset < 0:
            raise SpecError("View", "offset", self.offset, "an integer >= 0")
        if not isinstance(self.limit, int) or not 0 < self.limit <= PAGE:
            raise SpecError("View", "limit", self.limit, f"an integer from 1 to {PAGE}")


class TableModel:
    """Counts and one window of a task's jobs (or of `job_ids`) for a live table."""

    def __init__(self, reads: Reads, task_id: int, job_ids: Iterable[int] | None = None):
        self.reads, self.task_id = reads, task_id
        self.ranges = id_ranges(job_ids) if job_ids is not None else None
        self.view = View()
        self.t0 = round(time.time())
        self.seq = 0
        self.totals: dict[str, int] = {}
        self.matching = 0
        self.ids: list[int] = []              # the window's ids, in order
        self.rows: dict[int, list] = {}       # id -> wire row, as last sent (the window's only)
        self.static: dict[int, list] = {}     # id -> [id, name index, params JSON text] (the window's only)
        self.hosts: dict[str, int] = {}
        self.names: dict[str, int] = {}
        self.loaded = False
        self.stale = True                     # a job of the view changed since the last re-read
        self.due = 0.0                        # monotonic time before which no re-read runs

    def poll(self) -> dict[str, Any] | None:
        """A patch with what changed since the last poll (counts, rows of the window that changed, the
        window's ids if they changed), or None if nothing did or the next re-read is not due yet."""
        if self.loaded:
            seq, changed = self.reads.status_changes(self.task_id, self.seq)
            self.seq = max(self.seq, seq)
            if changed and (self.ranges is None or any(self._in_view(i) for i, _ in changed)):
                self.stale = True
        if not self.stale or time.monotonic() < self.due:
            return None
        return self._reread(send_all=False)

    def set_view(self, **changes: Any) -> dict[str, Any]:
        """Show another window (`View`'s fields): its patch, with its ids, at once."""
        self.view = dataclasses.replace(self.view, **changes)
        return self._reread(send_all=False, ids=True) or {}

    def snapshot(self) -> dict[str, Any]:
        """Everything a view that (re)connects needs: the head and the whole window."""
        self.ids, self.rows, self.static = [], {}, {}
        patch = self._reread(send_all=True, ids=True) or {}
        return {**patch, "t": "reset", "t0": self.t0, "columns": list(COLUMNS), "states": list(STATES),
                "hosts": list(self.hosts), "names": list(self.names), "view": dataclasses.asdict(self.view)}

    def _in_view(self, job_id: int) -> bool:
        ranges = self.ranges or []
        at = bisect.bisect_right(ranges, (job_id, math.inf)) - 1
        return at >= 0 and ranges[at][0] <= job_id <= ranges[at][1]

    def _reread(self, *, send_all: bool, ids: bool = False) -> dict[str, Any] | None:
        began = time.perf_counter()
        v = self.view
        seq, totals, matching, changed = self.reads.view_page(
            self.task_id, self.ranges, status=v.status or None, text=v.text or None, sort=v.sort,
            descending=v.descending, offset=v.offset, limit=v.limit)
        self.due = time.monotonic() + (time.perf_counter() - began) / COST_SHARE
        self.seq, self.stale, self.loaded = max(self.seq, seq), False, True
        rows: list[list] = []
        new: list[list] = []
        hosts: list[str] = []
        names: list[str] = []
        static: dict[int, list] = {}
        known, t0 = self.rows, self.t0
        window: dict[int, list] = {}
        for (job_id, name, status, reason, host, attempts, started, ended, params, _, blob,
             cpu_s, rss, memory, cores) in changed:  # the last four: USED_SQL's
            if job_id in self.static:
                static[job_id] = self.static[job_id]
            else:
                n = self.names.get(name)
                if n is None:
                    n = self.names[name] = len(self.names)
                    names.append(name)
                static[job_id] = [job_id, n, params]
                new.append(static[job_id])
            h: int | None = -1
            if host:
                h = self.hosts.get(host)
                if h is None:
                    h = self.hosts[host] = len(self.hosts)
                    hosts.append(host)
            row = [job_id, _STATUS[status], h, attempts,
                   round((started - t0) * 10) if started else None,
                   round((ended - started) * 10) if ended and started else None, reason,
                   _preview(blob) if blob is not None else None,
                   used(cpu_s, rss, memory, cores, ended - started if ended and started else None)
                   if cpu_s is not None or rss is not None else None]
            window[job_id] = row
            if send_all or known.get(job_id) != row:
                rows.append(row)
        order = list(window)
        moved = order != self.ids
        counted = totals != self.totals or matching != self.matching
        self.ids, self.rows, self.static, self.totals, self.matching = order, window, static, totals, matching
        if not (rows or moved or counted or ids or send_all):
            return None
        patch: dict[str, Any] = {"t": "patch", "rows": rows, "new": new, "hosts": hosts, "names": names,
                                 "totals": totals, "matching": matching, "offset": v.offset}
        if moved or ids or send_all:
            patch["ids"] = order
        return patch

    # -- for text/HTML renderings --------------------------------------------------
    def records(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The window's rows as dicts (its first `limit`), for text and HTML renderings."""
        hosts, names = list(self.hosts), list(self.names)
        out = []
        for job_id in self.ids[:limit]:
            _, st, h, attempts, started, duration, reason, result, use = self.rows[job_id]
            out.append({"id": job_id, "name": names[self.static[job_id][1]], "status": STATES[st],
                        "host": hosts[h] if h >= 0 else "", "attempts": attempts,
                        "runtime": f"{duration / 10:.1f}s" if duration is not None else "",
                        "params": self.static[job_id][2], "reason": reason or "", "result": result or "",
                        "used": use or ""})
        return out

    def summary(self) -> str:
        total = sum(self.totals.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.totals.items(), key=lambda kv: STATES.index(kv[0])) if v)
        return f"{total} jobs: {parts}" if total else "no jobs"


def used(cpu_s: float | None, rss_mib: float | None, memory: int | None, cores: int | None,
         wall_s: float | None) -> str:
    """What an attempt used against what it asked for, short.

    >>> used(55.8, 612.0, 4096, 1, 60.0)
    '612/4096 MiB, CPU 93%'
    >>> used(0.5, None, None, 2, None)
    'CPU 0.5 s'
    """
    parts = []
    if rss_mib is not None:
        parts.append(f"{rss_mib:.0f}/{memory} MiB" if memory else f"{rss_mib:.0f} MiB")
    if cpu_s is not None:
        parts.append(f"CPU {100 * cpu_s / (wall_s * (cores or 1)):.0f}%" if wall_s else f"CPU {cpu_s:.1f} s")
    return ", ".join(parts)


HELD_TEXT = {"cgroup": "held by a memory cgroup", "watched": "held by the memory watchdog on its processes",
             "none": "not held: nothing here could enforce it"}


def memory_line(peak_mib: float | None, memory: int | None, held: str | None) -> str:
    """A job's memory in its detail: its last attempt's peak, its limit and how the limit was held.

    >>> memory_line(612.0, 4096, "watched")
    'memory: peak 612 MiB, limit 4096 MiB held by the memory watchdog on its processes'
    >>> memory_line(30.5, None, None)
    'memory: peak 30 MiB, no limit asked'
    """
    peak = f"peak {peak_mib:.0f} MiB" if peak_mib is not None else "peak not measured"
    limit = f"limit {memory} MiB {HELD_TEXT.get(held or '', held or 'not recorded')}" if memory else "no limit asked"
    return f"memory: {peak}, {limit}"


def _preview(blob: bytes) -> str | None:
    """A short repr of a small pickled result (None if it cannot be loaded here)."""
    try:
        text = repr(cloudpickle.loads(blob))
    except Exception:  # noqa: BLE001 - a class only the job's environment knows: no preview
        return None
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"
