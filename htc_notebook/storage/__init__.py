"""Where files live and who may touch them: every path resolved and confined (G6)."""

from .atomic import atomic_write
from .confine import confine
from .layout import NAME_PATTERN, Storage, check_name
from .views import ProjectStorage, TaskStorage, checkpoint_path, current

__all__ = ["NAME_PATTERN", "ProjectStorage", "Storage", "TaskStorage", "atomic_write", "check_name",
           "checkpoint_path", "confine", "current"]
