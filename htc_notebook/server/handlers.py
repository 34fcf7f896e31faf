"""Thin tornado handlers over `HTCApi`: authenticate, parse, call, write JSON.

Every route but `/auth/token` and the JWKS needs `Authorization: Bearer <token>`. Inside
Jupyter (`extension.py`) a logged-in Jupyter user is accepted too; its mutations need the
XSRF token like any Jupyter API call (bearer requests need none: browsers never add that
header by themselves).
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, Callable

from tornado import web
from tornado.ioloop import IOLoop

from htc_notebook.server.api import MAX_LOG_PAGE, MAX_PAGE, ApiError, HTCApi, page_size
from htc_notebook.server.auth import Caller, Unauthorized
from htc_notebook.server.body import BadBody, parse

PREFIX = "htc/api/v1"
# a body up to this many times the limit is read and dropped, then refused (413); a larger one ends the connection
DROP_FACTOR = 16


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None.

    >>> bearer_token("Bearer abc "), bearer_token("Token abc"), bearer_token("")
    ('abc', None, None)
    """
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@web.stream_request_body
class HTCHandler(web.RequestHandler):
    """Base: bearer-token user, JSON in and out, errors as `{"message": ...}`.

    Bodies are streamed in: at most the server's `max_body_mib` is kept; a larger one is read and
    dropped (so the client reads the answer rather than a reset connection) and answered 413, one
    that declares more than DROP_FACTOR times the limit at once (its connection is then closed)."""

    def initialize(self, api: HTCApi) -> None:
        self.api = api
        self._chunks: list[bytes] = []
        self._received = 0

    async def prepare(self) -> None:
        parent = super().prepare()
        if parent is not None:  # Jupyter's handlers authenticate in an async prepare
            await parent
        if self._finished:
            return
        limit = self.api.settings.max_body_bytes
        self.request.connection.set_max_body_size(limit * DROP_FACTOR)  # type: ignore[union-attr]  # HTTP1Connection's
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit * DROP_FACTOR:
            self.send({"message": self._too_large()}, 413)

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received <= self.api.settings.max_body_bytes:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()  # refused once it has all arrived (check_size)

    def _too_large(self) -> str:
        return (f"the body is larger than this server's limit of {self.api.settings.max_body_mib} MiB "
                "(split the request, e.g. into several batch requests)")

    def check_size(self) -> None:
        """ApiError 413 if the body was larger than the limit."""
        if self._received > self.api.settings.max_body_bytes:
            raise ApiError(413, self._too_large())

    # -- who is asking -----------------------------------------------------------------------
    def bearer(self) -> str | None:
        return bearer_token(self.request.headers.get("Authorization", ""))

    def htc_user(self) -> Caller:
        token = self.bearer()
        if token is not None:
            try:
                return self.api.token_caller(self.api.auth.verify(token))
            except Unauthorized as exc:
                raise ApiError(401, str(exc)) from None
        return self.fallback_user()

    def fallback_user(self) -> Caller:
        raise ApiError(401, "authentication needed: Authorization: Bearer <token> (from GET /auth/token)")

    # -- io ------------------------------------------------------------------------------------
    def body(self) -> Any:
        """The JSON body (None if empty): ApiError 413 (too large), 415 (declared other than JSON) or
        400 (malformed, nested too deep, an integer beyond 64 bits: server/body.py)."""
        self.check_size()
        raw = b"".join(self._chunks)
        if not raw.strip():
            return None
        try:
            return parse(raw, self.request.headers.get("Content-Type"), self.api.settings.max_depth)
        except BadBody as exc:
            raise ApiError(exc.status, str(exc)) from None

    def send(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))

    def send_page(self, items: list, token: str | None) -> None:
        """`{"items": [...], "next": URL}`; the last page has no `next` (HTC API clients page on
        until the key is absent: `"next": null` breaks them). The URL starts with the server's
        configured public URL, never with the request's Host header (without one it is relative)."""
        if token is None:
            return self.send({"items": items})
        query = dict(urllib.parse.parse_qsl(self.request.query))
        query["page"] = token
        origin = self.api.settings.origin or ""
        self.send({"items": items, "next": f"{origin}{self.request.path}?{urllib.parse.urlencode(query)}"})

    def size(self, most: int = MAX_PAGE) -> int:
        return page_size(self.get_query_argument("pageSize", None), most)

    def page(self) -> str | None:
        return self.get_query_argument("page", None)

    def run(self, fn: Callable[[], None]) -> None:
        """Call `fn`; an ApiError becomes its JSON error response."""
        try:
            self.check_size()
            fn()
        except ApiError as exc:
            self.send({"message": str(exc)}, exc.status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": self._reason}))


class Page(tuple):
    """(items, next token): sent as `{"items": ..., "next": URL}` (no `next` on the last page)."""


class Text(str):
    """A plain-text answer (the registry token)."""


def _route(**verbs: Callable[..., Any]) -> Callable[[type[HTCHandler]], type[HTCHandler]]:
    """A handler class whose HTTP verbs run `verbs[verb](handler, user, *path_args)` on a thread
    (ledger reads, submissions and cluster starts must not block the server's event loop) and
    send what it returns: a dict or list (200), `(status, body)`, or a `Page`."""

    def make(base: type[HTCHandler]) -> type[HTCHandler]:
        def bind(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def method(self: HTCHandler, *args: str) -> None:
                try:
                    self.check_size()
                    user = self.htc_user()
                    out = await IOLoop.current().run_in_executor(None, lambda: fn(self, user, *args))
                except ApiError as exc:
                    self.send({"message": str(exc)}, exc.status)
                    return
                if isinstance(out, Page):
                    self.send_page(*out)
                elif isinstance(out, Text):
                    self.set_header("Content-Type", "text/plain; charset=utf-8")
                    self.finish(str(out))
                elif isinstance(out, tuple):
                    status, body = out
                    if body is None:
                        self.set_status(status)
                        self.finish()
                    else:
                        self.send(body, status)
                else:
                    self.send(out)
            return method

        return type(f"HTC_{'_'.join(verbs)}", (base,), {verb: bind(fn) for verb, fn in verbs.items()})

    return make


def public(action: Callable[[HTCHandler], None], base: type[HTCHandler]) -> type[HTCHandler]:
    """A GET route that needs no bearer token (it checks its own credential, if any)."""

    class Public(base):  # type: ignore[valid-type, misc]  # a base class given at run time
        def get(self) -> None:
            self.run(lambda: action(self))

    return Public


# -- auth ---------------------------------------------------------------------------------------
def _with_key(h: HTCHandler, use: Callable[[str], Any]) -> None:
    """Send what `use` makes of the request's API key (`Authorization: Token <api key>`)."""
    scheme, _, key = h.request.headers.get("Authorization", "").partition(" ")
    if scheme != "Token" or not key.strip():
        raise ApiError(401, "send your API key as `Authorization: Token <api key>`")
    try:
        h.send(use(key.strip()))
    except Unauthorized as exc:
        raise ApiError(401, str(exc)) from None


def _token(h: HTCHandler) -> None:
    _with_key(h, h.api.issue_token)


def _key_whoami(h: HTCHandler) -> None:
    """Who an API key belongs to, and its projects."""
    _with_key(h, h.api.auth.whoami)


def _whoami(h: HTCHandler) -> None:
    token = h.bearer()
    if token is None:
        raise ApiError(401, "send a bearer token")
    try:
        h.send(h.api.auth.verify(token))
    except Unauthorized as exc:
        raise ApiError(401, str(exc)) from None


def routes(base: type[HTCHandler], prefix: str, api: HTCApi) -> list[tuple[str, type, dict]]:
    """(pattern, handler class, kwargs) for every route, under `prefix` (e.g. "/htc/api/v1")."""
    seg = "([^/]+)"
    task = f"/htc/projects/{seg}/tasks/{seg}"
    table: list[tuple[str, type]] = [
        ("/auth/token", public(_token, base)),
        ("/auth/token/whoami", public(_whoami, base)),
        ("/auth/whoami", public(_key_whoami, base)),
        ("/.well-known/jwks.json", public(lambda h: h.send(h.api.auth.jwks()), base)),
        ("/htc/projects", _route(
            get=lambda h, u: Page(h.api.list_projects(u, h.page(), h.size())),
            post=lambda h, u: (201, h.api.create_project(u, h.body())))(base)),
        (f"/htc/projects/{seg}", _route(get=lambda h, u, p: h.api.get_project(u, p))(base)),
        (f"/htc/projects/{seg}/limits", _route(
            get=lambda h, u, p: Page(h.api.list_limits(u, p, h.page(), h.size())),
            post=lambda h, u, p: (201, h.api.add_limit(u, p, h.body())),
            delete=lambda h, u, p: h.api.delete_limits(u, p))(base)),
        (f"/htc/projects/{seg}/limits/{seg}", _route(
            get=lambda h, u, p, i: h.api.get_limit(u, p, i),
            patch=lambda h, u, p, i: h.api.patch_limit(u, p, i, h.body()),
            delete=lambda h, u, p, i: h.api.delete_limits(u, p, i))(base)),
        (f"/htc/projects/{seg}/task-retention-policy", _route(
            get=lambda h, u, p: h.api.get_retention(u, p),
            put=lambda h, u, p: h.api.put_retention(u, p, h.body()),
            delete=lambda h, u, p: h.api.delete_retention(u, p))(base)),
        (f"/htc/projects/{seg}/dimensions", _route(
            get=lambda h, u, p: Page(h.api.list_dimensions(u, p, h.page(), h.size())),
            put=lambda h, u, p: h.api.put_dimensions(u, p, h.body()))(base)),
        (f"/htc/workspaces/{seg}/dimensions", _route(
            get=lambda h, u, w: Page(h.api.workspace_dimensions(u, w, h.page(), h.size())))(base)),
        (f"/htc/workspaces/{seg}/task-retention-policy", _route(
            get=lambda h, u, w: h.api.get_workspace_retention(u, w),
            put=lambda h, u, w: h.api.put_workspace_retention(u, w, h.body()))(base)),
        ("/htc/regions", _route(get=lambda h, u: Page(h.api.regions(u, h.page(), h.size())))(base)),
        (f"/htc/regions/{seg}", _route(get=lambda h, u, r: h.api.region(u, r))(base)),
        (f"/htc/projects/{seg}/tasks", _route(
            get=lambda h, u, p: Page(h.api.list_tasks(u, p, h.page(), h.size())),
            post=lambda h, u, p: (201, h.api.create_task(u, p, h.body())))(base)),
        (task, _route(
            get=lambda h, u, p, t: h.api.get_task(u, p, t),
            patch=lambda h, u, p, t: h.api.patch_task(u, p, t, h.body()),
            delete=lambda h, u, p, t: h.api.delete_task(u, p, t))(base)),
        (f"{task}/jobs", _route(get=lambda h, u, p, t: Page(h.api.list_jobs(
            u, p, t, h.page(), h.size(), h.get_query_argument("status", None))))(base)),
        (f"{task}/jobs/batch", _route(post=lambda h, u, p, t: (201, h.api.submit_batches(u, p, t, h.body())))(base)),
        (f"{task}/jobs/cancel", _route(post=lambda h, u, p, t: h.api.cancel_jobs(u, p, t, h.body()))(base)),
        (f"{task}/jobs/retry", _route(post=lambda h, u, p, t: h.api.retry_jobs(u, p, t, h.body()))(base)),
        (f"{task}/jobs/{seg}", _route(get=lambda h, u, p, t, j: h.api.get_job(u, p, t, j))(base)),
        (f"{task}/jobs/{seg}/logs", _route(
            get=lambda h, u, p, t, j: Page(h.api.job_logs(u, p, t, j, h.page(), h.size(MAX_LOG_PAGE),
                                                          h.get_query_argument("stream", "out"))))(base)),
        (f"{task}/jobs/{seg}/events", _route(
            get=lambda h, u, p, t, j: Page(h.api.job_events(u, p, t, j, h.page(), h.size())))(base)),
        (f"{task}/summary-statistics", _route(get=lambda h, u, p, t: h.api.summary_statistics(u, p, t))(base)),
        (f"{task}/groups", _route(get=lambda h, u, p, t: Page(h.api.groups(u, p, t, h.page(), h.size())))(base)),
        (f"{task}/group-summary-statistics", _route(
            get=lambda h, u, p, t: Page(h.api.group_statistics(u, p, t, h.page(), h.size())))(base)),
        ("/htc/profiles", _route(get=lambda h, u: h.api.profiles(u))(base)),
        (f"/htc/profiles/{seg}/check", _route(post=lambda h, u, n: h.api.check_request(u, n, h.body()))(base)),
        ("/htc/clusters", _route(get=lambda h, u: h.api.clusters(u))(base)),
        (f"/htc/clusters/{seg}", _route(post=lambda h, u, n: h.api.cluster_action(u, n, h.body()))(base)),
        (f"/htc/projects/{seg}/container-registry/repo/{seg}", _route(
            post=lambda h, u, p, r: h.api.create_repo(u, p, r))(base)),
        (f"/htc/projects/{seg}/container-registry/token", _route(
            get=lambda h, u, p: Text(h.api.registry_token(u, p)))(base)),
        (f"/htc/projects/{seg}/container-registry/images", _route(get=lambda h, u, p: h.api.images(u, p))(base)),
        (f"/htc/projects/{seg}/container-registry/images/{seg}", _route(
            get=lambda h, u, p, i: h.api.image(u, p, i))(base)),
    ]
    prefix = "/" + prefix.strip("/")
    return [(prefix + pattern.replace(".", r"\.", 1) if pattern.startswith("/.") else prefix + pattern,
             cls, {"api": api}) for pattern, cls in table]
