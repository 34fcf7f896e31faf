"""Orchestration: sessions, projects, tasks and handles over the ledger and backends."""

from htc_notebook.runtime.handles import JobGroup, JobHandle
from htc_notebook.runtime.results import CommandResult
from htc_notebook.runtime.session import Session
from htc_notebook.runtime.task import Project, Task

__all__ = ["Session", "Project", "Task", "JobHandle", "JobGroup", "CommandResult"]
