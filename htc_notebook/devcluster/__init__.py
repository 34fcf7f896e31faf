"""A real multi-node SLURM cluster on this one machine, for tests, CI and demos (`htc slurm up`).

Four slurmd "nodes", each in its own network namespace (own address on bridge br-htc), hostname
and private /tmp, under one slurmctld and munged. All state lives under one root
(`$HTC_DEVCLUSTER_ROOT`, default /var/lib/htc-devcluster); slurm.conf and gres.conf are also
installed at /etc/slurm so every SLURM client finds them without SLURM_CONF. See
docs/test-cluster.md.

    up()        -> ClusterInfo   clean whatever an earlier run left, then start fresh
    down()                       stop everything, remove namespaces, bridge and /etc/slurm files
    status()    -> dict          daemons, network, nodes and partitions
    leftovers() -> list[str]     what `down()` promises is gone; [] after a clean down
    install()                    apt-get the packages that are missing
"""

from __future__ import annotations

import contextlib
import os
import signal
import shutil
import subprocess
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from htc_notebook.errors import DevClusterError

from . import accounting, daemons, net
from .config import (CONFIG_FILES, DEFAULT_ROOT, MARKER, ClusterSpec, default_spec, render_cgroup_conf,
                     render_gres_conf, render_hosts, render_slurm_conf, render_task_prolog, shared_under_tmp)
from .install import install, missing_packages

__all__ = ["ClusterInfo", "ClusterSpec", "DevClusterError", "down", "install", "kill_node", "leftovers",
           "require_root", "revive_node", "shared_paths", "spec", "state_root", "status", "up"]


@dataclass(frozen=True)
class ClusterInfo:
    state_root: str
    slurm_conf: str
    controller: str
    nodes: tuple[str, ...]
    partitions: dict[str, tuple[str, ...]]
    shared_dir: str = ""
    shared_under_tmp: tuple[str, ...] = ()
    seconds: float = 0.0
    node_info: dict = field(default_factory=dict)


def require_root() -> None:
    if os.geteuid() != 0:
        raise DevClusterError("the SLURM test cluster needs root (network namespaces, mounts, daemons): "
                              "run it as root, e.g. `sudo .venv/bin/htc slurm up`")


def state_root() -> str:
    root = os.environ.get("HTC_DEVCLUSTER_ROOT") or DEFAULT_ROOT
    p = PurePosixPath(os.path.abspath(root))
    if p == PurePosixPath("/tmp") or PurePosixPath("/tmp") in p.parents:
        raise DevClusterError(f"HTC_DEVCLUSTER_ROOT={root} is under /tmp, but every node mounts its own "
                              f"private /tmp over it; choose a path outside /tmp (default {DEFAULT_ROOT})")
    if p == PurePosixPath("/"):
        raise DevClusterError("HTC_DEVCLUSTER_ROOT must not be /")
    return str(p)


def spec(root: str | None = None) -> ClusterSpec:
    return default_spec(root or state_root(), controller_host=socket.gethostname().split(".")[0])


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def shared_paths(extra=()) -> list[str]:
    """Paths jobs must see at the same place on every node: the checkout, the venv, the interpreter,
    and anything in $HTC_DEVCLUSTER_SHARED (os.pathsep separated). Only those under /tmp need work."""
    cands = [str(repo_root()), sys.prefix, os.path.realpath(sys.prefix), sys.base_prefix,
             os.path.realpath(sys.base_prefix), os.path.dirname(os.path.realpath(sys.executable))]
    cands += [p for p in os.environ.get("HTC_DEVCLUSTER_SHARED", "").split(os.pathsep) if p]
    cands += [str(p) for p in extra]
    return [os.path.abspath(p) for p in cands]


# -- files ------------------------------------------------------------------------------
def _ours(path: str) -> bool:
    try:
        with open(path) as fh:
            return fh.readline().rstrip("\n") == MARKER
    except OSError:
        return False


@contextlib.contextmanager
def _admin_umask() -> Iterator[None]:
    """umask 022 while the cluster is made, as in an administrator's shell: `htc` runs with umask 077
    (a data root is private), but the files and daemons of a site are read by all its users."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _write_configs(s: ClusterSpec) -> None:
    """Every file and directory of the cluster, with what the site's ordinary users need opened to them
    (explicitly: an earlier run under another umask may have left them closed): the state root, the
    slurmd spool dirs slurmstepd runs their batch scripts from (0755), the configuration every SLURM
    client reads and the nodes' /etc/hosts (0644), the shared scratch and the nodes' /tmp (1777)."""
    for d in (s.etc_dir, s.log_dir, s.run_dir, s.hold_dir, s.path("spool", "slurmctld"), s.slurm_conf_dir,
              s.shared_dir):
        os.makedirs(d, exist_ok=True)
    os.chmod(s.shared_dir, 0o1777)
    for n in s.nodes:
        os.makedirs(s.path("spool", "slurmd", n.name), exist_ok=True)
        os.makedirs(s.node_tmp(n.name), exist_ok=True)
        os.chmod(s.node_tmp(n.name), 0o1777)
        _write_public(s.node_hosts(n.name), render_hosts(s))
    spool = [s.path("spool"), s.path("spool", "slurmd"), *(s.path("spool", "slurmd", n) for n in s.node_names)]
    for d in (s.state_root, *spool):
        os.chmod(d, 0o755)
    _write_public(s.task_prolog, render_task_prolog())
    os.chmod(s.task_prolog, 0o755)
    texts = {"slurm.conf": render_slurm_conf(s), "gres.conf": render_gres_conf(s),
             "cgroup.conf": render_cgroup_conf(s)}
    assert tuple(texts) == CONFIG_FILES
    for name, text in texts.items():
        _write_public(os.path.join(s.etc_dir, name), text)
        target = os.path.join(s.slurm_conf_dir, name)
        if os.path.exists(target) and not _ours(target):
            raise DevClusterError(f"{target} exists and was not written by htc_notebook.devcluster; "
                                  "refusing to overwrite a real SLURM configuration (move it away first)")
        tmp = target + ".htc-tmp"
        _write_public(tmp, text)
        os.replace(tmp, target)


def _write_public(path: str, text: str) -> None:
    """Write `path`, readable by everyone (0644) whatever the umask or an earlier mode."""
    Path(path).write_text(text)
    os.chmod(path, 0o644)


def _remove_configs(s: ClusterSpec) -> None:
    for name in CONFIG_FILES:
        target = os.path.join(s.slurm_conf_dir, name)
        if _ours(target):
            os.unlink(target)


def _fresh_state(s: ClusterSpec) -> None:
    """Spool, node /tmp dirs and pid files from an earlier run go; its logs are kept as *.prev.
    The shared scratch dir (<root>/shared) is kept."""
    for d in (s.path("spool"), s.path("nodes"), s.run_dir):
        shutil.rmtree(d, ignore_errors=True)
    if os.path.isdir(s.log_dir):
        for f in Path(s.log_dir).glob("*.log"):
            os.replace(f, f.with_suffix(".log.prev"))


# -- the public verbs -------------------------------------------------------------------
def kill_node(node: str) -> list[int]:
    """Make `node` fail as a machine does: every process in its network namespace (its slurmd, the
    slurmstepd of its jobs, the jobs themselves) is SIGKILLed at once. Returns the pids killed."""
    s = spec()
    ino = daemons._netns_ino(s.netns(node))
    if ino is None:
        raise DevClusterError(f"no node {node!r} in the test cluster (known: {', '.join(s.node_names)})")
    pids = [pid for pid in daemons._pids() if pid != os.getpid() and daemons._netns_ino(f"/proc/{pid}/ns/net") == ino]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _clear_cgroups(node: str) -> None:
    """Remove the cgroups a killed node's slurmd and jobs left (empty once their processes died), as a
    reboot would: slurmstepd fails a job whose cgroup it finds already there, and drains the node."""
    for top in Path("/sys/fs/cgroup").glob(f"*/slurm_{node}"):
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:  # still holds a process (not this node's), or already gone
                pass


def revive_node(node: str, timeout: float = 60) -> None:
    """Start a failed node's slurmd again and return it to service (`scontrol update ... resume`)."""
    s = spec()
    _clear_cgroups(node)
    with _admin_umask():
        daemons.start_slurmd(s, node, shared_under_tmp(shared_paths()))
    deadline = time.monotonic() + timeout
    while True:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True, timeout=30)
        state = daemons.sinfo_nodes().get(node, {}).get("state", "")
        if state in ("idle", "mix", "alloc"):
            return
        if time.monotonic() > deadline:
            raise DevClusterError(f"node {node} is {state or 'unknown'} {timeout:.0f} s after its slurmd started")
        time.sleep(0.5)


def up(*, shared=(), timeout: float = 90, install_missing: bool = True) -> ClusterInfo:
    """Clean whatever an earlier run left, then start munged, slurmctld and every node; wait until idle."""
    require_root()
    with _admin_umask():
        return _up(shared=shared, timeout=timeout, install_missing=install_missing)


def _up(*, shared, timeout: float, install_missing: bool) -> ClusterInfo:
    t0 = time.monotonic()
    if install_missing:
        install()
    elif missing := missing_packages():
        raise DevClusterError(f"missing packages: {', '.join(missing)} (run `htc slurm install`)")
    s = spec()
    _teardown(s)
    _fresh_state(s)
    _write_configs(s)
    daemons.start_munge(s)
    net.setup(s)
    accounting.start_mariadb(s)
    accounting.start_slurmdbd(s)
    accounting.make_site(s)
    daemons.start_slurmctld(s)
    paths = shared_under_tmp(shared_paths(shared))
    for n in s.nodes:
        daemons.start_slurmd(s, n.name, paths)
    nodes = daemons.wait_ready(s, timeout=timeout)
    return ClusterInfo(state_root=s.state_root, slurm_conf=s.slurm_conf,
                       controller=f"{s.controller_host}({s.controller_address})", nodes=tuple(s.node_names),
                       partitions={p: tuple(s.partition_nodes(p)) for p in s.partition_names},
                       shared_dir=s.shared_dir, shared_under_tmp=tuple(paths),
                       seconds=round(time.monotonic() - t0, 1), node_info=nodes)


def _teardown(s: ClusterSpec) -> list[str]:
    still = daemons.stop_all(s)
    net.teardown(s)
    _remove_configs(s)
    return still


def down() -> None:
    """Stop every daemon and job this cluster started, remove namespaces, bridge and /etc/slurm files."""
    require_root()
    s = spec()
    still = _teardown(s)
    left = leftovers()
    if still or left:
        raise DevClusterError(f"`down` could not remove everything: {', '.join(still + left)}")


def leftovers() -> list[str]:
    """What `down()` guarantees is gone: SLURM processes, our munged, node namespaces, veths, the
    bridge, our /etc/slurm files. Empty after a clean `down()`."""
    s = spec()
    found = [f"process {c} (pid {p})" for p, c in sorted(daemons.slurm_processes().items())]
    found += [f"process {c} (pid {p})" for p, c in sorted(daemons.our_processes(s).items())
              if c not in daemons.SLURM_COMMS]
    found += net.leftovers(s)
    found += [f"file {os.path.join(s.slurm_conf_dir, n)}" for n in CONFIG_FILES
              if _ours(os.path.join(s.slurm_conf_dir, n))]
    return found


def status() -> dict:
    s = spec()
    daemon_state: dict[str, dict[str, int | bool | None]] = {"munged": {"alive": daemons.munge_works()}}
    for name, pidfile in (("mariadbd", s.db_pidfile), ("slurmdbd", s.slurmdbd_pidfile),
                          ("slurmctld", s.slurmctld_pidfile)):
        pid = daemons.pidfile_alive(pidfile, name)
        daemon_state[name] = {"pid": pid, "alive": bool(pid)}
    for n in s.node_names:
        pid = daemons.pidfile_alive(s.slurmd_pidfile(n), "slurmd")
        daemon_state[f"slurmd@{n}"] = {"pid": pid, "alive": bool(pid)}
    nodes = daemons.sinfo_nodes() if daemon_state["slurmctld"]["alive"] else {}
    partitions = daemons.sinfo_partitions() if nodes else []
    network = {"bridge": net.bridge_exists(s), "namespaces": {n: net.netns_exists(s, n) for n in s.node_names}}
    up_ = (all(d["alive"] for d in daemon_state.values())  # "comp": finishing a job (an srun just ended)
           and all(nodes.get(n, {}).get("state") in ("idle", "mix", "alloc", "comp") for n in s.node_names))
    return {"up": up_, "state_root": s.state_root, "slurm_conf": s.slurm_conf, "shared_dir": s.shared_dir,
            "controller": f"{s.controller_host}({s.controller_address})", "daemons": daemon_state,
            "network": network, "nodes": nodes, "partitions": partitions,
            "logs": {"slurmctld": s.slurmctld_log, "slurmdbd": s.slurmdbd_log, "mariadb": s.db_log,
                     **{n: s.slurmd_log(n) for n in s.node_names}}}
