"""The parts of one Session, wired once, and what projects, tasks and handles are given.

Each part has one job and gets what it needs in its constructor (nothing here imports the Session):

- `Profiles` (runtime/profiles.py): the site's profiles as they run here;
- `Changes` (runtime/changes.py): this process's change mark, and who hears of each commit;
- `Recorder` (runtime/recorder.py): commits what backends report, in batches;
- `LiveBackends` (runtime/live_backends.py): profiles -> backends, pilots' scale and adapt;
- `Dispatcher` (runtime/dispatch.py): ledger rows -> launches -> backends, cancel and retry;
- `Reconciler` (runtime/reconcile.py): every periodic action, in one thread;
- `Completions` (runtime/completions.py): what futures, `as_completed` and `await` wait with.

>>> parts = wire(root, site)  # doctest: +SKIP
>>> parts.dispatcher.cancel([12]); parts.close()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from htc_notebook.ledger import Ledger
from htc_notebook.runtime.changes import Changes
from htc_notebook.runtime.completions import Completions
from htc_notebook.runtime.dispatch import Dispatcher, TaskRows
from htc_notebook.runtime.live_backends import LiveBackends
from htc_notebook.runtime.log_packer import LogPacker
from htc_notebook.runtime.owner import Owner
from htc_notebook.runtime.profiles import Profiles
from htc_notebook.runtime.reads import Reads
from htc_notebook.runtime.reconcile import Reconciler
from htc_notebook.runtime.recorder import Recorder
from htc_notebook.spec import SiteConfig
from htc_notebook.storage import Storage


@dataclass(frozen=True, eq=False)
class Parts:
    """One data root's ledger and storage, one site, and the live parts working on them."""

    root: Path
    site: SiteConfig
    storage: Storage
    ledger: Ledger
    reads: Reads  # what ui/, server/ and cli.py read of the ledger
    owner: Owner
    profiles: Profiles
    changes: Changes
    tasks: TaskRows
    recorder: Recorder
    backends: LiveBackends
    dispatcher: Dispatcher
    reconciler: Reconciler
    completions: Completions
    _closing: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def closed(self) -> bool:
        return self.backends.closed

    def close(self) -> None:
        """Stop the reconcile loop and the backends (running local jobs end CANCELLED), then commit
        what they reported and close the ledger. Idempotent."""
        with self._closing:
            if self.backends.closed:
                return
            self._close()

    def _close(self) -> None:
        self.reconciler.close()
        self.backends.close()
        self.completions.close()
        self.recorder.flush(timeout=30)
        self.recorder.close()
        self.ledger.close()


def wire(root: Path, site: SiteConfig, *, reconcile: bool = True, heartbeat: float | None = None) -> Parts:
    """Make every part of a session on data root `root`, each given what it needs; the reconcile
    loop is started (unless `reconcile` is False)."""
    storage = Storage(root)
    ledger = Ledger(storage.ledger_path)
    owner = Owner(socket.gethostname(), os.getpid())
    profiles, changes, tasks = Profiles(site), Changes(), TaskRows(ledger, storage)
    recorder = Recorder(ledger, tasks.result_path, changes.committed)
    backends = LiveBackends(site, profiles, storage, recorder, ledger.call_durations)
    dispatcher = Dispatcher(ledger, storage, owner, profiles, backends, tasks, changes)
    reconciler = Reconciler(ledger=ledger, storage=storage, owner=owner, profiles=profiles, backends=backends,
                            dispatcher=dispatcher, tasks=tasks, changes=changes, packer=LogPacker(ledger),
                            poll_seconds=site.poll_seconds,
                            enabled=reconcile, heartbeat=heartbeat)
    parts = Parts(root=root, site=site, storage=storage, ledger=ledger, reads=Reads(ledger), owner=owner,
                  profiles=profiles, changes=changes, tasks=tasks, recorder=recorder, backends=backends,
                  dispatcher=dispatcher, reconciler=reconciler, completions=Completions(ledger, changes))
    reconciler.start()
    return parts
