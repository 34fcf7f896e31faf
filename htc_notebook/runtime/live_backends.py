"""The backends one Session runs: one per profile, made on first use (a local dask cluster and
command runner, or SLURM arrays and pilots), with their pilots' scale and adapt.

>>> backends.get(profiles.get("cpu")).submit(launches)  # doctest: +SKIP
>>> backends.scale("cpu", 4)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Sequence, cast

from htc_notebook.backends.base import Backend, Reporter
from htc_notebook.errors import UnsupportedFeature
from htc_notebook.runtime.profiles import Profiles
from htc_notebook.spec import PartitionProfile, SiteConfig
from htc_notebook.storage import Storage

if TYPE_CHECKING:  # the backends are imported where used (SLURM's needs dask-jobqueue)
    from htc_notebook.backends.local import LocalBackend
    from htc_notebook.backends.slurm.backend import SlurmBackend

log = logging.getLogger(__name__)

CallTimes = Callable[[int, str], list[float]]  # Ledger.call_durations: a payload's measured call times


def project_registry(root: Path, project: str):
    """The data root's container registry as `project` sees it (`htc_notebook.registry.ProjectRegistry`)."""
    from htc_notebook.registry import ProjectRegistry
    from htc_notebook.spec import check_name

    return ProjectRegistry(root, check_name(project, field="project"))


class LiveBackends:
    """Profiles -> the backends running them, made on first use."""

    def __init__(self, site: SiteConfig, profiles: Profiles, storage: Storage, reporter: Reporter,
                 call_times: CallTimes):
        self.site, self.profiles, self.storage = site, profiles, storage
        self._reporter, self._call_times = reporter, call_times
        self._on_slurm: list[Callable[[], None]] = []
        self._backends: dict[str, Backend] = {}
        self._image_holds: list[IO[str]] = []  # pilot images kept from `htc images prune` while they run
        self._lock = threading.RLock()
        self.closed = False

    def on_slurm(self, listener: Callable[[], None]) -> None:
        """Call `listener()` whenever a SLURM backend is made (the reconcile loop watches SLURM then)."""
        self._on_slurm.append(listener)

    def get(self, profile: PartitionProfile) -> Backend:
        """The backend of `profile` (as `Profiles.get` returns it), made on first use."""
        with self._lock:
            if self.closed:
                raise UnsupportedFeature("this session is closed; open a new Session")
            backend = self._backends.get(profile.name)
            if backend is None:
                backend = self._backends[profile.name] = self._make(profile)
            return backend

    def _make(self, profile: PartitionProfile) -> Backend:
        logs = str(self.storage.root / "pilot-logs")
        if profile.backend == "slurm":
            from htc_notebook.backends.slurm.backend import SlurmBackend

            backend = SlurmBackend(profile, self._reporter, credentials=self.storage.dask_credentials_path,
                                   log_directory=logs, grace=self.site.exit_file_grace,
                                   pilot_python=(lambda: self._pilot_python(profile)) if profile.pilot_image else None,
                                   call_times=self._call_times)
            for listener in self._on_slurm:
                listener()
            return backend
        from htc_notebook.backends.local import LocalBackend

        return LocalBackend(profile, self._reporter, log_directory=logs, call_times=self._call_times)

    def all(self) -> list[Backend]:
        with self._lock:
            return list(self._backends.values())

    def slurm(self) -> list["SlurmBackend"]:
        """The SLURM backends running (for the data root's one status poll)."""
        return [cast("SlurmBackend", b) for b in self.all() if getattr(b, "name", "") == "slurm"]

    def cancel(self, job_ids: Sequence[int]) -> None:
        for backend in self.all():
            backend.cancel(job_ids)

    def _pilot_python(self, profile: PartitionProfile) -> str:
        """The command `profile`'s pilots start Python with in its `pilot_image`: the image resolved in
        its project's registry (of the profile's architecture), pulled and unpacked once, and held
        from `htc images prune` until the session closes."""
        from htc_notebook.backends.slurm.pilots import image_python
        from htc_notebook.registry.pull import hold, resolve, rootfs
        from htc_notebook.spec.names import parse_site_image

        assert profile.pilot_image is not None  # only asked for profiles with one
        project, image = parse_site_image(profile.pilot_image)
        registry = project_registry(self.storage.root, project)
        digest = resolve(registry, image, profile.architecture, field="pilot_image", model="PartitionProfile")
        self._image_holds.append(hold(self.storage.root, digest))
        return image_python(profile, str(rootfs(registry, image, digest)), str(self.storage.root))

    # -- pilots (dask workers on a scheduler) --------------------------------------
    def pilots(self, profile: str | None = None):
        """The dask-jobqueue cluster of a SLURM profile (started on first use)."""
        prof = self.profiles.get(profile)
        backend = self.get(prof)
        if prof.backend != "slurm":
            raise UnsupportedFeature(f"profile {prof.name!r} runs locally; it has no pilots to scale")
        return cast("SlurmBackend", backend).pilots.cluster

    def scale(self, profile: str | None, jobs: int) -> None:
        """Keep exactly `jobs` pilot jobs of a SLURM profile (stops adapting). BackendError with
        SLURM's words if it refuses the pilot's job script."""
        from htc_notebook.backends.slurm.pilots import check_probe

        cluster = self.pilots(profile)
        adaptive = getattr(cluster, "_adaptive", None)  # where distributed keeps it; adapt() stops it too
        if adaptive is not None:
            adaptive.stop()
            cluster._adaptive = None
        cluster.scale(jobs=jobs)
        check_probe(cluster)  # else a refused script leaves the caller waiting for workers that never come

    def adapt(self, profile: str | None, minimum: int = 0, maximum: int | None = None) -> None:
        """Let a SLURM profile's pilot count follow the work, between `minimum` and `maximum` jobs."""
        prof = self.profiles.get(profile)
        self.pilots(profile).adapt(minimum_jobs=minimum, maximum_jobs=maximum or prof.max_pilots)

    def start(self, profile: str | None, jobs: int | None = None) -> None:
        """Start a profile's cluster now: the local dask cluster, or `jobs` SLURM pilot jobs (default 1)."""
        prof = self.profiles.get(profile)
        if prof.backend == "local":
            cast("LocalBackend", self.get(prof)).client  # noqa: B018 - starts it
        else:
            self.scale(prof.name, jobs or 1)

    def stop(self, profile: str | None) -> bool:
        """Stop a profile's clusters (its running jobs here end CANCELLED); False if none ran."""
        prof = self.profiles.get(profile)
        with self._lock:
            backend = self._backends.pop(prof.name, None)
        if backend is None:
            return False
        backend.close()
        return True

    def clusters(self) -> list[dict]:
        """The dask clusters running: profile, kind, workers, dashboard, jobs running."""
        rows = []
        with self._lock:
            named = list(self._backends.items())
        for name, backend in named:
            for kind, runner in backend.dask_runners().items():
                if not runner.started:
                    continue
                client = runner.client
                rows.append({"profile": name, "kind": kind, "workers": len(client.scheduler_info().get("workers", {})),
                             "dashboard": runner.dashboard_link, "jobs": runner.count(),
                             # adapting (distributed keeps its Adaptive there; `scale` stops it)
                             "adaptive": getattr(runner.cluster, "_adaptive", None) is not None})
        return rows

    def close(self) -> None:
        """Stop every backend (running local jobs end CANCELLED) and let go of the pilot images."""
        with self._lock:
            self.closed = True
            backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            backend.close()
        for held in self._image_holds:
            held.close()
