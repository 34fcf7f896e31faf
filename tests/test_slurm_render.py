"""The SLURM backend's pure parts: scripts, state tables, discovery, pilot options (no cluster)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from htc_notebook.backends.slurm.discover import profiles_from_sinfo
from htc_notebook.backends.slurm.pilots import pilot_options
from htc_notebook.backends.slurm.script import command_line, render_array
from htc_notebook.backends.slurm.states import end_reason, explain_pending, htc_status
from htc_notebook.errors import SpecError
from htc_notebook.spec import PartitionProfile, SiteConfig

BASE = dict(job_name="b", size=3, ids_file="/d/ids", offset=1001, task_dir="/data/my task",
            log_dir="/data/my task/logs", state_dir="/data/my task/.htc/slurm")


def directives(script: str) -> dict[str, str]:
    """`#SBATCH --key=value` -> {key: value}; a flag (`--requeue`) -> {flag: ""}."""
    return dict((line[len("#SBATCH --"):] + "=").split("=")[:2]
                for line in script.splitlines() if line.startswith("#SBATCH"))


def test_array_script_maps_the_job_definition_onto_directives():
    s = render_array(**BASE, command=["echo", "a b"], partition="cpu", cpus_per_task=2, mem_mib=512,
                     tmp_gib=3, timeout_s=30, qos="low", constraints=("avx2", "ib"), gres="gpu:1", throttle=5,
                     env={"MODE": "x; $(rm -rf /)"}, setup=["module load lammps"])
    d = directives(s)
    assert d == {"job-name": "b", "array": "0-2%5", "requeue": "", "partition": "cpu", "qos": "low",
                 "cpus-per-task": "2", "mem": "512M", "tmp": "3G", "time": "00:01:40", "constraint": "avx2&ib",
                 "gres": "gpu:1"}
    assert "export HTC_JOB_INDEX=$((htc_n - 1 + 1001))" in s
    assert "export MODE='x; $(rm -rf /)'" in s
    assert "cd '/data/my task'" in s and "timeout --kill-after=10 30 echo 'a b'" in s
    assert s.index("module load lammps") < s.index("cd '/data/my task'")


def test_a_profiles_sbatch_options_reach_arrays_pilots_and_packed_allocations():
    from htc_notebook.backends.slurm.backend import pilot_job_script

    p = PartitionProfile(name="cpu", backend="slurm", cores_per_node=2, memory_per_node="2G", max_nodes=2,
                         sbatch_options=["--reservation=maint", "--exclusive"])
    array = render_array(**BASE, command=["true"], options=p.sbatch_options)
    assert {k: v for k, v in directives(array).items() if k in ("reservation", "exclusive")} == {
        "reservation": "maint", "exclusive": ""}
    for script in (pilot_job_script(p), pilot_job_script(p, packed=True)):
        assert "#SBATCH --reservation=maint" in script and "#SBATCH --exclusive" in script, script


def _run_task(tmp_path, script: str, task: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": str(task)},
                          capture_output=True, text=True, timeout=60)


def test_a_bundled_array_task_runs_its_jobs_in_turn_each_with_its_own_record(tmp_path):
    """The rendered script itself, run by bash as SLURM would run array task 1 of a 5-job, 2-per-task
    bundle: jobs 3 and 4 (indices 12, 13) run, each with its env, logs, start and exit file; a job
    with a .cancel file is skipped; an exit code is that job's own."""
    state, logs = tmp_path / "state", tmp_path / "logs"
    state.mkdir()
    logs.mkdir()
    (tmp_path / "ids").write_text("".join(f"{j} 1\n" for j in (11, 12, 13, 14, 15)))
    script = render_array(job_name="b", size=5, ids_file=str(tmp_path / "ids"), offset=10, task_dir=str(tmp_path),
                          log_dir=str(logs), state_dir=str(state), bundle=2,
                          command=["sh", "-c", 'echo "$HTC_JOB_ID $HTC_JOB_INDEX $PWD"; exit $((HTC_JOB_ID % 2))'])
    assert directives(script)["array"] == "0-2"
    proc = _run_task(tmp_path, script, 1)
    assert proc.returncode == 1  # the first failing job's code
    assert (logs / "job-13.out").read_text().split() == ["13", "12", str(tmp_path)]
    assert (logs / "job-14.out").read_text().split() == ["14", "13", str(tmp_path)]
    assert [(state / f"job-{j}-1.exit").read_text().split()[0] for j in (13, 14)] == ["1", "0"]
    assert not (state / "job-12-1.start").exists() and not (state / "job-15-1.exit").exists()
    (state / "job-15-1.cancel").touch()
    assert _run_task(tmp_path, script, 2).returncode == 0
    assert not (state / "job-15-1.start").exists()  # cancelled before its turn: never started
    # the array task runs again (SLURM requeued it after a preemption): what ended is not run again
    (logs / "job-13.out").unlink()
    assert _run_task(tmp_path, script, 1).returncode == 0
    assert not (logs / "job-13.out").exists()  # job 13 was not run again


def test_a_bundle_runs_each_job_once_even_when_a_jobs_exit_record_cannot_be_written(tmp_path):
    """The loop over a bundle's jobs counts in `htc_k`; reading the cgroup's OOM count once used that
    name too, so after every job the loop began again at the bundle's first job, skipping those with
    an exit record. A job whose record could not be written (here a dangling link; a full disk) then
    ran again and again until the array task's time limit."""
    state, logs = tmp_path / "state", tmp_path / "logs"
    state.mkdir()
    logs.mkdir()
    (tmp_path / "ids").write_text("11 1\n12 1\n13 1\n")
    (state / "job-11-1.exit").symlink_to(tmp_path / "nowhere" / "exit")
    script = render_array(job_name="b", size=3, ids_file=str(tmp_path / "ids"), offset=0, task_dir=str(tmp_path),
                          log_dir=str(logs), state_dir=str(state), bundle=3,
                          command=["sh", "-c", 'echo "$HTC_JOB_ID" >> runs'])
    proc = subprocess.run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0"},
                          capture_output=True, text=True, timeout=30)
    assert (tmp_path / "runs").read_text().split() == ["11", "12", "13"], proc.stderr
    assert [(state / f"job-{j}-1.exit").read_text().split()[0] for j in (12, 13)] == ["0", "0"]


def test_a_sweep_array_runs_each_jobs_own_command_line(tmp_path):
    """The commands-file form (a command sweep): line n of the file is job n's argv, run in the task dir."""
    state, logs = tmp_path / "state", tmp_path / "logs"
    state.mkdir()
    logs.mkdir()
    (tmp_path / "ids").write_text("21 2\n22 1\n")
    (tmp_path / "cmds").write_text(command_line(["sh", "-c", "echo one > out-1; exit 4"]) + "\n"
                                   + command_line(["sh", "-c", "echo 'two words' > out-2"]) + "\n")
    for bundle in (1, 2):
        script = render_array(job_name="s", size=2, ids_file=str(tmp_path / "ids"), offset=0, task_dir=str(tmp_path),
                              log_dir=str(logs), state_dir=str(state), commands_file=str(tmp_path / "cmds"),
                              bundle=bundle, timeout_s=30 if bundle == 1 else None)
        for task in range(2 // bundle):
            _run_task(tmp_path, script, task)
        assert (tmp_path / "out-1").read_text() == "one\n" and (tmp_path / "out-2").read_text() == "two words\n"
        assert (state / "job-21-2.exit").read_text().split()[0] == "4"
        assert (state / "job-22-1.exit").read_text().split()[0] == "0"
        for f in ("out-1", "out-2"):
            (tmp_path / f).unlink()
        for f in state.iterdir():
            f.unlink()


def test_array_script_is_valid_bash():
    s = render_array(**BASE, commands_file="/d/cmds")
    assert subprocess.run(["bash", "-n"], input=s, text=True).returncode == 0


@pytest.mark.parametrize("field,value", [("partition", "cpu;rm"), ("partition", "a b"), ("qos", "x\n#SBATCH"),
                                         ("account", "$(id)"), ("gres", "gpu:1 --x")])
def test_directive_values_must_be_plain_tokens(field, value):
    with pytest.raises(SpecError, match="plain token"):
        render_array(**BASE, command=["true"], **{field: value})


def test_commands_file_lines_round_trip_through_the_shell():
    argv = ["python", "sim.py", "--name", "it's a 'test'", "$(x)", ";"]
    assert shlex.split(command_line(argv)) == argv
    with pytest.raises(SpecError, match="newlines"):
        command_line(["echo", "a\nb"])


def test_state_table_never_calls_an_unknown_state_success():
    assert htc_status("PENDING") == "RUNNABLE" and htc_status("COMPLETED") == "SUCCEEDED"
    assert htc_status("CANCELLED by 0") == "CANCELLED" and htc_status("TIMEOUT") == "FAILED"
    assert htc_status("SOMETHING_NEW") == "RUNNING"
    assert "memory" in end_reason("OUT_OF_MEMORY")
    assert explain_pending("(Resources)").startswith("waiting for free resources")
    assert "QOS" in explain_pending("QOSMaxJobsPerUserLimit")
    assert explain_pending("WeirdReason") == "pending: WeirdReason"


def test_discovered_site_loads_and_merges_heterogeneous_nodes():
    text = ("cpu*|2|2|2000|(null)|(null)|1-00:00:00|1:00:00|up\n"
            "cpu*|1|4|1000|(null)|(null)|1-00:00:00|1:00:00|up\n"
            "gpu|1|4|8000|gpu:a100:2(S:0)|(null)|12:00:00|n/a|up\n"
            "old|1|8|8000|(null)|(null)|infinite|n/a|down\n")
    site = profiles_from_sinfo(text, python="/venv/bin/python", scheduler_host="10.77.0.1", mpi="pmix")
    cpu = site["profiles"]["cpu"]
    assert (cpu["cores_per_node"], cpu["memory_per_node"], cpu["max_nodes"]) == (2, "1000M", 3)
    assert site["profiles"]["gpu"]["gpus_per_node"] == 2 and site["default_profile"] == "cpu"
    assert "down" in site["profiles"]["old"]["warning"] and "max_walltime" not in site["profiles"]["old"]
    import yaml

    loaded = SiteConfig.from_yaml(yaml.safe_dump(site))
    assert loaded.profile("gpu").max_walltime == 12 * 3600


def test_a_pilots_exit_removes_its_workers_cgroups_at_once_while_a_worker_still_closes(tmp_path):
    """The pilot script's exit trap (memory_limit.clear_on_exit), on a directory shaped like the pilot
    job's cgroup: a worker of this job that is still there (closing slowly, or a zombie its nanny has
    not reaped) keeps nothing; a worker of another job (on v2 their cgroups sit beside: pid 1 here)
    keeps its own. Before, the trap waited while /proc/<worker pid> existed, up to 10 s; SLURM's
    KillWait (5 s on the test cluster) SIGKILLed it first and `htc-<pid>` stayed in the job's cgroup
    (seen as an ordinary user: tests/test_slurm_as_user.py)."""
    from htc_notebook.backends.memory_limit import clear_on_exit

    worker = subprocess.Popen(["sleep", "60"])  # in this job's cgroup, as the script is
    try:
        (tmp_path / f"htc-{worker.pid}" / "call-1").mkdir(parents=True)
        (tmp_path / "htc-1" / "call-1").mkdir(parents=True)
        script = f"{clear_on_exit()}\nhtc_cg={shlex.quote(str(tmp_path))}; exit 0"
        subprocess.run(["bash", "-c", script], check=True, timeout=30)
        assert worker.poll() is None  # still there when the trap ran
    finally:
        worker.kill()
        worker.wait()
    assert [p.name for p in tmp_path.iterdir()] == ["htc-1"], list(tmp_path.iterdir())


def test_pilot_options_set_a_deadline_below_walltime_and_memory_exact():
    import re

    p = PartitionProfile(name="gpu", cores_per_node=4, memory_per_node="8000M", gpus_per_node=2,
                         default_walltime="01:00:00", qos="normal", scheduler_host="10.77.0.1",
                         setup=["module load cuda"], pilot_workers=2)
    o = pilot_options(p)
    setup, clear, deadline = o["job_script_prologue"]
    assert clear.startswith("htc_cg=") and "trap htc_clear EXIT" in clear  # memory_limit.clear_on_exit
    lifetime = int(re.fullmatch(r"export HTC_PILOT_LIFETIME=(\d+) "
                                r"HTC_PILOT_DEADLINE=\$\(\( \$\(date \+%s\) \+ \1 \)\)", deadline)[1])
    assert 3600 * 0.8 <= lifetime <= 3600 - 120
    assert "--lifetime" not in o.get("worker_extra_args", [])  # dask's lifetime retires workers under their calls
    assert o["job_mem"] == "8000M" and o["processes"] == 2 and o["cores"] == 4
    assert "--gres=gpu:2" in o["job_extra_directives"] and "--qos=normal" in o["job_extra_directives"]
    assert o["scheduler_options"]["host"] == "10.77.0.1" and setup == "module load cuda"


def test_the_pilot_deadline_is_set_when_the_job_starts(tmp_path):
    """The prologue line, run by bash as the job script would, gives an epoch second `lifetime` ahead."""
    import time

    p = PartitionProfile(name="cpu", cores_per_node=2, memory_per_node="2000M", default_walltime="00:30:00")
    line = pilot_options(p)["job_script_prologue"][-1]
    before = int(time.time())
    out = subprocess.run(["bash", "-c", f"{line}; echo $HTC_PILOT_DEADLINE"], capture_output=True, text=True,
                         check=True).stdout
    assert before + 1800 - 180 <= int(out) <= int(time.time()) + 1800 - 180


def test_each_job_records_the_cpu_it_used(tmp_path):
    """The script counts each job's CPU ticks with builtins (its children's cutime + cstime) and reads
    its memory cgroup's peak (here: whatever cgroup the test runs in, or "-" without one)."""
    state, logs = tmp_path / "state", tmp_path / "logs"
    state.mkdir()
    logs.mkdir()
    (tmp_path / "ids").write_text("31 1\n32 1\n")
    burn = "import time, sys; t = time.process_time(); exec('while time.process_time() - t < 0.3: pass')"
    script = render_array(job_name="u", size=2, ids_file=str(tmp_path / "ids"), offset=0, task_dir=str(tmp_path),
                          log_dir=str(logs), state_dir=str(state), bundle=2, command=[sys.executable, "-c", burn])
    assert _run_task(tmp_path, script, 0).returncode == 0
    for job in (31, 32):
        rc, _, _, how, ticks, peak = (state / f"job-{job}-1.exit").read_text().split()
        cpu = int(ticks) / os.sysconf("SC_CLK_TCK")
        assert (rc, how) == ("0", "ok") and (peak == "-" or peak.isdigit()) and 0.25 <= cpu < 2.0, cpu


@pytest.mark.parametrize("timeout_s", [None, 30])
def test_slurms_warning_signal_reaches_the_job_so_it_can_checkpoint(tmp_path, timeout_s):
    """SLURM sends USR1 to the batch script before the time limit (--signal=B:USR1@60); the script
    passes it to the job (under `timeout` too), which saves its state in $HTC_CHECKPOINT."""
    import signal
    import time

    state, logs = tmp_path / "state", tmp_path / "logs"
    state.mkdir()
    logs.mkdir()
    (tmp_path / ".htc" / "checkpoints").mkdir(parents=True)
    (tmp_path / "ids").write_text("41 1\n")
    job = 'trap \'echo saved > "$HTC_CHECKPOINT"; exit 9\' USR1; : > ready; sleep 30 & wait'
    script = render_array(job_name="w", size=1, ids_file=str(tmp_path / "ids"), offset=0, task_dir=str(tmp_path),
                          log_dir=str(logs), state_dir=str(state), command=["sh", "-c", job], timeout_s=timeout_s,
                          time_s=3600)
    assert directives(script)["signal"] == "B:USR1@60"
    proc = subprocess.Popen(["bash", "-c", script], env={"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0"},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not (tmp_path / "ready").exists():  # its trap is set
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=20) == 9, (proc.stderr.read(), (logs / "job-41.err").read_text())
    assert (tmp_path / ".htc" / "checkpoints" / "job-41").read_text() == "saved\n"
    assert (state / "job-41-1.exit").read_text().split()[0] == "9"


def test_a_profile_python_with_other_versions_is_refused_naming_both(tmp_path):
    """`python:` of a profile is run before any pilot is asked for: a real second environment (a
    venv of this interpreter seeing this one's packages) whose htc_notebook is a stand-in of
    another version is refused naming both; with the same versions it is accepted; one that cannot
    import dask, or does not exist, is refused saying so."""
    import site
    import venv

    import htc_notebook
    from htc_notebook.backends.slurm import pilots
    from htc_notebook.backends.slurm.pilots import check_python
    from htc_notebook.errors import BackendError

    env = tmp_path / "other"
    venv.create(env, with_pip=False)
    python = str(env / "bin" / "python")
    with pytest.raises(BackendError, match=r"cannot load what pilots run \(ModuleNotFoundError: No module named"):
        check_python(python)  # a bare venv: no dask
    packages = next(env.glob("lib/python*/site-packages"))
    stand_in = tmp_path / "stand-in" / "htc_notebook"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text('__version__ = "0.0.1"\n')
    (packages / "a_stand_in.pth").write_text(f"{stand_in.parent}\n")  # found before this kernel's packages
    (packages / "b_ours.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    with pytest.raises(BackendError, match=rf"htc_notebook 0\.0\.1 \(this kernel: {htc_notebook.__version__}\)"):
        check_python(python)
    (stand_in / "__init__.py").write_text(f'__version__ = "{htc_notebook.__version__}"\n')
    with pytest.raises(BackendError, match=r"htc_notebook code none \(this kernel: [0-9a-f]{16}\)"):
        check_python(python)  # the kernel's version, other code
    shutil.rmtree(stand_in)
    shutil.copytree(Path(htc_notebook.__file__).parent, stand_in, ignore=shutil.ignore_patterns("__pycache__"))
    check_python(python)  # the kernel's versions and code: accepted
    (stand_in / "__init__.py").rename(stand_in / "gone.py")
    check_python(python)  # and not probed again (it would fail now): this process remembers
    (stand_in / "gone.py").rename(stand_in / "__init__.py")
    (stand_in / "states.py").write_text((stand_in / "states.py").read_text() + "\n# edited\n")
    pilots._check_python.cache_clear()  # another kernel, started after the edit
    with pytest.raises(BackendError, match=r"htc_notebook code [0-9a-f]{16} \(this kernel: [0-9a-f]{16}\)"):
        check_python(python)
    with pytest.raises(BackendError, match="cannot be run here"):
        check_python(str(tmp_path / "missing" / "python"))


def test_a_pilot_image_is_rendered_in_the_pilots_job_script():
    from htc_notebook.backends.slurm.backend import pilot_job_script

    p = PartitionProfile(name="cpu", cores_per_node=2, memory_per_node="2000M", pilot_image="site/dask:v1",
                         container_binds=["/opt/mpi"])
    script = pilot_job_script(p)
    assert "ch-run '--bind=<data root>' --bind=/opt/mpi '--cd=<data root>' '<site/dask:v1 unpacked>' -- python3 " \
           "-m distributed.cli.dask_worker" in script, script
    assert 'export USER="${USER:-$(id -un)}"' in script
    apptainer = pilot_job_script(p.model_copy(update={"container_runtime": "apptainer"}))
    assert "apptainer exec --contain --no-home --bind '<data root>' --bind /opt/mpi:/opt/mpi:ro" in apptainer
    assert "ch-run" not in pilot_job_script(p.model_copy(update={"pilot_image": None}))


def test_commands_pilots_sends_one_core_commands_to_the_pilots_and_the_rest_as_arrays():
    from htc_notebook.backends.base import Launch
    from htc_notebook.backends.slurm.backend import plan, render
    from htc_notebook.spec.jobspec import JobSpec, MpiLayout

    def launch(job_id: int, after: tuple[str, ...] = (), **spec) -> Launch:
        return Launch(job_id=job_id, attempt=1, kind="command", cwd=Path("/d"), env={}, log_out="/d/o",
                      log_err="/d/e", spec=JobSpec(commands=("true",), **spec), after=after)

    mpi = MpiLayout(ranks=2, nodes=1, ranks_per_node=2, cpus_per_rank=1)
    launches = [launch(1), launch(2, memory=64, timeout=5), launch(3, cores=2), launch(4, gpus=1), launch(5, mpi=mpi),
                launch(6, after=("301_0",))]
    base = dict(name="cpu", backend="slurm", cores_per_node=2, memory_per_node="2G", gpus_per_node=1,
                sandbox="none", launcher="mpirun")
    piloted = PartitionProfile(**base, commands="pilots")
    p = plan(piloted, launches)
    assert [launch.job_id for launch in p.commands] == [1, 2]  # one core, no GPU, no MPI, not behind an array
    assert sorted(launch.job_id for launch in p.arrays) == [3, 4, 5, 6]
    assert not plan(piloted, launches, pilots=False).commands  # held work sbatch may have: arrays whatever
    assert not plan(PartitionProfile(**base), launches).commands  # the default: arrays
    shown = render(piloted, launches[:2], max_array=1001)
    assert "pilot job (dask-jobqueue) for 2 command jobs" in shown and "# job 2: on a pilot's worker\ntrue" in shown
    assert "#SBATCH --array" not in shown
    many = render(piloted, [launch(100 + i) for i in range(25)], max_array=1001)
    assert many.count("on a pilot's worker") == 20 and "and 5 more command jobs on the pilots' workers" in many


def test_scaling_down_is_never_offered_a_worker_of_a_pilot_that_has_a_task():
    from types import SimpleNamespace

    from htc_notebook.backends.slurm.pilots import KeepBusyPilots

    workers = [SimpleNamespace(name=name, processing=tasks) for name, tasks in
               (("P-0-0", set()), ("P-0-1", {"htc-command-7-1"}), ("P-1-0", set()), ("P-1-1", set()))]
    keep = KeepBusyPilots(lambda worker: worker.rsplit("-", 1)[0])  # pilot P-0 runs a task on one of its workers
    offered = keep.valid_workers_downscaling(SimpleNamespace(workers={w.name: w for w in workers}), workers)
    assert [w.name for w in offered] == ["P-1-0", "P-1-1"]
