"""What a sweep's jobs used against what they asked for, and the requests worth changing.

`summarize` is pure: it takes one `Usage` per finished job (from the ledger: its last attempt's
CPU time and peak memory, its runtime, and what it asked for) and returns an `Efficiency` whose
`flags` say, in words, which requests are far too large or too small.

>>> jobs = [Usage(memory=4096, used_mib=600 + i, cores=4, cpu_s=60.0, runtime_s=60.0, timeout=3600)
...         for i in range(20)]
>>> e = summarize(jobs)
>>> print(e)
20 jobs measured: memory p95 618 of 4096 MiB, CPU efficiency 25% of 4 cores, runtime p95 60 s of 3600 s
- memory: asks for 4096 MiB, the p95 job used 618 MiB: about 832 MiB would do
- CPU: 25% of 4 cores used: ask for fewer cores (1 would do)
- time: the time limit is 3600 s, the p95 job ran 60 s: a shorter limit is scheduled sooner
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class Usage:
    """One finished job: what it asked for (memory MiB, cores, timeout s) and what it used."""

    memory: int | None
    used_mib: float | None
    cores: int
    cpu_s: float | None
    runtime_s: float | None
    timeout: int | None


@dataclass(frozen=True)
class Efficiency:
    jobs: int  # jobs with a measurement
    memory: int | None = None  # the most any of them asked for
    memory_p95: float | None = None
    cores: int | None = None
    cpu_efficiency: float | None = None  # median CPU time / (runtime x cores)
    runtime_p95: float | None = None
    timeout: int | None = None
    flags: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = []
        if self.memory_p95 is not None:
            parts.append(f"memory p95 {self.memory_p95:.0f}" + (f" of {self.memory} MiB" if self.memory else " MiB"))
        if self.cpu_efficiency is not None:
            parts.append(f"CPU efficiency {100 * self.cpu_efficiency:.0f}% of {self.cores} core"
                         + ("s" if self.cores != 1 else ""))
        if self.runtime_p95 is not None:
            parts.append(f"runtime p95 {self.runtime_p95:.0f} s" + (f" of {self.timeout} s" if self.timeout else ""))
        head = f"{self.jobs} jobs measured" + (": " + ", ".join(parts) if parts else "")
        return "\n".join([head] + [f"- {f}" for f in self.flags])


def _p(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of non-empty `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(jobs: Iterable[Usage]) -> Efficiency:
    jobs = list(jobs)
    used = [j.used_mib for j in jobs if j.used_mib is not None]
    effs = [j.cpu_s / (j.runtime_s * (j.cores or 1)) for j in jobs if j.cpu_s is not None and j.runtime_s]
    runtimes = [j.runtime_s for j in jobs if j.runtime_s is not None]
    measured = sum(1 for j in jobs if j.used_mib is not None or j.cpu_s is not None)
    memory = max((j.memory for j in jobs if j.memory), default=None)
    cores = max((j.cores for j in jobs), default=None)
    timeout = max((j.timeout for j in jobs if j.timeout), default=None)
    flags = []
    p95 = _p(used, 0.95) if used else None
    if p95 is not None and memory:
        if p95 < 0.5 * memory:
            enough = 64 * math.ceil(p95 * 1.25 / 64)
            flags.append(f"memory: asks for {memory} MiB, the p95 job used {p95:.0f} MiB: about {enough} MiB would do")
        elif p95 > 0.9 * memory:
            flags.append(f"memory: the p95 job used {p95:.0f} of its {memory} MiB: close to being killed, ask for more")
    eff = _p(effs, 0.5) if effs else None
    if eff is not None and cores and cores > 1 and eff < 0.5:
        flags.append(f"CPU: {100 * eff:.0f}% of {cores} cores used: ask for fewer cores "
                     f"({max(1, math.ceil(eff * cores))} would do)")
    elif eff is not None and eff > 1.2:
        flags.append(f"CPU: uses {eff:.1f}x the {cores} core(s) it asked for (threads?): ask for more cores")
    rp95 = _p(runtimes, 0.95) if runtimes else None
    if rp95 is not None and timeout and rp95 < 0.25 * timeout:
        flags.append(f"time: the time limit is {timeout} s, the p95 job ran {rp95:.0f} s: a shorter limit is "
                     "scheduled sooner")
    return Efficiency(measured, memory, p95, cores, eff, rp95, timeout, flags)
