"""Writes the demo notebooks: `python notebooks/make_notebooks.py` (the source of truth, reviewable as text)."""
import nbformat as nbf
from pathlib import Path

OUT = Path(__file__).resolve().parent

def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    return n

quickstart = nb([
"""md:# Quickstart: an ensemble sweep on this machine

`htc_notebook` runs many jobs from a notebook. With no scheduler around, jobs run on an
embedded local backend (a dask `LocalCluster`); the same code runs on SLURM with a profile.
Everything is recorded in a ledger (`htc-data/ledger.db`), so results survive the kernel.""",
"""import shutil
shutil.rmtree("htc-data-quickstart", ignore_errors=True)   # start clean each time this notebook is run

from htc_notebook import Session, Sweep, use
session = Session("htc-data-quickstart")
task = session.project("demo").task("quickstart")
use(task)     # the task that %htc and the decorators use
task""",
"""md:## A Python sweep

`task.sweep` runs a function once per member of a sweep (here a grid). It returns at once;
`wait(progress=True)` shows a progress bar.""",
"""def energy(T, seed):
    import random
    rng = random.Random(seed)
    return sum(rng.gauss(0, T) ** 2 for _ in range(2_000)) / 2_000

jobs = task.sweep(energy, Sweep.grid(T=[0.5, 1.0, 2.0], seed=[1, 2, 3]))
jobs.wait(progress=True)
df = jobs.to_dataframe(results=True)
df[["status", "T", "seed", "result"]]""",
"""# NBVAL_CHECK_OUTPUT
print(len(df), "jobs:", df.status.value_counts().to_dict())
print("mean energy rises with T:", df.groupby("T").result.mean().is_monotonic_increasing)""",
"""md:Run the sweep again: every member has a stable key, and members that already succeeded
are not run again.""",
"""# NBVAL_CHECK_OUTPUT
again = task.sweep(energy, Sweep.grid(T=[0.5, 1.0, 2.0], seed=[1, 2, 3]))
print("skipped", again.skipped, "of", len(again))""",
"""md:## The `%htc` magics and the live table

`%htc submit` runs a command template over a sweep; the result is the job group,
displayed as a live table (in JupyterLab: filter, sort, click a row for its log).""",
"""%load_ext htc_notebook""",
"""%htc submit --sweep n=1:5:1 -- python -c "print({n} ** 2)\"""",
"""# NBVAL_CHECK_OUTPUT
group = _
group.wait(timeout=120)
print(sorted(int(h.logs()) for h in group))""",
"""%htc profiles""",
"""md:A mistake gets a clear message, and nothing is submitted:""",
"""# NBVAL_CHECK_OUTPUT
from IPython.core.error import UsageError
try:
    get_ipython().run_line_magic("htc", "submit --cores -4 -- echo hi")
except UsageError as e:
    print(str(e).splitlines()[0])""",
"""md:## The cluster launcher

A form generated from the site's profiles; each change is checked against the profile's limits.""",
"""%htc launcher""",
])

mpi = nb([
"""md:# MPI tasks

`mpi_task` runs a function on every rank of an MPI job (with mpi4py) and returns rank 0's value;
with `executable=True` it runs an MPI program. On SLURM many small MPI tasks share one
allocation. This notebook uses the test cluster's `cpu` profile when SLURM is there (as in
`make test`), else this machine.""",
"""import os, shutil, subprocess, sys, tempfile
from htc_notebook import Session, SiteConfig, mpi_task, on_cluster, use

if shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
    site_file = tempfile.mktemp(suffix=".yaml")
    htc = os.path.join(os.path.dirname(sys.executable), "htc")   # the `htc` command of this environment
    subprocess.run([htc, "profiles", "discover", "--scheduler-host", "10.77.0.1", "-o", site_file], check=True, capture_output=True)
    site, PROFILE, NODES = SiteConfig.load(site_file), "cpu", 2
else:
    site, PROFILE, NODES = SiteConfig.builtin(), "local", 1
root = "../test-output/htc-data-mpi" if PROFILE == "cpu" else "htc-data-mpi"   # nodes need a shared path
shutil.rmtree(root, ignore_errors=True)
session = Session(root, site=site)
task = session.project("demo").task("mpi")
use(task)
print("profile:", PROFILE)""",
"""@mpi_task(nodes=NODES, ranks_per_node=2 // NODES)
def ranks(comm, scale):
    import socket
    rows = comm.gather((comm.rank, socket.gethostname()))
    return {"size": comm.size, "sum": comm.allreduce(comm.rank * scale), "ranks": rows}

@on_cluster(profile=PROFILE)
def study(scales):
    return [ranks(s) for s in scales]     # futures, all submitted at once

futures = study([1, 10, 100])
results = [f.result(timeout=300) for f in futures]
results[0]""",
"""# NBVAL_CHECK_OUTPUT
print([r["sum"] for r in results], {r["size"] for r in results})""",
"""md:Falsy values come back as themselves, and an exception on one rank names the rank and
the host (and no rank hangs):""",
"""# NBVAL_CHECK_OUTPUT
@mpi_task(profile=PROFILE, ranks=2)
def falsy(comm):
    return 0

@mpi_task(profile=PROFILE, ranks=2)
def broken(comm):
    if comm.rank == 1:
        raise ValueError("no convergence")
    comm.Barrier()

print(repr(falsy().result(timeout=300)))
try:
    broken().result(timeout=300)
except Exception as e:
    print(str(e).split(" raised ")[1].splitlines()[0])""",
"""md:Many small MPI tasks at once. Python MPI tasks run on a rank pool: MPI ranks started once
(on SLURM, in one shared allocation; locally, on this machine's cores) that serve task after
task, each on a communicator of its own, so a small task does not pay for starting MPI.""",
"""import time
import pandas as pd

@mpi_task(profile=PROFILE, ranks=2)
def tiny(comm, i):
    import os, socket
    return comm.gather((os.getpid(), socket.gethostname())), comm.allreduce(i)

t0 = time.time()
runs = [tiny(i) for i in range(20)]
table = pd.DataFrame([{"task": i, "ranks (pid@host)": " ".join(f"{p}@{h}" for p, h in ranks), "sum": s}
                      for i, (ranks, s) in enumerate(f.result(timeout=300) for f in runs)])
print(f"20 two-rank tasks in {time.time() - t0:.1f} s on {table['ranks (pid@host)'].nunique()} distinct set(s) of ranks")
table.head()""",
"""# NBVAL_CHECK_OUTPUT
print("every task summed its own input twice:", bool((table["sum"] == 2 * table["task"]).all()))""",
"""md:An MPI program (any executable): the function returns its argv.""",
"""# NBVAL_CHECK_OUTPUT
@mpi_task(profile=PROFILE, ranks=2, executable=True)
def hello():
    return ["sh", "-c", "echo rank ${OMPI_COMM_WORLD_RANK:-$SLURM_PROCID}"]

out = hello().result(timeout=300)
print(out.exit_code, sorted(out.stdout.split()))""",
"""md:Done: close the session, which ends its allocations and rank pools now. (A kernel that just
exits leaves its pilot jobs to notice, within a minute, that their scheduler is gone.)""",
"""session.close()""",
])

batches = nb([
"""md:# HTC batches: projects, tasks, jobs, storage

Work is organised as Project -> Task -> Job. A job batch is `batchSize` jobs sharing one job
definition (HTC wire names); job *i* sees `HTC_JOB_INDEX=i`. Each task has its own storage;
the project's shared storage is readable by every task.""",
"""import shutil
shutil.rmtree("htc-data-batches", ignore_errors=True)
from htc_notebook import Session
session = Session("htc-data-batches")
project = session.project("materials")
project.shared.write_text("input.txt", "lattice=fcc\\n")
task = project.task("relax")
task""",
"""group = task.submit_batch({
    "jobName": "relax",
    "batchSize": 4,
    "htcJobDefinition": {
        "commands": ["sh", "-c", "cat $HTC_PROJECT_SHARED/input.txt; echo index=$HTC_JOB_INDEX > out-$HTC_JOB_INDEX.txt"],
        "maxVCpus": 1, "maxMemory": 256, "execTimeoutSeconds": 60,
        "envs": [{"name": "MODE", "value": "fast"}],
    },
})
group.wait(timeout=120).to_dataframe()[["status", "exit_code"]]""",
"""# NBVAL_CHECK_OUTPUT
print(sorted(name for name in task.storage.list() if name.startswith("out-")))
print(task.storage.read_text("out-2.txt").strip())""",
"""md:Paths outside the task's storage are refused:""",
"""# NBVAL_CHECK_OUTPUT
from htc_notebook import StorageAccessDenied
try:
    task.storage.read_text("../other-task/secret.txt")
except StorageAccessDenied as e:
    print(type(e).__name__)""",
"""md:## After a kernel restart

Handles are rebuilt from the ledger: a new `Session` on the same data root sees every job,
and `%htc attach` shows the task's live table again.""",
"""# NBVAL_CHECK_OUTPUT
fresh = Session("htc-data-batches").project("materials").task("relax")
print(fresh.counts()["SUCCEEDED"], "succeeded, rebuilt from the ledger")""",
])


clusters = nb([
"""md:# Profiles and clusters

A site file describes each partition once: cores, memory and GPUs per node, limits, the MPI
launcher, environment set-up. `htc profiles discover` writes one from SLURM. This notebook uses
the test cluster when SLURM answers (as in `make test`), else this machine.""",
"""import os, shutil, subprocess, sys, tempfile
from htc_notebook import Session, SiteConfig, Sweep, use

if shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
    site_file = tempfile.mktemp(suffix=".yaml")
    htc = os.path.join(os.path.dirname(sys.executable), "htc")
    subprocess.run([htc, "profiles", "discover", "--scheduler-host", "10.77.0.1", "-o", site_file],
                   check=True, capture_output=True)
    site, PROFILE = SiteConfig.load(site_file), "cpu"
else:
    site, PROFILE = SiteConfig.builtin(), "local"
root = "../test-output/htc-data-clusters" if PROFILE == "cpu" else "htc-data-clusters"
shutil.rmtree(root, ignore_errors=True)
session = Session(root, site=site)
task = session.project("demo").task("clusters")
use(task)
%load_ext htc_notebook""",
"""%htc profiles""",
"""md:A request that does not fit a profile is refused before anything is submitted, naming the
limit:""",
"""# NBVAL_CHECK_OUTPUT
from htc_notebook import Resources
try:
    site.profile(PROFILE).check(Resources(cores=10_000))
except Exception as e:
    print(type(e).__name__, "names the limit:", "allows at most" in str(e))""",
"""md:Start the profile's cluster (on SLURM: pilot jobs, dask workers inside SLURM jobs), see it,
run a sweep on it, stop it.""",
"""%htc cluster start $PROFILE --jobs 1""",
"""jobs = task.sweep(lambda x: x * x, Sweep.grid(x=range(8)), profile=PROFILE)
jobs.wait(timeout=300, progress=True)
%htc clusters""",
"""# NBVAL_CHECK_OUTPUT
print(jobs.results())""",
"""%htc cluster stop $PROFILE""",
"""md:The form below is generated from the same profiles: change a value and it is checked at once;
when it fits, the pilot job script is shown.""",
"""%htc launcher""",
])

ensemble = nb([
"""md:# An ensemble sweep, analysed

A 2D Ising model (the `htc demo` job) over temperatures and seeds: grid sweeps, a random
sample, results straight into pandas, and a plot.""",
"""import shutil
shutil.rmtree("htc-data-ensemble", ignore_errors=True)
import pandas as pd
from htc_notebook import Session, Sweep
from htc_notebook.examples.ising import ising
task = Session("htc-data-ensemble").project("ising").task("ensemble")""",
"""sweep = Sweep.grid(T=[1.5, 2.0, 2.27, 2.5, 3.0, 3.5], seed=[1, 2, 3])
jobs = task.sweep(ising, sweep)
jobs.wait(progress=True)
df = jobs.to_dataframe(results=True)
df = pd.concat([df[["T", "seed"]], pd.json_normalize(df.result)], axis=1)
df.head()""",
"""summary = df.groupby("T")[["magnetization", "energy"]].mean()
ax = summary.magnetization.plot(marker="o", title="|m| falls through the critical temperature (2.269)")
ax.set_xlabel("T"); ax.set_ylabel("<|m|>");""",
"""# NBVAL_CHECK_OUTPUT
print("ordered below Tc:", bool(summary.magnetization[1.5] > 0.8), "| disordered above:", bool(summary.magnetization[3.5] < 0.3))""",
"""md:More members later: only the new ones run.""",
"""# NBVAL_CHECK_OUTPUT
more = task.sweep(ising, Sweep.grid(T=[1.5, 2.0, 2.27, 2.5, 3.0, 3.5, 4.0], seed=[1, 2, 3]))
more.wait(timeout=300)
print("skipped", more.skipped, "ran", len(more) - more.skipped)""",
])


lammps = nb([
"""md:# A LAMMPS ensemble: a Lennard-Jones liquid at several temperatures

Real science is the same code run many times with varying inputs. Here Debian's LAMMPS (`lmp`)
runs a Lennard-Jones liquid (864 atoms, `lammps/in.lj`) at three temperatures and two velocity
seeds; every member is an MPI run of 2 ranks: across two nodes of the test cluster's `cpu`
profile when SLURM is there (as in `make test`), else with mpirun on this machine. The thermo
output of each run is parsed into a DataFrame and plotted.""",
"""import os, shutil, subprocess, sys, tempfile
from htc_notebook import Session, SiteConfig, use

if shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
    site_file = tempfile.mktemp(suffix=".yaml")
    htc = os.path.join(os.path.dirname(sys.executable), "htc")   # the `htc` command of this environment
    subprocess.run([htc, "profiles", "discover", "--scheduler-host", "10.77.0.1", "-o", site_file], check=True, capture_output=True)
    site, PROFILE, NODES = SiteConfig.load(site_file), "cpu", 2
else:
    site, PROFILE, NODES = SiteConfig.builtin(), "local", 1
PER_NODE = 2 // NODES
root = "../test-output/htc-data-lammps" if PROFILE == "cpu" else "htc-data-lammps"   # nodes need a shared path
shutil.rmtree(root, ignore_errors=True)
session = Session(root, site=site)
task = session.project("md").task("lj")
use(task)
shutil.copy("lammps/in.lj", task.storage.path("in.lj"))   # every job's working directory is the task's
print("profile:", PROFILE, "| ranks:", NODES, "node(s) x", PER_NODE)""",
"""md:## Submitted with `%htc submit`

A sweep over `T` and `seed`; `--nodes`/`--ranks-per-node` make each member an MPI job. (`$NAME`
is a Python variable; `{{T}}` is the sweep's field, written with double braces so that IPython
leaves it for the sweep.)""",
"""%load_ext htc_notebook""",
"""%htc submit --profile $PROFILE --nodes $NODES --ranks-per-node $PER_NODE --name lj --sweep T=0.8,1.2,1.6 --sweep seed=1,2 -- lmp -in in.lj -var T {{T}} -var seed {{seed}} -log none""",
"""group = _
group.wait(timeout=900)
group.counts()""",
"""md:## Thermo output into a DataFrame

Each run prints a thermo table (step, temperature, pressure, potential and total energy, and the
mean squared displacement). The second half of each run gives the averages; the slope of the MSD
gives the diffusion coefficient (D = slope / 6, time step 0.005 tau).""",
"""import numpy as np
import pandas as pd

def thermo(text):
    \"\"\"The last thermo table of a LAMMPS run's output, one row per thermo step.\"\"\"
    lines = text.splitlines()
    head = max(i for i, line in enumerate(lines) if line.split()[:1] == ["Step"])
    rows = []
    for line in lines[head + 1:]:
        if line.startswith("Loop time"):
            break
        rows.append([float(x) for x in line.split()])
    return pd.DataFrame(rows, columns=lines[head].split())

def summary(out):
    t = thermo(out)
    late = t[t.Step >= t.Step.max() / 2]
    slope = np.polyfit(late.Step * 0.005, late["c_msd[4]"], 1)[0]
    return {"temp": late.Temp.mean(), "pressure": late.Press.mean(), "energy": late.PotEng.mean(), "D": slope / 6}

df = pd.DataFrame([{**h.row.params, "host": h.row.host, **summary(h.logs())} for h in group]).sort_values(["T", "seed"])
df""",
"""import matplotlib.pyplot as plt

means = df.groupby("T")[["pressure", "energy", "D"]].agg(["mean", "std"])
fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
for ax, (column, label) in zip(axes, [("pressure", "pressure P*"), ("energy", "potential energy / atom"),
                                      ("D", "diffusion coefficient D*")]):
    ax.errorbar(means.index, means[column]["mean"], yerr=means[column]["std"], marker="o", capsize=3)
    ax.set_xlabel("T*"); ax.set_ylabel(label)
fig.suptitle("Lennard-Jones liquid, density 0.8442: 2 seeds per temperature")
fig.tight_layout()""",
"""# NBVAL_CHECK_OUTPUT
print(len(df), "runs, each of 2 MPI ranks:", group.counts()["SUCCEEDED"], "succeeded")
print("thermostat holds T within 5%:", bool(((df.temp - df["T"]).abs() / df["T"] < 0.05).all()))
for column in ("pressure", "energy", "D"):
    print(column, "rises with T:", bool(means[column]["mean"].is_monotonic_increasing))""",
"""md:## The same runs with `mpi_task(executable=True)`

The decorated function builds the argv (here in the notebook); the call returns a handle whose
result is the run's `CommandResult` (exit code, stdout, stderr).""",
"""from htc_notebook import mpi_task

@mpi_task(profile=PROFILE, nodes=NODES, ranks_per_node=PER_NODE, executable=True)
def lj(T, seed):
    return ["lmp", "-in", "in.lj", "-var", "T", str(T), "-var", "seed", str(seed), "-log", "none"]

hot = [lj(2.0, seed) for seed in (1, 2)]
runs = [h.result(timeout=900) for h in hot]
pd.DataFrame([summary(r.stdout) for r in runs])""",
"""# NBVAL_CHECK_OUTPUT
print("exit codes:", [r.exit_code for r in runs])
print("hotter still, higher pressure:", bool(min(summary(r.stdout)["pressure"] for r in runs) > means["pressure"]["mean"].max()))""",
])


reattach = nb([
"""md:# Re-attach after a kernel restart

Jobs outlive the kernel that submitted them: everything is in the ledger under the data root.
After a restart (or a crash, or closing the laptop), `%htc attach` rebuilds the live table from
the ledger; nothing that succeeded runs again. This notebook plays both kernels: the first one is
a separate Python process that submits a sweep and is killed (SIGKILL) while its jobs run. On the
test cluster (`cpu` profile, as in `make test`) its jobs run on as SLURM arrays; on this machine
(`local`) the jobs that were running die with it and are marked LOST, and are retried here.""",
"""import os, shutil, subprocess, sys, tempfile
from htc_notebook import Session, SiteConfig, use

if shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
    site_file = tempfile.mktemp(suffix=".yaml")
    htc = os.path.join(os.path.dirname(sys.executable), "htc")   # the `htc` command of this environment
    subprocess.run([htc, "profiles", "discover", "--scheduler-host", "10.77.0.1", "-o", site_file], check=True, capture_output=True)
    site, PROFILE, NODES = SiteConfig.load(site_file), "cpu", 2
else:
    site, PROFILE, NODES = SiteConfig.builtin(), "local", 1
root = "../test-output/htc-data-reattach" if PROFILE == "cpu" else "htc-data-reattach"
shutil.rmtree(root, ignore_errors=True)
the_site = f"SiteConfig.load({site_file!r})" if PROFILE == "cpu" else "SiteConfig.builtin()"
print("profile:", PROFILE)""",
"""md:## The first kernel: submit, then die""",
"""first_kernel = f\"\"\"
import os, signal, time
from htc_notebook import Session, SiteConfig, Sweep
if __name__ == "__main__":
    s = Session({root!r}, site={the_site})
    task = s.project("demo").task("reattach")
    group = task.sweep(["sh", "-c", "echo {{i}} >> ran.txt; sleep 3"], Sweep.grid(i=list(range(8))), profile={PROFILE!r})
    while task.counts()["SUCCEEDED"] < 2:   # some done, some running, some waiting
        time.sleep(0.2)
    print("submitted", len(group), "- succeeded before the kill:", task.counts()["SUCCEEDED"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
\"\"\"
killed = subprocess.run([sys.executable, "-c", first_kernel], capture_output=True, text=True, timeout=600)
print(killed.stdout.strip(), "| exit:", killed.returncode)""",
"""md:## This kernel: attach

`%htc attach` takes up what the dead kernel left (its SLURM jobs are watched from here, its local
jobs are marked LOST) and shows the live table.""",
"""%load_ext htc_notebook
session = Session(root, site=site)
use(session.project("demo").task("reattach"));""",
"""%htc attach demo/reattach""",
"""table = _
table.wait(timeout=600)
print(table.counts())""",
"""md:Whatever was LOST (local jobs that died with their kernel) runs again; SUCCEEDED jobs never do.""",
"""%htc retry demo/reattach""",
"""task = session.project("demo").task("reattach")
task.jobs().wait(timeout=600)
ran = (task.storage.task_dir / "ran.txt").read_text().split()
print(task.counts())""",
"""# NBVAL_CHECK_OUTPUT
print("all 8 SUCCEEDED:", task.counts()["SUCCEEDED"] == 8)
done_first = {h.row.params["i"] for h in task.jobs() if h.row.attempts == 1}
print("each job that succeeded on its first attempt ran once:", all(ran.count(str(i)) == 1 for i in done_first))""",
])


rare = nb([
"""md:# Rare events: forward flux sampling as a DAG of jobs

A particle in a double well crosses its barrier (4 kT) rarely. Forward flux sampling splits the
crossing at interfaces: the flux of trajectories leaving state A, then, interface by interface, the
chance that a trajectory started where the last generation arrived gets to the next one. Each
generation of jobs starts from the previous generation's results: a job takes the previous
generation's handles as its argument, waits WAITING in the ledger until they SUCCEEDED, and gets
their results in their place. The whole DAG is submitted at once; nothing in the notebook blocks.

The kernel that builds it is killed halfway (a separate process, SIGKILLed); this kernel finishes
the DAG from the ledger, each job once (`htc_notebook/examples/ffs.py` holds the model).""",
"""import os, shutil, subprocess, sys, tempfile, textwrap
from htc_notebook import Session, use
root = os.path.abspath("htc-data-rare-events")
shutil.rmtree(root, ignore_errors=True)""",
"""md:## The first kernel: build the DAG, then die

Four flux jobs, then six generations of five trial jobs each (200 trajectories a job), each
generation taking the whole previous one; a final job takes every result and computes the rate.
Eight brute-force jobs measure the same rate directly, for comparison.""",
"""first_kernel = textwrap.dedent(f\"\"\"
    import os, signal, time
    from htc_notebook import Session
    from htc_notebook.examples import ffs

    def main():
        task = Session({root!r}).project("ffs").task("barrier")
        fluxes = [task.submit(ffs.flux, seed, 200_000, name="flux") for seed in range(1, 5)]
        previous, generations = fluxes, []
        for stage in range(len(ffs.INTERFACES) - 1):
            previous = [task.submit(ffs.trials, previous, stage, 100 * stage + k, 200, name=f"stage-{{stage}}")
                        for k in range(5)]
            generations.append(previous)
        task.submit(ffs.rate, fluxes, generations, name="rate")
        [task.submit(ffs.first_passage, seed, 25, name="brute-force") for seed in range(8)]
        while task.counts()["SUCCEEDED"] < 4:   # the flux jobs are done, the generations wait
            time.sleep(0.1)
        print("submitted", len(task.jobs()), "jobs; waiting:", task.counts()["WAITING"] > 0, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__main__":
        main()
\"\"\")
script = os.path.join(tempfile.mkdtemp(), "first_kernel.py")
with open(script, "w") as f:
    f.write(first_kernel)
killed = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
print(killed.stdout.strip(), "| exit:", killed.returncode)""",
"""md:## This kernel: attach and watch the generations go

`%htc attach` takes up what the dead kernel left: its running jobs are LOST and run again, and its
waiting jobs are released here as their parents succeed.""",
"""%load_ext htc_notebook
session = Session(root)
task = session.project("ffs").task("barrier")
use(task);""",
"""%htc attach ffs/barrier""",
"""jobs = task.jobs()
jobs.wait(timeout=600)
rate = next(h for h in jobs if h.row.name == "rate").result()
brute = [t for h in jobs if h.row.name == "brute-force" for t in h.result()]
print({k: round(v, 4) if isinstance(v, float) else [round(p, 3) for p in v] for k, v in rate.items()})
print("brute force:", round(len(brute) / sum(brute), 4))""",
"""import matplotlib.pyplot as plt
from itertools import accumulate
from htc_notebook.examples import ffs
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.semilogy(ffs.INTERFACES[1:], list(accumulate(rate["probabilities"], lambda a, b: a * b)), marker="o")
left.set_xlabel("interface"); left.set_ylabel("P(reach it | left A)"); left.set_title("crossing probability")
right.bar(["FFS", "brute force"], [rate["rate"], len(brute) / sum(brute)], color=["#5e35b1", "#9e9e9e"])
right.set_ylabel("rate A -> B (1 / time)"); right.set_title("the same rate, two ways");""",
"""jobs.graph();""",
"""# NBVAL_CHECK_OUTPUT
counts = task.counts()
print("every job SUCCEEDED:", counts["SUCCEEDED"] == len(jobs) == 43)
print("each result committed once:", all([a.status for a in h.attempts].count("SUCCEEDED") == 1 for h in jobs))
print("generations released by this kernel:", session.reconciler.released > 0)
print("FFS within a factor 2 of brute force:", 0.5 < rate["rate"] * sum(brute) / len(brute) < 2)""",
"""md:## The same with LAMMPS as the engine

Real rare-event studies run a real MD code. Here Debian's LAMMPS (`lmp`) moves the particle
(underdamped Langevin dynamics, so a configuration is a position and a velocity), and every job is
a command batch: each generation is submitted `after=` the one before, draws its starting points
from the files the last generation wrote into the task directory, and writes its own
(`htc_notebook/examples/ffs_lammps.py` holds the inputs and the scripts). The whole chain is
submitted at once; the ledger holds each generation until the last one succeeded.""",
"""from htc_notebook.examples import ffs_lammps
md = session.project("ffs").task("lammps")
ffs_lammps.write_inputs(md.storage.task_dir)
generation = md.submit_batch(ffs_lammps.flux_batch())
brute_md = md.submit_batch(ffs_lammps.passage_batch())
generations = [generation]
for stage in range(len(ffs.INTERFACES) - 1):
    generation = md.submit_batch(ffs_lammps.stage_batch(stage), after=list(generation))
    generations.append(generation)
print(md.counts()["WAITING"], "jobs wait for the generation before them")""",
"""generation.wait(timeout=600); brute_md.wait(timeout=600)
md_rate = ffs_lammps.rate(md.storage.task_dir)
print({k: round(v, 4) if isinstance(v, float) else [round(p, 3) for p in v] for k, v in md_rate.items()})
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.semilogy(ffs.INTERFACES[1:], list(accumulate(md_rate["probabilities"], lambda a, b: a * b)), marker="o")
left.set_xlabel("interface"); left.set_ylabel("P(reach it | left A)"); left.set_title("LAMMPS: crossing probability")
right.bar(["FFS", "brute force"], [md_rate["rate"], md_rate["brute_force"]], color=["#5e35b1", "#9e9e9e"])
right.set_ylabel("rate A -> B (1 / time)"); right.set_title("LAMMPS: the same rate, two ways");""",
"""# NBVAL_CHECK_OUTPUT
print("every LAMMPS job SUCCEEDED:", md.counts()["SUCCEEDED"] == len(md.jobs()) == 42)
print("each generation started after the one before had ended:",
      all(max(h.row.ended for h in a) <= min(h.row.started for h in b) for a, b in zip(generations, generations[1:])))
print("FFS within a factor 2 of brute force:", 0.5 < md_rate["rate"] / md_rate["brute_force"] < 2)""",
])


if __name__ == "__main__":
    # Executed here so the saved outputs are the reference nbval compares `# NBVAL_CHECK_OUTPUT` cells to.
    from nbclient import NotebookClient

    import sys

    books = (("01-quickstart", quickstart), ("02-mpi-tasks", mpi), ("03-htc-batches", batches),
             ("04-profiles-and-clusters", clusters), ("05-ensemble-sweep", ensemble),
             ("06-lammps-ensemble", lammps), ("07-reattach", reattach), ("08-rare-events", rare))
    for name, book in books:
        if sys.argv[1:] and name not in sys.argv[1:]:   # `make_notebooks.py 06-lammps-ensemble`: only that one
            continue
        NotebookClient(book, timeout=600, resources={"metadata": {"path": str(OUT)}}).execute()
        nbf.write(book, OUT / f"{name}.ipynb")
        print("wrote", name)
