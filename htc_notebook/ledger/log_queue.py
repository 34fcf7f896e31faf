"""Jobs whose logs are to be packed (storage/log_packs.py): queued by the trigger `jobs_ended_pack_logs`
(schema.py) when a job with logs fails, is cancelled or lost, and by the statement that records a
success (attempts.py) unless its call wrote no log; taken by runtime/log_packer.py."""

from __future__ import annotations

import json
from typing import Sequence

from .connection import LedgerCore
from .statements import IN_JSON


class LogQueue(LedgerCore):
    """The queue of ended jobs whose logs are still loose."""

    def logs_due(self, ended_before: float, limit: int = 5000) -> list[tuple[int, str, str | None, str | None]]:
        """Up to `limit` queued jobs that ended before `ended_before`, oldest first: (job id, status now,
        stdout path, stderr path). A job queued and since retried is listed with its new status."""
        return self._read("SELECT q.job_id, j.status, j.log_out, j.log_err FROM log_queue q JOIN jobs j "
                          "ON j.id = q.job_id WHERE q.ended < ? ORDER BY q.ended LIMIT ?", (ended_before, limit))

    def logs_done(self, job_ids: Sequence[int]) -> None:
        """Take jobs off the queue (packed, or running again: queued anew when they end)."""
        with self._write() as con:
            con.execute(f"DELETE FROM log_queue WHERE job_id IN {IN_JSON}", (json.dumps(list(job_ids)),))
