"""The unpacked images a data root's jobs run in, as a cache: an image the cache no longer holds
is pulled and unpacked again (by digest) before a job of it starts, and `prune` removes the images
no job has used for a while and no job that has not ended needs (`htc images prune`).

>>> ready(root, profiles, "md", rows)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from htc_notebook.runtime.live_backends import project_registry
from htc_notebook.runtime.profiles import Profiles

if TYPE_CHECKING:
    from htc_notebook.registry.pull import Pruned


def ready(root: Path, profiles: Profiles, project: str, rows: Sequence[Any]) -> None:
    """Unpack again each image of `rows` (job rows of `project`) whose root file system is gone,
    with the mount points its profile's container_binds need (the same path as before)."""
    seen: set[str] = set()
    for row in rows:
        image = row.spec.image
        if image is None or image.rootfs in seen:
            continue
        seen.add(image.rootfs)
        if os.path.isdir(image.rootfs):
            continue
        from htc_notebook.backends.images import with_binds
        from htc_notebook.registry.pull import rootfs

        base = rootfs(project_registry(root, project), image.name, image.digest)
        if str(base) != image.rootfs:
            with_binds(base, profiles.get(row.profile).container_binds)


def prune(root: Path, active: Iterable[str], unused_days: float = 7.0, dry_run: bool = False) -> list["Pruned"]:
    """Remove the unpacked images not used for `unused_days` days, but those of jobs not ended (`active`)."""
    from htc_notebook.registry.pull import prune as prune_cache

    return prune_cache(root, set(active), unused_days, dry_run)
