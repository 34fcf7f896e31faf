"""Every field a user passes to a public entry point reaches the backend or is refused: never
dropped (issue 14). Each entry point is driven with every field; what it hands the backends (the
jobs' JobSpecs, and the Launches each backend's `plan` makes of them) is captured at the point
where a submission would be recorded, then rendered by the backend as a dry run would."""

from __future__ import annotations

import pytest

from htc_notebook import Session, SiteConfig, Sweep
from htc_notebook.backends.local import plan as local_plan
from htc_notebook.errors import SpecError
from htc_notebook.runtime import plan
from htc_notebook.runtime.decorators import mpi_task, task as task_decorator, use
from htc_notebook.runtime.task import DryRun
from htc_notebook.spec import JobDefinition, RetryPolicy

SITE = """
profiles:
  local:
    backend: local
    cores_per_node: 4
    memory_per_node: 4G
    gpus_per_node: 2
    launcher: mpirun
"""
ASK = {"cores": 2, "memory": "300M", "walltime": "1:00", "gpus": 1}


def work(x: int = 0) -> int:
    return x


class Captured(DryRun):
    """The task, with each submission kept (and rendered by its backend) instead of recorded."""

    def __init__(self, task):
        super().__init__(task.parts, task.project, task.name)
        self.jobs = []

    def _add(self, jobs, batch=None):
        self.jobs += list(jobs)
        return super()._add(jobs, batch)


@pytest.fixture
def captured(tmp_path):
    with Session(tmp_path, site=SiteConfig.from_yaml(SITE)) as s:
        yield Captured(s.project("p").task("t"))


def launches(t: Captured):
    at = plan.where(t.parts.storage, t.project, t.name)
    return [plan.launch(at, i, job, 1, "o", "e") for i, job in enumerate(t.jobs, 1)]


def asked(spec) -> tuple:
    return spec.cores, spec.memory, spec.timeout, spec.gpus


def test_submit_and_a_python_sweep_carry_every_resource_and_the_retry_policy(captured):
    captured.submit(work, 1, resources=ASK, retries=RetryPolicy(retries=2, backoff=3))
    captured.sweep(work, Sweep.grid(x=[1, 2]), resources=ASK, retries=1)
    specs = [j.spec for j in captured.jobs]
    assert [asked(s) for s in specs] == [(2, 300, 60, 1)] * 3
    assert [(s.retry.retries, s.retry.backoff) for s in specs] == [(2, 3.0), (1, 1.0), (1, 1.0)]
    assert all(s.payload for s in specs) and [j.params for j in captured.jobs] == [{}, {"x": 1}, {"x": 2}]
    assert [(launch.cores, launch.memory, launch.timeout, launch.gpus)
            for launch in launches(captured)] == [(2, 300, 60, 1)] * 3


def test_a_command_sweep_carries_resources_or_a_definition(captured):
    captured.sweep("echo {x}", Sweep.grid(x=[1, 2]), resources=ASK, retries=2)
    definition = JobDefinition(commands=["ignored"], maxVCpus=3, maxMemory=400, execTimeoutSeconds=90,
                               maxDiskGiB=2, maxSwap=64, envs={"A": "1"}, priority="ON_DEMAND_ECONOMY")
    captured.sweep(["run", "{x}"], Sweep.grid(x=[3]), definition=definition)
    by_resources, by_definition = [j.spec for j in captured.jobs[:2]], captured.jobs[2]
    assert [(s.commands, *asked(s), s.retry.retries) for s in by_resources] == [
        (("echo", "1"), 2, 300, 60, 1, 2), (("echo", "2"), 2, 300, 60, 1, 2)]
    s = by_definition.spec
    assert (s.commands, s.cores, s.memory, s.timeout, s.disk_gib, s.swap, s.envs) == (
        ("run", "3"), 3, 400, 90, 2, 64, {"A": "1"})
    assert by_definition.priority == 1  # economy
    p = local_plan(captured.parts.profiles.get(None), launches(captured))
    assert p.commands[2].env["A"] == "1" and p.commands[2].command[-2:] == ("run", "3")
    assert p.commands[0].command[-2:] == ("echo", "1")  # each in its sandbox


def test_a_command_sweep_with_an_mpi_layout_makes_each_member_an_mpi_program(captured):
    captured.sweep(["./md", "-T", "{T}"], Sweep.grid(T=[1, 2]), resources={"nodes": 1, "ranks_per_node": 2,
                                                                           "memory": "200M"})
    specs = [j.spec for j in captured.jobs]
    assert [(s.commands, s.mpi.ranks, s.mpi.ranks_per_node, s.cores, s.memory) for s in specs] == [
        (("./md", "-T", "1"), 2, 2, 2, 200), (("./md", "-T", "2"), 2, 2, 2, 200)]
    assert [j.params for j in captured.jobs] == [{"T": 1}, {"T": 2}]  # members keep their parameters
    rendered = local_plan(captured.parts.profiles.get(None), launches(captured)).commands
    assert [launch.command[:3] for launch in rendered] == [("mpirun", "-np", "2")] * 2


def test_a_batch_carries_its_definition_and_throttle(captured):
    captured.submit_batch({"jobName": "b", "batchSize": 3, "htcJobDefinition": {
        "commands": ["true"], "maxVCpus": 2, "maxMemory": 100, "execTimeoutSeconds": 30,
        "envs": [{"name": "B", "value": "2"}]}}, retries=1, throttle=2)
    s = captured.jobs[0].spec
    assert len(captured.jobs) == 3 and all(j.spec is s for j in captured.jobs)  # one spec for the batch
    assert (s.commands, s.cores, s.memory, s.timeout, s.throttle, s.envs, s.retry.retries) == (
        ("true",), 2, 100, 30, 2, {"B": "2"}, 1)
    assert [j.index for j in captured.jobs] == [0, 1, 2]
    assert [launch.env["HTC_JOB_INDEX"] for launch in launches(captured)] == ["0", "1", "2"]


def test_mpi_jobs_and_the_decorators_carry_their_layout(captured):
    captured.mpi(["./md", "in.lj"], nodes=1, ranks_per_node=2, cpus_per_rank=2, memory="500M", walltime=120,
                 gpus=1, launcher="mpiexec -n {ranks} {command}")
    captured.mpi(work, nodes=1, ranks=2, memory=200)
    with use(captured):
        task_decorator(resources=ASK, retries=3)(work)(5)
        mpi_task(nodes=1, ranks_per_node=2, walltime=30)(work)()
        mpi_task(ranks=2, executable=True)(lambda: ["./md"])()
    program, function, decorated, mpi_decorated, mpi_executable = (j.spec for j in captured.jobs)
    assert (program.mpi.ranks, program.mpi.ranks_per_node, program.mpi.cpus_per_rank, program.mpi.launcher) == (
        2, 2, 2, "mpiexec -n {ranks} {command}")
    assert (program.cores, program.memory, program.timeout, program.gpus) == (4, 500, 120, 1)
    assert (function.payload is not None, function.mpi.ranks, function.memory) == (True, 2, 200)
    assert (asked(decorated), decorated.retry.retries) == ((2, 300, 60, 1), 3)
    assert (mpi_decorated.mpi.ranks, mpi_decorated.timeout) == (2, 30)
    assert (mpi_executable.commands, mpi_executable.mpi.ranks) == (("./md",), 2)
    rendered = local_plan(captured.parts.profiles.get(None), launches(captured)[:1]).commands[0].command
    assert rendered[:3] == ("mpiexec", "-n", "2") and rendered[-2:] == ("./md", "in.lj")


@pytest.mark.parametrize("call, field", [
    (lambda t: t.sweep(work, Sweep.grid(x=[1]), definition=JobDefinition(commands=["x"])), "definition"),
    (lambda t: t.sweep("echo {x}", Sweep.grid(x=[1]), resources={"cores": 1},
                       definition=JobDefinition(commands=["x"])), "resources"),
    (lambda t: t.submit(work, resources={"cores": 1, "color": "red"}), "color"),
    (lambda t: t.submit(work, resources={"gpus": 3}), "gpus"),
])
def test_a_field_that_cannot_be_used_is_refused_naming_it(captured, call, field):
    with pytest.raises(SpecError, match=field):
        call(captured)
    assert captured.jobs == []
