"""The change feed the lab's sidebar listens to (server/changes.py), in a real Jupyter server: a
websocket that says which tasks changed, sent only when something did, to a Jupyter login or a
bearer token, each told only of its own projects; nothing read while nobody listens; no socket
without credentials or from another site's page."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection

from htc_notebook.ledger import NewJob
from htc_notebook.spec import JobSpec
from test_server import call, jp_server_config, key, tokens  # noqa: F401 - fixtures shared with test_server

pytest_plugins = ["pytest_jupyter.jupyter_server"]
FEED = ("htc", "api", "v1", "htc", "changes")


async def _next(ws: WebSocketClientConnection, timeout: float = 10) -> dict | None:
    """The next message, or None if none came within `timeout` s."""
    try:
        raw = await asyncio.wait_for(ws.read_message(), timeout)
    except asyncio.TimeoutError:
        return None
    assert raw is not None, "the server closed the feed"
    return json.loads(raw)


def _jobs(session, project: str, task: str, n: int = 3) -> tuple[int, list[int]]:
    row = session.project(project).task(task).row
    ids = list(session.ledger.add_jobs(row.id, [NewJob(name="j", kind="command", params={"i": i}, spec=JobSpec(),
                                                       index=i, profile="local") for i in range(n)]))
    return row.id, ids


async def test_the_owner_is_told_which_task_changed_and_nothing_while_nothing_does(jp_serverapp, jp_ws_fetch):
    api, feed = jp_serverapp.web_app.settings["htc_api"], jp_serverapp.web_app.settings["htc_changes"]
    session = api.session
    task_id, ids = _jobs(session, "md", "quiet")
    assert feed.looks == 0  # nobody listens: the ledger is not read
    ws = await jp_ws_fetch(*FEED)  # Jupyter's login (its token)
    assert await _next(ws) == {"hello": True}
    looks = feed.looks
    assert await _next(ws, timeout=2) is None  # idle: nothing sent
    assert feed.looks > looks  # though the feed looked
    session.ledger.set_status(ids[:1], "RUNNABLE", "picked")
    assert await _next(ws) == {"tasks": [{"projectId": "md", "taskId": str(task_id)}], "structure": False}
    other = session.project("md").task("new").row
    assert await _next(ws) == {"tasks": [], "structure": True}
    session.ledger.set_status(ids[1:], "RUNNABLE", "picked")
    _, more = _jobs(session, "md", "new", 1)
    message = await _next(ws)
    while message is not None and len(message["tasks"]) < 2:  # both changes may come as one message or two
        later = await _next(ws, timeout=2)
        if later is None:
            break
        message = {"tasks": message["tasks"] + later["tasks"], "structure": message["structure"]}
    assert message is not None
    assert sorted(t["taskId"] for t in message["tasks"]) == sorted([str(task_id), str(other.id)])
    ws.close()
    await asyncio.sleep(1.5)  # the server sees the close, the last listener leaves
    looks = feed.looks
    await asyncio.sleep(1.5)
    assert feed.looks == looks  # nobody listens: no more reads


async def test_an_api_user_is_told_only_of_its_own_projects(jp_serverapp, jp_ws_fetch, http_server_client,
                                                            jp_base_url, key):  # noqa: F811 - the fixture
    ada, bob = await tokens(http_server_client, jp_base_url, key)
    session = jp_serverapp.web_app.settings["htc_api"].session
    mine, my_ids = _jobs(session, "md", "ada-task")
    _, bobs = _jobs(session, "other", "bob-task")
    ws = await jp_ws_fetch(*FEED, headers={"Authorization": ada})
    assert await _next(ws) == {"hello": True}
    session.ledger.set_status(bobs, "RUNNABLE", "picked")
    session.project("other").task("bob-more")  # a task made in bob's project: not ada's business
    assert await _next(ws, timeout=2) is None
    session.ledger.set_status(my_ids, "RUNNABLE", "picked")
    assert await _next(ws) == {"tasks": [{"projectId": "md", "taskId": str(mine)}], "structure": False}
    session.project("md").task("ada-more")
    assert await _next(ws) == {"tasks": [], "structure": True}
    ws.close()


async def test_a_revoked_keys_feed_is_closed_at_its_next_message(jp_serverapp, jp_ws_fetch, http_server_client,
                                                                  jp_base_url, key):  # noqa: F811 - the fixture
    """Revoking a key ends its tokens at once: its open feed says nothing more and is closed."""
    ada, _ = await tokens(http_server_client, jp_base_url, key)
    api = jp_serverapp.web_app.settings["htc_api"]
    _, ids = _jobs(api.session, "md", "revoked")
    ws = await jp_ws_fetch(*FEED, headers={"Authorization": ada})
    assert await _next(ws) == {"hello": True}
    assert api.auth.revoke_key(key[0].split("_")[1])
    api.session.ledger.set_status(ids, "RUNNABLE", "picked")
    assert await asyncio.wait_for(ws.read_message(), 10) is None  # closed, not told
    assert ws.close_code == 1008


@pytest.mark.parametrize("headers", [{"Authorization": ""}, {"Authorization": "Bearer not-a-token"}])
async def test_no_feed_without_credentials(jp_ws_fetch, headers):
    with pytest.raises(HTTPClientError) as refused:
        await jp_ws_fetch(*FEED, headers=headers)
    assert refused.value.code in (401, 403)


async def test_another_sites_page_cannot_open_the_feed_with_the_users_login(jp_serverapp, jp_ws_fetch,
                                                                           http_server_client, jp_base_url,
                                                                           jp_http_port):
    """A page of another site opening the socket carries the user's login cookie and its own Origin:
    refused (cross-site WebSocket hijacking); the same cookie from the lab's own origin is let in."""
    host = f"localhost:{jp_http_port}"  # as the socket is opened (the login cookie is named after the host)
    login = await http_server_client.fetch(f"{jp_base_url}?token={jp_serverapp.identity_provider.token}",
                                           headers={"Host": host}, follow_redirects=False, raise_error=False)
    cookie = "; ".join(c.split(";", 1)[0] for c in login.headers.get_list("Set-Cookie"))
    assert cookie
    as_browser = {"Authorization": "", "Cookie": cookie}  # the cookie only, as a browser sends it
    with pytest.raises(HTTPClientError) as refused:
        await jp_ws_fetch(*FEED, headers={**as_browser, "Origin": "http://evil.example"})
    assert refused.value.code == 403
    ws = await jp_ws_fetch(*FEED, headers={**as_browser, "Origin": f"http://{host}"})
    assert await _next(ws) == {"hello": True}
    ws.close()


async def test_jobs_list_filters_by_status_and_names_what_is_allowed(jp_serverapp, http_server_client, jp_base_url,
                                                                     key):  # noqa: F811 - the fixture
    ada, _ = await tokens(http_server_client, jp_base_url, key)
    session = jp_serverapp.web_app.settings["htc_api"].session
    task_id, ids = _jobs(session, "md", "filtered", 5)
    session.ledger.set_status(ids[1:3], "RUNNABLE", "picked")
    path = f"/htc/projects/md/tasks/{task_id}/jobs"
    code, body = await call(http_server_client, jp_base_url, "GET", f"{path}?status=RUNNABLE&pageSize=1", auth=ada)
    assert code == 200 and [j["jobId"] for j in body["items"]] == [str(ids[1])] and "next" in body
    code, body = await call(http_server_client, jp_base_url, "GET", f"{path}?status=BOGUS", auth=ada)
    assert code == 400 and "status 'BOGUS' is not allowed: one of" in body["message"] and "RUNNABLE" in body["message"]
