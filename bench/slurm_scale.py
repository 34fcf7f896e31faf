"""`bench/scale.py slurm`: command jobs through a site's submit limit, and short commands bundled.

Needs the test cluster (`make slurm-up`). Both parts run htc and the obvious alternative side by
side in one run, on the `knl` partition (64 slots), counting every sbatch/squeue/scontrol/sacctmgr
call through shims on PATH:

- fed: N trivial commands (`true`) under a per-user submit limit L (the `capped` QOS's
  MaxSubmitJobsPerUser set to L for the run, restored after). htc: `task.submit_batch` with the
  feeder, bundling off (`bundle: 1`: the same one-job array tasks as the plain side). Plain: a
  shell loop that waits until the user's queued count leaves room, then sbatches the next array
  chunk (at most room and MaxArraySize tasks), as a careful user would. Target ratio >= 0.95
  (plain time / htc time).
- bundled: M commands of 0.1 s, htc with bundling (the default: timed, then bundled) against
  one array task per job (the same shell loop, through the normal QOS's submit limit). Target >= 10x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("sbatch", "squeue", "scontrol", "sacctmgr", "scancel")


def add_parser(sub) -> None:
    p = sub.add_parser("slurm", help="command jobs through a submit limit, and short commands bundled (test cluster)")
    p.add_argument("--jobs", type=int, default=2000, help="trivial commands in the fed part")
    p.add_argument("--limit", type=int, default=500, help="MaxSubmitJobsPerUser of the capped QOS during the run")
    p.add_argument("--short", type=int, default=2000, help="0.1 s commands in the bundled part")
    p.add_argument("--only", choices=("fed", "bundled"), help="run one part")
    p.add_argument("--write", help="update this section of this results file")
    p.set_defaults(func=bench_slurm, section="scale-slurm")


def _shims(where: Path, log: Path) -> dict[str, str]:
    """PATH entries that log each SLURM command before running the real one."""
    where.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        real = shutil.which(tool)
        shim = where / tool
        shim.write_text(f"#!/bin/sh\necho {tool} >> {log}\nexec {real} \"$@\"\n")
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{where}:{os.environ['PATH']}"}


def _calls(log: Path) -> dict[str, int]:
    words = log.read_text().split() if log.exists() else []
    return {t: words.count(t) for t in TOOLS if words.count(t)}


def _wait_empty(env: dict, timeout: float = 7200) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-u", "root", "-o", "%i"], capture_output=True, text=True,
                         env=env).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError("jobs still queued after the timeout")
        time.sleep(0.5)


PLAIN_FED = textwrap.dedent("""\
    #!/bin/bash
    # submit N one-job array tasks of COMMAND in chunks, waiting for room under the limit L of QOS
    n=$1; limit=$2; qos=$3; command=$4; left=$n
    while [ "$left" -gt 0 ]; do
      queued=$(squeue -h -r -u root -q "$qos" -o %i | wc -l)
      room=$((limit - queued)); [ "$room" -gt 1001 ] && room=1001; [ "$room" -gt "$left" ] && room=$left
      if [ "$room" -le 0 ]; then sleep 2; continue; fi
      sbatch -Q -p knl --qos="$qos" -c 1 --mem=64M --array=0-$((room - 1)) -o /dev/null --wrap "$command" \\
        && left=$((left - room)) || sleep 2
    done
""")


def _htc_site(bundle: int | None, qos: str | None):
    import yaml

    from htc_notebook import SiteConfig

    text = subprocess.run([str(REPO / ".venv" / "bin" / "htc"), "profiles", "discover", "--scheduler-host",
                           "10.77.0.1"], capture_output=True, text=True, check=True).stdout
    data = yaml.safe_load(text)
    prof = {**data["profiles"]["knl"], **({"qos": qos} if qos else {})}
    if bundle:
        prof["bundle"] = bundle
    data["profiles"]["bench"] = prof
    return SiteConfig.from_yaml(yaml.safe_dump(data))


def _htc_side(n: int, command: list[str], site, env: dict) -> float:
    from htc_notebook import Session

    os.environ["PATH"] = env["PATH"]  # the shims count htc's own calls
    root = REPO / "test-output" / f"bench-scale-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    with Session(root, site=site) as s:
        group = s.project("bench").task("scale").submit_batch(
            {"jobName": "b", "batchSize": n, "htcJobDefinition": {"commands": command, "maxVCpus": 1,
                                                                  "maxMemory": 64}}, profile="bench")
        group.wait(timeout=7200)
        elapsed = time.perf_counter() - t0
        done = group.counts()["SUCCEEDED"]
    if done != n:
        raise RuntimeError(f"htc: {done} of {n} SUCCEEDED")
    shutil.rmtree(root, ignore_errors=True)
    return elapsed


def _set_limit(limit: int | None) -> None:
    value = str(limit) if limit else "6"
    subprocess.run(["sacctmgr", "-i", "modify", "qos", "where", "name=capped", "set",
                    f"MaxSubmitJobsPerUser={value}", "MaxJobsPerUser=-1" if limit else "MaxJobsPerUser=4"],
                   check=True, capture_output=True)


def _per_minute(calls: dict[str, int], seconds: float) -> str:
    return ", ".join(f"{t} {c} ({c / seconds * 60:.0f}/min)" for t, c in calls.items()) or "none"


def bench_slurm(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="htc-bench-", dir=REPO / "test-output"))
    script = work / "fed.sh"
    script.write_text(PLAIN_FED)
    rows = []
    try:
        if args.only in (None, "fed"):  # through the capped QOS's submit limit, bundling off
            _set_limit(args.limit)
            log = work / "plain-fed.log"
            env = _shims(work / "plain-bin", log)
            t0 = time.perf_counter()
            subprocess.run(["bash", str(script), str(args.jobs), str(args.limit), "capped", "true"], env=env,
                           check=True)
            _wait_empty(env)
            plain, plain_calls = time.perf_counter() - t0, _calls(log)
            log = work / "htc-fed.log"
            htc = _htc_side(args.jobs, ["true"], _htc_site(bundle=1, qos="capped"), _shims(work / "htc-bin", log))
            rows.append(("fed", args.jobs, plain, htc, plain_calls, _calls(log)))
            print(f"fed: plain {plain:.1f} s, htc {htc:.1f} s, ratio {plain / htc:.3f}", flush=True)
            _set_limit(None)
        if args.only in (None, "bundled"):  # one array task per job, through the normal QOS's limit
            log = work / "plain-short.log"
            env = _shims(work / "plain-bin2", log)
            normal = subprocess.run(["sacctmgr", "-n", "-P", "show", "qos", "normal", "format=maxsubmitpu"],
                                    capture_output=True, text=True, check=True).stdout.split()
            t0 = time.perf_counter()
            subprocess.run(["bash", str(script), str(args.short), normal[0] if normal else "50000", "normal",
                            "sleep 0.1"], env=env, check=True)
            _wait_empty(env)
            plain, plain_calls = time.perf_counter() - t0, _calls(log)
            log = work / "htc-short.log"
            htc = _htc_side(args.short, ["sleep", "0.1"], _htc_site(bundle=None, qos=None),
                            _shims(work / "htc-bin2", log))
            rows.append(("bundled", args.short, plain, htc, plain_calls, _calls(log)))
            print(f"bundled: one task per job {plain:.1f} s, htc {htc:.1f} s, ratio {plain / htc:.2f}", flush=True)
    finally:
        _set_limit(None)
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| part | jobs | plain | htc | plain / htc | plain calls | htc calls |", "|---|---|---|---|---|---|---|"]
    for part, n, plain, htc, pc, hc in rows:
        lines.append(f"| {part} | {n:,} | {plain:.1f} s | {htc:.1f} s | {plain / htc:.3f} | "
                     f"{_per_minute(pc, plain)} | {_per_minute(hc, htc)} |")
    return "\n".join(lines)


