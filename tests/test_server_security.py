"""The REST API against an attacker (issue 24, items 5 and 7): `htc serve` on loopback with API users
in two projects and one in none, and the Jupyter extension with an API user named like its owner.
Each test plays the attack and shows it fail: server-wide operations belong to the data root's
owner, project creation is atomic, a grant reserves its project, a token speaks for its key's user
only; bodies are bounded, checked and all-or-nothing, `next` links ignore the Host header."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse

import jwt
import pytest
import requests

from htc_notebook.backends.sandbox import sandbox_problem
from htc_notebook.server.auth import Auth, Unauthorized
from test_server_e2e import HTC, _port, api

pytest_plugins = ["pytest_jupyter.jupyter_server"]
API = "htc/api/v1"
SLEEP = {"commands": ["sleep", "120"], "maxVCpus": 1, "execTimeoutSeconds": 300}


class Served:
    """`htc serve` over a data root: its URL, each user's key and a bearer session per user."""

    def __init__(self, root, url, keys):
        self.root, self.url, self.keys, self._sessions = root, url, keys, {}

    def __getitem__(self, user: str) -> requests.Session:
        if user not in self._sessions:
            self._sessions[user] = api(self.url, self.keys[user])
        return self._sessions[user]

    def ledger_jobs(self) -> int:
        """Jobs in the ledger, read by a second process as any other would."""
        from htc_notebook.ledger import Ledger
        from htc_notebook.storage import Storage

        ledger = Ledger(Storage(self.root).ledger_path)
        return sum(len(ledger.jobs(t.id)) for t in ledger.tasks())


@pytest.fixture
def serve(tmp_path):
    """Start `htc serve` with `users` ({name: [projects]}) and extra arguments; stopped at the end.
    Where no sandbox can be made (no user namespaces) it serves API users only when told to run
    their jobs unconfined (tests/test_unconfined.py shows the refusal): told, so these attacks on
    the API itself are played there too."""
    servers = []
    unconfined = ["--allow-unconfined"] if sandbox_problem() is not None else []

    def start(users: dict[str, list[str]], *args: str, site: str | None = None) -> Served:
        root = tmp_path / f"root{len(servers)}"
        auth = Auth(root)
        keys = {u: auth.create_key(u, projects) for u, projects in users.items()}
        port = _port()
        base = ["--root", str(root)] + (["--site", site] if site else [])
        servers.append(subprocess.Popen([HTC, *base, "serve", "--port", str(port), *unconfined, *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        return Served(root, f"http://127.0.0.1:{port}/{API}", keys)

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=30)


THREE = {"ada": ["md"], "bob": ["cfd"], "eve": []}  # two projects, and a user in none


def _task(s: requests.Session, url: str, project: str, name: str = "t") -> str:
    assert s.post(f"{url}/htc/projects", json={"projectName": project}).status_code == 201
    task = s.post(f"{url}/htc/projects/{project}/tasks", json={"taskName": name}).json()
    return f"{url}/htc/projects/{project}/tasks/{task['taskId']}"


# -- item 5: server-wide operations belong to the owner ---------------------------------------------
def test_an_outsider_cannot_stop_the_cluster_and_every_projects_jobs_keep_running(serve):
    srv = serve(THREE)
    t = _task(srv["ada"], srv.url, "md")
    r = srv["ada"].post(f"{t}/jobs/batch", json=[{"jobName": "long", "batchSize": 2, "htcJobDefinition": SLEEP}])
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 60
    while srv["ada"].get(f"{t}/summary-statistics").json()["jobStatuses"]["RUNNING"] < 2:
        assert time.monotonic() < deadline, "the jobs never ran"
        time.sleep(0.3)
    for user in ("eve", "bob", "ada"):  # no API user is the owner of a server started without --owner
        for action in ("stop", "start", "scale"):
            r = srv[user].post(f"{srv.url}/htc/clusters/local", json={"action": action})
            assert r.status_code == 403 and "owner" in r.json()["message"], (user, action, r.text)
    assert srv["eve"].post(f"{t}/jobs/cancel", json={}).status_code == 404  # cancel stays per project
    time.sleep(1)
    assert srv["ada"].get(f"{t}/summary-statistics").json()["jobStatuses"]["RUNNING"] == 2


def test_a_configured_owner_may_stop_the_cluster(serve):
    srv = serve({"boss": [], "eve": []}, "--owner", "boss")
    assert srv["eve"].post(f"{srv.url}/htc/clusters/local", json={"action": "stop"}).status_code == 403
    r = srv["boss"].post(f"{srv.url}/htc/clusters/local", json={"action": "stop"})
    assert r.status_code == 200 and r.json()["items"] == []


def test_25_concurrent_creations_of_one_project_make_exactly_one_member(serve):
    users = {f"u{i}": [] for i in range(25)}
    srv = serve(users)
    sessions = {u: srv[u] for u in users}  # tokens first: the creations then start together
    for round_ in range(3):
        name, barrier, codes = f"race{round_}", threading.Barrier(len(users)), {}

        def create(user: str, barrier: threading.Barrier, codes: dict, name: str) -> None:
            barrier.wait()
            codes[user] = sessions[user].post(f"{srv.url}/htc/projects", json={"projectName": name}).status_code

        threads = [threading.Thread(target=create, args=(u, barrier, codes, name)) for u in users]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        winners = [u for u, code in codes.items() if code == 201]
        assert len(winners) == 1 and sorted(codes.values()) == [201] + [409] * 24, codes
        members = [u for u in users if Auth(srv.root).is_member(u, name)]
        assert members == winners
        seen = [u for u in users if sessions[u].get(f"{srv.url}/htc/projects/{name}").status_code == 200]
        assert seen == winners


def test_a_granted_project_is_reserved_for_its_grantee(serve):
    srv = serve({"bob": ["secret"], "eve": []})  # `htc keys create bob --project secret`, before it exists
    assert srv["eve"].get(f"{srv.url}/htc/projects/secret").status_code == 404
    r = srv["eve"].post(f"{srv.url}/htc/projects", json={"projectName": "secret"})
    assert r.status_code == 409 and "reserved" in r.json()["message"]
    assert srv["bob"].post(f"{srv.url}/htc/projects", json={"projectName": "secret"}).status_code == 201
    assert srv["eve"].get(f"{srv.url}/htc/projects/secret").status_code == 404
    assert srv["eve"].post(f"{srv.url}/htc/projects/secret/tasks", json={"taskName": "x"}).status_code == 404
    assert not Auth(srv.root).is_member("eve", "secret")


def test_a_token_whose_subject_is_not_its_keys_user_is_refused(serve):
    srv = serve(THREE)
    _task(srv["bob"], srv.url, "cfd")
    auth = Auth(srv.root)
    eve_key = srv.keys["eve"].split("_")[1]
    now = int(time.time())
    claims = {"sub": "bob", "key": eve_key, "iss": "htc_notebook", "iat": now, "exp": now + 600}
    token = jwt.encode(claims, auth._private, algorithm="RS256", headers={"kid": auth.kid})  # signed by the server
    with pytest.raises(Unauthorized, match="subject"):
        auth.verify(token)
    r = requests.get(f"{srv.url}/htc/projects/cfd", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "subject" in r.json()["message"]
    assert auth.verify(auth.issue_token(srv.keys["eve"])["tokenValue"])["sub"] == "eve"


def test_grants_are_per_key(serve):
    srv = serve({"ada": ["md"], "eve": []})
    auth = Auth(srv.root)
    srv.keys["ada2"] = auth.create_key("ada")  # ada's second key (say, on a shared CI runner), granted nothing
    ada, ada2 = srv["ada"], api(srv.url, srv.keys["ada2"])
    _task(ada, srv.url, "md")
    assert ada2.get(f"{srv.url}/htc/projects/md").status_code == 404
    assert ada2.get(f"{srv.url}/htc/projects").json()["items"] == []
    assert ada2.post(f"{srv.url}/htc/projects", json={"projectName": "md"}).status_code == 409  # no way in
    assert ada2.post(f"{srv.url}/htc/projects", json={"projectName": "ci"}).status_code == 201
    assert ada.get(f"{srv.url}/htc/projects/ci").status_code == 404
    assert [p["projectId"] for p in ada.get(f"{srv.url}/htc/projects").json()["items"]] == ["md"]
    assert auth.whoami(srv.keys["ada2"])["projects"] == ["ci"] and auth.whoami(srv.keys["ada"])["projects"] == ["md"]
    assert srv["eve"].post(f"{srv.url}/htc/projects", json={"projectName": "ci"}).status_code == 409


def test_keys_made_before_grants_were_per_key_keep_their_users_projects(tmp_path):
    import sqlite3

    auth = Auth(tmp_path)
    key = auth.create_key("ada", ["md"])
    con = sqlite3.connect(tmp_path / "server" / "auth.db")
    with con:  # the auth.db of the version before: memberships per user only
        con.execute("DROP TABLE grants")
        con.execute("INSERT INTO members (user, project) VALUES ('ada', 'later')")
    con.close()
    again = Auth(tmp_path)
    key_id = key.split("_")[1]
    assert again.key_reaches(key_id, "md") and again.key_reaches(key_id, "later")
    assert again.whoami(key)["projects"] == ["later", "md"]


# -- the Jupyter extension: its owner and API users are apart ----------------------------------------
@pytest.fixture
def jp_server_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HTC_ROOT", str(tmp_path / "htc-data"))
    if sandbox_problem() is not None:  # no sandbox here: API users are served only if allowed (test_unconfined.py)
        monkeypatch.setenv("HTC_ALLOW_UNCONFINED", "1")
    return {"ServerApp": {"jpserver_extensions": {"htc_notebook": True}}}


async def _call(client, base, method, path, token, body=None, headers=None):
    r = await client.fetch(f"{base}{API}{path}", method=method, raise_error=False,
                           headers={"Authorization": f"Bearer {token}", **(headers or {})},
                           body=None if body is None else json.dumps(body), allow_nonstandard_methods=True)
    return r.code, json.loads(r.body) if r.body else None


async def test_an_api_user_named_like_the_owner_is_not_the_owner(http_server_client, jp_base_url, jp_serverapp,
                                                                 jp_fetch):
    from htc_notebook.server.extension import owner_name

    htc = jp_serverapp.web_app.settings["htc_api"]
    assert htc.owner == owner_name()
    bob = htc.auth.issue_token(htc.auth.create_key("bob", ["cfd"]))["tokenValue"]
    mimic = htc.auth.issue_token(htc.auth.create_key(owner_name()))["tokenValue"]  # the attacker's chosen name

    def c(*a, **kw):
        return _call(http_server_client, jp_base_url, *a, **kw)

    assert (await c("POST", "/htc/projects", bob, {"projectName": "cfd"}))[0] == 201
    # the owner (Jupyter's login) makes a project and sees bob's: a member of every project
    r = await jp_fetch(*API.split("/"), "htc", "projects", method="POST", body=json.dumps({"projectName": "lab"}))
    assert r.code == 201
    r = await jp_fetch(*API.split("/"), "htc", "projects", "cfd", raise_error=False)
    assert r.code == 200
    # the API user named like the owner: none of it
    assert (await c("GET", "/htc/projects/cfd", mimic))[0] == 404
    assert (await c("GET", "/htc/projects/lab", mimic))[0] == 404
    assert (await c("GET", "/htc/projects", mimic))[1]["items"] == []
    assert (await c("POST", "/htc/projects", mimic, {"projectName": "lab"}))[0] == 409
    assert (await c("POST", "/htc/clusters/local", mimic, {"action": "stop"}))[0] == 403
    assert (await c("PUT", "/htc/workspaces/default/task-retention-policy", mimic, {"archiveAfter": 1}))[0] == 403
    assert not htc.auth.is_member(owner_name(), "lab")


# -- item 7: request hygiene -------------------------------------------------------------------------
@pytest.fixture
def md(serve):
    """ada's project md with a task, on `htc serve`: (server, ada's session, the task's URL)."""
    srv = serve(THREE)
    return srv, srv["ada"], _task(srv["ada"], srv.url, "md")


def test_an_oversize_body_is_413_and_nothing_is_written(md):
    srv, ada, t = md

    def ledger_files():
        return sum(f.stat().st_size for f in srv.root.rglob("*.db*"))

    before = ledger_files()
    huge = [{"jobName": "big", "batchSize": 1,
             "htcJobDefinition": {"commands": ["true"], "claims": ["x" * 20_000_000]}}]
    r = ada.post(f"{t}/jobs/batch", json=huge)
    assert r.status_code == 413 and "4 MiB" in r.json()["message"], r.text[:200]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'[{"jobName": "big", "batchSize": 1, "htcJobDefinition": {"commands": ["true"], "claims": ["'
        for _ in range(50):
            yield b"x" * 100_000
        yield b'"]}}]'

    r = ada.post(f"{t}/jobs/batch", data=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:200]
    after = ledger_files()
    assert after - before < 1_000_000 and srv.ledger_jobs() == 0


def test_deep_json_and_huge_integers_are_400_naming_the_field(md):
    srv, ada, t = md

    def post(path, raw):
        return ada.post(path, data=raw, headers={"Content-Type": "application/json"})

    for depth in (40, 100_000):
        r = post(f"{t}/jobs/batch", "[" * depth + "]" * depth)
        assert r.status_code == 400 and "nests deeper than 32" in r.json()["message"], (depth, r.text[:200])
    cases = [(f"{t}/jobs/batch", [{"jobName": "x", "batchSize": 1, "htcJobDefinition": {
                 "commands": ["true"], "maxDiskGiB": 2 ** 64}}],
              "[0].htcJobDefinition.maxDiskGiB = 18446744073709551616"),
             (f"{t}/jobs/batch", [{"jobName": "x", "batchSize": 1, "htcJobDefinition": {
                 "commands": ["true"], "maxSwap": -(2 ** 70)}}], "maxSwap"),
             (f"{srv.url}/htc/projects/md/limits", {"modifierRole": "PROJECT_ADMIN", "vCPUs": 2 ** 63}, "vCPUs"),
             (f"{srv.url}/htc/projects/md/task-retention-policy", {"archiveAfter": 10 ** 30}, "archiveAfter")]
    for url, body, named in cases:
        r = (ada.put if url.endswith("policy") else ada.post)(url, data=json.dumps(body),
                                                              headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and named in r.json()["message"], (named, r.status_code, r.text[:300])
    r = post(f"{srv.url}/htc/projects/md/limits", '{"modifierRole": "PROJECT_ADMIN", "vCPUs": NaN}')
    assert r.status_code == 400, r.text
    assert srv.ledger_jobs() == 0 and ada.get(f"{srv.url}/htc/projects/md/limits").json()["items"] == []


def test_a_body_that_is_not_json_is_415_and_malformed_json_400(md):
    srv, ada, t = md
    url = f"{srv.url}/htc/projects"
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        r = ada.post(url, data=b"projectName=evil", headers={"Content-Type": content_type})
        assert r.status_code == 415 and "application/json" in r.json()["message"], (content_type, r.text)
    for content_type in ("application/json", "application/json; charset=utf-8", None):
        r = ada.post(url, data=b'{"projectName": "evil"',
                     headers={"Content-Type": content_type} if content_type else {})
        assert r.status_code == 400 and "not valid JSON" in r.json()["message"], (content_type, r.text)
    assert [p["projectId"] for p in ada.get(url).json()["items"]] == ["md"]


@pytest.mark.parametrize("flaw", ["vCPU limit", "huge integer", "unknown region", "oversize disk"])
def test_a_request_of_two_batches_with_a_bad_second_writes_nothing(md, flaw):
    srv, ada, t = md
    good = {"jobName": "good", "batchSize": 3, "htcJobDefinition": {"commands": ["true"], "maxVCpus": 1}}
    bad = {"jobName": "bad", "batchSize": 2, "htcJobDefinition": {"commands": ["true"], "maxVCpus": 1}}
    if flaw == "vCPU limit":  # only the submission itself knew the project's limit
        assert ada.post(f"{srv.url}/htc/projects/md/limits", json={"vCPUs": 1}).status_code == 201
        bad["htcJobDefinition"]["maxVCpus"] = 2
    elif flaw == "huge integer":
        bad["htcJobDefinition"]["maxDiskGiB"] = 2 ** 64
    elif flaw == "unknown region":
        bad["region"] = "us-east-1"
    else:
        bad["htcJobDefinition"]["maxDiskGiB"] = 1_000_000
    r = ada.post(f"{t}/jobs/batch", json=[good, bad])
    assert r.status_code == 400, r.text
    assert srv.ledger_jobs() == 0 and ada.get(f"{t}/jobs").json()["items"] == []


def test_an_unknown_region_and_oversize_disk_or_timeout_are_refused_naming_what_is_allowed(serve, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("profiles:\n  small:\n    backend: local\n    cores_per_node: 1\n    memory_per_node: 1G\n"
                    "    max_walltime: '01:00:00'\n    max_disk_gib: 2\n")
    srv = serve(THREE, site=str(site))
    ada = srv["ada"]
    t = _task(ada, srv.url, "md")

    def batch(region, **definition):
        return ada.post(f"{t}/jobs/batch", json=[{"jobName": "x", "batchSize": 1, "region": region,
                                                  "htcJobDefinition": {"commands": ["true"], **definition}}])

    r = batch("us-east-1")
    assert r.status_code == 400, r.text
    assert all(s in r.json()["message"] for s in ("region = 'us-east-1'", "local", "small")), r.text
    for region, field, value, allowed in [("small", "maxDiskGiB", 3, "at most 2 GiB"),
                                          ("small", "execTimeoutSeconds", 7200, "max_walltime=3600"),
                                          ("local", "execTimeoutSeconds", 10 ** 12, "365 days"),
                                          ("local", "maxDiskGiB", 10 ** 9, "memory_per_node")]:
        r = batch(region, **{field: value})
        message = r.json()["message"]
        assert r.status_code == 400 and f"{field} = {value}" in message and allowed in message, (field, message)
    assert batch("small", maxDiskGiB=2, execTimeoutSeconds=60).status_code == 201
    assert srv.ledger_jobs() == 1


def test_next_links_come_from_the_configured_url_not_the_host_header(serve):
    srv = serve(THREE, "--public-url", "https://htc.example.org:8443")
    ada = srv["ada"]
    _task(ada, srv.url, "md")
    for name in ("b", "c"):
        ada.post(f"{srv.url}/htc/projects/md/tasks", json={"taskName": name})
    forged = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    r = ada.get(f"{srv.url}/htc/projects/md/tasks?pageSize=1", headers=forged)
    link = urllib.parse.urlsplit(r.json()["next"])
    assert (link.scheme, link.netloc) == ("https", "htc.example.org:8443"), r.json()["next"]
    assert link.path == f"/{API}/htc/projects/md/tasks" and "page=1" in link.query

    plain = serve(THREE)  # default: the address it listens on
    s = plain["ada"]
    _task(s, plain.url, "md")
    s.post(f"{plain.url}/htc/projects/md/tasks", json={"taskName": "b"})
    nxt = s.get(f"{plain.url}/htc/projects/md/tasks?pageSize=1", headers={"Host": "evil.example"}).json()["next"]
    assert nxt.startswith(plain.url.rsplit(f"/{API}", 1)[0] + "/"), nxt
