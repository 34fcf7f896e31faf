"""`htc serve` driven by a published HTC API client, unchanged: rescalehtc (PyPI, Rescale's own
Python library), pointed at this server by its base-URL constant, which is the only way it offers.
Token with expiry, projects, tasks, a batch in the client's own payload shape (job tags as a
mapping, batch tags, claims, cloudProvider), paging to the end of every list, jobs, logs at the
client's page size (newest line first), summary statistics, cancel and delete.

Not driven yet: the client's `create_job_batch` refuses, before sending anything, a region whose
name does not contain AWS or GCP (ours are the site's profiles), so the batch goes through the
client's own wire call for it, `api.post_htc_projects_tasks_jobs_batch`."""

from __future__ import annotations

import subprocess
import time

import pytest

from test_server_e2e import HTC, _port

rescalehtc = pytest.importorskip("rescalehtc")


@pytest.fixture
def client(tmp_path, monkeypatch):
    from rescalehtc import HtcSession
    from rescalehtc.internals import constants

    base = ["--root", str(tmp_path / "root")]
    key = subprocess.run([HTC, *base, "keys", "create", "ada", "--project", "md"], check=True,
                         capture_output=True, text=True).stdout.strip()
    port = _port()
    server = subprocess.Popen([HTC, *base, "serve", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    monkeypatch.delenv("RESCALE_HTC_REFRESH_TOKEN", raising=False)
    monkeypatch.setattr(constants, "_RESCALE_API_BASE_URL", f"http://127.0.0.1:{port}/htc/api/v1")
    try:
        for _ in range(150):
            try:
                session = HtcSession(api_key=key)  # GET /auth/token: reads tokenValue and expiresIn
                break
            except Exception as exc:  # noqa: BLE001 - the server may still be starting
                last = exc
                time.sleep(0.2)
        else:
            pytest.fail(f"the client could not sign in: {type(last).__name__}: {last}")
        yield session
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_published_htc_client_drives_htc_serve_unchanged(client):
    from rescalehtc import api, htcjobs, htcprojects, htctasks
    from rescalehtc.exceptions import HtcException

    assert client.get_bearer_token().get_user_claims() == {}  # a real JWT, decoded by the client (no user claims)
    api.post_htc_projects(client, {"projectName": "md"})
    (project,) = [p for p in htcprojects.get_projects(client) if p.json["projectId"] == "md"]
    assert htcprojects.get_project_with_id(client, "md").json["projectName"] == "md"
    # ids that are not there, or cannot be ids of ours, are not found: the client reads 404 as "none"
    for missing_id in ("nope", "../etc", "two words"):
        assert htcprojects.get_project_with_id(client, missing_id) is None
    # who the API key is (GET /auth/whoami, sent with the key itself as the client does)
    me = api.get_auth_whoami(client, f"Token {client.api_key}")
    assert me["username"] == "ada" and "md" in me["projects"]
    # the project's vCPU limits, set and read as the client does (the batch below runs under one)
    for role, vcpus in (("PROJECT_ADMIN", 2), ("WORKSPACE_ADMIN", 8)):
        project.set_vcpu_limit(client, role, vcpus)
    limits = project.get_limits(client)
    assert [(limit["modifierRole"], limit["vCPUs"]) for limit in limits] == [("PROJECT_ADMIN", 2),
                                                                               ("WORKSPACE_ADMIN", 8)]
    assert api.get_htc_projects_limits(client, "md", limits[0]["id"])["vCPUs"] == 2
    assert api.patch_htc_projects_limits(client, "md", limits[0]["id"], {"vCPUs": 3})["vCPUs"] == 3
    api.delete_htc_projects_limits(client, "md", limits[1]["id"])
    assert [limit["vCPUs"] for limit in project.get_limits(client)] == [3]
    with pytest.raises(HtcException, match="400.*vCPUs = 0"):
        api.post_htc_projects_limits(client, "md", {"modifierRole": "PROJECT_ADMIN", "vCPUs": 0})
    # the task retention policy: none yet (404, as the HTC API answers), then set, read, deleted
    with pytest.raises(HtcException, match="404"):
        api.get_htc_projects_task_retention_policy(client, "md")
    policy = {"archiveAfter": 720, "deleteAfter": 2160}
    assert api.put_htc_projects_task_retention_policy(client, "md", policy) == policy
    assert api.get_htc_projects_task_retention_policy(client, "md") == policy
    api.delete_htc_projects_task_retention_policy(client, "md")
    with pytest.raises(HtcException, match="404"):
        api.get_htc_projects_task_retention_policy(client, "md")
    # where jobs may run (HTC `dimensions`): the site's profiles are its regions; none set: all of them
    offered = api.get_htc_workspaces_dimensions(client, project.json["workspaceId"])  # pages joined by the client
    assert {(d["region"], d["priority"]) for d in offered} == {("local", "ON_DEMAND_PRIORITY"),
                                                               ("local", "ON_DEMAND_ECONOMY")}
    assert [r["region"] for r in api.get_htc_regions(client)] == ["local"] == project.json["regions"]
    assert api.get_htc_regions(client, "local")["coresPerNode"] >= 1
    assert api.get_htc_projects_dimensions(client, "md") == offered
    economy = [{"region": "local", "machineArchitecture": "X86", "priority": "ON_DEMAND_ECONOMY",
                "hyperthreading": False}]
    assert api.put_htc_projects_dimensions(client, "md", economy)["items"] == economy
    assert api.get_htc_projects_dimensions(client, "md") == economy
    for bad in ([{"region": "gpu"}], [{"region": "local", "hyperthreading": True}], {"region": "local"}):
        with pytest.raises(HtcException, match="400"):
            api.put_htc_projects_dimensions(client, "md", bad)
    with pytest.raises(HtcException, match="404"):
        api.get_htc_workspaces_dimensions(client, "someone-elses")
    # the workspace's policy, for projects without their own: read through the API, set by the data
    # root's owner only (it holds for other users' projects too)
    with pytest.raises(HtcException, match="404"):
        api.get_htc_task_retention_policy(client, project.json["workspaceId"])
    with pytest.raises(HtcException, match="403"):
        api.put_htc_task_retention_policy(client, project.json["workspaceId"], policy)
    tasks = [htctasks.create_task_with_name(client, project, f"t{i}") for i in range(3)]
    # the client pages on while a page has `next` (the last page has none: `"next": null` broke it)
    assert {t.json["taskName"] for t in htctasks.get_tasks(client, project)} >= {"t0", "t1", "t2"}
    task = tasks[0]
    batch = {"jobName": "hello", "batchSize": 3, "tags": [{"key": "study", "value": "lj"}], "region": "local",
             "cloudProvider": "AWS",  # what the client sends with every batch
             "htcJobDefinition": {"imageName": "", "maxVCpus": 1, "maxMemory": 200, "maxDiskGiB": 1, "maxSwap": 0,
                                  "tags": {"member": "all"}, "claims": [{"name": "group", "value": "md"}],
                                  "envs": [{"name": "GREETING", "value": "hi"}], "architecture": "X86",
                                  "priority": "ON_DEMAND_ECONOMY", "execTimeoutSeconds": 60,
                                  "commands": ["sh", "-c", "echo first; echo $GREETING $HTC_JOB_INDEX; echo last"]}}
    urgent = {**batch, "htcJobDefinition": {**batch["htcJobDefinition"], "priority": "ON_DEMAND_PRIORITY"}}
    with pytest.raises(HtcException, match="400.*dimensions"):  # the project runs economy jobs only
        api.post_htc_projects_tasks_jobs_batch(client, "md", task.json["taskId"], [urgent])
    (made,) = api.post_htc_projects_tasks_jobs_batch(client, project.json["projectId"], task.json["taskId"], [batch])
    assert made["batchSize"] == 3 and made["tags"] == [{"key": "study", "value": "lj"}]
    assert made["htcJobDefinition"]["tags"] == {"member": "all"}
    deadline = time.monotonic() + 120
    while not task.get_task_summary(client)["jobStatuses"]["SUCCEEDED"] == 3:
        assert time.monotonic() < deadline, task.get_task_summary(client)
        time.sleep(0.5)
    # its groups: the batch's jobName, with the summary per group
    assert api.get_htc_projects_tasks_groups(client, "md", task.json["taskId"]) == [{"group": "hello", "jobCount": 3}]
    (stats,) = api.get_htc_projects_tasks_group_summary_statistics(client, "md", task.json["taskId"])
    assert stats["group"] == "hello" and stats["jobStatuses"]["SUCCEEDED"] == 3
    jobs = htcjobs.get_jobs(client, task)
    assert sorted(j.json["jobUUID"] for j in jobs) == [f"{made['parentJobId']}:{i}" for i in range(3)]
    job = htcjobs.get_job_with_id(client, task, f"{made['parentJobId']}:2")
    assert job.json["status"] == "SUCCEEDED" and not job.is_still_running(client)
    # pageSize=5000, newest line first on the wire: the client hands them back in order
    assert list(job.get_logs(client)) == ["first", "hi 2", "last"]
    again = htcjobs.get_job_with_id(client, task, f"{made['parentJobId']}:2")  # get_logs caches 30 s per object
    assert list(again.get_logs(client, last_n_lines=1)) == ["last"]  # the newest line: the first on the wire
    # a second batch cancelled through the client, then the task deleted (the client reads the body)
    slow = {**batch, "jobName": "slow", "htcJobDefinition": {**batch["htcJobDefinition"], "commands": ["sleep", "300"]}}
    api.post_htc_projects_tasks_jobs_batch(client, "md", tasks[1].json["taskId"], [slow])
    tasks[1].cancel_jobs_in_task(client)
    deadline = time.monotonic() + 60
    while tasks[1].is_still_running(client):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    t1 = tasks[1].json["taskId"]
    api.post_htc_projects_tasks_jobs_batch(client, "md", t1, [{**batch, "jobName": "quick"}])
    deadline = time.monotonic() + 60
    while (groups := {g["group"]: g["jobStatuses"] for g in
                      api.get_htc_projects_tasks_group_summary_statistics(client, "md", t1)})["quick"]["SUCCEEDED"] < 3:
        assert time.monotonic() < deadline, groups
        time.sleep(0.5)
    assert list(groups) == ["slow", "quick"] and groups["slow"]["FAILED"] == 3, groups  # cancelled: FAILED on the wire
    for missing_id in ("999999", "not-a-task", "1;DROP"):
        assert htctasks.delete_task_with_id(client, project, missing_id) is None
    api.delete_htc_projects_limits(client, "md")  # all of them
    assert project.get_limits(client) == []
    deleted = htctasks.delete_task_with_id(client, project, tasks[2].json["taskId"])
    assert deleted["lifecycleStatus"] == "ARCHIVED"
    assert "t2" not in {t.json["taskName"] for t in htctasks.get_tasks(client, project)}  # ACTIVE ones only
