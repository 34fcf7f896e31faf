"""One project's view of the registry: its prefix, password, repositories and images.

The toolkit reads the registry with tokens it signs itself, scoped to the one project's
repositories (and the catalog, filtered here to the project's namespace). Repositories created
through the API before anything was pushed to them are recorded in `registry/repos/<namespace>`.

    reg = ProjectRegistry(root, "md")
    reg.prefix            # '10.77.0.1:5050/md/': push to reg.prefix + "lammps:2024"
    reg.password()        # `skopeo copy --dest-creds md:<password> ...`
    reg.images()          # ['lammps:2024']
"""

from __future__ import annotations

import base64
import functools
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from htc_notebook.errors import BackendError
from htc_notebook.registry import daemon
from htc_notebook.registry.credentials import RegistryKeys, namespace
from htc_notebook.spec.names import check_repo_name, parse_image
from htc_notebook.storage.atomic import atomic_write

MANIFESTS = ", ".join(("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                       "application/vnd.docker.distribution.manifest.v2+json",
                       "application/vnd.docker.distribution.manifest.list.v2+json"))


CATALOG_PAGE = 1000


class RegistryNotRunning(BackendError):
    """The data root's registry is not up (`htc registry up`)."""


class ProjectRegistry:
    """The registry as project `project` sees it: pushes go to `prefix + "repo:tag"`."""

    def __init__(self, root: str | os.PathLike[str], project: str):
        self.root, self.project, self.namespace = Path(root), project, namespace(project)

    @functools.cached_property
    def keys(self) -> RegistryKeys:  # made on first use (a project listing needs none)
        return RegistryKeys(daemon.registry_dir(self.root) / "keys")

    @property
    def state(self) -> daemon.RegistryState:
        state = daemon.status(self.root)
        if state is None:
            raise RegistryNotRunning(f"the project registry of {self.root} is not running: start it with "
                                     "`htc registry up`")
        return state

    @property
    def prefix(self) -> str:
        """`<host:port>/<namespace>/`, to which `repo:tag` is appended (the HTC API's containerRegistry)."""
        return f"{self.state.address}/{self.namespace}/"

    def password(self) -> str:
        """The registry password of this project (user name: the project id)."""
        return self.keys.password(self.project)

    def write_authfile(self, path: Path) -> Path:
        """A containers-auth.json (0600) with this project's login, for skopeo's --*-authfile."""
        credential = base64.b64encode(f"{self.project}:{self.password()}".encode()).decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": {self.state.address: {"auth": credential}}}, f)
        return path

    # -- repositories ------------------------------------------------------------------------
    def _recorded(self) -> Path:
        return daemon.registry_dir(self.root) / "repos" / self.namespace

    def create_repo(self, name: str) -> str:
        """Record repository `name` (idempotent); the registry makes it at the first push."""
        check_repo_name(name)
        path = self._recorded()
        path.parent.mkdir(parents=True, exist_ok=True)
        known = set(path.read_text().split()) if path.exists() else set()
        if name not in known:
            atomic_write(path, "".join(f"{n}\n" for n in sorted(known | {name})).encode())
        return name

    def recorded(self) -> list[str]:
        """Repositories created through the API (read without the registry)."""
        return sorted(set(self._recorded().read_text().split())) if self._recorded().exists() else []

    def repositories(self) -> list[str]:
        """Repositories created through the API or pushed to, without the namespace."""
        recorded = set(self.recorded())
        mine, pushed, last = f"{self.namespace}/", set(), ""
        while True:  # the catalog in pages of 1000 (the registry's most), from the namespace on (sorted)
            query = urllib.parse.urlencode({"n": CATALOG_PAGE, "last": last or mine})
            page = (self._get(f"/v2/_catalog?{query}", [{"type": "registry", "name": "catalog", "actions": ["*"]}])
                    or {}).get("repositories") or []
            pushed |= {r[len(mine):] for r in page if r.startswith(mine)}
            if len(page) < CATALOG_PAGE or not page[-1].startswith(mine):
                return sorted(recorded | pushed)
            last = page[-1]

    def tags(self, repo: str) -> list[str]:
        name = f"{self.namespace}/{check_repo_name(repo)}"
        listed = self._get(f"/v2/{name}/tags/list", [{"type": "repository", "name": name, "actions": ["pull"]}])
        return sorted((listed or {}).get("tags") or [])

    def images(self) -> list[str]:
        """Every `repo:tag` of the project."""
        return [f"{repo}:{tag}" for repo in self.repositories() for tag in self.tags(repo)]

    def digest(self, image: str) -> str | None:
        """The manifest digest of `repo:tag` or `repo@sha256:...`, None if the registry has no such image."""
        repo, ref = parse_image(image)
        name = f"{self.namespace}/{repo}"
        request = self._request(f"/v2/{name}/manifests/{ref}", [{"type": "repository", "name": name,
                                                                 "actions": ["pull"]}], method="HEAD")
        request.add_header("Accept", MANIFESTS)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.headers.get("Docker-Content-Digest") or ref
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise BackendError(f"the registry answered {exc.code} for {image}") from None

    def manifest(self, image: str) -> tuple[str, dict]:
        """(digest, manifest) of an image (of an index: its linux/amd64 or first manifest); KeyError if absent."""
        repo, ref = parse_image(image)
        name = f"{self.namespace}/{repo}"
        access = [{"type": "repository", "name": name, "actions": ["pull"]}]
        for _ in range(2):
            request = self._request(f"/v2/{name}/manifests/{ref}", access)
            request.add_header("Accept", MANIFESTS)
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    digest, body = r.headers.get("Docker-Content-Digest") or ref, json.loads(r.read())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise KeyError(image) from None
                raise BackendError(f"the registry answered {exc.code} for {image}") from None
            if "manifests" not in body:
                return digest, body
            chosen = next((m for m in body["manifests"] if m.get("platform", {}).get("architecture") == "amd64"),
                          body["manifests"][0])
            ref = chosen["digest"]
        raise BackendError(f"{image}: an index of indexes is not supported")

    def architecture(self, image: str) -> str:
        """The image's platform architecture (amd64, arm64, ...), from its config."""
        _, manifest = self.manifest(image)
        repo, _ = parse_image(image)
        name = f"{self.namespace}/{repo}"
        config = self._get(f"/v2/{name}/blobs/{manifest['config']['digest']}",
                           [{"type": "repository", "name": name, "actions": ["pull"]}])
        return (config or {}).get("architecture", "")

    # -- http ----------------------------------------------------------------------------------
    def _request(self, path: str, access: list[dict], method: str = "GET") -> urllib.request.Request:
        token = self.keys.token("htc_notebook", access)
        return urllib.request.Request(f"http://{self.state.address}{path}", method=method,
                                      headers={"Authorization": f"Bearer {token}"})

    def _get(self, path: str, access: list[dict]) -> dict | None:
        try:
            with urllib.request.urlopen(self._request(path, access), timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise BackendError(f"the registry answered {exc.code} for {path}") from None
        except OSError as exc:
            raise BackendError(f"the registry at {self.state.address} does not answer: {exc}") from None
