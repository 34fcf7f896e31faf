"""The local multi-node SLURM test cluster (htc_notebook.devcluster): its rendered config, and the
real cluster from `make slurm-up` (4 nodes in network namespaces, partitions cpu/gpu/knl, MPI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from htc_notebook.devcluster import config as cfg
from htc_notebook.errors import DevClusterError, HTCError

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def run(*cmd: str, timeout: float = 120, env: dict | None = None) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert out.returncode == 0, f"{' '.join(cmd)} -> exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


# -- pure rendering (no cluster needed) -------------------------------------------------------
SPEC = cfg.default_spec("/srv/htc-dc", controller_host="ctl")


def conf_lines() -> dict[str, str]:
    return dict(line.split("=", 1) for line in cfg.render_slurm_conf(SPEC).splitlines()
                if line and not line.startswith(("#", "NodeName", "PartitionName")))


def test_slurm_conf_settings():
    c = conf_lines()
    assert c["SlurmctldHost"] == "ctl(10.77.0.1)"
    assert c["MaxArraySize"] == "1001" and int(c["MaxJobCount"]) >= 10_500
    assert c["SlurmdParameters"] == "config_overrides"
    assert c["ProctrackType"] == "proctrack/cgroup" and c["TaskPlugin"] == "task/cgroup"
    assert c["SelectType"] == "select/cons_tres" and c["SelectTypeParameters"] == "CR_Core_Memory"
    assert c["AccountingStorageType"] == "accounting_storage/slurmdbd" and c["MpiDefault"] == "none"
    assert c["AccountingStorageEnforce"] == "associations,limits,qos" and c["AccountingStorageHost"] == "10.77.0.1"
    assert c["PreemptType"] == "preempt/qos" and c["PreemptMode"] == "REQUEUE"
    assert c["PriorityType"] == "priority/multifactor" and c["JobAcctGatherType"] == "jobacct_gather/linux"
    assert c["MinJobAge"] == "300" and c["ReturnToService"] == "2" and c["KillWait"] == "5"
    for key in ("StateSaveLocation", "SlurmdSpoolDir", "SlurmctldPidFile", "SlurmdPidFile", "SlurmctldLogFile",
                "SlurmdLogFile"):
        assert c[key].startswith("/srv/htc-dc/"), key
    assert "%n" in c["SlurmdSpoolDir"] and "%n" in c["SlurmdPidFile"] and "%n" in c["SlurmdLogFile"]


def test_nodes_and_partitions_rendered():
    text = cfg.render_slurm_conf(SPEC)
    assert "NodeName=node3 NodeAddr=10.77.0.13" in text and "Gres=gpu:2" in text
    assert "NodeName=node4 NodeAddr=10.77.0.14 NodeHostname=node4 CPUs=64 Sockets=1 CoresPerSocket=64" in text
    assert "RealMemory=65536" in text
    assert "PartitionName=cpu Nodes=node1,node2 Default=YES MaxTime=1-00:00:00 DefaultTime=01:00:00" in text
    assert "PartitionName=gpu Nodes=node3 Default=NO MaxTime=12:00:00" in text
    assert "PartitionName=knl Nodes=node4 Default=NO MaxTime=2-00:00:00" in text
    gres = cfg.render_gres_conf(SPEC)
    assert "NodeName=node3 Name=gpu File=/dev/tty[0-1]" in gres
    assert cfg.render_slurm_conf(SPEC).startswith(cfg.MARKER) and gres.startswith(cfg.MARKER)
    # MPI ranks of two nodes share this machine's cores: each task is told to yield while it waits
    assert f"TaskProlog={SPEC.task_prolog}" in text
    assert "echo export OMPI_MCA_mpi_yield_when_idle=1" in cfg.render_task_prolog()


def test_accounting_files_and_commands_rendered():
    cgroup = cfg.render_cgroup_conf(SPEC)
    assert "ConstrainRAMSpace=yes" in cgroup and "ConstrainCores=yes" in cgroup and "CgroupPlugin=cgroup/v1" in cgroup
    dbd = cfg.render_slurmdbd_conf(SPEC, "pw123")
    assert "StoragePass=pw123" in dbd and "StoragePort=3307" in dbd and "StorageHost=127.0.0.1" in dbd
    argv = cfg.render_mariadb_argv(SPEC)
    assert "--bind-address=127.0.0.1" in argv and "--datadir=/srv/htc-dc/mariadb" in argv
    cmds = [" ".join(c) for c in cfg.render_sacctmgr(SPEC, "alice")]
    assert cmds[0] == "sacctmgr -i add cluster htc-dev"
    normal = next(c for c in cmds if "name=normal" in c)
    assert "Preempt=economy" in normal and "MaxSubmitJobsPerUser=5000" in normal
    assert any("name=economy" in c and "PreemptMode=requeue" in c for c in cmds)
    assert "QOS=normal,economy,capped DefaultQOS=normal" in next(c for c in cmds if "add user alice" in c)
    assert cmds[-1].endswith("name=alice set DefaultAccount=htc")


def test_hosts_file_names_every_node_and_the_controller():
    hosts = cfg.render_hosts(SPEC).splitlines()
    assert "10.77.0.1 ctl" in hosts and "10.77.0.11 node1" in hosts and "10.77.0.14 node4" in hosts


def test_shared_paths_under_tmp():
    assert cfg.shared_under_tmp(["/work/repo", "/usr"]) == []
    assert cfg.shared_under_tmp(["/tmp/ci/repo/.venv", "/tmp/ci/repo", "/tmp/other"]) == ["/tmp/ci/repo", "/tmp/other"]
    assert cfg.shared_under_tmp(["/tmp", "/tmpx/a"]) == []


def test_node_script_rebinds_tmp_checkouts_before_hiding_tmp():
    script = cfg.render_node_script(SPEC, "node2", ["/tmp/ci/repo", "/work/x"]).splitlines()
    hold, private = "mount --rbind /tmp /srv/htc-dc/run/hold", "mount --bind /srv/htc-dc/nodes/node2/tmp /tmp"
    back = "mount --rbind /srv/htc-dc/run/hold/ci/repo /tmp/ci/repo"
    release = "umount -l /srv/htc-dc/run/hold"
    assert script.index(hold) < script.index(private) < script.index(back) < script.index(release)
    assert script[1] == "hostname node2" and script[-1] == "exec slurmd -N node2 -f /etc/slurm/slurm.conf"
    plain = cfg.render_node_script(SPEC, "node2", ["/work/x"])
    assert "hold" not in plain and "mount --bind /srv/htc-dc/nodes/node2/tmp /tmp" in plain


def test_node_argv_uses_nsenter_not_ip_netns_exec():
    argv = cfg.render_node_argv(SPEC, "node1", [])
    assert argv[:2] == ["nsenter", "--net=/var/run/netns/node1"] and "netns" not in argv[2:5]
    assert ["--uts", "--mount", "--propagation", "private"] == argv[4:8]


def test_what_the_sites_users_read_is_open_to_them_under_htcs_umask(tmp_path):
    """`htc slurm up` runs with the `htc` command's umask 077, yet an ordinary user's `sbatch` reads
    slurm.conf, slurmstepd runs their batch script from slurmd's spool, and their jobs read the node's
    /etc/hosts. Before: slurm.conf 0600 (sbatch: "unable to read /etc/slurm/slurm.conf"), spool 0700
    ("execve(): .../slurm_script: Permission denied"), hosts 0600."""
    import stat
    from dataclasses import replace

    from htc_notebook import devcluster

    s = replace(cfg.default_spec(str(tmp_path / "state"), controller_host="ctl"), slurm_conf_dir=str(tmp_path / "etc"))
    os.makedirs(s.etc_dir)
    Path(s.etc_dir, "slurm.conf").touch(mode=0o600)  # as an earlier run under umask 077 left it
    old = os.umask(0o077)
    try:
        devcluster._write_configs(s)
    finally:
        os.umask(old)

    def mode(path: str) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    assert {name: (mode(os.path.join(s.slurm_conf_dir, name)), mode(os.path.join(s.etc_dir, name)))
            for name in cfg.CONFIG_FILES} == {name: (0o644, 0o644) for name in cfg.CONFIG_FILES}
    assert {mode(s.node_hosts(n)) for n in s.node_names} == {0o644}
    spool = [s.state_root, s.path("spool"), s.path("spool", "slurmd"),
             *(s.path("spool", "slurmd", n) for n in s.node_names)]
    assert {p: mode(p) for p in spool} == {p: 0o755 for p in spool}
    assert {mode(s.shared_dir), *(mode(s.node_tmp(n)) for n in s.node_names)} == {0o1777}


@pytest.mark.root  # makes the user when it is missing
def test_the_sites_ordinary_user_gets_an_association():
    """Without one, slurmctld refuses an ordinary user's every job ("Invalid account or
    account/partition combination specified"): `up` gives `htc-user` one, making the user if missing."""
    from htc_notebook.devcluster import accounting

    assert SPEC.ordinary_users == ("htc-user",)
    names = accounting.users(SPEC)
    assert names[0] == "root" and "htc-user" in names
    cmds = [" ".join(c) for c in cfg.render_sacctmgr(SPEC, "htc-user")]
    assert any(c.startswith("sacctmgr -i add user htc-user Account=htc") for c in cmds)


def test_state_root_under_tmp_is_refused(monkeypatch):
    from htc_notebook import devcluster

    monkeypatch.setenv("HTC_DEVCLUSTER_ROOT", "/tmp/x")
    with pytest.raises(DevClusterError, match="under /tmp"):
        devcluster.state_root()
    monkeypatch.setenv("HTC_DEVCLUSTER_ROOT", "/srv/dc")
    assert devcluster.state_root() == "/srv/dc"
    assert issubclass(DevClusterError, HTCError)


def test_cli_without_root_says_so(monkeypatch):
    from htc_notebook import devcluster

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DevClusterError, match="needs root"):
        devcluster.up()


# -- the real cluster ---------------------------------------------------------------------
def test_partitions_and_nodes_idle(slurm_cluster):
    out = run("sinfo", "-h", "-o", "%R %D %a")
    got = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert got == {"cpu": ["2", "up"], "gpu": ["1", "up"], "knl": ["1", "up"]}
    assert slurm_cluster.partitions == {"cpu": ["node1", "node2"], "gpu": ["node3"], "knl": ["node4"]}
    states = run("sinfo", "-h", "-N", "-o", "%N %t").split()
    assert dict(zip(states[::2], states[1::2], strict=True)).keys() == {"node1", "node2", "node3", "node4"}


def test_two_nodes_two_hostnames(slurm_cluster):
    out = run("srun", "-p", "cpu", "-N", "2", "hostname")
    assert sorted(out.split()) == ["node1", "node2"]


def test_gpu_gres_sets_cuda_visible_devices(slurm_cluster):
    out = run("srun", "-p", "gpu", "--gres=gpu:1", "env")
    assert "CUDA_VISIBLE_DEVICES=0" in out.splitlines()
    assert slurm_cluster.nodes["node3"]["gres"].startswith("gpu:2")


def test_knl_node_has_64_cpus(slurm_cluster):
    assert slurm_cluster.nodes["node4"]["cpus"] == 64 and slurm_cluster.nodes["node4"]["memory_mb"] == 65536
    out = run("scontrol", "show", "node", "node4")
    assert "CPUTot=64" in out and "RealMemory=65536" in out


def test_each_node_has_a_private_tmp(slurm_cluster):
    name = f"htc-probe-{uuid.uuid4().hex}"
    run("srun", "-p", "cpu", "-w", "node1", "sh", "-c", f"echo x > /tmp/{name}")
    try:
        assert run("srun", "-p", "cpu", "-w", "node1", "ls", "/tmp").split().count(name) == 1
        assert name not in run("srun", "-p", "cpu", "-w", "node2", "ls", "/tmp").split()
        assert not os.path.exists(f"/tmp/{name}")
    finally:
        run("srun", "-p", "cpu", "-w", "node1", "rm", "-f", f"/tmp/{name}")


def test_venv_python_runs_on_a_node(slurm_cluster):
    out = run("srun", "-p", "cpu", "-w", "node1", slurm_cluster.python, "-c",
              "import htc_notebook, socket; print(socket.gethostname(), htc_notebook.__name__)")
    assert out.split() == ["node1", "htc_notebook"]


def _mpi_program(cluster) -> list[str]:
    probe = subprocess.run([cluster.python, "-c", "import mpi4py"], capture_output=True)
    if probe.returncode == 0:
        script = Path(cluster.shared_dir, "mpi_hello.py")
        script.write_text("import socket\nfrom mpi4py import MPI\nc = MPI.COMM_WORLD\n"
                          "print(c.Get_rank(), c.Get_size(), socket.gethostname(), flush=True)\n")
        return [cluster.python, str(script)]
    if not shutil.which("mpicc"):
        pytest.fail("neither mpi4py in the venv nor mpicc (libopenmpi-dev) is available")
    src, exe = Path(cluster.shared_dir, "mpi_hello.c"), Path(cluster.shared_dir, "mpi_hello")
    src.write_text('#include <mpi.h>\n#include <stdio.h>\n#include <unistd.h>\n'
                   'int main(int c, char **v) { int r, n; char h[256]; MPI_Init(&c, &v);\n'
                   '  MPI_Comm_rank(MPI_COMM_WORLD, &r); MPI_Comm_size(MPI_COMM_WORLD, &n);\n'
                   '  gethostname(h, sizeof h); printf("%d %d %s\\n", r, n, h); MPI_Finalize(); return 0; }\n')
    run("mpicc", "-o", str(exe), str(src))
    return [str(exe)]


def test_mpi_four_ranks_across_two_nodes(slurm_cluster):
    program = _mpi_program(slurm_cluster)
    out = run("srun", "-p", "cpu", "--mpi=pmix", "-N", "2", "--ntasks-per-node=2", *program, env=MPI_ENV)
    rows = sorted(tuple(line.split()) for line in out.splitlines() if line.strip())
    assert [r[:2] for r in rows] == [("0", "4"), ("1", "4"), ("2", "4"), ("3", "4")]
    assert {r[2] for r in rows} == {"node1", "node2"}


def test_status_and_leftovers_see_the_running_cluster(slurm_cluster):
    from htc_notebook import devcluster

    st = devcluster.status()
    assert st["up"] and st["network"]["bridge"] and all(st["network"]["namespaces"].values())
    assert all(d["alive"] for d in st["daemons"].values())
    # leftovers() is what `down()` promises to empty; with the cluster up it must notice everything.
    left = " ".join(devcluster.leftovers())
    for thing in ("slurmctld", "slurmd", "slurmdbd", "mariadbd", "bridge br-htc", "network namespace node1",
                  "network namespace node4", "file /etc/slurm/slurm.conf"):
        assert thing in left


def test_makefile_installs_every_package_the_cluster_needs():
    from htc_notebook.devcluster.install import PACKAGES

    line = next(ln for ln in (REPO / "Makefile").read_text().splitlines() if ln.startswith("SYSTEM_PACKAGES"))
    assert set(PACKAGES) <= set(line.split(":=", 1)[1].split())
