"""Forward flux sampling with LAMMPS as the engine: generations of `lmp` command jobs, each
started from the configurations the last generation wrote.

The system of `ffs.py` run by a real MD code: one particle in V(x) = h (x^2 - 1)^2 (h = HEIGHT
kT, an atom-style force in LAMMPS), underdamped Langevin dynamics at kT = 1 (LJ units, damping
DAMP), so a configuration is a position and a velocity. Every job is a command batch; jobs pass
configurations through files in the task directory (every job's working directory):

- `flux_batch`: runs in A, sent back to A's minimum whenever it reaches B; each job writes the
  first crossings of lambda_0 after each visit to A (`flux-<i>.pts`, "x vx" lines) and how long it
  ran (`flux-<i>.time`).
- `stage_batch(k)`, submitted `after=` the generation before: each job draws its starting points
  from the last generation's `.pts` files, runs each until it reaches interface k + 1 (`fix halt`)
  or falls back into A, and writes the successes (`stage-<k>-<i>.pts`) and how many it tried.
- `passage_batch`: brute force, the time from A's minimum to B, to compare.

`rate(directory)` reads the files: the flux through lambda_0, each stage's crossing probability,
their product (the rate A -> B) and the brute-force rate.

>>> batch = stage_batch(2, jobs=5)
>>> batch["jobName"], batch["batchSize"], batch["htcJobDefinition"]["commands"][:2]
('stage-2', 5, ['sh', '-c'])
>>> batch["htcJobDefinition"]["commands"][2].split(" | ")[0]  # its starting points: stage 1's ends
'cat stage-1-*.pts 2>/dev/null'
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from htc_notebook.examples.ffs import A_EDGE, B_EDGE, INTERFACES
from htc_notebook.storage import atomic_write
from htc_notebook.storage.untrusted import read_head

HEIGHT = 4.0  # the barrier, in kT
DAMP = 0.5  # the Langevin damping time (LJ time units)
DT = 0.001
READ_LIMIT = 16 << 20  # bytes read of any file a job wrote

COMMON = f"""# one particle in V(x) = h (x^2 - 1)^2, Langevin dynamics at kT = 1 (htc_notebook.examples.ffs_lammps)
units lj
atom_style atomic
atom_modify map array
boundary p p p
region box block -4 4 -1 1 -1 1
create_box 1 box
mass 1 1.0
pair_style zero 1.0
pair_coeff * *
create_atoms 1 single -1.0 0.0 0.0
variable fx atom -4.0*{HEIGHT}*x*(x*x-1.0)
variable xx equal x[1]
fix bath all langevin 1.0 1.0 {DAMP} ${{seed}}
fix well all addforce v_fx 0.0 0.0
fix line all setforce NULL 0.0 0.0
fix move all nve
timestep {DT}
thermo 0
velocity all set 0.0 0.0 0.0
"""

INPUTS = {
    "ffs.in": COMMON,
    # in A until `steps`, sent back to A's minimum on reaching B; "x vx" every 10 steps
    "flux.in": f"""include ffs.in
fix up all halt 10 v_xx >= {B_EDGE} error continue
fix watch all print 10 "$(x[1]) $(vx[1])" file ${{traj}} screen no title ""
label more
run ${{steps}} upto
if "$(step) < ${{steps}}" then "set atom 1 x -1.0 vx 0.0" "jump SELF more"
""",
    # one run per starting point (x from `xs`, vx from `vs`), until the target or back into A
    "trials.in": f"""include ffs.in
variable xs file ${{xsfile}}
variable vs file ${{vsfile}}
fix up all halt 10 v_xx >= ${{target}} error continue
fix back all halt 10 v_xx < {A_EDGE} error continue
label trial
set atom 1 x ${{xs}} vx ${{vs}}
run 100000000
print "$(x[1]) $(vx[1])" append ${{out}} screen no
next xs vs
jump SELF trial
""",
    # brute force: `n` times from A's minimum to B
    "passage.in": f"""include ffs.in
fix up all halt 10 v_xx >= {B_EDGE} error continue
variable k loop ${{n}}
label sample
set atom 1 x -1.0 vx 0.0
reset_timestep 0
run 100000000
print "$(step*dt)" append ${{out}} screen no
next k
jump SELF sample
""",
}

LMP = "lmp -log none -screen none"
# `n` lines drawn with replacement from stdin, seeded (awk: no shuf --random-source in sh)
DRAW = ("awk -v n={n} -v seed={seed} 'BEGIN {{srand(seed)}} {{l[NR] = $0}} "
        "END {{if (NR) for (i = 0; i < n; i++) print l[int(rand() * NR) + 1]}}'")


def write_inputs(directory: str | Path) -> None:
    """Put the LAMMPS input files where the jobs run (the task directory). Written atomically (a temp
    file renamed over the name): a link a job left there is replaced, never followed."""
    for name, text in INPUTS.items():
        atomic_write(Path(directory) / name, text.encode())


def _batch(name: str, jobs: int, script: str) -> dict[str, Any]:
    return {"jobName": name, "batchSize": jobs,
            "htcJobDefinition": {"commands": ["sh", "-c", script], "maxVCpus": 1, "maxMemory": 256}}


def flux_batch(jobs: int = 4, steps: int = 400_000) -> dict[str, Any]:
    """The flux through lambda_0: `jobs` runs of `steps` steps in A."""
    first = (f"BEGIN {{armed = 1}} {{if ($1 < {A_EDGE}) armed = 1; "
             f"else if (armed && $1 >= {INTERFACES[0]}) {{print; armed = 0}}}}")
    return _batch("flux", jobs, f"{LMP} -in flux.in -var seed $((HTC_JOB_INDEX + 1)) -var steps {steps} "
                  "-var traj traj-$HTC_JOB_INDEX.txt\n"
                  f"awk '{first}' traj-$HTC_JOB_INDEX.txt > flux-$HTC_JOB_INDEX.pts\n"
                  f"echo {steps * DT} > flux-$HTC_JOB_INDEX.time\n")


def stage_batch(stage: int, jobs: int = 5, trials: int = 400) -> dict[str, Any]:
    """Stage `stage`: `jobs` x `trials` runs from the last generation's end points to interface stage + 1."""
    sources = "flux-*.pts" if stage == 0 else f"stage-{stage - 1}-*.pts"
    me, target = f"{stage}-$HTC_JOB_INDEX", INTERFACES[stage + 1]
    seed = f"$((1000 * {stage + 1} + HTC_JOB_INDEX"  # closed below: one for drawing, one for LAMMPS
    draw = DRAW.format(n=trials, seed=f"{seed}))")
    return _batch(f"stage-{stage}", jobs, f"cat {sources} 2>/dev/null | {draw} > starts-{me}\n"
                  f"cut -d' ' -f1 starts-{me} > xs-{me}; cut -d' ' -f2 starts-{me} > vs-{me}; : > ends-{me}\n"
                  f"if [ -s starts-{me} ]; then {LMP} -in trials.in -var seed {seed} + 7))"
                  f" -var target {target} -var xsfile xs-{me} -var vsfile vs-{me} -var out ends-{me}; fi\n"
                  f"awk '$1 >= {target}' ends-{me} > stage-{me}.pts\n"
                  f"wc -l < starts-{me} > stage-{me}.tries\n")


def passage_batch(jobs: int = 8, samples: int = 20) -> dict[str, Any]:
    """Brute force: `jobs` x `samples` first passages from A's minimum to B."""
    return _batch("brute-force", jobs, f"{LMP} -in passage.in -var seed $((HTC_JOB_INDEX + 500)) -var n {samples} "
                  "-var out passage-$HTC_JOB_INDEX.txt\n")


def _lines(path: Path) -> list[str]:
    """The lines of a file the jobs wrote: read as untrusted (no link followed, no FIFO waited on,
    at most READ_LIMIT bytes)."""
    text = read_head(path, READ_LIMIT, below=1).decode(errors="replace")
    return [line for line in text.splitlines() if line.strip()]


def rate(directory: str | Path) -> dict[str, Any]:
    """The FFS estimate from the jobs' files (flux, each stage's probability, the rate A -> B) and the
    brute-force rate (first passages per unit time)."""
    d = Path(directory)
    crossings = sum(len(_lines(p)) for p in d.glob("flux-*.pts"))
    phi = crossings / sum(float(_lines(p)[0]) for p in d.glob("flux-*.time"))
    probabilities = []
    for stage in range(len(INTERFACES) - 1):
        tries = sum(int(_lines(p)[0]) for p in d.glob(f"stage-{stage}-*.tries"))
        successes = sum(len(_lines(p)) for p in d.glob(f"stage-{stage}-*.pts"))
        probabilities.append(successes / max(1, tries))
    passages = [float(t) for p in d.glob("passage-*.txt") for t in _lines(p)]
    return {"flux": phi, "probabilities": probabilities, "rate": phi * math.prod(probabilities),
            "brute_force": len(passages) / sum(passages) if passages else math.nan}
