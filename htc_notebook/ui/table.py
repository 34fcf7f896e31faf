"""The live jobs table's data: what changed since the last look, in a compact wire form.

`TableModel` reads only the rows the ledger stamped after the last sequence number it
saw, and turns them into a patch: changed rows only, statuses as small integers,
host and job names interned (sent once), times in tenths of a second since a base
time. A patch for 1,000 changed rows is ~25 kB however many jobs the table tracks.
No widget code here: the widget (`jobs_widget.py`) sends what this returns, and the
plain-text/HTML fallback renders from it too.

Row layout on the wire (`COLUMNS`): [id, status, host, attempts, started, duration, reason,
result, used] where status indexes `STATES`, host indexes the interned host list (-1: none), started
is tenths of a second since `t0` (null: not started), duration is tenths of a second (null:
not ended), reason is text or null, result is a short preview of a small Python result
(null for commands, large results and jobs not done), and used says what the last attempt used
against what it asked for ("612/4096 MiB, CPU 93%"; null where not measured). A job's name and
parameters travel once, in `new`.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

import cloudpickle

from htc_notebook.runtime.reads import Reads
from htc_notebook.states import STATES

COLUMNS = ("id", "status", "host", "attempts", "started", "duration", "reason", "result", "used")
PREVIEW_CHARS = 40
_STATUS = {s: i for i, s in enumerate(STATES)}


class TableModel:
    """Incremental view of one task's jobs (or a subset of them) for a live table."""

    def __init__(self, reads: Reads, task_id: int, job_ids: Iterable[int] | None = None):
        self.reads, self.task_id = reads, task_id
        self.only = set(job_ids) if job_ids is not None else None
        self.t0 = round(time.time())
        self.seq = 0
        self.rows: dict[int, list] = {}       # id -> wire row
        self.static: dict[int, list] = {}     # id -> [id, name index, params JSON text]
        self.hosts: dict[str, int] = {}
        self.names: dict[str, int] = {}
        self.totals: dict[str, int] = {}

    def poll(self) -> dict[str, Any] | None:
        """A patch with the rows changed since the last poll, or None if nothing changed."""
        if self.seq == 0:  # first load: the rows asked for, looked up by id (not the whole task's)
            seq, changed = self.reads.view_rows(self.task_id, self.only)
        else:
            seq, changed = self.reads.view_changes(self.task_id, self.seq)
        self.seq = seq
        rows: list[list] = []
        new: list[list] = []
        hosts: list[str] = []
        names: list[str] = []
        only, static, known, t0 = self.only, self.static, self.rows, self.t0  # locals: the loop may run 100,000 times
        for (job_id, name, status, reason, host, attempts, started, ended, params, _, blob,
             cpu_s, rss, memory, cores) in changed:  # the last four: USED_SQL's
            if only is not None and job_id not in only:
                continue
            if job_id not in static:
                n = self.names.get(name)
                if n is None:
                    n = self.names[name] = len(self.names)
                    names.append(name)
                new.append(static.setdefault(job_id, [job_id, n, params]))
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
            old = known.get(job_id)
            if old == row:
                continue
            if old is not None:
                self.totals[STATES[old[1]]] -= 1
            self.totals[status] = self.totals.get(status, 0) + 1
            known[job_id] = row
            rows.append(row)
        if not rows:
            return None
        return {"t": "patch", "rows": rows, "new": new, "hosts": hosts, "names": names,
                "totals": {k: v for k, v in self.totals.items() if v}}

    def snapshot(self, chunk: int = 5000) -> Iterator[dict[str, Any]]:
        """Everything known, in chunks: for a view that (re)connects."""
        ids = sorted(self.rows)
        head = {"t": "reset", "t0": self.t0, "columns": list(COLUMNS), "states": list(STATES),
                "hosts": list(self.hosts), "names": list(self.names),
                "totals": {k: v for k, v in self.totals.items() if v}}
        if not ids:
            yield {**head, "rows": [], "new": []}
            return
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            msg = {"t": "patch", "rows": [self.rows[i] for i in part], "new": [self.static[i] for i in part],
                   "hosts": [], "names": []}
            yield {**msg, **head} if start == 0 else msg

    # -- for text/HTML renderings --------------------------------------------------
    def records(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows as dicts (first `limit` by id), for text and HTML renderings."""
        hosts, names = list(self.hosts), list(self.names)
        out = []
        for job_id in sorted(self.rows)[:limit]:
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
