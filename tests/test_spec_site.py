import os
import textwrap

import pytest

from htc_notebook.errors import ConfigError, SpecError, SpecErrors, UnknownProfile
from htc_notebook.spec import PartitionProfile, Resources, SiteConfig

SITE = textwrap.dedent("""\
    default_profile: cpu
    profiles:
      cpu:
        cores_per_node: 32
        memory_per_node: 128G
        max_nodes: 8
        account: proj01
        economy_qos: low
        setup: [module load openmpi]
      gpu:
        partition: gpu-a100
        cores_per_node: 64
        memory_per_node: 512G
        gpus_per_node: 4
        architecture: X86
    """)


def test_builtin_describes_this_machine():
    site = SiteConfig.builtin()
    local = site.profile("local")
    assert site.names() == ["local"] and site.default_profile == "local"
    assert local.backend == "local" and local.partition is None and local.launcher == "mpirun"
    assert local.cores_per_node == (os.cpu_count() or 1) and local.memory_per_node >= 1 and local.max_nodes == 1


def test_from_yaml():
    site = SiteConfig.from_yaml(SITE, file="site.yaml")
    assert site.names() == ["local", "cpu", "gpu"]
    assert site.profile().name == "cpu"
    gpu = site.profile("gpu")
    assert (gpu.partition, gpu.memory_per_node, gpu.gpus_per_node) == ("gpu-a100", 524288, 4)
    assert site.profile("cpu").setup == ("module load openmpi",)
    assert SiteConfig.from_yaml(SITE, builtin=False).names() == ["cpu", "gpu"]


def test_profiles_mapping_is_immutable():
    site = SiteConfig.from_yaml(SITE)
    with pytest.raises(TypeError):
        site.profiles["evil"] = site.profile("cpu")
    with pytest.raises(ValueError, match="frozen"):
        site.default_profile = "gpu"
    assert SiteConfig.model_validate(site.model_dump()) == site


def test_profile_keys_must_match_names():
    cpu = PartitionProfile(name="cpu", cores_per_node=1, memory_per_node=1)
    with pytest.raises(SpecError) as info:
        SiteConfig(profiles={"gpu": cpu}, default_profile="gpu")
    assert info.value.field == "profiles.gpu.name" and info.value.value == "cpu"


def test_default_profile_must_exist():
    with pytest.raises(SpecError) as info:
        SiteConfig.from_yaml("default_profile: cpx\nprofiles:\n  cpu: {cores_per_node: 1, memory_per_node: 1}\n",
                             file="s.yaml")
    err = info.value
    assert err.where == "s.yaml:1" and err.field == "default_profile"
    assert "one of the profiles: local, cpu" in str(err) and "did you mean 'cpu'" in str(err)


def test_unknown_profile_did_you_mean():
    site = SiteConfig.from_yaml(SITE)
    with pytest.raises(UnknownProfile) as info:
        site.profile("gpus")
    assert info.value.suggestions == ["gpu"] and info.value.known == ["local", "cpu", "gpu"]
    assert "Did you mean 'gpu'?" in str(info.value) and "Known profiles: local, cpu, gpu" in str(info.value)
    with pytest.raises(KeyError):  # UnknownProfile is also a KeyError
        site.profile("CPU ")
    with pytest.raises(UnknownProfile) as info:
        site.profile("zzz")
    assert info.value.suggestions == []


def test_unknown_key_has_file_line_and_valid_keys():
    text = SITE.replace("    max_nodes: 8\n", "    max_nodes: 8\n    max_node: 9\n")
    with pytest.raises(SpecError) as info:
        SiteConfig.from_yaml(text, file="site.yaml")
    err = info.value
    assert err.where == "site.yaml:7" and err.field == "profiles.cpu.max_node"
    assert "unknown key; valid keys: name, backend, partition, cores_per_node, memory_per_node" in str(err)


def test_unknown_top_level_key():
    with pytest.raises(SpecError) as info:
        SiteConfig.from_yaml("profiles: {}\ndefault_profil: local\n", file="site.yaml")
    assert info.value.where == "site.yaml:2"
    assert "valid keys: profiles, default_profile, max_batch_size" in str(info.value)


def test_several_errors_each_located():
    text = ("profiles:\n  a:\n    cores_per_node: -1\n    memory_per_node: 1\n"
            "  b:\n    cores_per_node: 1\n    memory_per_node: 0\n")
    with pytest.raises(SpecErrors) as info:
        SiteConfig.from_yaml(text, file="s.yaml")
    assert [e.where for e in info.value.errors] == ["s.yaml:3", "s.yaml:7"]


def test_bad_shapes_located():
    with pytest.raises(SpecError) as info:
        SiteConfig.from_yaml("- 1\n", file="s.yaml")
    assert info.value.where == "s.yaml:1"
    with pytest.raises(SpecError) as info:
        SiteConfig.from_yaml("profiles:\n  cpu: 5\n", file="s.yaml")
    assert info.value.where == "s.yaml:2" and info.value.field == "profiles.cpu"


def test_yaml_problems_are_config_errors():
    with pytest.raises(ConfigError, match=r"^s.yaml:3: duplicate key 'cpu'"):
        SiteConfig.from_yaml("profiles:\n  cpu: {cores_per_node: 1, memory_per_node: 1}\n  cpu: {}\n", file="s.yaml")
    with pytest.raises(ConfigError, match=r"^s.yaml:1: YAML tags"):
        SiteConfig.from_yaml("profiles: !!python/object:os.system {}\n", file="s.yaml")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_load_layers(isolated_env, monkeypatch, tmp_path):
    home = isolated_env / "home"
    write(home / ".config" / "htc_notebook" / "site.yaml",
          "profiles:\n  cpu:\n    cores_per_node: 8\n    memory_per_node: 16G\n    account: a1\n")
    assert SiteConfig.load().profile("cpu").cores_per_node == 8

    env_file = write(tmp_path / "env.yaml", "default_profile: cpu\nprofiles:\n  cpu:\n    cores_per_node: 16\n"
                     "  gpu: {cores_per_node: 4, memory_per_node: 1G, gpus_per_node: 1}\n")
    monkeypatch.setenv("HTC_SITE_CONFIG", str(env_file))
    site = SiteConfig.load()
    cpu = site.profile("cpu")
    assert (cpu.cores_per_node, cpu.memory_per_node, cpu.account) == (16, 16384, "a1")  # field by field
    assert site.names() == ["local", "cpu", "gpu"] and site.default_profile == "cpu"

    explicit = write(tmp_path / "mine.yaml", "max_batch_size: 10\nprofiles:\n  local:\n    cores_per_node: 1\n")
    site = SiteConfig.load(explicit)
    assert site.max_batch_size == 10 and site.profile("local").cores_per_node == 1
    assert site.profile("local").backend == "local" and site.profile("cpu").cores_per_node == 16


def test_load_without_files_is_builtin(isolated_env):
    assert SiteConfig.load() == SiteConfig.builtin()


def test_load_errors_name_the_file_that_set_the_value(isolated_env, monkeypatch, tmp_path):
    write(isolated_env / "home" / ".config" / "htc_notebook" / "site.yaml",
          "profiles:\n  cpu:\n    cores_per_node: 8\n    memory_per_node: 16G\n")
    env_file = write(tmp_path / "env.yaml", "profiles:\n  cpu:\n    gpus_per_node: -2\n")
    monkeypatch.setenv("HTC_SITE_CONFIG", str(env_file))
    with pytest.raises(SpecError) as info:
        SiteConfig.load()
    assert info.value.where == f"{env_file}:3" and info.value.field == "profiles.cpu.gpus_per_node"


def test_missing_files_refused(isolated_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HTC_SITE_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"HTC_SITE_CONFIG") as info:
        SiteConfig.load()
    assert info.value.file == str(tmp_path / "nope.yaml")
    monkeypatch.delenv("HTC_SITE_CONFIG")
    with pytest.raises(ConfigError, match="does not exist"):
        SiteConfig.load(tmp_path / "missing.yaml")


def test_checks_through_the_site():
    site = SiteConfig.from_yaml(SITE)
    with pytest.raises(SpecError, match="profile 'cpu' has no GPUs"):
        site.profile("cpu").check(Resources(gpus=1))
