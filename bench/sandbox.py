"""What the bubblewrap sandbox costs a short command job, against a bare process.

Two ways, side by side in this one process, alternating (A B, B A, ...) so machine noise hits both:
(1) the process alone: `subprocess.run(["true"])` against the same `true` under the sandbox's
    bwrap command line (`backends/sandbox.py::bwrap_argv`), `--jobs` times each;
(2) whole jobs: a batch of `--jobs` `true` jobs on the local backend with `sandbox: none`
    against the same batch with `sandbox: bwrap`, and in a busybox image of the project registry
    (ch-run inside the sandbox), from submit to every job committed.
Reported: milliseconds per job (medians), the ratios to bare, and the time to a first job of an
image not yet unpacked against the same image cached; the same with a profile's `image_cache` (jobs
run from a node-local copy: here the "shared" unpack is on this machine's disk too, so this measures
the copy's check per job and the first copy, not what it saves a cluster's shared file system);
and what a profile's container_binds file
costs a process when it goes into a large image directory: in the image's copy for those binds,
against its mount point laid out for each job over the shared unpack.

    .venv/bin/python bench/sandbox.py [--jobs 200] [--pairs 5] [--write bench/results.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _write


def busybox_rootfs(where: Path, marker: str) -> Path:
    """A root file system of Debian's busybox with /bin/true and a marker (a new digest per marker)."""
    (where / "bin").mkdir(parents=True)
    (where / "etc").mkdir()
    shutil.copy(shutil.which("busybox"), where / "bin" / "busybox")
    for applet in ("sh", "true"):
        (where / "bin" / applet).symlink_to("busybox")
    (where / "etc" / "marker").write_text(marker)
    return where


def wide_rootfs(where: Path, entries: int) -> tuple[Path, str]:
    """Busybox with a library directory of `entries` files, as a Debian-based image has, and a host
    file that a profile's container_binds would bind into it at its own path."""
    from htc_notebook.registry.pull import FILES, MOUNT_POINTS

    bind = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    busybox_rootfs(where, "wide")
    for d in MOUNT_POINTS:  # what unpacking an image of the registry adds (registry/pull.py)
        (where / d).mkdir(exist_ok=True)
    for f in FILES:
        (where / f).touch()
    lib = where / bind.lstrip("/").rsplit("/", 1)[0]
    lib.mkdir(parents=True)
    for i in range(entries):
        (lib / f"lib{i}.so").touch()
    return where, bind


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--entries", type=int, default=1500,
                    help="entries of the image directory a container_binds file goes into (Debian's "
                         "/usr/lib/x86_64-linux-gnu holds about 1,400 on this machine)")
    ap.add_argument("--write", help="update the sandbox section of this results file")
    args = ap.parse_args()

    from htc_notebook import Session, SiteConfig
    from htc_notebook.backends.images import ch_run_argv, mount_points, with_binds
    from htc_notebook.backends.sandbox import JobView, bwrap_argv, image_root
    from htc_notebook.registry import ProjectRegistry, daemon
    from htc_notebook.registry.push import push

    def site(mode: str, tmp: Path) -> SiteConfig:
        data = SiteConfig.builtin().model_dump(exclude_defaults=True)
        data["profiles"]["local"]["sandbox"] = "none" if mode == "none" else "bwrap"
        if mode == "node-copy":
            data["profiles"]["local"]["image_cache"] = str(tmp / "node-local")
        return SiteConfig.model_validate(data)

    modes = ("none", "bwrap", "image", "node-copy")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registries = {}
        for port, mode in ((5350, "image"), (5352, "node-copy")):  # a data root and registry each
            daemon.up(root / mode, port=port, listen="127.0.0.1")
            registries[mode] = ProjectRegistry(root / mode, "bench")
            push(registries[mode], str(busybox_rootfs(root / f"rootfs-{mode}", "v1")), "busybox:v1")
        sessions = {mode: Session(root / mode, site=site(mode, root)) for mode in modes}
        runs = iter(range(10**6))
        command = {"none": ["true"], "bwrap": ["true"], "image": ["/bin/true"], "node-copy": ["/bin/true"]}

        def jobs(mode: str, n: int = args.jobs, image: str = "busybox:v1") -> float:
            task = sessions[mode].project("bench").task(f"run-{next(runs)}")
            definition = {"commands": command[mode], **({"imageName": image} if mode in ("image", "node-copy") else {})}
            t0 = time.perf_counter()
            group = task.submit_batch({"jobName": "true", "batchSize": n, "htcJobDefinition": definition})
            group.wait(timeout=600)
            dt = (time.perf_counter() - t0) / n
            assert group.counts()["SUCCEEDED"] == n, (group.counts(), group[0].row.reason)
            return dt

        try:
            for mode in modes:
                jobs(mode)  # warm up each (the image is pulled and unpacked here)
            rootfs = next(p / "rootfs" for p in (root / "image" / "registry" / "cache").iterdir() if p.is_dir())
            view = JobView(str(root / "image"), str(root / "t"), str(root / "s"))
            for d in (root / "t" / ".htc" / "checkpoints", root / "s"):
                d.mkdir(parents=True)
            # as `sandbox.confined` renders them: the image's mount points laid out per job, not written
            big, bind = wide_rootfs(root / "wide" / "rootfs", args.entries)
            copy = with_binds(big, [bind])  # what a job of a profile with that bind runs in (made once)
            argv = {"none": ["true"], "bwrap": bwrap_argv(view, ["true"]),
                    "image": bwrap_argv(view, ch_run_argv(str(rootfs), view.task_dir, view.shared_dir, ["/bin/true"]),
                                        image=image_root(str(rootfs), mount_points(view.task_dir, view.shared_dir))),
                    "binds": bwrap_argv(view, ch_run_argv(str(copy), view.task_dir, view.shared_dir, ["/bin/true"],
                                                          [bind]),
                                        image=image_root(str(copy), mount_points(view.task_dir, view.shared_dir,
                                                                                 [bind]))),
                    # the alternative: the bind's mount point laid out for each job over the unpack
                    "per-job": bwrap_argv(view, ch_run_argv(str(big), view.task_dir, view.shared_dir, ["/bin/true"],
                                                            [bind]),
                                          image=image_root(str(big), mount_points(view.task_dir, view.shared_dir,
                                                                                  [bind])))}

            def processes(mode: str) -> float:
                n = 10 if mode == "per-job" else args.jobs  # about 2 s each
                t0 = time.perf_counter()
                for _ in range(n):
                    subprocess.run(argv[mode], check=True, stdin=subprocess.DEVNULL, env={**os.environ, "USER": "root"})
                return (time.perf_counter() - t0) / n

            times: dict[tuple[str, str], list[float]] = {}
            for i in range(args.pairs):
                order = modes if i % 2 == 0 else modes[::-1]
                for what, fn in (("process", processes), ("job", jobs)):
                    for mode in (order + ("binds", "per-job") if what == "process" else order):
                        if what == "process" and mode == "node-copy":
                            continue
                        times.setdefault((what, mode), []).append(fn(mode))
                print("pair", i, " ".join(f"{w}/{m} {v[-1] * 1e3:.2f} ms" for (w, m), v in times.items()), flush=True)
            first, cached, first_copy = [], [], []
            for i in range(3):  # one job of an image not yet unpacked here, then one of it cached
                for mode, registry in registries.items():
                    push(registry, str(busybox_rootfs(root / f"rootfs-{mode}-{i}", f"fresh {i}")), f"fresh:v{i}")
                first.append(jobs("image", 1, f"fresh:v{i}"))
                cached.append(jobs("image", 1, f"fresh:v{i}"))
                jobs("node-copy", 1, f"fresh:v{i}")  # pulled and unpacked by the first one there; then
                shutil.rmtree(root / "node-local")  # as a node that has not run it yet
                first_copy.append(jobs("node-copy", 1, f"fresh:v{i}"))
        finally:
            for s in sessions.values():
                s.close()
            for mode in registries:
                daemon.down(root / mode)

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    rows = [("process alone (subprocess.run)", "process"), ("whole job (submit to committed)", "job")]
    summary = "\n".join([
        f"{args.jobs} `true` per run x {args.pairs} alternating rounds, local backend, medians "
        "(image: busybox from the project registry, run with ch-run inside the sandbox):",
        "",
        "| | bare | bwrap sandbox | image (sandbox + ch-run) | sandbox/bare | image/bare |",
        "|---|---|---|---|---|---|",
        *[f"| {label} | {med[k, 'none']:.2f} ms | {med[k, 'bwrap']:.2f} ms | {med[k, 'image']:.2f} ms "
          f"| **{med[k, 'bwrap'] / med[k, 'none']:.2f}** | **{med[k, 'image'] / med[k, 'none']:.2f}** |"
          for label, k in rows],
        "",
        f"The same jobs run from a node-local copy (`image_cache`, copy made): {med['job', 'node-copy']:.2f} ms a job, "
        f"**{med['job', 'node-copy'] / med['job', 'image']:.2f}x** the shared unpack; the first job of an image "
        f"on a node, which copies it: {statistics.median(first_copy):.2f} s (median of 3).",
        "",
        f"One job of an image not yet unpacked (resolve, pull, unpack, run): {statistics.median(first):.2f} s "
        f"(median of 3); the same image once cached: {statistics.median(cached):.2f} s.",
        "",
        f"A profile's container_binds file bound into an image directory of {args.entries} entries, the image "
        f"copied once for that bind (hard links, `images.with_binds`): {med['process', 'binds']:.2f} ms a process, "
        f"**{med['process', 'binds'] / med['process', 'image']:.2f}x** the image without binds. The alternative, "
        f"its mount point laid out for each job over the shared unpack (every entry of that directory bound "
        f"back on a tmpfs, 10 runs a round): {med['process', 'per-job']:.0f} ms a process, "
        f"**{med['process', 'per-job'] / med['process', 'binds']:.0f}x** the copy.",
    ])
    print(summary)
    if args.write:
        _write(Path(args.write), "sandbox", summary, " ".join(["python"] + sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
