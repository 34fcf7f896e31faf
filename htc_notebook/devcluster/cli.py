"""`htc slurm up|down|status|install`: the local multi-node SLURM test cluster from the command line."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

console = Console()


def add_parser(sub) -> None:
    sl = sub.add_parser("slurm", help="the local multi-node SLURM test cluster (root; see docs/test-cluster.md)")
    ssub = sl.add_subparsers(metavar="ACTION")
    u = ssub.add_parser("up", help="install what is missing, clean leftovers, start the cluster, wait until idle")
    u.add_argument("--timeout", type=float, default=90, help="seconds to wait for idle nodes (default 90)")
    u.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing packages")
    u.set_defaults(func=_up)
    d = ssub.add_parser("down", help="stop every daemon and job, remove namespaces, bridge and config files")
    d.set_defaults(func=_down)
    s = ssub.add_parser("status", help="daemons, network, nodes and partitions")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_status)
    i = ssub.add_parser("install", help="apt-get install the Debian packages the cluster needs, if missing")
    i.set_defaults(func=_install)
    sl.set_defaults(func=_status, json=False)


def _up(args) -> int:
    from htc_notebook import devcluster

    info = devcluster.up(timeout=args.timeout, install_missing=not args.no_install)
    console.print(f"SLURM test cluster up in {info.seconds:.1f} s: controller {info.controller}, "
                  f"state {info.state_root}, config {info.slurm_conf}")
    if info.shared_under_tmp:
        console.print(f"re-bound on every node over its private /tmp: {', '.join(info.shared_under_tmp)}")
    _print_nodes(info.node_info)
    return 0


def _down(args) -> int:
    from htc_notebook import devcluster

    devcluster.down()
    console.print("SLURM test cluster down: no daemons, namespaces, bridge or /etc/slurm files left")
    return 0


def _install(args) -> int:
    from htc_notebook import devcluster

    devcluster.require_root()
    done = devcluster.install()
    console.print(f"installed: {', '.join(done)}" if done else "all packages already installed")
    return 0


def _status(args) -> int:
    from htc_notebook import devcluster

    st = devcluster.status()
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0 if st["up"] else 1
    console.print(f"SLURM test cluster: {'[green]up[/]' if st['up'] else '[red]not up[/]'} "
                  f"(state {st['state_root']}, controller {st['controller']})")
    t = Table(title="daemons")
    for col in ("daemon", "pid", "alive"):
        t.add_column(col)
    for name, d in st["daemons"].items():
        t.add_row(name, str(d.get("pid") or "-"), "yes" if d["alive"] else "[red]no[/]")
    console.print(t)
    if st["nodes"]:
        _print_nodes(st["nodes"])
    if st["partitions"]:
        p = Table(title="partitions")
        for col in ("partition", "default", "max time", "nodes", "idle/total"):
            p.add_column(col)
        for row in st["partitions"]:
            p.add_row(row["name"], "yes" if row["default"] else "", row["max_time"], row["nodes"],
                      f"{row['idle']}/{row['total']}")
        console.print(p)
    return 0 if st["up"] else 1


def _print_nodes(nodes: dict) -> None:
    t = Table(title="nodes")
    for col in ("node", "partition", "state", "CPUs", "memory MB", "GRES"):
        t.add_column(col)
    for name, n in sorted(nodes.items()):
        t.add_row(name, ",".join(n["partitions"]), n["state"], str(n["cpus"]), str(n["memory_mb"]), n["gres"])
    console.print(t)
