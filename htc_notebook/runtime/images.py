"""The unpacked images a data root's jobs run in, as a cache: an image the cache no longer holds
is pulled and unpacked again (by digest) before a job of it starts, and `prune` removes the images
no job has used for a while and no job that has not ended needs (`htc images prune`).

>>> ready(session, "md", rows)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from htc_notebook.registry.pull import Pruned
    from htc_notebook.runtime.session import Session


def ready(session: "Session", project: str, rows: Sequence[Any]) -> None:
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

        base = rootfs(session.registry(project), image.name, image.digest)
        if str(base) != image.rootfs:
            with_binds(base, session.profile(row.profile).container_binds)


def prune(session: "Session", unused_days: float = 7.0, dry_run: bool = False) -> list["Pruned"]:
    """Remove the unpacked images not used for `unused_days` days, but those of jobs not ended."""
    from htc_notebook.registry.pull import prune as prune_cache

    return prune_cache(session.root, session.ledger.active_images(), unused_days, dry_run)
