"""Programs the toolkit starts outside a job's sandbox, and what of a job's environment reaches them.

A job's `envs` are the job's own: they hold inside its sandbox, never outside it. So:

- every program the toolkit starts around a job (bwrap, sh for the cgroup step) is found
  once, by absolute path, on the toolkit's own PATH as it was when this module was imported, never
  through a PATH a job set (a `bwrap` planted in the task directory is never run);
- the variables that choose what a process loads or runs (PATH, LD_*, PYTHON*, BASH_ENV, ...) are
  taken out of the environment those programs get and set again inside the sandbox only
  (bwrap's `--setenv`: `sandbox.confined`).

>>> outside, inside = split_env({"PATH": "/evil", "LD_PRELOAD": "/evil.so", "T": "300"})
>>> outside, sorted(inside)
({'T': '300'}, ['LD_PRELOAD', 'PATH'])
>>> program("sh").startswith("/")
True
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Mapping

TOOLKIT_PATH = os.environ.get("PATH") or os.defpath  # read once, before any job's environment is seen

# what the dynamic loader, shells, Python and glibc read to decide what code a process runs
LOADING = frozenset({"PATH", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "CDPATH", "GLOBIGNORE",
                     "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF",
                     "TZDIR", "PERL5LIB", "PERL5OPT", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "OPENSSL_CONF"})
LOADING_PREFIXES = ("LD_", "PYTHON", "MALLOC_", "BASH_FUNC_", "OMPI_MCA_", "PMIX_MCA_")


def loads_code(name: str) -> bool:
    """Does variable `name` choose what a process loads or runs (so a job's value stays inside)?"""
    return name in LOADING or name.startswith(LOADING_PREFIXES)


def split_env(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what may reach programs outside the sandbox, what is set inside it only) of a job's `env`."""
    outside = {k: v for k, v in env.items() if not loads_code(k)}
    return outside, {k: v for k, v in env.items() if loads_code(k)}


@functools.cache
def program(name: str) -> str:
    """`name`'s absolute path on the toolkit's own PATH (`name` itself if it is not there: starting it
    then fails with the OS's own error, and a job's PATH is never consulted)."""
    if os.path.isabs(name):
        return name
    found = shutil.which(name, path=TOOLKIT_PATH)
    return os.path.abspath(found) if found else name
