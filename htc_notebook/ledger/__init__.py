"""The durable truth: one SQLite (WAL) ledger of projects, tasks, jobs, attempts, events, results."""

from .db import Ledger
from .rows import (AttemptRow, AttemptStart, BatchRow, EventRow, JobRow, LimitRow, RetentionRow, NewBatch, NewJob,
                   ProjectRow, ResultRow, TaskRow)
from .schema import SCHEMA_VERSION

__all__ = ["AttemptRow", "AttemptStart", "BatchRow", "EventRow", "JobRow", "LimitRow", "RetentionRow", "Ledger",
           "NewBatch", "NewJob", "ProjectRow", "ResultRow", "SCHEMA_VERSION", "TaskRow"]
