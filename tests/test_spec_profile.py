import pytest

from htc_notebook.errors import ResourceLimitError, SpecError
from htc_notebook.spec import PartitionProfile, Resources


@pytest.fixture
def cpu():
    return PartitionProfile(name="cpu", cores_per_node=8, memory_per_node="16G", max_nodes=4,
                            default_walltime="01:00:00", max_walltime="1-00:00:00")


@pytest.fixture
def gpu():
    return PartitionProfile(name="gpu", cores_per_node=16, memory_per_node=65536, gpus_per_node=2)


def test_defaults_and_units(cpu):
    assert cpu.partition == "cpu" and cpu.backend == "slurm" and cpu.launcher == "srun"
    assert (cpu.memory_per_node, cpu.default_walltime, cpu.max_walltime) == (16384, 3600, 86400)
    local = PartitionProfile(name="here", backend="local", cores_per_node=2, memory_per_node=1024)
    assert local.partition is None
    assert PartitionProfile(name="x", partition="batch", cores_per_node=1, memory_per_node=1).partition == "batch"


def test_lists_become_tuples():
    p = PartitionProfile(name="x", cores_per_node=1, memory_per_node=1, setup=["module load gcc"],
                         constraints=["ib"])
    assert p.setup == ("module load gcc",) and p.constraints == ("ib",)
    hash(p)  # frozen and hashable: no shared mutable state


@pytest.mark.parametrize("field, bad", [("cores_per_node", 0), ("cores_per_node", 1.5), ("max_nodes", True),
                                        ("gpus_per_node", -1), ("memory_per_node", "lots")])
def test_bad_numbers(field, bad):
    kw = {"name": "x", "cores_per_node": 1, "memory_per_node": 1, field: bad}
    with pytest.raises(SpecError) as info:
        PartitionProfile(**kw)
    assert (info.value.model, info.value.field, info.value.value) == ("PartitionProfile", field, bad)


def test_literal_choices_listed():
    with pytest.raises(SpecError, match=r"architecture = 'ARM' is not allowed: one of X86, AARCH64"):
        PartitionProfile(name="x", cores_per_node=1, memory_per_node=1, architecture="ARM")
    with pytest.raises(SpecError, match=r"one of pmix, pmi2, none"):
        PartitionProfile(name="x", cores_per_node=1, memory_per_node=1, mpi="openmpi")


def test_missing_required_field():
    with pytest.raises(SpecError,
                       match=r"PartitionProfile.memory_per_node = <missing> is not allowed: a value is required"):
        PartitionProfile(name="x", cores_per_node=1)


def test_launcher_names_and_templates():
    base = {"name": "x", "cores_per_node": 1, "memory_per_node": 1}
    for name in ("srun", "mpirun", "mpiexec", "ibrun"):
        assert PartitionProfile(**base, launcher=name).launcher == name
    tpl = "mpiexec -n {ranks} --bind-to core {command}"
    assert PartitionProfile(**base, launcher=tpl).launcher == tpl
    for bad in ("aprun", "mpiexec -n {ranks}", "{command}", "x {ranks} {command} {home}", "x {ranks {command}"):
        with pytest.raises(SpecError) as info:
            PartitionProfile(**base, launcher=bad)
        assert info.value.field == "launcher" and "{ranks} and {command}" in info.value.allowed


def test_default_walltime_above_max():
    with pytest.raises(SpecError, match=r"default_walltime = 7200 is not allowed: at most max_walltime=3600"):
        PartitionProfile(name="x", cores_per_node=1, memory_per_node=1, default_walltime=7200, max_walltime=3600)


def test_fits(cpu, gpu):
    cpu.check(Resources(cores=8, memory="16G"))
    cpu.check(Resources(ranks=32, nodes=4))
    gpu.check(Resources(gpus=2, cores=16))


def limit_error(profile, **kw):
    with pytest.raises(ResourceLimitError) as info:
        profile.check(Resources(**kw))
    assert isinstance(info.value, SpecError)
    return info.value


def test_too_many_cores(cpu):
    err = limit_error(cpu, cores=9)
    assert err.field == "cores" and err.value == 9
    assert "cores_per_node x nodes = 8 x 1 = 8 cores" in str(err)
    err = limit_error(cpu, cores=12, nodes=2)
    assert "a job without MPI ranks runs on one node; profile 'cpu' has cores_per_node=8" in str(err)
    err = limit_error(cpu, cores=17, nodes=2)
    assert "cores_per_node x nodes = 8 x 2 = 16 cores" in str(err)


def test_too_much_memory(cpu):
    err = limit_error(cpu, memory="17G")
    assert (err.field, err.value) == ("memory", 17408) and "memory_per_node=16384 MiB" in str(err)


def test_gpus_on_cpu_profile(cpu, gpu):
    err = limit_error(cpu, gpus=1)
    assert err.field == "gpus" and "profile 'cpu' has no GPUs (gpus_per_node=0)" in str(err)
    err = limit_error(gpu, gpus=3)
    assert "profile 'gpu' has gpus_per_node=2" in str(err)


def test_too_many_nodes(cpu):
    err = limit_error(cpu, nodes=5)
    assert err.field == "nodes" and "max_nodes=4" in str(err)


def test_walltime_over_max(cpu):
    err = limit_error(cpu, walltime="2-00")
    assert err.field == "walltime" and "max_walltime=86400 s (1-00:00:00)" in str(err)


def test_more_ranks_than_cores(cpu):
    err = limit_error(cpu, ranks=8, nodes=2, cpus_per_rank=4)
    assert err.field == "ranks_per_node"
    assert "more ranks than cores: ranks_per_node x cpus_per_rank = 4 x 4 = 16 cores per node" in str(err)
    assert "cores_per_node=8" in str(err)


def test_resolve_defaults_walltime(cpu):
    assert cpu.resolve(Resources()).walltime == 3600
    assert cpu.resolve(Resources(walltime=60)).walltime == 60
    with pytest.raises(ResourceLimitError):
        cpu.resolve(Resources(gpus=1))


@pytest.mark.parametrize("bad, hint", [("/opt/mpi:/x", "found ':'"), ("opt/mpi", "not absolute"),
                                       ("/opt/../etc", "'..' parts"), ("/opt/my mpi", "found ' '"),
                                       ("/opt/mpi,ro", "found ','")])
def test_container_binds_are_plain_absolute_paths(bad, hint):
    """ch-run and apptainer split --bind values at ':' and ','; the field, the value and the rule are named."""
    with pytest.raises(SpecError) as info:
        PartitionProfile(name="x", cores_per_node=1, memory_per_node=1, container_binds=["/etc/openmpi", bad])
    assert "container_binds" in str(info.value) and repr(bad) in str(info.value) and hint in str(info.value)
    ok = PartitionProfile(name="x", cores_per_node=1, memory_per_node=1,
                          container_binds=["/usr/lib/x86_64-linux-gnu/libmpi.so.40"])
    assert ok.container_binds == ("/usr/lib/x86_64-linux-gnu/libmpi.so.40",)


@pytest.mark.parametrize("bad, hint", [("--reservation=maint\n#SBATCH --qos=high", "found '\\n'"),
                                       ("--comment='x'", "found \"'\""), ("--partition=a b", "found ' '"),
                                       ("#SBATCH --exclusive", "found '#'"), ("exclusive", "does not start with --"),
                                       ("--array=0-9", "--array to track"), ("--output=/tmp/x", "--output to track")])
def test_sbatch_options_are_single_plain_options_the_toolkit_does_not_own(bad, hint):
    """The site's escape hatch: each entry one #SBATCH line, nothing that could add another or
    change how the toolkit tracks its jobs; the field, the value and the rule are named."""
    with pytest.raises(SpecError) as info:
        PartitionProfile(name="x", cores_per_node=1, memory_per_node=1, sbatch_options=["--exclusive", bad])
    assert "sbatch_options" in str(info.value) and hint in str(info.value), str(info.value)
    ok = PartitionProfile(name="x", cores_per_node=1, memory_per_node=1,
                          sbatch_options=["--reservation=maint", "--exclusive", "--gpus-per-task=1", "--clusters=c2"])
    assert ok.sbatch_options == ("--reservation=maint", "--exclusive", "--gpus-per-task=1", "--clusters=c2")


@pytest.mark.parametrize("bad", ["dask:1", "site/../x:1", "site/d a:1", "site/dask", "/dask:1"])
def test_a_pilot_image_is_project_slash_image_and_only_on_slurm(bad):
    assert PartitionProfile(name="x", cores_per_node=1, memory_per_node=1,
                            pilot_image="site/dask:2024.12").pilot_image == "site/dask:2024.12"
    with pytest.raises(SpecError) as info:
        PartitionProfile(name="x", cores_per_node=1, memory_per_node=1, pilot_image=bad)
    assert "pilot_image" in str(info.value) and "project/image" in str(info.value), str(info.value)
    with pytest.raises(SpecError, match="only on a slurm profile"):
        PartitionProfile(name="x", backend="local", cores_per_node=1, memory_per_node=1, pilot_image="site/dask:1")


def test_commands_on_pilots_is_a_slurm_profiles_choice_without_a_pilot_image():
    assert PartitionProfile(name="x", cores_per_node=1, memory_per_node=1).commands == "arrays"
    assert PartitionProfile(name="x", cores_per_node=1, memory_per_node=1, commands="pilots").commands == "pilots"
    for bad, words in (({"commands": "nodes"}, "one of arrays, pilots"),
                       ({"commands": "pilots", "backend": "local"}, "only on a slurm profile"),
                       ({"commands": "pilots", "pilot_image": "site/dask:1"}, "pilot_image")):
        with pytest.raises(SpecError) as info:
            PartitionProfile(name="x", cores_per_node=1, memory_per_node=1, **bad)
        assert "commands" in str(info.value) and words in str(info.value), str(info.value)
