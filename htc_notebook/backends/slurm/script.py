"""The sbatch script of a job array, from one pure function.

`render_array` takes every parameter by keyword: its signature is the list of
what a batch may set. Directive values are checked to be plain tokens; paths
and environment values are shell-quoted in the body. Each array task looks up
its ledger job id and attempt (and, for sweeps, its own command line) by its index - an array
task may run several jobs in turn (a bundle of short commands) - runs each
in the task directory with its logs in `logs/job-<id>.out|err`, and writes an
exit-code file when it ends: the record that survives when
accounting (`sacct`) is not available.

>>> print(render_array(job_name="demo", size=2, partition="cpu", ids_file="/d/ids", offset=0,
...                    command=["echo", "hi there"], task_dir="/d", log_dir="/d/logs",
...                    state_dir="/d/.htc/slurm").splitlines()[2])
#SBATCH --array=0-1
"""

from __future__ import annotations

import re
import shlex
from typing import Mapping, Sequence

from htc_notebook.errors import SpecError
from htc_notebook.spec import format_walltime

_TOKEN = re.compile(r"^[A-Za-z0-9_.:,=+%/@&|\[\]*!-]+$")
TIMEOUT_EXIT = 124  # what coreutils `timeout` exits with
KILL_AFTER = 10  # seconds between TERM and KILL when execTimeoutSeconds runs out
WARNING_SECONDS = 60  # SLURM signals USR1 this long before an array task's time limit (passed on to the job)
SLURM_MARGIN = 60  # SLURM's own time limit sits this far above execTimeoutSeconds (x jobs in a bundle)


# What each job used, measured by the script with builtins only (no forks): `htc_used` sets
# htc_o to the OOM kills counted in this task's memory cgroup (v1 memory.oom_control, v2
# memory.events; found from /proc/self/cgroup; 0 without one) and htc_cpu to the CPU ticks of the
# script's finished children (cutime + cstime of /proc/self/stat). The cgroup's peak (v1
# memory.max_usage_in_bytes, v2 memory.peak) is reset before each job where the cgroup allows it
# (root). Where it does not (an ordinary user: SLURM leaves the cgroup's files root's; v2 before
# Linux 6.12), a bundled job after the first gets the bundle's peak only if it raised it, else `?`:
# unknown, not the peak of a job before it.
USAGE = [
    "htc_oomf=/dev/null htc_peakf=/dev/null",
    "while IFS=: read -r _ htc_c htc_p; do",
    "  if [ \"$htc_c\" = memory ] && [ \"$htc_p\" != / ]; then htc_m=/sys/fs/cgroup/memory$htc_p",
    "    htc_oomf=$htc_m/memory.oom_control htc_peakf=$htc_m/memory.max_usage_in_bytes; break; fi",
    "  if [ -z \"$htc_c\" ] && [ \"$htc_p\" != / ] && [ -e \"/sys/fs/cgroup$htc_p/memory.events\" ]; then",
    "    htc_oomf=/sys/fs/cgroup$htc_p/memory.events htc_peakf=/sys/fs/cgroup$htc_p/memory.peak; fi",
    "done < /proc/self/cgroup",
    "htc_used() {",
    "  htc_o=0; while read -r htc_key htc_v; do [ \"$htc_key\" = oom_kill ] && htc_o=$htc_v; done < \"$htc_oomf\"",
    "  read -r -a htc_st < /proc/self/stat; htc_cpu=$((htc_st[15] + htc_st[16]))",
    "}",
]


def _directive(option: str, value: object) -> str:
    text = str(value)
    if not _TOKEN.match(text):
        raise SpecError("sbatch", option, value, "a plain token (letters, digits, _ . : , = + % / @ & | [ ] * ! -)")
    return f"#SBATCH --{option}={text}"


def render_array(*, job_name: str, size: int, ids_file: str, offset: int, task_dir: str, log_dir: str,
                 state_dir: str, partition: str | None = None, command: Sequence[str] | None = None,
                 commands_file: str | None = None, cpus_per_task: int = 1, nodes: int | None = None,
                 ntasks_per_node: int | None = None, mem_mib: int | None = None,
                 tmp_gib: int | None = None, timeout_s: int | None = None, time_s: int | None = None,
                 account: str | None = None, qos: str | None = None, constraints: Sequence[str] = (),
                 gres: str | None = None, throttle: int | None = None, setup: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, bundle: int = 1, options: Sequence[str] = ()) -> str:
    """The script for `size` jobs covering batch indices offset..offset+size-1, `bundle` jobs to
    an array task (run one after another, each with its own variables, logs, timeout and exit file).

    Exactly one of `command` (the same argv for every job) or `commands_file` (line i holds job
    i's shell-quoted argv) is given. MPI jobs set `nodes` and `ntasks_per_node` (ranks); `mem_mib`
    is per node. `options`: the site's own sbatch options (a profile's `sbatch_options`, checked
    there), one #SBATCH line each. A bundled job whose `<state>/job-<id>-<attempt>.cancel` file appears is skipped,
    or stopped (TERM) if it is running: one job of a bundle is cancelled alone.
    """
    if (command is None) == (commands_file is None):
        raise ValueError("give exactly one of command or commands_file")
    if size < 1:
        raise SpecError("sbatch", "array", size, "at least one task")
    if bundle < 1:
        raise SpecError("sbatch", "bundle", bundle, "at least one job per array task")
    tasks = -(-size // bundle)
    if timeout_s and not time_s:
        time_s = bundle * (timeout_s + KILL_AFTER) + SLURM_MARGIN
    array = f"0-{tasks - 1}" + (f"%{throttle}" if throttle else "")
    # --requeue: SLURM runs the array task again after a node failure or a preemption (whatever the
    # site's JobRequeue default); jobs of it that had finished are skipped by their exit file
    lines = ["#!/bin/bash", _directive("job-name", job_name), _directive("array", array), "#SBATCH --requeue"]
    if time_s and time_s > 2 * WARNING_SECONDS:
        lines.append(_directive("signal", f"B:USR1@{WARNING_SECONDS}"))
    for option, value in (("partition", partition), ("account", account), ("qos", qos),
                          ("nodes", nodes), ("ntasks-per-node", ntasks_per_node),
                          ("cpus-per-task", cpus_per_task), ("mem", f"{mem_mib}M" if mem_mib else None),
                          ("tmp", f"{tmp_gib}G" if tmp_gib else None),
                          ("time", format_walltime(time_s) if time_s else None),
                          ("constraint", "&".join(constraints) if constraints else None),
                          ("gres", gres)):
        if value is not None:
            lines.append(_directive(option, value))
    lines += [f"#SBATCH {option}" for option in options]
    q = shlex.quote
    # no forks where bash has a builtin: the host from /proc (its UTS namespace), the time from
    # EPOCHREALTIME (bash >= 5; `date` on older shells) - a trivial job's cost is mostly this script
    lines += ["set -u", "umask 077", f"htc_state={q(state_dir)}", "read -r htc_host < /proc/sys/kernel/hostname"]
    lines += USAGE
    # SLURM's warning (--signal=B:USR1@WARNING_SECONDS) goes to this script: pass it to the running
    # job, so that it can checkpoint. It goes to the job's own first process, below `timeout` and the
    # sandbox (bwrap), which would die of it (neither passes signals on)
    lines += ["htc_pid= htc_sig=",
              "htc_usr1() {",
              "  local p=$htc_pid c",
              '  while { read -r c < "/proc/$p/comm"; } 2>/dev/null; do',
              '    case $c in timeout|bwrap) p=$(pgrep -o -P "$p") || return 0 ;; *) break ;; esac',
              "  done",
              '  kill -USR1 "$p" 2>/dev/null',
              "}",
              "trap 'htc_sig=1; [ -n \"$htc_pid\" ] && htc_usr1' USR1"]
    lines += [f"export {name}={q(value)}" for name, value in (env or {}).items()]
    lines += list(setup)
    runner = f"timeout --kill-after={KILL_AFTER} {int(timeout_s)} " if timeout_s else ""
    if command is not None:
        run = f"exec {runner}{shlex.join(command)}"
    else:
        assert commands_file is not None  # exactly one of them, checked above
        run = f"eval \"exec {runner}$(sed -n \"${{htc_n}}p\" {q(commands_file)})\""
    lines += [
        "htc_worst=0",
        f"for ((htc_k = 1; htc_k <= {int(bundle)}; htc_k++)); do",
        f"  htc_n=$((SLURM_ARRAY_TASK_ID * {int(bundle)} + htc_k))",
        f"  [ \"$htc_n\" -le {int(size)} ] || break",
        f"  mapfile -t -s $((htc_n - 1)) -n 1 htc_line < {q(ids_file)}",
        "  set -- ${htc_line[0]}",
        "  export HTC_JOB_ID=$1 HTC_ATTEMPT=$2",
        f"  export HTC_CHECKPOINT={q(task_dir)}/.htc/checkpoints/job-$HTC_JOB_ID",
        f"  export HTC_JOB_INDEX=$((htc_n - 1 + {int(offset)}))",
        '  htc_job="$htc_state/job-$HTC_JOB_ID-$HTC_ATTEMPT"',
        # cancelled alone, or done before its array task was preempted and requeued: not (again)
        '  [ -e "$htc_job.cancel" ] || [ -e "$htc_job.exit" ] && continue',
        "  htc_used; htc_oom0=$htc_o htc_cpu0=$htc_cpu",
        '  htc_peak0=; { echo 0 > "$htc_peakf"; } 2>/dev/null || read -r htc_peak0 2>/dev/null < "$htc_peakf"',
        "  (",
        f"    exec >{q(log_dir)}/job-$HTC_JOB_ID.out 2>{q(log_dir)}/job-$HTC_JOB_ID.err",
        '    printf "%s %s\\n" "$htc_host" "${EPOCHREALTIME:-$(date +%s.%N)}" > "$htc_job.start"',
        f"    cd {q(task_dir)}",
        f"    {run}",
    ]
    # the job runs in the background so that the script's USR1 trap (SLURM's warning before the
    # time limit) runs at once and passes the signal on; `wait` returns early for a trapped signal
    lines += ["  ) &", "  htc_pid=$!"]
    if bundle > 1:
        lines += ['  ( while [ ! -e "$htc_job.cancel" ]; do sleep 1; done; kill -TERM "$htc_pid" ) 2>/dev/null &',
                  "  htc_watch=$!"]
    # a wait cut short by the trap (htc_sig) waits again; bash keeps the status of a child it reaped
    # meanwhile, and says 127 only if this wait already took it
    lines += ['  htc_rc=; while :; do htc_sig=; wait "$htc_pid"; htc_r=$?',
              '    [ "$htc_r" -eq 127 ] && [ -n "$htc_rc" ] && break; htc_rc=$htc_r; [ -n "$htc_sig" ] || break; done']
    if bundle > 1:
        lines += ['  kill "$htc_watch" 2>/dev/null; wait "$htc_watch" 2>/dev/null']
    lines += [
        # one short write (readers retry a file they find empty): no rename, no fork. Fields: exit
        # code, host, end time, ok|oom (the cgroup's OOM killer struck while it ran), CPU ticks, peak bytes
        '  htc_used; htc_how=ok; [ "$htc_o" -gt "$htc_oom0" ] && htc_how=oom',
        '  htc_peak=-; read -r htc_peak 2>/dev/null < "$htc_peakf"',
        '  [ "$htc_k" -gt 1 ] && [ -n "$htc_peak0" ] && [ "$htc_peak" = "$htc_peak0" ] && htc_peak="?"',
        '  printf "%s %s %s %s %s %s\\n" "$htc_rc" "$htc_host" "${EPOCHREALTIME:-$(date +%s.%N)}" "$htc_how" '
        '"$((htc_cpu - htc_cpu0))" "${htc_peak:--}" > "$htc_job.exit"',
        '  [ "$htc_worst" -eq 0 ] && htc_worst=$htc_rc',
        "done",
        'exit "$htc_worst"',
    ]
    return "\n".join(lines) + "\n"


def command_line(argv: Sequence[str]) -> str:
    """One line of a commands file: the argv, shell-quoted (refuses newlines, which would split it)."""
    for arg in argv:
        if "\n" in arg or "\r" in arg:
            raise SpecError("command", "argument", arg, "no newlines in command arguments on SLURM")
    return shlex.join(argv)


_ARRAY_TASK = re.compile(r"^[0-9]+(_[0-9]+)?$")


def sbatch_argv(script: str, *, wrapper_log: str, chdir: str, comment: str | None = None,
                after: Sequence[str] = ()) -> list[str]:
    """The sbatch command line (paths go here, as arguments, not as directives); `comment` marks
    the job so that it can be found in squeue by what the ledger recorded before sbatch ran.

    `after`: SLURM jobs (or array tasks, `<job>_<task>`) that must all complete with exit code 0
    before it starts (`--dependency=afterok`). `--kill-on-invalid-dep=no`: whatever the site's
    default, a job whose dependency can never be satisfied stays pending (reason
    DependencyNeverSatisfied) until the toolkit fails it in the ledger, naming the parent, and
    scancels it.

    The script's own output (`wrapper_log`: bash's complaints, rarely anything) is appended to one
    file for the whole array (`--open-mode=append`), not one file per array task.

    >>> sbatch_argv("a.sh", wrapper_log="a.log", chdir="/d", after=["12_0", "12_1"])[5:]
    ['--dependency=afterok:12_0:12_1', '--kill-on-invalid-dep=no', 'a.sh']
    """
    for job in after:
        if not _ARRAY_TASK.match(job):
            raise SpecError("sbatch", "dependency", job, "a SLURM job id, or an array task <job>_<task>")
    dependency = [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=no"] if after else []
    return ["sbatch", "--parsable", f"--output={wrapper_log}", "--open-mode=append", f"--chdir={chdir}",
            *([f"--comment={comment}"] if comment else []), *dependency, script]
