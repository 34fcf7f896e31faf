"""The durable truth: one SQLite (WAL) ledger of projects, tasks, jobs, attempts, events, results."""

from .db import Ledger
from .rows import (AttemptRow, AttemptStart, BatchRow, EventRow, JobRow, LimitRow, RetentionRow, NewBatch, NewJob,
                   ProjectRow, ResultRow, TaskRow)
from .schema import SCHEMA_VERSION
from htc_notebook.states import ACTIVE, REQUEUEABLE, TERMINAL, JobStatus, Outcome  # what it records

__all__ = ["ACTIVE", "AttemptRow", "AttemptStart", "BatchRow", "EventRow", "JobRow", "LimitRow", "RetentionRow", "JobStatus", "Ledger",
           "NewBatch", "NewJob", "Outcome", "ProjectRow", "REQUEUEABLE", "ResultRow", "SCHEMA_VERSION",
           "TERMINAL", "TaskRow"]
