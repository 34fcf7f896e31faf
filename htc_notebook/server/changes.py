"""Changes pushed to the lab's sidebar instead of polled: one `ChangeFeed` per server reads the
ledger's change mark every WATCH_SECONDS while anyone listens, and each listener (a websocket at
`{PREFIX}/htc/changes`, `ChangesSocket`) is sent the tasks of its own projects that changed.

An idle sidebar sends no request (the socket's pings are frames, not requests); a server with a
sidebar open reads four counters every WATCH_SECONDS, one with none reads nothing. Messages say
what changed, never what it is now: the client reads that through the REST API, with its own
authorization.

    {"hello": true}                      once, when the socket opens: read everything now
    {"tasks": [{"projectId": "p", "taskId": "7"}], "structure": false}
                                         jobs of these tasks changed; `structure`: a project or
                                         task the listener sees was made or archived
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from tornado import web
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.websocket import WebSocketHandler

from htc_notebook.server.api import HTCApi
from htc_notebook.server.auth import Caller, Unauthorized
from htc_notebook.server.handlers import bearer_token

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.5  # how often the ledger's change mark is read while a listener is connected

Mark = tuple[int, int, int, int]  # `Changes.change_mark`: (seq, projects, tasks, archived tasks)
Listener = Callable[[list[tuple[str, int]], bool], None]  # (changed (project, task id), structure changed)


class ChangeFeed:
    """Reads the ledger's change mark while anyone listens and tells each listener what changed.
    Used on the server's event loop; the reads run on its executor.

    `reads`: anything with `change_mark()` and `tasks_changed(after_seq)` (`runtime.reads.Reads`).
    """

    def __init__(self, reads: Any, every: float = WATCH_SECONDS):
        self._reads = reads
        self._every = every
        self._listeners: list[Listener] = []
        self._mark: Mark | None = None
        self._timer: PeriodicCallback | None = None
        self._looking = False
        self.looks = 0  # ledger looks taken (for tests: none while nobody listens)

    async def listen(self, listener: Listener) -> None:
        """From now on `listener` is told of every change after the mark read here (or before, by a
        feed already running): a client that reads everything after this returns misses nothing."""
        if self._mark is None:
            self._mark = await IOLoop.current().run_in_executor(None, self._reads.change_mark)
        self._listeners.append(listener)
        if self._timer is None:
            self._timer = PeriodicCallback(self._tick, self._every * 1000)
            self._timer.start()

    def leave(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
        if not self._listeners and self._timer is not None:
            self._timer.stop()
            self._timer, self._mark = None, None

    async def _tick(self) -> None:
        if self._looking or self._mark is None:
            return  # the last look still runs (a slow ledger): no pile-up
        self._looking = True
        try:
            changed = await IOLoop.current().run_in_executor(None, self._look, self._mark)
        except Exception as exc:  # noqa: BLE001 - a ledger busy or moved: look again next tick, say so
            log.warning("the change feed could not read the ledger: %s: %s", type(exc).__name__, exc)
            return
        finally:
            self._looking = False
        if changed is None or self._mark is None:
            return
        self._mark, tasks, structure = changed
        for listener in list(self._listeners):
            try:
                listener(tasks, structure)
            except Exception:  # a listener's fault is logged; the others are still told
                log.exception("a change feed listener failed")

    def _look(self, last: Mark) -> tuple[Mark, list[tuple[str, int]], bool] | None:
        """On the executor: None if nothing changed since `last`."""
        self.looks += 1
        mark: Mark = tuple(self._reads.change_mark())
        if mark == last:
            return None
        tasks = self._reads.tasks_changed(last[0]) if mark[0] != last[0] else []
        return mark, tasks, mark[1:] != last[1:]


class ChangesSocket(WebSocketHandler):
    """The feed for one client: a Jupyter user (the data root's owner, every project) or an API user
    with `Authorization: Bearer <token>` (its own projects). Mixed with Jupyter's handlers in
    `extension.py` (its login, its origin check: a page of another site cannot open it with the
    user's cookie)."""

    def initialize(self, api: HTCApi, feed: ChangeFeed) -> None:
        self.api, self.feed = api, feed
        self.caller: Caller | None = None
        self._token: str | None = None  # an API user's: checked again before each message
        self._sees: tuple | None = None  # the projects and tasks this caller saw last (`_visible`)
        self._sending = asyncio.Lock()  # one message at a time (each reads and updates `_sees`)

    def bearer_caller(self) -> Caller | None:
        self._token = bearer_token(self.request.headers.get("Authorization", ""))
        if self._token is None:
            return None
        try:
            return self.api.token_caller(self.api.auth.verify(self._token))
        except Unauthorized as exc:
            raise web.HTTPError(401, str(exc)) from None

    def session_caller(self) -> Caller | None:
        """The caller a login without a bearer token is (none here: `extension.py` adds Jupyter's)."""
        return None

    async def get(self, *args: Any, **kwargs: Any) -> None:
        self.caller = self.bearer_caller() or self.session_caller()
        if self.caller is None:
            raise web.HTTPError(403, "log in to Jupyter, or send Authorization: Bearer <token>")
        await super().get(*args, **kwargs)

    async def open(self, *args: Any, **kwargs: Any) -> None:
        if self.caller is None:  # not through get(): never
            self.close(1008)
            return
        if not self.caller.owner:
            self._sees = await IOLoop.current().run_in_executor(None, self._visible)
        await self.feed.listen(self._changed)
        self._write({"hello": True})

    def on_message(self, message: str | bytes) -> None:
        """Nothing is read from the client."""

    def on_close(self) -> None:
        self.feed.leave(self._changed)

    def _changed(self, tasks: list[tuple[str, int]], structure: bool) -> None:
        if self.caller is not None and self.caller.owner:
            self._send(tasks, structure)
        else:
            IOLoop.current().spawn_callback(self._send_own, tasks, structure)

    async def _send_own(self, tasks: list[tuple[str, int]], structure: bool) -> None:
        """An API user is told only of its own projects' tasks, and only while its token holds: a
        revoked or expired one closes the socket (membership and the token are read off the loop)."""
        caller = self.caller
        assert caller is not None  # set before the socket opened

        def own() -> tuple[list[tuple[str, int]], bool]:
            if self._token is not None:
                self.api.auth.verify(self._token)  # Unauthorized once revoked or expired
            mine = {p for p, _ in tasks if self.api.member(caller, p)}
            seen, sees = self._sees, self._visible() if structure else self._sees
            self._sees = sees
            return [(p, t) for p, t in tasks if p in mine], sees != seen
        async with self._sending:
            try:
                mine, structure = await IOLoop.current().run_in_executor(None, own)
            except Unauthorized as exc:
                log.info("change feed of %s closed: %s", caller.name, exc)
                self.close(1008, "credential no longer valid")
                return
            except Exception as exc:  # noqa: BLE001 - the auth store busy: this message is dropped, said so
                log.warning("changes for %s not sent: %s: %s", caller.name, type(exc).__name__, exc)
                return
            self._send(mine, structure)

    def _visible(self) -> tuple:
        """The projects this caller sees and their tasks' (id, lifecycle)."""
        caller = self.caller
        assert caller is not None  # set before the socket opened
        projects = sorted(p for p in self.api.session.reads.project_names() if self.api.member(caller, p))
        return tuple((p, tuple((t.id, t.lifecycle) for t in self.api.session.reads.tasks(p))) for p in projects)

    def _send(self, tasks: list[tuple[str, int]], structure: bool) -> None:
        if tasks or structure:
            self._write({"tasks": [{"projectId": p, "taskId": str(t)} for p, t in tasks], "structure": structure})

    def _write(self, message: dict[str, Any]) -> None:
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        self.write_message(json.dumps(message))
