"""The durable truth: one SQLite (WAL) ledger of projects, tasks, jobs, attempts, events, results.

Split by concern. `LedgerCore` (connection.py) owns the file, its connections and transactions
(`_write`, `_snapshot`, `_read`); each concern is a subclass of it that uses only those and its own
names: projects.py, submission.py, job_states.py, attempts.py, retries.py, leases.py,
project_rules.py, dependencies.py, reads.py, changes.py, log_queue.py. `Ledger` (db.py) is their
composition and defines nothing
itself, so its public API is theirs, one method in one place. Helpers the concerns share are public
functions of modules below them: statements.py (lock waits, batched statements, seq, events),
encoding.py (values checked and encoded, job rows decoded), migrations.py (schema created or
upgraded on open), schema.py (DDL and SQL fragments), rows.py (the row types). Imports between
these modules run one way (no circle) and never name another module's private `_name`.
"""

from .db import Ledger
from .rows import (AttemptRow, AttemptStart, BatchRow, Envelope, EventRow, FirstAttempt, JobRow, LimitRow, NewBatch,
                   NewJob, ProjectRow, ResultRow, RetentionRow, TaskRow)
from .schema import SCHEMA_VERSION

__all__ = ["AttemptRow", "AttemptStart", "BatchRow", "Envelope", "EventRow", "FirstAttempt", "JobRow", "LimitRow",
           "RetentionRow", "Ledger", "NewBatch", "NewJob", "ProjectRow", "ResultRow", "SCHEMA_VERSION", "TaskRow"]
