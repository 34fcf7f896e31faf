"""`htc registry up|down|status`: the data root's OCI registry and its token service, as processes.

Everything lives in `<data root>/registry/`: `config.yml` (rendered by `render_config`), the
image store `storage/`, the keys `keys/`, the logs, and `state.json` (address and pids) that
the REST API and `htc images` read. The registry is the CNCF distribution registry (Debian's
`docker-registry`); it listens on `listen:port` and sends clients to the token service on
`port + 1`; `host` is the address clients and cluster nodes use to reach both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from htc_notebook.errors import BackendError
from htc_notebook.registry.credentials import ISSUER, SERVICE, RegistryKeys

REGISTRY = "docker-registry"
DEFAULT_PORT = 5050


@dataclass(frozen=True)
class RegistryState:
    """A running registry: where clients reach it, and its processes."""

    host: str
    port: int
    token_port: int
    registry_pid: int
    token_pid: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def realm(self) -> str:
        return f"http://{self.host}:{self.token_port}/token"


def registry_dir(root: str | os.PathLike[str]) -> Path:
    return Path(root) / "registry"


def render_config(*, storage: str, listen: str, port: int, realm: str, cert: str) -> str:
    """The distribution registry's config.yml: files under `storage`, token auth against `realm`.

    >>> print(render_config(storage="/d/registry/storage", listen="0.0.0.0", port=5050,
    ...                     realm="http://h:5051/token", cert="/d/registry/keys/token.crt"))  # doctest: +ELLIPSIS
    version: 0.1
    ...
    auth:
      token:
        realm: http://h:5051/token
        service: htc-registry
        issuer: htc_notebook
        rootcertbundle: /d/registry/keys/token.crt
    <BLANKLINE>
    """
    config = {"version": 0.1, "log": {"level": "info", "fields": {"service": "registry"}},
              "storage": {"filesystem": {"rootdirectory": storage}, "delete": {"enabled": True}},
              "http": {"addr": f"{listen}:{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
              "auth": {"token": {"realm": realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": cert}}}
    return yaml.safe_dump(config, sort_keys=False)


def status(root: str | os.PathLike[str]) -> RegistryState | None:
    """The running registry of this data root, or None (none started, or its processes are gone)."""
    try:
        state = RegistryState(**json.loads((registry_dir(root) / "state.json").read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return state if _alive(state.registry_pid) and _alive(state.token_pid) else None


def up(root: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
       listen: str = "0.0.0.0", timeout: float = 30) -> RegistryState:
    """Start the registry and its token service (or return the running ones)."""
    running = status(root)
    if running is not None:
        return running
    if shutil.which(REGISTRY) is None:
        raise BackendError(f"{REGISTRY} is not installed (Debian: apt install docker-registry)")
    d = registry_dir(root)
    keys = RegistryKeys(d / "keys")
    (d / "storage").mkdir(parents=True, exist_ok=True)
    token_port = port + 1
    realm = f"http://{host}:{token_port}/token"
    config = d / "config.yml"
    config.write_text(render_config(storage=str(d / "storage"), listen=listen, port=port, realm=realm,
                                    cert=str(keys.cert_path)))
    registry = _spawn([REGISTRY, "serve", str(config)], d / "registry.log")
    token = _spawn([sys.executable, "-m", "htc_notebook.registry.token_service", "--keys", str(keys.dir),
                    "--port", str(token_port), "--listen", listen], d / "token.log")
    state = RegistryState(host, port, token_port, registry.pid, token.pid)
    deadline = time.monotonic() + timeout
    while not (_answers(f"http://{host}:{port}/v2/", 401) and _answers(f"http://{host}:{token_port}/healthz", 200)):
        for proc, log in ((registry, "registry.log"), (token, "token.log")):
            if proc.poll() is not None:
                _stop(state)
                tail = (d / log).read_text(errors="replace")[-2000:]
                raise BackendError(f"the registry did not start ({log}, exit code {proc.returncode}): {tail}")
        if time.monotonic() > deadline:
            _stop(state)
            raise BackendError(f"the registry did not answer on {host}:{port} within {timeout:.0f} s; see {d}/*.log")
        time.sleep(0.1)
    (d / "state.json").write_text(json.dumps(asdict(state)))
    return state


def down(root: str | os.PathLike[str]) -> bool:
    """Stop the registry of this data root; False if none was running. Images stay in storage/."""
    path = registry_dir(root) / "state.json"
    try:
        state = RegistryState(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return False
    _stop(state)
    path.unlink(missing_ok=True)
    return True


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd="/")


def _stop(state: RegistryState) -> None:
    pids = [state.registry_pid, state.token_pid]
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ValueError):
        return False
    if state in ("Z", "X"):
        try:  # our own child: reap it
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _answers(url: str, expected: int) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == expected
    except urllib.error.HTTPError as exc:
        return exc.code == expected
    except OSError:
        return False
