"""The project registry (htc_notebook.registry): a real CNCF distribution registry started by
`htc registry up`, its token service, images built here from busybox with umoci, pushed with
skopeo (software nobody here wrote) using the token the REST API hands out, and read back through
the published HTC client rescalehtc. Another project's credentials are refused by the registry
itself for list, pull and push."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import missing
from test_published_client import client  # noqa: F401 - the fixture: htc serve + a signed-in rescalehtc
from conftest import registry_port
from test_server_e2e import HTC

TOOLS = ("docker-registry", "skopeo", "umoci", "busybox")


@pytest.fixture
def registry(tmp_path):
    """`htc registry up` on the data root the `client` fixture serves (tmp_path/root)."""
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        missing(f"{', '.join(absent)} not installed (make test installs them)")
    root = tmp_path / "root"
    port = registry_port()
    up = subprocess.run([HTC, "--root", str(root), "registry", "up", "--port", str(port), "--listen", "127.0.0.1"],
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    try:
        yield root, f"127.0.0.1:{port}"
    finally:
        subprocess.run([HTC, "--root", str(root), "registry", "down"], capture_output=True, timeout=60)


def busybox_layout(where: Path, marker: str) -> Path:
    """An OCI image layout `where` (tag v1): busybox and /etc/marker, built with umoci from Debian's busybox."""
    bundle = where.parent / f"{where.name}-bundle"
    for argv in (["umoci", "init", "--layout", str(where)], ["umoci", "new", "--image", f"{where}:v1"],
                 ["umoci", "unpack", "--rootless", "--image", f"{where}:v1", str(bundle)]):
        subprocess.run(argv, check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    for d in ("bin", "etc", "dev", "proc", "sys", "tmp", "home", "mnt"):
        (rootfs / d).mkdir(exist_ok=True)
    shutil.copy(shutil.which("busybox"), rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    (rootfs / "etc" / "marker").write_text(marker + "\n")
    subprocess.run(["umoci", "repack", "--image", f"{where}:v1", str(bundle)], check=True, capture_output=True)
    return where


def skopeo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)


def test_push_with_skopeo_using_the_apis_token_then_the_client_sees_it_ready(client, registry, tmp_path):  # noqa: F811 - the fixture imported above
    from rescalehtc import api

    root, address = registry
    api.post_htc_projects(client, {"projectName": "md"})
    assert api.post_htc_projects_container_registry_repo(client, "md", "tools")["repoName"] == "tools"
    api.post_htc_projects_container_registry_repo(client, "md", "tools")  # idempotent
    project = api.get_htc_projects(client, "md")
    assert project["containerRegistry"] == f"{address}/md/" and project["repositories"] == ["tools"]
    token = api.get_htc_projects_container_registry_token(client, "md")  # plain text: the password
    assert isinstance(token, str) and len(token) >= 32 and "{" not in token
    assert api.get_htc_projects_container_registry_images(client, "md") == {"images": []}

    layout = busybox_layout(tmp_path / "img", "built by the test")
    pushed = skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"md:{token}", f"oci:{layout}:v1",
                    f"docker://{project['containerRegistry']}tools:v1")
    assert pushed.returncode == 0, pushed.stderr
    assert api.get_htc_projects_container_registry_images(client, "md") == {"images": ["tools:v1"]}
    ready = api.get_htc_projects_container_registry_images(client, "md", "tools:v1")
    assert ready["status"] == "READY" and ready["digest"].startswith("sha256:")
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", f"md:{token}",
                                  f"docker://{address}/md/tools:v1").stdout)
    assert (inspected["Architecture"], inspected["Os"]) == ("amd64", "linux")
    assert inspected["Digest"] == ready["digest"]

    from rescalehtc.exceptions import HtcException

    with pytest.raises(HtcException, match="404.*tools:v1"):  # the known images named
        api.get_htc_projects_container_registry_images(client, "md", "tools:v2")
    with pytest.raises(HtcException, match="400.*imageName"):
        api.get_htc_projects_container_registry_images(client, "md", "Tools:v1")
    with pytest.raises(HtcException, match="400.*repoName"):
        api.post_htc_projects_container_registry_repo(client, "md", "Bad..Name")


def test_another_projects_credentials_are_refused_by_the_registry_itself(client, registry, tmp_path):  # noqa: F811 - the fixture imported above
    from rescalehtc import api

    root, address = registry
    for name in ("md", "cfd"):
        api.post_htc_projects(client, {"projectName": name})
    md, cfd = (api.get_htc_projects_container_registry_token(client, p) for p in ("md", "cfd"))
    layout = busybox_layout(tmp_path / "img", "md's image")
    assert skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"md:{md}", f"oci:{layout}:v1",
                  f"docker://{address}/md/tools:v1").returncode == 0
    # cfd, with its own valid password, on md's repository: list, pull and push all denied
    listed = skopeo("list-tags", "--tls-verify=false", "--creds", f"cfd:{cfd}", f"docker://{address}/md/tools")
    pulled = skopeo("copy", "--src-tls-verify=false", "--src-creds", f"cfd:{cfd}", f"docker://{address}/md/tools:v1",
                    f"oci:{tmp_path / 'stolen'}:v1")
    pushed = skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"cfd:{cfd}", f"oci:{layout}:v1",
                    f"docker://{address}/md/tools:evil")
    for done in (listed, pulled, pushed):
        assert done.returncode != 0 and "denied" in done.stderr, done.stderr
    # md's password is not cfd's, and the registry's catalog is given to no project
    wrong = skopeo("list-tags", "--tls-verify=false", "--creds", f"cfd:{md}", f"docker://{address}/cfd/x")
    assert wrong.returncode != 0 and "wrong registry password" in wrong.stderr, wrong.stderr
    realm = _realm(address)
    catalog = _token(realm, "md", md, "registry:catalog:*")
    request = urllib.request.Request(f"http://{address}/v2/_catalog", headers={"Authorization": f"Bearer {catalog}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    # md's tags stayed as md pushed them
    assert api.get_htc_projects_container_registry_images(client, "md") == {"images": ["tools:v1"]}
    assert api.get_htc_projects_container_registry_images(client, "cfd") == {"images": []}


def test_htc_images_push_packs_a_root_file_system_and_lists_it(registry, tmp_path):
    root, address = registry
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox"), rootfs / "bin" / "busybox")
    base = [HTC, "--root", str(root)]
    done = subprocess.run([*base, "images", "push", str(rootfs), "tools:2024.1", "--project", "MD_Runs"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "/md-runs-038200e9/tools:2024.1" in done.stdout  # capitals are not allowed in OCI names
    listed = subprocess.run([*base, "images", "list", "--project", "MD_Runs"], capture_output=True, text=True)
    assert listed.stdout.split() == ["tools:2024.1"]
    bad = subprocess.run([*base, "images", "push", str(rootfs), "tools", "--project", "MD_Runs"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "image = 'tools'" in bad.stderr and "repo:tag" in bad.stderr


def test_with_the_registry_down_the_api_says_so_and_the_project_has_no_prefix(client, tmp_path):  # noqa: F811 - the fixture imported above
    from rescalehtc import api
    from rescalehtc.exceptions import HtcException

    api.post_htc_projects(client, {"projectName": "md"})
    assert api.get_htc_projects(client, "md")["containerRegistry"] == ""
    with pytest.raises(HtcException, match="503.*htc registry up"):
        api.get_htc_projects_container_registry_token(client, "md")


def _realm(address: str) -> str:
    try:
        urllib.request.urlopen(f"http://{address}/v2/", timeout=10)
    except urllib.error.HTTPError as exc:
        challenge = exc.headers["WWW-Authenticate"]
    return challenge.split('realm="', 1)[1].split('"', 1)[0]


def _token(realm: str, user: str, password: str, scope: str) -> str:
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(f"{realm}?service=htc-registry&scope={scope}",
                                     headers={"Authorization": f"Basic {basic}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())["token"]
