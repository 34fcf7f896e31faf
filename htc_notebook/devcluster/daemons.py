"""Starting, finding and stopping the test cluster's daemons: munged, slurmctld, one slurmd per node.

Every daemon this module starts carries the environment variable `HTC_DEVCLUSTER_DAEMON=<state
root>`, so stray ones (pid file lost, crashed run) are found again by that mark; anything running
inside a node's network namespace (slurmd, slurmstepd, job processes) is ours too. Nothing else
on the machine is ever signalled.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

from htc_notebook.errors import DevClusterError

from .config import ClusterSpec, render_node_argv

DAEMON_MARK = "HTC_DEVCLUSTER_DAEMON"
SLURM_COMMS = ("slurmctld", "slurmd", "slurmstepd", "slurmdbd")
MUNGE_KEY = "/etc/munge/munge.key"
MUNGE_DIRS = ("/etc/munge", "/var/log/munge", "/run/munge", "/var/lib/munge")


# -- processes --------------------------------------------------------------------------
def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _marked(pid: int, root: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{DAEMON_MARK}={root}".encode() in env.split(b"\0")


def _netns_ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def read_pidfile(path: str) -> int | None:
    try:
        pid = int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid > 1 else None


def pidfile_alive(path: str, comm: str) -> int | None:
    pid = read_pidfile(path)
    return pid if pid and _alive(pid) and _comm(pid) == comm else None


def our_processes(spec: ClusterSpec) -> dict[int, str]:
    """pid -> comm of every live process this cluster started (by mark, pid file or namespace)."""
    me = {os.getpid(), os.getppid()}
    inos = {_netns_ino(spec.netns(n.name)) for n in spec.nodes} - {None}
    found: dict[int, str] = {}
    for path, comm in [(spec.slurmctld_pidfile, "slurmctld"),
                       *[(spec.slurmd_pidfile(n.name), "slurmd") for n in spec.nodes]]:
        pid = pidfile_alive(path, comm)
        if pid:
            found[pid] = comm
    for pid in _pids():
        if pid in me or pid in found or not _alive(pid):
            continue
        if _marked(pid, spec.state_root) or (inos and _netns_ino(f"/proc/{pid}/ns/net") in inos):
            found[pid] = _comm(pid)
    return found


def slurm_processes() -> dict[int, str]:
    """Every slurmctld/slurmd/slurmstepd on the machine, ours or not (for leftovers())."""
    return {pid: c for pid in _pids() if (c := _comm(pid)) in SLURM_COMMS and _alive(pid)}


def _terminate(pids: dict[int, str], grace: float = 10.0) -> list[str]:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in [p for p in pids if _alive(p)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [f"{c} (pid {p})" for p, c in pids.items() if _alive(p)]


def stop_all(spec: ClusterSpec) -> list[str]:
    """Stop every process this cluster started: nodes first, then slurmctld, slurmdbd, mariadbd, munged."""
    still: list[str] = []
    procs = our_processes(spec)
    last = ("slurmctld", "slurmdbd", "mariadbd", "munged")
    order = [lambda c: c not in last, *[lambda c, d=d: c == d for d in last]]
    for pick in order:
        group = {p: c for p, c in procs.items() if pick(c)}
        if group:
            still += _terminate(group)
    # slurmstepd or job processes may have been forked while we were stopping slurmd
    late = {p: c for p, c in our_processes(spec).items() if p not in procs}
    if late:
        still += _terminate(late)
    for path in [spec.slurmctld_pidfile, spec.slurmdbd_pidfile, spec.db_pidfile,
                 *[spec.slurmd_pidfile(n.name) for n in spec.nodes]]:
        try:
            os.unlink(path)
        except OSError:
            pass
    return still


def _env(spec: ClusterSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMIX_"))}
    env[DAEMON_MARK] = spec.state_root
    return env


def _tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return "\n".join("    " + line for line in text) or "    (empty)"


# -- munge ------------------------------------------------------------------------------
def munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if cred.returncode != 0:
            return False
        out = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def start_munge(spec: ClusterSpec) -> bool:
    """Make sure munged answers. Returns True when this call started it (then `down` stops it)."""
    if munge_works():
        return False
    try:
        uid, gid = pwd.getpwnam("munge").pw_uid, grp.getgrnam("munge").gr_gid
    except KeyError:
        raise DevClusterError("no `munge` user: is the munge package installed? (htc slurm install)") from None
    for d in MUNGE_DIRS:
        os.makedirs(d, exist_ok=True)
        os.chown(d, uid, gid)
    os.chmod("/etc/munge", 0o700)
    key = Path(MUNGE_KEY)
    if not key.exists() or key.stat().st_size < 32:
        key.write_bytes(os.urandom(1024))
    os.chown(key, uid, gid)
    os.chmod(key, 0o400)
    out = subprocess.run(["su", "munge", "-s", "/bin/sh", "-c", "exec munged --force"],
                         capture_output=True, text=True, env=_env(spec), timeout=30)
    if out.returncode != 0:
        raise DevClusterError(f"munged did not start (exit {out.returncode}): {out.stderr.strip()}; "
                              "see /var/log/munge/munged.log")
    deadline = time.monotonic() + 10
    while not munge_works():
        if time.monotonic() > deadline:
            raise DevClusterError("munged started but `munge -n | unmunge` fails; see /var/log/munge/munged.log")
        time.sleep(0.2)
    return True


# -- slurmctld --------------------------------------------------------------------------
def _scontrol_ping() -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "is UP" in out.stdout


def start_slurmctld(spec: ClusterSpec, timeout: float = 30, *, clean: bool = True) -> int:
    """Start the controller: from a clean state (`up`: no jobs from an earlier run), or, with
    clean=False, from its saved state (a restart that keeps the queue, as after a crash)."""
    argv = ["slurmctld", *(["-c", "-i"] if clean else []), "-f", spec.slurm_conf]
    out = subprocess.run(argv, capture_output=True, text=True, env=_env(spec), timeout=60)
    if out.returncode != 0:
        raise DevClusterError(f"slurmctld did not start (exit {out.returncode}): {out.stderr.strip()}\n"
                              f"  log {spec.slurmctld_log}:\n{_tail(spec.slurmctld_log)}")
    deadline = time.monotonic() + timeout
    while True:
        pid = pidfile_alive(spec.slurmctld_pidfile, "slurmctld")
        if pid and _scontrol_ping():
            return pid
        if time.monotonic() > deadline:
            raise DevClusterError(f"slurmctld is not answering after {timeout:.0f} s "
                                  f"(`scontrol ping`); log {spec.slurmctld_log}:\n{_tail(spec.slurmctld_log)}")
        time.sleep(0.2)


# -- slurmd, one per node ---------------------------------------------------------------
def start_slurmd(spec: ClusterSpec, node: str, shared: list[str], timeout: float = 30) -> int:
    log = spec.launch_log(node)
    with open(log, "w") as fh:
        out = subprocess.run(render_node_argv(spec, node, shared), stdin=subprocess.DEVNULL, stdout=fh,
                             stderr=subprocess.STDOUT, env=_env(spec), timeout=60)
    if out.returncode != 0:
        raise DevClusterError(f"slurmd for {node} did not start (exit {out.returncode}); "
                              f"launch log {log}:\n{_tail(log)}\n  slurmd log {spec.slurmd_log(node)}:\n"
                              f"{_tail(spec.slurmd_log(node))}")
    deadline = time.monotonic() + timeout
    while True:
        pid = pidfile_alive(spec.slurmd_pidfile(node), "slurmd")
        if pid:
            return pid
        if time.monotonic() > deadline:
            raise DevClusterError(f"slurmd for {node} wrote no pid file in {timeout:.0f} s; "
                                  f"log {spec.slurmd_log(node)}:\n{_tail(spec.slurmd_log(node))}")
        time.sleep(0.1)


def sinfo_nodes() -> dict[str, dict]:
    """node -> {partition, state, cpus, memory_mb, gres}; empty when slurmctld does not answer."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%P|%t|%c|%m|%G"], capture_output=True,
                             text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    nodes: dict[str, dict] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        name, part, state, cpus, mem, gres = parts
        entry = nodes.setdefault(name, {"partitions": [], "state": state, "cpus": int(cpus),
                                        "memory_mb": int(mem), "gres": "" if gres == "(null)" else gres})
        entry["partitions"].append(part.rstrip("*"))
    return nodes


def sinfo_partitions() -> list[dict]:
    try:
        out = subprocess.run(["sinfo", "-h", "-s", "-o", "%P|%a|%l|%F|%N"], capture_output=True,
                             text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    parts = []
    for line in out.stdout.splitlines():
        f = line.strip().split("|")
        if len(f) != 5:
            continue
        a, i, o, t = (int(x) for x in f[3].split("/"))
        parts.append({"name": f[0].rstrip("*"), "default": f[0].endswith("*"), "avail": f[1],
                      "max_time": f[2], "nodes": f[4], "allocated": a, "idle": i, "other": o, "total": t})
    return parts


def _reasons() -> str:
    out = subprocess.run(["sinfo", "-R", "-h", "-o", "%N: %t %E"], capture_output=True, text=True, timeout=15)
    return out.stdout.strip() or "(no reasons recorded)"


def wait_ready(spec: ClusterSpec, timeout: float = 60) -> dict[str, dict]:
    """Until every node is idle. Down nodes are resumed; a node that stays INVAL fails fast."""
    deadline = time.monotonic() + timeout
    resumed: dict[str, float] = {}
    nodes: dict[str, dict] = {}
    while True:
        nodes = sinfo_nodes()
        states = {n: nodes.get(n, {}).get("state", "missing") for n in spec.node_names}
        if all(s == "idle" for s in states.values()):
            return nodes
        for node, state in states.items():
            if not pidfile_alive(spec.slurmd_pidfile(node), "slurmd"):
                raise DevClusterError(f"slurmd for {node} died; log {spec.slurmd_log(node)}:\n"
                                      f"{_tail(spec.slurmd_log(node))}")
            if state.startswith(("down", "drain", "drng", "fail")) and not state.endswith("*") \
                    and time.monotonic() - resumed.get(node, -99) > 5:
                subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"],
                               capture_output=True, timeout=15)
                resumed[node] = time.monotonic()
            if state.startswith("inval"):
                raise DevClusterError(f"node {node} is INVAL (its slurmd disagrees with slurm.conf): "
                                      f"{_reasons()}\n  log {spec.slurmd_log(node)}:\n{_tail(spec.slurmd_log(node))}")
        if time.monotonic() > deadline:
            shown = ", ".join(f"{n}={s}" for n, s in states.items())
            logs = "\n".join(f"  {spec.slurmd_log(n)}" for n in spec.node_names)
            raise DevClusterError(f"nodes not idle after {timeout:.0f} s: {shown}\n  reasons: {_reasons()}\n"
                                  f"  logs: {spec.slurmctld_log}\n{logs}")
        time.sleep(0.25)
