"""The project registry: an OCI registry per data root, one namespace per project, access by signed tokens.

`daemon` starts and stops it (`htc registry up|down|status`), `credentials` holds the keys and
decides what a project may touch, `token_service` answers the registry's clients, `catalog`
reads one project's repositories and images.
"""

from .catalog import ProjectRegistry, RegistryNotRunning
from .credentials import namespace

__all__ = ["ProjectRegistry", "RegistryNotRunning", "namespace"]
