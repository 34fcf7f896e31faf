"""The Ledger: one SQLite file (WAL) holding projects, tasks, jobs, attempts, events, results.

`Ledger` holds no code of its own: it is the sum of the concern classes below, each a subclass of
`LedgerCore` (connection.py: the file, its connections and transactions) that uses only the core's
private names and its own. Every write is one `BEGIN IMMEDIATE` transaction, so concurrent writers
(threads or processes) queue on the database lock instead of failing halfway. State rules (G3:
SUCCEEDED is final; active-state updates never touch terminal jobs) live in the SQL WHERE clauses,
with a trigger as a last line of defence.
"""

from __future__ import annotations

from .attempts import Attempts
from .changes import Changes
from .dependencies import Dependencies
from .job_states import JobStates
from .leases import Leases
from .log_queue import LogQueue
from .project_rules import ProjectRules
from .projects import Projects
from .reads import Reads
from .retries import Retries
from .submission import Submission


class Ledger(Projects, Submission, JobStates, Attempts, Retries, Dependencies, Leases, ProjectRules, Reads, Changes,
             LogQueue):
    """The durable truth. Safe for many threads (one connection each) and many processes."""
