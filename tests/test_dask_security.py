"""G10, every dask comm is authenticated (docs/security.md): tests that play the attacker.

Every dask cluster the toolkit starts (the local backend's LocalCluster, SLURM pilots, packed MPI
allocations) speaks mutual TLS with credentials made for it. An attacker process, run by this
user and by another local user, connects to each of the cluster's listeners (scheduler, workers,
nannies) without the credentials: over plain TCP, over TLS with credentials of its own, and over
TLS without a client certificate. Each attempt must be refused, and the code it would have run on
the scheduler (writing a marker file) must not have run. The local cluster listens on loopback only,
and every dashboard does too.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import missing

from htc_notebook import Session

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture (SLURM tests only)

LOOPBACK = "127.0.0.1"
STRANGER = "htc-stranger"  # a throw-away local user, made here if absent

ATTACKER = r'''
"""Connect to dask listeners without the cluster's credentials; say what each attempt got."""
import asyncio, json, socket, ssl, sys

from distributed import Client, Security
from distributed.comm import connect

targets, marker = json.loads(sys.argv[1]), sys.argv[2]


def plant(dask_scheduler=None, path=marker):
    with open(path, "w") as f:
        f.write("the attacker's code ran")


def as_client(address, security):
    """A Client: if it connects, run code on the scheduler. Refusals raise; once connected, it reached."""
    with Client(address, timeout=5, security=security) as client:
        try:
            client.run_on_scheduler(plant)
            return "connected and ran code on the scheduler"
        except Exception as exc:
            return f"connected (then {type(exc).__name__}: {exc})"


async def identity(address, security):
    """A bare comm: ask who is listening."""
    args = security.get_connection_args("client") if security else {}
    comm = await connect(address, timeout=5, **args)
    try:
        await comm.write({"op": "identity", "reply": True})
        return "answered identity: " + str(await asyncio.wait_for(comm.read(), 5))[:80]
    finally:
        await comm.close()


def bare_tls(hostport):
    """TLS without a client certificate (and trusting any server): the handshake must end in a refusal."""
    host, port = hostport.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(b"\0" * 16)  # TLS 1.3: the server's verdict on our (absent) certificate comes with the reply
        return "TLS session kept open" if tls.recv(1) else "closed"


results = {}
for role, hostport in targets:
    for how in ("plain-tcp", "foreign-tls", "tls-no-cert"):
        try:
            if how == "tls-no-cert":
                got = bare_tls(hostport)
                refused = got == "closed"
            else:
                scheme, security = ("tcp://", None) if how == "plain-tcp" else ("tls://", Security.temporary())
                got = (as_client(scheme + hostport, security) if role == "scheduler"
                       else asyncio.run(identity(scheme + hostport, security)))
                refused = False
        except Exception as exc:  # refusals arrive as comm, SSL and OS errors
            got, refused = f"{type(exc).__name__}: {str(exc)[:120]}", True
        results[f"{role} {hostport} {how}"] = ("refused: " if refused else "REACHED: ") + got
print(json.dumps(results))
'''


def targets(client) -> list[tuple[str, str]]:
    """Every comm listener of a dask cluster: (role, host:port)."""
    info = client.scheduler_info()
    found = [("scheduler", client.scheduler.address)]
    for address, worker in info["workers"].items():
        found.append(("worker", address))
        if worker.get("nanny"):
            found.append(("nanny", worker["nanny"]))
    return [(role, address.split("://", 1)[1]) for role, address in found]


def attack(client, marker: Path, *, argv_prefix: tuple[str, ...] = (), python: str = sys.executable,
           env: dict | None = None) -> dict[str, str]:
    """Run ATTACKER (as `argv_prefix`, e.g. another user) against every listener of `client`'s cluster."""
    out = subprocess.run([*argv_prefix, python, "-c", ATTACKER, json.dumps(targets(client)), str(marker)],
                         capture_output=True, text=True, timeout=180, cwd="/", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_refused(results: dict[str, str], marker: Path) -> None:
    assert results and not [k for k, v in results.items() if not v.startswith("refused")], results
    assert not marker.exists(), "the attacker's code ran in the session's cluster"


def listening(pid: int) -> list[tuple[str, int]]:
    """The TCP addresses process `pid` listens on."""
    return [(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN]


def worker_listening() -> list[tuple[str, int]]:
    """Run on a dask worker: what its process listens on."""
    import os

    return listening(os.getpid())


def worker_http(dask_worker) -> tuple[str, int]:
    """Run on a dask worker: where its HTTP endpoint (health, metrics; the dashboard if any) listens."""
    return dask_worker.http_server.address, dask_worker.http_server.port


# -- the local backend -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_client(session):
    session.start(None)
    assert session.project("sec").task("warm").submit(abs, -2).result(timeout=60) == 2  # calls run
    return session.backend(session.profile(None)).client


def test_the_local_cluster_speaks_tls_and_listens_on_loopback_only_its_dashboard_too(session, local_client):
    cluster = session.backend(session.profile(None)).dask_runners()["local"].cluster
    scheduler = local_client.scheduler.address
    info = local_client.scheduler_info()
    dashboard = info["services"]["dashboard"]
    ours = {int(scheduler.rsplit(":", 1)[1]), dashboard}
    ours |= {int(w["nanny"].rsplit(":", 1)[1]) for w in info["workers"].values()}  # nannies run in this process
    here = [(ip, port) for ip, port in listening(os.getpid()) if port in ours]
    assert {port for _, port in here} == ours and {ip for ip, _ in here} == {LOOPBACK}, here
    assert cluster.scheduler.http_server.address == LOOPBACK  # the dashboard's bound address
    workers = local_client.run(worker_listening)
    assert {ip for found in workers.values() for ip, _ in found} == {LOOPBACK}, workers  # comm and HTTP
    assert scheduler.startswith(f"tls://{LOOPBACK}:") and local_client.security.require_encryption
    assert all(addr.startswith(f"tls://{LOOPBACK}:") for addr in workers)
    (row,) = session.clusters()
    assert row["dashboard"].endswith(f"{dashboard}/status") and (LOOPBACK in row["dashboard"]
                                                                   or "/proxy/" in row["dashboard"])


def test_a_client_without_the_credentials_is_refused_by_every_listener_of_the_local_cluster(local_client, tmp_path):
    """Fails on a cluster without TLS: the plain TCP client connects and runs its code as this user."""
    marker = tmp_path / "planted"
    results = attack(local_client, marker)
    assert_refused(results, marker)
    assert len(results) == 3 * (1 + 2 * len(local_client.scheduler_info()["workers"]))


def _stranger() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(STRANGER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", STRANGER],
                       check=True, capture_output=True)
        return pwd.getpwnam(STRANGER)


def _as(user: pwd.struct_passwd) -> tuple[str, ...]:
    return (shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
            "--clear-groups")


def stranger_python(user: pwd.struct_passwd) -> tuple[str, dict]:
    """A Python with dask that `user` can run, and its environment: the system's Python of this
    version over the venv's packages (world-readable), else the venv's own Python. (Here the venv's
    Python lives under /root/.pyenv, which another user cannot enter: setpriv still execs it, its path
    looked up before the capabilities go, but it then runs without its own standard library.)"""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    packages = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/bin:/usr/local/bin")
    for python, extra in ((system, {"PYTHONPATH": packages}), (sys.executable, {})):
        if not python:
            continue
        probe = subprocess.run([*_as(user), python, "-c",
                                "import os, sys, distributed; print(os.getuid(), sys.prefix)"],
                               capture_output=True, text=True, timeout=120, cwd="/", env={**env, **extra})
        if probe.returncode == 0 and probe.stdout.split()[0] == str(user.pw_uid):
            return python, {**env, **extra}
    pytest.fail(f"no Python with dask that {user.pw_name} may run: neither /usr/bin/{version} over {packages} "
                f"(is it world-readable?) nor {sys.executable}")


@pytest.mark.root
def test_another_local_user_is_refused_by_the_local_cluster(local_client, tmp_path):
    """The shared login node: another user reaches loopback too; without the credentials they get nowhere."""
    if os.geteuid() != 0:
        missing("running a process as another user needs root (make test runs as root)")
    user = _stranger()
    python, env = stranger_python(user)
    marker = tmp_path / "planted-by-stranger"
    assert_refused(attack(local_client, marker, argv_prefix=_as(user), python=python, env=env), marker)


def test_the_credentials_directory_is_refused_as_a_link_or_anothers_and_tightened_when_open(tmp_path):
    """Where pilots' credentials go (<data root>/dask-tls): a link planted there, or a directory of
    another user, is refused (nothing written through it); one of ours left open to others is made 0700."""
    from htc_notebook.backends.dask_security import private_directory
    from htc_notebook.errors import BackendError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "linked").symlink_to(elsewhere)
    with pytest.raises(BackendError, match="not a link"):
        private_directory(tmp_path / "linked")
    assert list(elsewhere.iterdir()) == []
    open_one = tmp_path / "open"
    open_one.mkdir(mode=0o755)
    os.chmod(open_one, 0o755)
    made = private_directory(open_one)
    assert stat.S_IMODE(open_one.stat().st_mode) == 0o700 and stat.S_IMODE(made.stat().st_mode) == 0o700
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, _stranger().pw_uid, -1)
        with pytest.raises(BackendError, match="not to this user"):
            private_directory(theirs)


# -- SLURM pilots and packed MPI allocations -----------------------------------------------------
@pytest.fixture
def slurm_session(site):  # noqa: F811 - the fixture imported above
    root = REPO / "test-output" / f"slurm-sec-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        yield s


def node_name(i: int = 0) -> str:
    import socket

    return socket.gethostname()


def ranks_and_hosts(comm):
    import socket

    return comm.gather((comm.rank, socket.gethostname()))


def _credentials_are_private(root: Path) -> list[Path]:
    """The data root's dask-tls directory and each cluster's in it: this user's, 0700; files 0600."""
    top = root / "dask-tls"
    dirs = sorted(top.glob("cluster-*"))
    for d in [top, *dirs]:
        st = d.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700, d
    files = [f for d in dirs for f in d.iterdir()]
    assert files and all(stat.S_IMODE(f.lstat().st_mode) == 0o600 for f in files), files
    return dirs


def _check_pilot_cluster(runner, marker: Path, scheduler_host: str) -> None:
    """Every listener refuses the attacker; TLS on the profile's scheduler host, the dashboard on
    loopback, the workers' HTTP endpoints on their nodes' loopback."""
    from distributed.utils import format_dashboard_link

    client = runner.client
    assert_refused(attack(client, marker), marker)
    assert client.scheduler.address.startswith(f"tls://{scheduler_host}:")
    assert runner.cluster.scheduler.http_server.address == LOOPBACK  # the dashboard
    dashboard = client.scheduler_info()["services"]["dashboard"]
    assert (LOOPBACK, dashboard) in listening(os.getpid())
    assert client.dashboard_link == runner.dashboard_link == format_dashboard_link(LOOPBACK, dashboard)  # where it is
    workers = client.scheduler_info()["workers"]
    assert workers and all(a.startswith("tls://") for a in workers)
    assert {ip for ip, _ in client.run(worker_http).values()} == {LOOPBACK}


@pytest.mark.slurm
def test_a_pilot_cluster_speaks_tls_refuses_a_client_without_credentials_and_runs_calls(slurm_session, site,  # noqa: F811 - the fixture imported above
                                                                                       tmp_path):
    task = slurm_session.project("sec").task("pilot")
    assert task.submit(node_name, profile="cpu").result(timeout=300) in ("node1", "node2")
    runner = slurm_session.backend(slurm_session.profile("cpu")).pilots
    _check_pilot_cluster(runner, tmp_path / "planted", site.profile("cpu").scheduler_host)
    dirs = _credentials_are_private(slurm_session.root)
    assert task.submit(node_name, 1, profile="cpu").result(timeout=300) in ("node1", "node2")  # still runs
    slurm_session.stop("cpu")
    assert not any(d.exists() for d in dirs)  # the credentials went with the cluster


@pytest.mark.slurm
def test_a_packed_mpi_allocation_speaks_tls_refuses_a_client_without_credentials_and_runs_tasks(slurm_session, site,  # noqa: F811 - the fixture imported above
                                                                                                tmp_path):
    task = slurm_session.project("sec").task("packed")
    rows = task.mpi(ranks_and_hosts, nodes=2, ranks_per_node=1, profile="cpu").result(timeout=300)
    assert sorted(h for _, h in rows) == ["node1", "node2"]
    runner = slurm_session.backend(slurm_session.profile("cpu")).packs
    _check_pilot_cluster(runner, tmp_path / "planted", site.profile("cpu").scheduler_host)
    dirs = _credentials_are_private(slurm_session.root)
    again = task.mpi(ranks_and_hosts, nodes=2, ranks_per_node=1, profile="cpu").result(timeout=300)
    assert again == rows
    slurm_session.stop("cpu")
    assert not any(d.exists() for d in dirs)

