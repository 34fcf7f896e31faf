"""`htc images push SOURCE REPO:TAG`: an image into the project's registry with skopeo.

SOURCE is an OCI archive (`*.tar`, `oci-archive:FILE`), an OCI layout directory (`DIR` or
`DIR:TAG`, or `oci:...`), a docker archive (`docker-archive:FILE`), or a root file system
directory, which umoci packs into a one-layer image of this machine's platform first. The
credentials go to skopeo in a private auth file, never on its command line.

>>> skopeo_source("docker-archive:/tmp/a.tar"), skopeo_source("/tmp/img.tar")
('docker-archive:/tmp/a.tar', 'oci-archive:/tmp/img.tar')
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from htc_notebook.errors import BackendError, SpecError
from htc_notebook.registry.catalog import ProjectRegistry
from htc_notebook.spec.names import parse_image

TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:", "docker://", "dir:")


def skopeo_source(source: str) -> str | None:
    """skopeo's name of SOURCE, or None for a root file system directory (to be packed first)."""
    if source.startswith(TRANSPORTS):
        return source
    path, _, tag = source.rpartition(":")
    if path and (Path(path) / "oci-layout").is_file():
        return f"oci:{path}:{tag}"
    if (Path(source) / "oci-layout").is_file():
        return f"oci:{source}"
    if source.endswith(".tar"):
        return f"oci-archive:{source}"
    if Path(source).is_dir():
        return None
    raise SpecError("images push", "SOURCE", source, "an OCI archive (.tar), an OCI layout directory, "
                    "docker-archive:FILE, oci-archive:FILE, or a root file system directory")


def run_tool(argv: list[str], what: str) -> None:
    """Run a tool (skopeo, umoci, cp); BackendError with its own words if it is missing or fails."""
    if shutil.which(argv[0]) is None:
        raise BackendError(f"{argv[0]} is not installed (Debian: apt install {argv[0]})")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise BackendError(f"{what} failed: {(done.stderr or done.stdout).strip()[-1500:]}")


def pack_rootfs(rootfs: str, layout: Path) -> str:
    """A root file system directory as an OCI layout (umoci, rootless); returns skopeo's source name."""
    run_tool(["umoci", "init", "--layout", str(layout)], "umoci init")
    run_tool(["umoci", "new", "--image", f"{layout}:packed"], "umoci new")
    bundle = layout.parent / "bundle"
    run_tool(["umoci", "unpack", "--rootless", "--image", f"{layout}:packed", str(bundle)], "umoci unpack")
    run_tool(["cp", "-a", f"{rootfs}/.", str(bundle / "rootfs")], "copying the root file system")
    run_tool(["umoci", "repack", "--image", f"{layout}:packed", str(bundle)], "umoci repack")
    return f"oci:{layout}:packed"


def push(registry: ProjectRegistry, source: str, image: str) -> str:
    """Copy SOURCE to `registry` as `image` (REPO:TAG); returns the digest the registry holds."""
    repo, tag = parse_image(image, field="image")
    if tag.startswith("sha256:"):
        raise SpecError("images push", "image", image, "REPO:TAG (a tag to push to, not a digest)")
    prefix = registry.prefix  # raises if the registry is not running
    registry.create_repo(repo)
    with tempfile.TemporaryDirectory(prefix="htc-push-") as tmp:
        src = skopeo_source(source)
        if src is None:
            src = pack_rootfs(source, Path(tmp) / "layout")
        auth = registry.write_authfile(Path(tmp) / "auth.json")
        run_tool(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-authfile", str(auth), src,
              f"docker://{prefix}{repo}:{tag}"], f"skopeo copy {source} -> {prefix}{image}")
    digest = registry.digest(image)
    if digest is None:
        raise BackendError(f"{image} was pushed but the registry does not list it")
    return digest
