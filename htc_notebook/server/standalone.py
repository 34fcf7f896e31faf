"""`htc serve`: the HTC REST API without Jupyter (tornado, one process, one data root)."""

from __future__ import annotations

import asyncio

from tornado import web

from htc_notebook.server.api import HTCApi
from htc_notebook.server.auth import Auth
from htc_notebook.server.handlers import PREFIX, HTCHandler, routes


def make_app(session) -> web.Application:
    """The API of `session`'s data root at /htc/api/v1."""
    api = HTCApi(session, Auth(session.root))
    return web.Application(routes(HTCHandler, "/" + PREFIX, api))


def serve(session, port: int, address: str = "127.0.0.1") -> None:
    """Serve until interrupted."""
    app = make_app(session)

    async def main() -> None:
        app.listen(port, address)
        print(f"HTC API on http://{address}:{port}/{PREFIX} (data root {session.root}); Ctrl-C stops",
              flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
