"""What a SUCCEEDED job produced: its value (a Python job's, unpickled from the ledger or its file)
or a CommandResult (a command job's exit code and logs, read as untrusted input).

>>> load_result(ledger, ledger.job(12))  # doctest: +SKIP
1024
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from htc_notebook.errors import JobFailed, UntrustedFile
from htc_notebook.ledger import JobRow, Ledger, ResultRow
from htc_notebook.storage.log_packs import read_log_text


@dataclass(frozen=True)
class CommandResult:
    """What a command job leaves behind: its exit code and log files."""

    exit_code: int
    log_out: str | None
    log_err: str | None

    @property
    def stdout(self) -> str:
        return read_log(self.log_out)

    @property
    def stderr(self) -> str:
        return read_log(self.log_err)


def read_log(path: str | None) -> str:
    """A job's log (task/logs/job-N.out, or its bytes in the task's pack once packed): written by the
    job, so read as untrusted input (never through a link, never blocking, at most its last
    `LOG_READ_LIMIT` bytes)."""
    try:
        return read_log_text(path)
    except UntrustedFile as exc:
        return f"[{exc}]"



def load_result(ledger: Ledger, row: JobRow, res: ResultRow | None = None) -> Any:
    """The value a SUCCEEDED job produced (a CommandResult for command jobs)."""
    if row.kind == "command":
        return CommandResult(row.exit_code if row.exit_code is not None else 0, row.log_out, row.log_err)
    res = res or ledger.result(row.id)
    if res is None:
        raise JobFailed(row.id, row.status, "no result was recorded", hint="retry the job")
    if res.inline is not None:
        data = res.inline
    else:
        assert res.path is not None  # a result is inline or in a file
        data = Path(res.path).read_bytes()
    return cloudpickle.loads(data)


