"""The test cluster's network: one bridge with the controller address, one network namespace per node.

Only addresses on this machine are used: the bridge (10.77.0.1/24) and the nodes' veth ends
inside their namespaces (10.77.0.11...). Namespaces have no default route, so nothing a node
does can reach any other address. Namespaces and the bridge outlive the processes that made
them, so `setup()` first removes whatever an earlier run left and `teardown()` removes it all.
"""

from __future__ import annotations

import os
import subprocess

from htc_notebook.errors import DevClusterError

from .config import NETNS_DIR, ClusterSpec


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise DevClusterError("the `ip` command is missing: apt-get install -y iproute2") from None
    if check and out.returncode != 0:
        raise DevClusterError(f"`ip {' '.join(args)}` failed (exit {out.returncode}): "
                              f"{(out.stderr or out.stdout).strip()}")
    return out


def bridge_exists(spec: ClusterSpec) -> bool:
    return _ip("link", "show", "dev", spec.bridge, check=False).returncode == 0


def netns_exists(spec: ClusterSpec, node: str) -> bool:
    return os.path.exists(spec.netns(node))


def setup(spec: ClusterSpec) -> None:
    teardown(spec)
    _ip("link", "add", spec.bridge, "type", "bridge")
    _ip("addr", "add", f"{spec.controller_address}/{spec.prefix_len}", "dev", spec.bridge)
    _ip("link", "set", spec.bridge, "up")
    for n in spec.nodes:
        veth = spec.veth(n.name)
        _ip("netns", "add", n.name)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.name)
        _ip("link", "set", veth, "master", spec.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", n.name, "addr", "add", f"{n.address}/{spec.prefix_len}", "dev", "eth0")
        _ip("-n", n.name, "link", "set", "eth0", "up")
        _ip("-n", n.name, "link", "set", "lo", "up")


def teardown(spec: ClusterSpec) -> None:
    """Remove the node namespaces, their veths and the bridge; silent about what is already gone."""
    for n in spec.nodes:
        if netns_exists(spec, n.name):
            _ip("netns", "delete", n.name, check=False)
            if os.path.exists(spec.netns(n.name)):  # a stale mount point left by a crashed run
                subprocess.run(["umount", "-l", spec.netns(n.name)], capture_output=True)
                try:
                    os.unlink(spec.netns(n.name))
                except OSError:
                    pass
        veth = spec.veth(n.name)
        if _ip("link", "show", "dev", veth, check=False).returncode == 0:
            _ip("link", "delete", veth, check=False)
    if bridge_exists(spec):
        _ip("link", "set", spec.bridge, "down", check=False)
        _ip("link", "delete", spec.bridge, "type", "bridge")


def leftovers(spec: ClusterSpec) -> list[str]:
    found = [f"network namespace {n.name} ({NETNS_DIR}/{n.name})" for n in spec.nodes
             if netns_exists(spec, n.name)]
    found += [f"veth {spec.veth(n.name)}" for n in spec.nodes
              if _ip("link", "show", "dev", spec.veth(n.name), check=False).returncode == 0]
    if bridge_exists(spec):
        found.append(f"bridge {spec.bridge}")
    return found
