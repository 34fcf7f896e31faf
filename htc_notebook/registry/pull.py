"""Images made ready to run: resolved to a digest, checked against the job's architecture, pulled
once and unpacked into `<data root>/registry/cache/<digest>/rootfs` (the shared file system, so
every node of the cluster finds it; one unpack per digest, under a lock, renamed into place).
Each use marks the digest's `used` file; `prune` removes what no use has marked for a while, and
never an image a live pilot cluster runs in (`hold`).

>>> ARCHITECTURES["X86"], ARCHITECTURES["AARCH64"]
('amd64', 'arm64')
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from htc_notebook.errors import SpecError
from htc_notebook.registry import daemon
from htc_notebook.registry.catalog import ProjectRegistry
from htc_notebook.registry.push import run_tool as _run
from htc_notebook.spec.names import parse_image

ARCHITECTURES = {"X86": "amd64", "AARCH64": "arm64", "A100": "amd64"}
# what ch-run needs to find in an image (Charliecloud's own image builder adds them)
MOUNT_POINTS = ("dev", "proc", "sys", "tmp", "home", "mnt")
FILES = ("etc/passwd", "etc/group", "etc/hosts", "etc/resolv.conf")


def resolve(registry: ProjectRegistry, image: str, architecture: str, field: str = "imageName",
            model: str = "JobDefinition") -> str:
    """The digest of `image` in the project's registry. SpecError if it is not there (naming the
    project's images) or if its platform is not `architecture` (X86 = amd64, AARCH64 = arm64)."""
    parse_image(image, field=field)
    try:
        digest, _ = registry.manifest(image)
    except KeyError:
        known = registry.images()
        raise SpecError(model, field, image, f"an image of project {registry.project!r}: "
                        f"{', '.join(known) or '(none pushed yet: htc images push)'}") from None
    arch, wanted = registry.architecture(image), ARCHITECTURES.get(architecture, architecture)
    if arch != wanted:
        name = next((k for k, v in ARCHITECTURES.items() if v == arch), "no architecture of this toolkit")
        raise SpecError(model, "architecture", architecture, f"the platform of image {image!r}: {arch} ({name})")
    return digest


def rootfs_path(data_root: Path | str, digest: str) -> Path:
    """Where the image of `digest` is (or will be) unpacked under the data root (nothing is made)."""
    return daemon.registry_dir(data_root) / "cache" / digest.replace(":", "-") / "rootfs"


def rootfs(registry: ProjectRegistry, image: str, digest: str) -> Path:
    """The unpacked root file system of `image` at `digest`, pulled and unpacked on first use (or
    again after `prune`), its use marked."""
    final = rootfs_path(registry.root, digest).parent
    cache = final.parent
    if (final / "rootfs").is_dir():
        _mark_used(final)
        return final / "rootfs"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one unpack per digest, whoever asks
        if (final / "rootfs").is_dir():
            return final / "rootfs"
        repo, _ = parse_image(image)
        with tempfile.TemporaryDirectory(prefix=f".{final.name}-", dir=cache) as tmp:
            auth = registry.write_authfile(Path(tmp) / "auth.json")
            layout, bundle = Path(tmp) / "layout", Path(tmp) / "bundle"
            _run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--src-authfile", str(auth),
                  f"docker://{registry.prefix}{repo}@{digest}", f"oci:{layout}:image"], f"pulling {image}")
            _run(["umoci", "unpack", "--rootless", "--image", f"{layout}:image", str(bundle)], f"unpacking {image}")
            root = bundle / "rootfs"
            for d in MOUNT_POINTS:
                (root / d).mkdir(exist_ok=True)
            for name in FILES:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).touch(exist_ok=True)
            target = Path(tmp) / "done"
            target.mkdir()
            root.rename(target / "rootfs")
            target.rename(final)
    _mark_used(final)
    return final / "rootfs"


def hold(data_root: Path | str, digest: str) -> IO[str]:
    """Keep the image of `digest` from `prune` while the returned file stays open (a shared lock
    on `<cache>/<digest>.inuse`; the kernel of a pilot cluster running in it holds one, and a
    killed kernel's goes with it). Taken under the unpack lock, which `prune` holds from its last
    look to the rename: a prune either sees the hold or has moved the image away first (then
    `rootfs` unpacks it again)."""
    cache = rootfs_path(data_root, digest).parent.parent
    cache.mkdir(parents=True, exist_ok=True)
    name = digest.replace(":", "-")
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        f = open(cache / f"{name}.inuse", "a")
        fcntl.flock(f, fcntl.LOCK_SH)
    return f


def _held(cache: Path, name: str) -> bool:
    """Is image `name` of `cache` held by a live pilot cluster (`hold`)?"""
    try:
        with open(cache / f"{name}.inuse", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    return False


def _mark_used(unpacked: Path) -> None:
    try:
        (unpacked / "used").touch()
    except OSError:  # a read-only cache: its entries just look unused to `prune`
        pass


@dataclass(frozen=True)
class Pruned:
    digest: str
    mib: float  # room freed (files hard-linked between an image and its copies counted once)
    unused_days: float


def prune(data_root: Path | str, keep: set[str], unused_days: float, dry_run: bool = False) -> list[Pruned]:
    """Remove the unpacked images (with their container_binds copies) not used for `unused_days`,
    whose digest is not in `keep` (the images of jobs that have not ended) and that no live pilot
    cluster holds (`hold`). Each is renamed away
    under its unpack lock, then deleted; a later job of it pulls and unpacks it again."""
    cache = daemon.registry_dir(data_root) / "cache"
    now, out = time.time(), []
    for unpacked in sorted(p for p in cache.glob("sha256-*") if p.is_dir()):
        digest = unpacked.name.replace("-", ":", 1)
        idle = (now - _last_used(unpacked)) / 86400
        if digest in keep or idle < unused_days or _held(cache, unpacked.name):
            continue
        mib = _size_mib(unpacked)
        if not dry_run:
            with open(cache / f"{unpacked.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # not while it is being unpacked
                if (now - _last_used(unpacked)) / 86400 < unused_days or _held(cache, unpacked.name):
                    continue  # used meanwhile
                trash = Path(tempfile.mkdtemp(prefix=f".pruned-{unpacked.name}-", dir=cache))
                unpacked.rename(trash / "image")
            shutil.rmtree(trash, onerror=_writable_then_retry)
        out.append(Pruned(digest, mib, round(idle, 1)))
    return out


def _last_used(unpacked: Path) -> float:
    try:
        return (unpacked / "used").stat().st_mtime
    except OSError:  # unpacked before uses were marked
        return unpacked.stat().st_mtime


def _size_mib(tree: Path) -> float:
    seen, total = set(), 0
    for path in tree.rglob("*"):
        st = path.lstat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return round(total / (1 << 20), 1)


def _writable_then_retry(fn, path, _exc) -> None:
    """An unpacked image may hold directories without write permission (umoci keeps the image's modes)."""
    os.chmod(os.path.dirname(path), 0o700)
    fn(path)

