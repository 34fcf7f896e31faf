"""What an ordinary user does on the SLURM test cluster, run as that user by tests/test_slurm_as_user.py.

`python slurm_user_run.py ROOT SITE` (ROOT: a data root the user owns; SITE: the site file the user
made with `htc profiles discover`) opens a Session on ROOT, as a notebook would, and runs:

- a command batch on the `cpu` partition whose jobs print who they run as and the memory limit of
  their SLURM cgroup, and a job that asks more memory than its limit;
- two jobs bundled in one array task, the first holding 150 MiB: the peak each one is given;
- a sweep of Python calls on `knl` pilots (dask-jobqueue) that return who they run as, and a call
  over its memory limit;
- MPI tasks across both `cpu` nodes (a Python function on the rank pool, a command step) whose
  ranks report who they run as.

It prints one JSON line (the last of its output) with what each part saw, for the test to check.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

import htc_notebook
from htc_notebook import Session, SiteConfig, Sweep

# Who the job is, and the smallest memory limit of its memory cgroup and that cgroup's ancestors
# (SLURM's task/cgroup sets it on the job's cgroup; the steps and tasks below it inherit it).
WHO = r"""
id -u; id -un
cg=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)
d=/sys/fs/cgroup/memory$cg; least=
while [ "$d" != /sys/fs/cgroup/memory ]; do
  l=$(cat "$d/memory.limit_in_bytes" 2>/dev/null) && { [ -z "$least" ] || [ "$l" -lt "$least" ]; } && least=$l
  d=${d%/*}
done
echo "limit ${least:-none} cgroup $cg"
"""
HOLD = "import sys; x = bytearray(int(sys.argv[1]) << 20); x[::4096] = bytes(len(x) // 4096)"  # MiB, touched
LIMIT_MIB = 200


def whoami(i: int) -> tuple[int, str]:
    """A sweep member: the uid it runs as, and where."""
    return os.getuid(), socket.gethostname()


def rank_uids(comm: Any) -> list[tuple[int, int, str]] | None:
    """An MPI function: every rank's (rank, uid, host), gathered on rank 0."""
    return comm.gather((comm.rank, os.getuid(), socket.gethostname()))


def batch(session: Session) -> dict[str, Any]:
    """Two jobs that say who they are and their cgroup's limit; one over its memory limit."""
    task = session.project("as-user").task("batch")
    who = task.submit_batch({"jobName": "who", "batchSize": 2, "htcJobDefinition": {
        "commands": ["sh", "-c", WHO], "maxMemory": LIMIT_MIB}}, profile="cpu").wait(timeout=300)
    (hog,) = task.submit_batch({"jobName": "hog", "batchSize": 1, "htcJobDefinition": {
        "commands": [sys.executable, "-c", HOLD, "300"], "maxMemory": 128}}, profile="cpu")
    hog.wait(timeout=300)
    return {"who": [{"status": j.status, "reason": j.row.reason, "host": j.row.host, "native_id": j.row.native_id,
                     "out": j.logs("out"), "err": j.logs("err"), "held": j.row.memory_held} for j in who],
            "hog": {"status": hog.status, "reason": hog.row.reason,
                    "causes": [a.cause for a in hog.attempts], "held": hog.row.memory_held}}


def bundled_peaks(session: Session) -> list[dict[str, Any]]:
    """Two jobs run in turn in one array task (profile `bundled`: bundle 2): the first holds 150 MiB,
    the second next to nothing. What each one's peak was recorded as."""
    task = session.project("as-user").task("peaks")
    jobs = task.submit_batch({"jobName": "peak", "batchSize": 2, "htcJobDefinition": {
        "commands": ["sh", "-c", f'[ "$HTC_JOB_INDEX" = 1 ] || exec {sys.executable} -c "$0" 150', HOLD],
        "maxMemory": 256}}, profile="bundled").wait(timeout=300)
    return [{"status": j.status, "reason": j.row.reason, "native_id": j.row.native_id,
             "max_rss_mib": j.row.max_rss_mib, "held": j.row.memory_held} for j in jobs]


def pilot_commands(session: Session) -> dict[str, Any]:
    """Command jobs on the pilots (profile `piloted`: commands: pilots): who they run as, and one over
    its memory limit."""
    task = session.project("as-user").task("pilot-commands")
    who = task.submit_batch({"jobName": "who", "batchSize": 2, "htcJobDefinition": {
        "commands": ["sh", "-c", "id -u; id -un"], "maxMemory": LIMIT_MIB}}, profile="piloted").wait(timeout=300)
    (hog,) = task.submit_batch({"jobName": "hog", "batchSize": 1, "htcJobDefinition": {
        "commands": [sys.executable, "-c", HOLD, "300"], "maxMemory": 128}}, profile="piloted")
    hog.wait(timeout=300)
    return {"who": [{"status": j.status, "native_id": j.row.native_id, "out": j.logs("out"),
                     "held": j.row.memory_held} for j in who],
            "hog": {"status": hog.status, "reason": hog.row.reason, "causes": [a.cause for a in hog.attempts],
                    "held": hog.row.memory_held}}


def hold(mib: int) -> int:
    """A call that holds `mib` MiB."""
    x = bytearray(mib << 20)
    for i in range(0, len(x), 4096):
        x[i] = 1
    return len(x) >> 20


def sweep(session: Session) -> dict[str, Any]:
    """Python calls on pilots: who each ran as; a call over its memory limit."""
    task = session.project("as-user").task("sweep")
    who = task.sweep(whoami, Sweep.grid(i=list(range(4))), profile="knl").results(timeout=300)
    over = task.submit(hold, 300, profile="knl", resources={"memory": "128M"})
    over.wait(timeout=300)
    return {"who": who, "hog": {"status": over.status, "reason": over.row.reason,
                                "causes": [a.cause for a in over.attempts], "held": over.row.memory_held}}


def mpi(session: Session) -> dict[str, Any]:
    """MPI tasks on both cpu nodes, a Python function's and a command's: who each rank ran as."""
    task = session.project("as-user").task("mpi")
    ranks = task.mpi(rank_uids, nodes=2, ranks_per_node=1, profile="cpu").result(timeout=300)
    command = task.mpi(["sh", "-c", 'echo "rank $SLURM_PROCID uid $(id -u) on $(hostname)"'],
                       nodes=2, ranks_per_node=1, profile="cpu").result(timeout=300)
    return {"function": ranks, "command": {"exit_code": command.exit_code, "stdout": command.stdout}}


def main(root: str, site_file: str) -> None:
    """Run the parts on a Session over `root`; print what they saw as one JSON line."""
    site = yaml.safe_load(Path(site_file).read_text())
    site["profiles"]["knl"]["pilot_workers"] = 2  # a 64-core node on a 2-core machine: two workers are plenty
    site["profiles"]["bundled"] = {**site["profiles"]["cpu"], "bundle": 2}
    site["profiles"]["piloted"] = {**site["profiles"]["cpu"], "commands": "pilots", "max_pilots": 1}
    Path(site_file).write_text(yaml.safe_dump(site))
    with Session(root, site=SiteConfig.load(site_file)) as session:
        seen = {"batch": batch(session), "bundled": bundled_peaks(session), "sweep": sweep(session),
                "mpi": mpi(session), "pilot_commands": pilot_commands(session)}
    seen["htc_notebook"] = htc_notebook.__file__  # the checkout's, not another install's
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
