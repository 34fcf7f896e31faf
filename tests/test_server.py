"""The HTC REST API: auth (keys, tokens, revocation, forgery, expiry), every route and verb in a
real Jupyter server (pytest-jupyter), scoping, bad ids, XSRF on cookie-authenticated mutations."""

from __future__ import annotations

import json
import time
import urllib.parse

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tornado.httpclient import HTTPClientError

from htc_notebook.backends.sandbox import sandbox_problem
from htc_notebook.server.auth import Auth, Unauthorized

pytest_plugins = ["pytest_jupyter.jupyter_server"]
API = "htc/api/v1"


# -- auth, without HTTP -----------------------------------------------------------------------
def test_key_token_roundtrip_and_revocation(tmp_path):
    auth = Auth(tmp_path)
    key = auth.create_key("ada", ["md"])
    tok = auth.issue_token(key)
    assert tok["expiresAt"].endswith("Z") and auth.verify(tok["tokenValue"])["sub"] == "ada"
    assert tok["expiresIn"] == 6 * 3600  # seconds: what HTC API clients read to renew it
    assert key.split("_", 2)[2].encode() not in (tmp_path / "server" / "auth.db").read_bytes()  # stored hashed
    assert auth.revoke_key(key.split("_")[1])
    with pytest.raises(Unauthorized, match="revoked"):
        auth.verify(tok["tokenValue"])
    with pytest.raises(Unauthorized, match="revoked"):
        auth.issue_token(key)
    with pytest.raises(Unauthorized):
        auth.issue_token("htc_nope_nope")


def test_forged_and_expired_tokens_are_refused(tmp_path):
    auth = Auth(tmp_path)
    key_id = auth.create_key("ada").split("_")[1]
    now = int(time.time())
    claims = {"sub": "ada", "key": key_id, "iss": "htc_notebook", "iat": now, "exp": now + 60}
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthorized, match="invalid"):
        auth.verify(jwt.encode(claims, other, algorithm="RS256"))
    with pytest.raises(Unauthorized, match="invalid"):
        auth.verify(jwt.encode(claims, "a-shared-secret-long-enough-for-hs256!!", algorithm="HS256"))
    expired = jwt.encode({**claims, "iat": now - 30_000, "exp": now - 10}, auth._private, algorithm="RS256")
    with pytest.raises(Unauthorized, match="expired"):
        auth.verify(expired)
    assert auth.jwks()["keys"][0]["kid"] == auth.kid


# -- a real Jupyter server ------------------------------------------------------------------
@pytest.fixture
def jp_server_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HTC_ROOT", str(tmp_path / "htc-data"))
    if sandbox_problem() is not None:  # no sandbox here: API users are served only if allowed (test_unconfined.py)
        monkeypatch.setenv("HTC_ALLOW_UNCONFINED", "1")
    return {"ServerApp": {"jpserver_extensions": {"htc_notebook": True}}}


@pytest.fixture
def key(tmp_path, jp_serverapp):
    auth = jp_serverapp.web_app.settings["htc_api"].auth
    return auth.create_key("ada", ["md"]), auth.create_key("bob", ["other"])


async def call(client, jp_base_url, method, path, *, auth=None, body=None, headers=None):
    """A request to the test server without Jupyter's token (unless given): (status, JSON)."""
    url = f"{jp_base_url}{API}{path}"
    h = {"Content-Type": "application/json", **(headers or {})}
    if auth:
        h["Authorization"] = auth
    try:
        empty = None if method in ("GET", "DELETE") else ""
        r = await client.fetch(url, method=method, headers=h, raise_error=True,
                               body=json.dumps(body) if body is not None else empty, allow_nonstandard_methods=True)
        return r.code, json.loads(r.body) if r.body else None
    except HTTPClientError as e:
        return e.code, json.loads(e.response.body) if e.response and e.response.body else None


async def tokens(http_server_client, jp_base_url, keys):
    """Bearer headers for ada and bob, got the way a client gets them."""
    out = []
    for k in keys:
        code, body = await call(http_server_client, jp_base_url, "GET", "/auth/token", auth=f"Token {k}")
        assert code == 200 and set(body) == {"tokenValue", "expiresIn", "expiresAt"}
        out.append(f"Bearer {body['tokenValue']}")
    return out


async def test_every_route_and_verb(http_server_client, jp_base_url, key):
    ada, bob = await tokens(http_server_client, jp_base_url, key)

    def c(m, p, **kw):
        return call(http_server_client, jp_base_url, m, p, **kw)

    assert (await c("GET", "/auth/token/whoami", auth=ada))[1]["sub"] == "ada"
    assert (await c("GET", "/.well-known/jwks.json"))[1]["keys"][0]["alg"] == "RS256"
    code, project = await c("POST", "/htc/projects", auth=ada, body={"projectName": "md"})
    assert code == 201 and project["projectId"] == "md"
    assert [p["projectId"] for p in (await c("GET", "/htc/projects", auth=ada))[1]["items"]] == ["md"]
    assert (await c("GET", "/htc/projects/md", auth=ada))[1]["projectName"] == "md"
    code, task = await c("POST", "/htc/projects/md/tasks", auth=ada, body={"taskName": "melt"})
    assert code == 201 and task["lifecycleStatus"] == "ACTIVE"
    t = f"/htc/projects/md/tasks/{task['taskId']}"
    assert (await c("GET", "/htc/projects/md/tasks", auth=ada))[1]["items"][0]["taskName"] == "melt"
    assert (await c("GET", t, auth=ada))[1]["taskId"] == task["taskId"]
    batch = [{"jobName": "hi", "batchSize": 3, "tags": ["x"], "region": "local",
              "htcJobDefinition": {"commands": ["sh", "-c", "echo line1; echo job $HTC_JOB_INDEX"], "maxVCpus": 1,
                                   "claims": []}}]
    code, out = await c("POST", f"{t}/jobs/batch", auth=ada, body=batch)
    assert code == 201 and out[0]["batchSize"] == 3 and out[0]["parentJobId"]
    parent = out[0]["parentJobId"]
    for _ in range(100):
        stats = (await c("GET", f"{t}/summary-statistics", auth=ada))[1]["jobStatuses"]
        if stats["SUCCEEDED"] == 3:
            break
        time.sleep(0.1)
    assert stats["SUCCEEDED"] == 3 and set(stats) >= {"SUBMITTED_TO_RESCALE", "RUNNABLE", "FAILED"}
    code, page1 = await c("GET", f"{t}/jobs?pageSize=2", auth=ada)
    assert len(page1["items"]) == 2 and page1["next"]
    nxt = urllib.parse.urlsplit(page1["next"])
    page2 = (await c("GET", f"{t}/jobs?{nxt.query}", auth=ada))[1]
    assert [j["jobUUID"] for j in page1["items"] + page2["items"]] == [f"{parent}:{i}" for i in range(3)]
    assert "next" not in page2  # the last page has none (clients page on while the key is there)
    job = (await c("GET", f"{t}/jobs/{parent}:2", auth=ada))[1]
    assert job["status"] == "SUCCEEDED" and job["exitCode"] == 0 and job["taskId"] == task["taskId"]
    logs = (await c("GET", f"{t}/jobs/{parent}:2/logs?pageSize=1", auth=ada))[1]
    assert logs["items"] == [{"lineNumber": 2, "message": "job 2"}] and logs["next"]  # newest line first
    assert (await c("GET", f"{t}/jobs/{job['jobId']}/events", auth=ada))[0] == 200
    # no registry running here (tests/test_registry.py starts one): the registry routes say how to start it
    code, down = await c("GET", "/htc/projects/md/container-registry/images", auth=ada)
    assert code == 503 and "htc registry up" in down["message"]
    assert (await c("GET", "/htc/projects/md/container-registry/images/ubuntu", auth=ada))[0] == 400  # no tag
    assert (await c("GET", "/htc/projects/md", auth=ada))[1]["containerRegistry"] == ""
    code, slow = await c("POST", f"{t}/jobs/batch", auth=ada, body=[{"jobName": "slow", "batchSize": 2,
                         "htcJobDefinition": {"commands": ["sleep", "60"]}}])
    assert code == 201
    code, cancelled = await c("POST", f"{t}/jobs/cancel", auth=ada, body={})
    assert code == 200 and cancelled["cancelled"] == 2
    code, retried = await c("POST", f"{t}/jobs/retry", auth=ada, body={"jobIds": [f"{slow[0]['parentJobId']}:0"]})
    assert code == 200 and retried["retried"] == 1
    assert (await c("POST", f"{t}/jobs/cancel", auth=ada, body={}))[1]["cancelled"] == 1
    assert (await c("PATCH", t, auth=ada, body={"lifecycleStatus": "ARCHIVED"}))[1]["lifecycleStatus"] == "ARCHIVED"
    assert (await c("POST", f"{t}/jobs/batch", auth=ada, body=batch))[0] == 409  # archived: no new work
    code, deleted = await c("DELETE", t, auth=ada)
    assert code == 200 and deleted["lifecycleStatus"] == "ARCHIVED"  # the task as it is now
    # bob is not a member of md: everything about it is a 404, and he cannot take it over
    assert (await c("GET", "/htc/projects/md", auth=bob))[0] == 404
    assert (await c("GET", f"{t}/jobs/{parent}:0", auth=bob))[0] == 404
    assert (await c("POST", "/htc/projects", auth=bob, body={"projectName": "md"}))[0] == 409
    assert (await c("GET", "/htc/projects", auth=bob))[1]["items"] == []


@pytest.mark.parametrize("method, path", [
    ("GET", "/htc/projects"), ("POST", "/htc/projects"), ("GET", "/htc/projects/md"),
    ("GET", "/htc/projects/md/tasks"), ("POST", "/htc/projects/md/tasks"), ("GET", "/htc/projects/md/tasks/1"),
    ("PATCH", "/htc/projects/md/tasks/1"), ("DELETE", "/htc/projects/md/tasks/1"),
    ("GET", "/htc/projects/md/tasks/1/jobs"), ("POST", "/htc/projects/md/tasks/1/jobs/batch"),
    ("POST", "/htc/projects/md/tasks/1/jobs/cancel"), ("POST", "/htc/projects/md/tasks/1/jobs/retry"),
    ("GET", "/htc/projects/md/tasks/1/jobs/1"),
    ("GET", "/htc/projects/md/tasks/1/jobs/1/logs"), ("GET", "/htc/projects/md/tasks/1/jobs/1/events"),
    ("GET", "/htc/projects/md/tasks/1/summary-statistics"), ("GET", "/htc/projects/md/container-registry/images"),
    ("GET", "/htc/projects/md/container-registry/images/x"), ("GET", "/htc/projects/md/container-registry/token"),
    ("POST", "/htc/projects/md/container-registry/repo/tools"), ("GET", "/auth/token"), ("GET", "/auth/token/whoami"),
])
@pytest.mark.parametrize("credential", [None, "Bearer not.a.token", "Token htc_bad_key", "Basic YWRhOmFkYQ=="])
async def test_unauthenticated_requests_get_401(http_server_client, jp_base_url, key, method, path, credential):
    code, body = await call(http_server_client, jp_base_url, method, path, auth=credential,
                            body={} if method in ("POST", "PATCH") else None)
    # a mutation with no bearer token is a cookie request to Jupyter: its XSRF check may say 403 first
    cookie = not (credential or "").startswith("Bearer")
    assert (code == 401 or (code == 403 and method != "GET" and cookie)), (code, body)
    assert body is None or body.get("message")


async def test_bad_ids_and_traversal(http_server_client, jp_base_url, key):
    ada, _ = await tokens(http_server_client, jp_base_url, key)

    def c(m, p, **kw):
        return call(http_server_client, jp_base_url, m, p, **kw)

    await c("POST", "/htc/projects", auth=ada, body={"projectName": "md"})
    _, task = await c("POST", "/htc/projects/md/tasks", auth=ada, body={"taskName": "t"})
    t = f"/htc/projects/md/tasks/{task['taskId']}"
    # an id that cannot be one (traversal, SQL, negative) is not found, like one that is not there
    for path, codes in [("/htc/projects/..%2F..%2Fetc", {404}), ("/htc/projects/%2e%2e", {404}),
                        ("/htc/projects/md/tasks/1%3B%20DROP", {404}), ("/htc/projects/md/tasks/-1", {404}),
                        ("/htc/projects/md/tasks/999", {404}), (f"{t}/jobs/..%2Fx", {404}),
                        (f"{t}/jobs/99999", {404}), (f"{t}/jobs/1:999", {404}), ("/htc/projects/nope", {404}),
                        (f"{t}/jobs?pageSize=0", {400}), (f"{t}/jobs?page=abc", {400})]:
        code, body = await c("GET", path, auth=ada)
        assert code in codes, (path, code, body)
    bad_batches = [None, [], [{"jobName": "x"}], [{"jobName": "x", "batchSize": 1, "htcJobDefinition": {
        "commands": ["true"], "maxVCpus": -1}}],
        [{"jobName": "a;b", "batchSize": 1, "htcJobDefinition": {"commands": ["true"]}}]]
    for b in bad_batches:
        code, body = await c("POST", f"{t}/jobs/batch", auth=ada, body=b)
        assert code == 400, (b, body)
    assert (await c("GET", f"{t}/summary-statistics", auth=ada))[1]["jobStatuses"]["SUCCEEDED"] == 0


async def test_jupyter_login_works_and_cookie_mutations_need_xsrf(jp_fetch, http_server_client, jp_base_url,
                                                                  jp_serverapp):
    # with Jupyter's token (what jp_fetch sends) the lab UI's user gets in
    r = await jp_fetch(*API.split("/"), "htc", "projects", method="POST", body=json.dumps({"projectName": "lab"}))
    assert r.code == 201
    # a browser session: log in with the token to get the cookie, then mutate without XSRF
    client = http_server_client
    login = await client.fetch(f"{jp_base_url}?token={jp_serverapp.identity_provider.token}",
                               follow_redirects=False, raise_error=False)
    cookies = "; ".join(c.split(";", 1)[0] for c in login.headers.get_list("Set-Cookie"))
    assert "username" in cookies or "login" in cookies or cookies
    ok = await client.fetch(f"{jp_base_url}{API}/htc/projects",
                            headers={"Cookie": cookies}, raise_error=False)
    assert ok.code == 200  # reading with the cookie is fine
    post = await client.fetch(f"{jp_base_url}{API}/htc/projects", method="POST",
                              headers={"Cookie": cookies}, body=json.dumps({"projectName": "evil"}), raise_error=False)
    assert post.code == 403
    api = jp_serverapp.web_app.settings["htc_api"]
    assert "evil" not in {p.name for p in api.session.ledger.projects()}


async def test_profiles_check_and_clusters(http_server_client, jp_base_url, key, jp_fetch):
    ada, _ = await tokens(http_server_client, jp_base_url, key)

    def c(m, p, **kw):
        return call(http_server_client, jp_base_url, m, p, **kw)

    profiles = (await c("GET", "/htc/profiles", auth=ada))[1]
    assert profiles["default"] == "local" and profiles["items"][0]["name"] == "local"
    bad = (await c("POST", "/htc/profiles/local/check", auth=ada, body={"cores": 100_000}))[1]
    assert bad["ok"] is False and "at most" in bad["message"]
    assert (await c("POST", "/htc/profiles/local/check", auth=ada, body={"cores": 1}))[1]["ok"] is True
    assert (await c("POST", "/htc/profiles/local/check", auth=ada, body={"cpus": 1}))[0] == 400
    assert (await c("POST", "/htc/profiles/nope/check", auth=ada, body={}))[0] == 404
    assert (await c("GET", "/htc/clusters", auth=ada))[1]["items"] == []
    for action in ("start", "scale", "stop"):  # the server's clusters run every project's jobs: the owner's
        assert (await c("POST", "/htc/clusters/local", auth=ada, body={"action": action}))[0] == 403

    async def owner(action):  # Jupyter's logged-in user (jp_fetch sends Jupyter's token): the data root's owner
        r = await jp_fetch(*API.split("/"), "htc", "clusters", "local", method="POST",
                           body=json.dumps({"action": action}), raise_error=False)
        return r.code, json.loads(r.body)

    assert (await owner("scale"))[0] == 400
    code, started = await owner("start")
    assert code == 200 and [(x["profile"], x["kind"]) for x in started["items"]] == [("local", "local")]
    assert started["items"][0]["workers"] >= 1
    assert (await owner("stop"))[1]["items"] == []


HOLD_WRITE_LOCK = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")  # the ledger's write lock, held until killed (or 120 s)
print("held", flush=True)
time.sleep(120)
"""


async def test_reads_take_no_write_lock(http_server_client, jp_base_url, key, tmp_path):
    """Every GET the sidebar polls answers while another process holds the ledger's write lock:
    none of them gets-or-creates (before, GET /htc/projects opened a write transaction per project)."""
    import subprocess
    import sys

    ada, _ = await tokens(http_server_client, jp_base_url, key)

    def c(m, p, **kw):
        return call(http_server_client, jp_base_url, m, p, **kw)

    assert (await c("POST", "/htc/projects", auth=ada, body={"projectName": "md"}))[0] == 201
    task = (await c("POST", "/htc/projects/md/tasks", auth=ada, body={"taskName": "melt"}))[1]
    t = f"/htc/projects/md/tasks/{task['taskId']}"
    assert (await c("POST", "/htc/projects/md/limits", auth=ada, body={"vcpus": 4}))[0] == 201
    reads = ["/htc/projects", "/htc/projects/md", "/htc/projects/md/tasks", t, f"{t}/jobs", f"{t}/summary-statistics",
             "/htc/projects/md/limits", "/htc/projects/md/dimensions", "/htc/projects/md/task-retention-policy"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, str(tmp_path / "htc-data" / "ledger.db")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        codes = [(await c("GET", path, auth=ada))[0] for path in reads]
        assert holder.poll() is None  # still holding: no GET waited for the lock
    finally:
        holder.kill()
        holder.wait()
    assert codes == [200] * 6 + [200, 200, 404], dict(zip(reads, codes, strict=False))  # no retention policy set: 404
