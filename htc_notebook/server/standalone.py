"""`htc serve`: the HTC REST API without Jupyter (tornado, one process, one data root)."""

from __future__ import annotations

import asyncio
import dataclasses
import signal

from tornado import web

from htc_notebook.server.api import HTCApi
from htc_notebook.server.auth import Auth
from htc_notebook.server.handlers import DROP_FACTOR, PREFIX, HTCHandler, routes
from htc_notebook.server.settings import ServerSettings


def make_app(session, settings: ServerSettings | None = None) -> web.Application:
    """The API of `session`'s data root at /htc/api/v1."""
    api = HTCApi(session, Auth(session.root), settings=settings)
    return web.Application(routes(HTCHandler, "/" + PREFIX, api))


def serve(session, port: int, address: str = "127.0.0.1", settings: ServerSettings | None = None) -> None:
    """Serve until SIGINT (Ctrl-C) or SIGTERM, then return (the caller closes the session).
    `settings.public_url` defaults to `http://address:port`."""
    settings = settings or ServerSettings()
    if settings.public_url is None:
        host = f"[{address}]" if ":" in address else address
        settings = dataclasses.replace(settings, public_url=f"http://{host}:{port}")
    app = make_app(session, settings)

    async def main() -> None:
        stop = asyncio.Event()
        # before it listens: a signal sent once the port answers must find them (also where SIGINT came
        # ignored, started in the background; the CI saw one lost between the two)
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        app.listen(port, address, max_body_size=settings.max_body_bytes * DROP_FACTOR)
        owner = f"owner: API user {settings.owner!r}" if settings.owner else "no owner over the API"
        print(f"HTC API on {settings.origin}/{PREFIX} (data root {session.root}; {owner}); Ctrl-C stops",
              flush=True)
        await stop.wait()

    asyncio.run(main())
