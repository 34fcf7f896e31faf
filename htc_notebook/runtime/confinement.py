"""Whether a profile's jobs run confined, and what a user is told when they do not (G11).

On a site without unprivileged user namespaces (or without bubblewrap), no sandbox can be made.
For the owner's own data root the local backend still runs, unconfined, rather than refusing
every job: the profile is used as if it said `sandbox: none`, and the session warns once, naming
what is off and how to turn it back on. A `sandbox: none` set by hand warns the same way. A
server that other API users reach must not run unconfined unless told so explicitly: there the
sandbox is the boundary between users (`refuse_serving_unconfined`).

>>> from htc_notebook.spec import SiteConfig
>>> site = SiteConfig.from_yaml("profiles: {local: {sandbox: none}}", file="/etc/htc/site.yaml")
>>> print(unconfined_message(site, site.profile("local"), None))  # doctest: +NORMALIZE_WHITESPACE
profile 'local' runs jobs unconfined (`sandbox: none` at /etc/htc/site.yaml:1). Off: task isolation
(a job reads and writes every task and project of its data root, and the ledger), the scratch
limit (maxDiskGiB) and the memory and time limits of Python calls (they run in their worker's process;
each attempt records `none`). To turn them back on, remove that setting.
"""

from __future__ import annotations

import os
from pathlib import Path

from htc_notebook.backends.sandbox import sandbox_problem
from htc_notebook.errors import HTCError
from htc_notebook.spec import PartitionProfile, SiteConfig
from htc_notebook.spec.site import ENV_VAR, USER_FILE

ALLOW_ENV = "HTC_ALLOW_UNCONFINED"  # the Jupyter extension's way to say --allow-unconfined
OFF = ("task isolation (a job reads and writes every task and project of its data root, and the ledger), "
       "the scratch limit (maxDiskGiB) and the memory and time limits of Python calls (they run in their "
       "worker's process; each attempt records `none`)")


def as_run(site: SiteConfig, profile: PartitionProfile) -> tuple[PartitionProfile, str | None]:
    """`profile` of `site` as it runs on this machine (`effective`), and what to tell the user if it
    runs unconfined (`unconfined_message`). Submitting and dry runs both ask this."""
    problem = sandbox_problem() if profile.backend == "local" and profile.sandbox != "none" else None
    running = effective(profile, problem)
    return running, unconfined_message(site, running, problem)


def effective(profile: PartitionProfile, problem: str | None) -> PartitionProfile:
    """`profile` as it runs here: a local profile that asks for a sandbox this machine cannot make
    (`problem`: bwrap's reason) runs as `sandbox: none`. SLURM profiles are left alone: their jobs
    run on nodes, which may allow what this machine does not (a node that cannot fails its jobs
    saying why)."""
    if problem and profile.backend == "local" and profile.sandbox != "none":
        return profile.model_copy(update={"sandbox": "none"})
    return profile


def unconfined_message(site: SiteConfig, profile: PartitionProfile, problem: str | None) -> str | None:
    """What to tell the user once per session about `profile` running unconfined (None: it is not)."""
    if profile.sandbox != "none":
        return None
    where = site.source("profiles", profile.name, "sandbox")
    if problem is None or where:
        how = f"`sandbox: none` at {where}" if where else "`sandbox: none`"
        return (f"profile {profile.name!r} runs jobs unconfined ({how}). Off: {OFF}. "
                "To turn them back on, remove that setting.")
    return (f"profile {profile.name!r} runs jobs unconfined: this machine cannot make a sandbox ({problem}). "
            f"Off: {OFF}. To turn them back on, ask the site to allow unprivileged user namespaces "
            f"(sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone = 1) and install bubblewrap. "
            f"To run unconfined on purpose and say so, add `sandbox: none` under `profiles: {profile.name}:` "
            f"in {site_file()}.")


def site_file() -> str:
    """The site file a user edits: $HTC_SITE_CONFIG's, else ~/.config/htc_notebook/site.yaml."""
    return os.environ.get(ENV_VAR) or str(Path(os.path.expanduser("~")) / USER_FILE)


class UnconfinedServer(HTCError):
    """A server that other API users reach would run their jobs unconfined."""


def refuse_serving_unconfined(message: str | None, users: list[str], allowed: bool) -> None:
    """Raise UnconfinedServer if API users (`users`) would share a data root whose jobs run
    unconfined (`message`, from `unconfined_message`) and the owner did not allow it (`allowed`)."""
    if message and users and not allowed:
        raise UnconfinedServer(
            f"refusing to serve {len(users)} API user(s) ({', '.join(sorted(users)[:5])}) unconfined: {message} "
            "On a shared server the sandbox is the boundary between users: one user's job could read "
            f"another's. Start it with `htc serve --allow-unconfined` (the Jupyter extension: {ALLOW_ENV}=1) "
            "only if every user may read every other user's work.")
