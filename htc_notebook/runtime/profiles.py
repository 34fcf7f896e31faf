"""The site's partition profiles as they run here: unconfined where no sandbox can be made
(runtime/confinement.py), which is said once per profile and session.

>>> Profiles(site).get(None).name  # doctest: +SKIP
'local'
"""

from __future__ import annotations

import threading
import warnings

from htc_notebook.errors import HTCWarning
from htc_notebook.runtime import confinement
from htc_notebook.spec import PartitionProfile, SiteConfig


class Profiles:
    """Profiles of one site as this process runs them (the site's own objects are never changed)."""

    def __init__(self, site: SiteConfig):
        self.site = site
        self._known: dict[str, tuple[PartitionProfile, PartitionProfile]] = {}  # name -> (site's, as run here)
        self._lock = threading.Lock()

    def get(self, name: str | None) -> PartitionProfile:
        """Profile `name` (None: the site's default) as it runs here; SpecError for one the site lacks."""
        site = self.site.profile(name or self.site.default_profile)
        with self._lock:
            known = self._known.get(site.name)
            if known is not None and known[0] is site:
                return known[1]
            profile, message = confinement.as_run(self.site, site)
            self._known[site.name] = (site, profile)
        if message:  # once per profile and session (the warning filter would show it once per code line)
            warnings.warn(message, HTCWarning, stacklevel=3)
        return profile

    def unconfined(self, name: str | None = None) -> str | None:
        """What is off if profile `name`'s jobs run unconfined here (None: they run in the sandbox)."""
        return confinement.as_run(self.site, self.site.profile(name or self.site.default_profile))[1]
