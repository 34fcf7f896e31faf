"""What is asked: pure data and validation (no dask, no Jupyter).

Every model is frozen and forbids unknown keys; bad input raises
:class:`htc_notebook.errors.SpecError` naming the field, the value and what is allowed.
"""

from .job import Dimension, EnvVar, JobBatch, JobDefinition, ProjectLimit, RetentionPolicy, load_batches
from .jobspec import ImageRef, JobSpec, MpiLayout
from .names import check_name
from .profile import PartitionProfile
from .resources import Resources
from .retry import Decision, Limits, Request, RetryPolicy
from .site import SiteConfig
from .sweep import Member, Sweep
from .units import format_walltime, parse_memory_mib, parse_walltime_seconds
from .yaml_loader import LineMap, load_yaml, locate, located

__all__ = [
    "Dimension", "EnvVar", "ImageRef", "JobBatch", "JobDefinition", "JobSpec", "MpiLayout", "LineMap", "Member",
    "PartitionProfile", "ProjectLimit", "Resources", "RetentionPolicy",
    "Decision", "Limits", "Request", "RetryPolicy", "SiteConfig", "Sweep", "check_name", "format_walltime",
    "load_batches",
    "load_yaml", "locate", "located", "parse_memory_mib", "parse_walltime_seconds",
]
