"""The live jobs table widget: anywidget front end, patches from `TableModel`.

A background thread looks at the ledger every `interval` seconds and sends one
message with what changed in the browser's window (nothing when nothing did), so the message
rate is bounded (<= 1/interval) whatever the number of jobs. The browser holds the counts and
one window of rows (`TableModel`); scrolling, filtering and sorting ask the kernel for another
(a "view" message). Cancel/retry buttons and row clicks come back as messages.
Without a widget front end (terminal, nbconvert) the widget shows as text and HTML.
"""

from __future__ import annotations

import dataclasses
import html
import pathlib
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Iterable

import anywidget
import traitlets

from htc_notebook.errors import SpecError
from htc_notebook.states import REQUEUEABLE_NAMES, STATES, TERMINAL_NAMES
from htc_notebook.ui.table import TableModel, View, memory_line

if TYPE_CHECKING:
    from htc_notebook.runtime.parts import Parts

STATIC = pathlib.Path(__file__).parent / "static"
INTERVAL = 0.25  # seconds between looks at the ledger: at most 4 patch messages per second
SAVE_EVERY = 5.0  # seconds between snapshots kept in the widget's state while jobs change (`saved`)
LOG_TAIL = 40
VIEW_FIELDS = tuple(f.name for f in dataclasses.fields(View))  # what a "view" message may set


class JobsTable(anywidget.AnyWidget):
    """Live table of a task's jobs (or some of them): status, reason, host, runtime, parameters."""

    _esm = STATIC / "jobs_table.js"
    _css = STATIC / "jobs_table.css"
    states = traitlets.List(list(STATES)).tag(sync=True)  # the status codes rows carry
    # the window as last seen (a "reset" message), in the widget's state: a saved notebook shows the
    # table as it was before any kernel talks to it (Binder, a fresh open). Kept every SAVE_EVERY s
    # while jobs change and at once when the last one ends.
    saved = traitlets.Dict({}).tag(sync=True)

    def __init__(self, parts: "Parts", task_id: int, job_ids: Iterable[int] | None = None, *,
                 interval: float = INTERVAL, **kwargs: Any):
        super().__init__(**kwargs)
        self.parts = parts
        self.model = TableModel(parts.reads, task_id, job_ids)
        self.model.poll()
        self._keep()
        self.sent_messages = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.on_msg(self._on_front_end)
        ref = weakref.ref(self)
        self._thread = threading.Thread(target=_refresh_loop, args=(ref, self._stop, interval),
                                        name="htc-table", daemon=True)
        self._thread.start()

    # -- kernel -> browser ----------------------------------------------------------
    def refresh(self) -> dict | None:
        """Send what changed since the last refresh (one message, or none)."""
        with self._lock:
            patch = self.model.poll()
            if patch is not None:
                self._post(patch)
                totals = patch.get("totals") or {}
                ended = sum(n for s, n in totals.items() if s in TERMINAL_NAMES) == sum(totals.values())
                if ended or time.monotonic() - self._saved_at >= SAVE_EVERY:
                    self._keep()
            return patch

    def settle(self) -> None:
        """Read the ledger now (not when the next look is due) and keep the window in `saved`."""
        with self._lock:
            self.model.due = 0
            patch = self.model.poll()
            if patch is not None:
                self._post(patch)
            self._keep()

    def _keep(self) -> None:
        """The window in `saved` (the same one the views hold now)."""
        self.saved = self.model.snapshot()
        self._saved_at = time.monotonic()

    def _post(self, msg: dict) -> None:
        self.sent_messages += 1
        self.send(msg)

    # -- browser -> kernel ----------------------------------------------------------
    def _on_front_end(self, _widget, content: dict, _buffers) -> None:
        kind = content.get("t")
        if kind == "ready":
            with self._lock:
                self._post(self.model.snapshot())
        elif kind == "view":
            try:
                with self._lock:
                    self._post(self.model.set_view(**{k: content[k] for k in VIEW_FIELDS if k in content}))
            except (SpecError, TypeError, ValueError) as e:
                self._post({"t": "notice", "text": str(e)})
        elif kind == "detail":
            self._post({"t": "detail", "id": content.get("id"), "text": self.detail(int(content["id"]))})
        elif kind in ("cancel", "retry"):
            ids = self._ids(content.get("ids"))
            done = (self.parts.dispatcher.cancel if kind == "cancel" else self.parts.dispatcher.retry)(ids)
            self._post({"t": "notice", "text": f"{kind}: {len(done)} of {len(ids)} jobs"})

    def _ids(self, ids: Any) -> list[int]:
        """The table's jobs a button acts on: "all" not ended, "failed" (those a retry takes), or the
        selected ones that are the table's."""
        reads, task_id, ranges = self.parts.reads, self.model.task_id, self.model.ranges
        if ids == "all":
            return reads.view_ids(task_id, ranges, [s for s in STATES if s not in TERMINAL_NAMES])
        if ids == "failed":
            return reads.view_ids(task_id, ranges, REQUEUEABLE_NAMES)
        return reads.view_ids(task_id, ranges, None, [int(i) for i in ids or []])

    def detail(self, job_id: int) -> str:
        """What a click on a row shows: state, reason, where it ran, the log tails."""
        from htc_notebook.runtime.handles import JobHandle

        handle = JobHandle(self.parts, job_id)
        row = handle.row
        lines = [f"job {row.id} {row.name}: {row.status}" + (f" - {row.reason}" if row.reason else ""),
                 f"attempts {row.attempts}, host {row.host or '-'}, native id {row.native_id or '-'}"]
        if row.memory_held or row.max_rss_mib is not None:
            lines.append(memory_line(row.max_rss_mib, row.spec.memory, row.memory_held))
        if row.sandbox == "none":
            lines.append("ran unconfined (sandbox: none): no task isolation, no scratch limit")
        parents, children = self.parts.reads.parents(job_id), self.parts.reads.children(job_id)
        if parents:
            lines.append("depends on jobs " + ", ".join(map(str, parents)))
        if children:
            lines.append("jobs depending on it: " + ", ".join(map(str, children)))
        for stream in ("err", "out"):
            text = handle.logs(stream, tail=LOG_TAIL)
            if text.strip():
                lines += [f"--- std{stream} (last {LOG_TAIL} lines) ---", text.rstrip()]
        return "\n".join(lines)

    # -- without a widget front end --------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        assert bundle is not None  # anywidget gives None only to a widget without a view
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data["text/plain"] = self.text()
        data["text/html"] = self.html()
        return bundle

    def text(self, limit: int = 20) -> str:
        self.refresh()
        recs = self.model.records(limit)
        out = [self.model.summary()]
        out += [f"{r['id']:>7} {r['name'][:20]:20} {r['status']:10} {r['host'][:12]:12} {r['runtime']:>8} "
                f"{r['params'][:30]:30} {r['result'][:20]}" for r in recs]
        if self.model.matching > len(recs):
            out.append(f"... {self.model.matching - len(recs)} more")
        return "\n".join(out)

    def html(self, limit: int = 20) -> str:
        recs = self.model.records(limit)
        cols = ("id", "name", "status", "host", "attempts", "runtime", "used", "params", "result", "reason")
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in recs)
        return f"<p>{html.escape(self.model.summary())}</p><table><tr>{head}</tr>{body}</table>"

    def close(self) -> None:
        stop = getattr(self, "_stop", None)  # close() also runs from __del__ of a half-built widget
        if stop is not None:
            stop.set()
        super().close()


def _refresh_loop(ref: "weakref.ref[JobsTable]", stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        table = ref()
        if table is None:
            return
        try:
            table.refresh()
        except Exception:  # noqa: BLE001 - a closed comm or ledger ends the loop quietly
            return
        finally:
            del table


def live_table(obj: Any) -> JobsTable:
    """A live table for a Task, a JobGroup or a JobHandle."""
    from htc_notebook.runtime import JobGroup, JobHandle, Task

    if isinstance(obj, Task):
        return JobsTable(obj.parts, obj.id)
    if isinstance(obj, JobGroup):
        return JobsTable(obj.parts, obj.task_id, obj.ids)
    if isinstance(obj, JobHandle):
        return JobsTable(obj.parts, obj.task_id, [obj.id])
    raise TypeError(f"live_table takes a Task, JobGroup or JobHandle, not {type(obj).__name__}")
