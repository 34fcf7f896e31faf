"""One thread that commits what backends report, in batches.

Backends call `started()` and `finished()` from any thread; the recorder
commits whatever is queued in one ledger transaction (group commit), so a
sweep of thousands of tiny jobs costs a few commits, not thousands, and a lone
report is committed at once.
Large results are written to files first (temp, fsync, rename), then the row
that points at them is committed (design G2).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from htc_notebook.ledger import Ledger
from htc_notebook.states import Outcome
from htc_notebook.storage import atomic_write

INLINE_RESULT_LIMIT = 256 * 1024  # bytes; larger results go to files
MAX_BATCH = 2000
NATIVES_PER_WRITE = 10_000  # native ids recorded a transaction: others' writes (the heartbeat) go in between

_STOP = object()


class Recorder:
    """Batched, single-writer committer of backend reports into the ledger."""

    def __init__(self, ledger: Ledger, result_path: Callable[[int], Path],
                 on_commit: Callable[[Sequence[Outcome]], None]):
        self._ledger = ledger
        self._result_path = result_path
        self._on_commit = on_commit
        self._queue: queue.Queue = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="htc-recorder", daemon=True)
        self._thread.start()

    # Reporter interface ------------------------------------------------------
    def started(self, job_id: int, attempt: int, host: str, native_id: str | None) -> None:
        self._put(("update", (job_id,), "RUNNING", None, host, native_id))

    def sending(self, job_ids, native_id: str, reason: str) -> set[int]:
        """Synchronous: the intent is in the ledger before the scheduler hears of the jobs."""
        live = set(self._ledger.intend(job_ids, native_id, reason))
        self._on_commit([])
        return live

    def submitted(self, native_ids: dict[int, str], reason: str) -> None:
        """Synchronous, unlike the rest: the link to the scheduler's job must survive a crash."""
        pairs = list(native_ids.items())
        for start in range(0, len(pairs), NATIVES_PER_WRITE):
            self._ledger.set_native_ids(dict(pairs[start:start + NATIVES_PER_WRITE]), "RUNNABLE", reason)
        self._on_commit([])

    def update(self, job_ids, status: str, *, reason: str | None = None, host: str | None = None,
               native_id: str | None = None) -> None:
        self._put(("update", tuple(job_ids), status, reason, host, native_id))

    def finished(self, outcome: Outcome) -> None:
        self._put(("finished", outcome))

    def backlog(self) -> int:
        return self._pending  # an int read: no lock needed for a hint

    # -------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Block until everything reported so far is committed."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def _put(self, item) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(item)

    def _loop(self) -> None:
        """Group commit: take what is queued now, commit it, repeat.

        No artificial delay: reports that arrive while a commit runs form the
        next batch, so batches grow with load and a lone report commits at once.
        """
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._commit(batch)
                    return
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list) -> None:
        try:
            updates: dict[tuple, list[int]] = {}
            outcomes: list[Outcome] = []
            for item in batch:
                if item[0] == "update":
                    _, ids, *how = item
                    updates.setdefault(tuple(how), []).extend(ids)
                else:
                    outcomes.append(self._spill(item[1]))
            if updates:
                self._ledger.set_statuses([(ids, *how) for how, ids in updates.items()])
            committed = set(self._ledger.record_outcomes(outcomes)) if outcomes else set()
            self._on_commit([o for o in outcomes if o.job_id in committed])
        except BaseException as exc:  # noqa: BLE001 - surfaced by flush()
            self._error = exc
        finally:
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()

    def _spill(self, outcome: Outcome) -> Outcome:
        """Move a large result into a file before its ledger row is written. A result that cannot
        be written (the disk full, ...) fails its own job, saying so; the rest of the batch goes on."""
        if outcome.result is None or len(outcome.result) <= INLINE_RESULT_LIMIT:
            return outcome
        path = self._result_path(outcome.job_id)
        try:
            atomic_write(path, outcome.result)
        except OSError as exc:
            return replace(outcome, status="FAILED", result=None, cause=None,
                           reason=f"its result ({len(outcome.result):,} bytes) could not be stored in "
                                  f"{path.parent}: {exc.strerror or exc}. Make room there, then retry it")
        return replace(outcome, result=None, result_path=str(path))
