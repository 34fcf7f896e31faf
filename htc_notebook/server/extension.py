"""The Jupyter server extension: the HTC REST API at `{base_url}htc/api/v1`.

Requests authenticate with a bearer token (as with `htc serve`) or as the logged-in Jupyter
user (the lab UI). The Jupyter user is the data root's owner (named `$USER`, or `jupyter`): a
member of every project, the one who starts and stops clusters. API users are apart from it: a
token never makes its user the owner, whatever the user is called. Cookie requests that change
something need Jupyter's XSRF token.

Settings: `$HTC_PUBLIC_URL` (where clients reach the server, for `next` links; default: Jupyter's
`custom_display_url`, else its own address), `$HTC_MAX_BODY_MIB` (default 4).

Enabled by `jupyter server extension enable htc_notebook` (the wheel ships the config).
Data root: `$HTC_ROOT`, else `htc-data` under the server's root directory.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin

import urllib.parse

from htc_notebook.server.api import HTCApi
from htc_notebook.server.auth import Auth, Caller
from htc_notebook.server.changes import ChangeFeed, ChangesSocket
from htc_notebook.server.handlers import PREFIX, HTCHandler, routes
from htc_notebook.server.settings import ServerSettings


class JupyterHTCHandler(HTCHandler, APIHandler):  # type: ignore[misc]  # HTCHandler.prepare awaits Jupyter's, typed apart
    """Bearer token, or Jupyter's own login (with XSRF on mutations)."""

    def check_xsrf_cookie(self) -> None:
        if self.bearer() is not None:  # not a cookie request: nothing a browser adds by itself
            return None
        return super().check_xsrf_cookie()

    def fallback_user(self) -> Caller:
        from htc_notebook.server.api import ApiError

        if self.current_user is None:
            raise ApiError(401, "authentication needed: log in to Jupyter, or send Authorization: Bearer <token>")
        return Caller(self.api.owner or owner_name(), owner=True)

    def write_error(self, status_code: int, **kwargs) -> None:
        HTCHandler.write_error(self, status_code, **kwargs)


class JupyterChangesSocket(WebSocketMixin, ChangesSocket, JupyterHandler):
    """The change feed for a bearer token or Jupyter's own login (Jupyter's origin check: another
    site's page cannot open it with the user's cookie)."""

    def session_caller(self) -> Caller | None:
        return None if self.current_user is None else Caller(self.api.owner or owner_name(), owner=True)


def owner_name() -> str:
    return "".join(c for c in os.environ.get("USER", "jupyter") if c.isalnum() or c in "_.-") or "jupyter"


def _load_jupyter_server_extension(serverapp) -> None:
    from htc_notebook.runtime import Session
    from htc_notebook.runtime.confinement import ALLOW_ENV, refuse_serving_unconfined
    from htc_notebook.runtime.dashboard import PROXY_BASE_ENV, proxy_dashboards

    base = serverapp.web_app.settings.get("base_url", "/")
    if "jupyter_server_proxy" in serverapp.jpserver_extensions and PROXY_BASE_ENV not in os.environ:
        # dask dashboards through this server: kernels it starts from now on inherit the variable
        os.environ[PROXY_BASE_ENV] = base
        proxy_dashboards()
    root = os.environ.get("HTC_ROOT") or str(Path(serverapp.root_dir) / "htc-data")
    session = Session(root)
    auth = Auth(session.root)
    users = sorted({k["user"] for k in auth.keys() if k["revoked"] is None})
    unconfined, allowed = session.unconfined(), os.environ.get(ALLOW_ENV) == "1"
    try:
        refuse_serving_unconfined(unconfined, users, allowed)
    except Exception:
        session.close()
        raise
    if unconfined:
        serverapp.log.warning(f"htc_notebook: {unconfined}")
    # earlier kernels' SLURM jobs and held work are watched and fed from here (off the event loop)
    threading.Thread(target=session.resume, name="htc-resume", daemon=True).start()
    settings = ServerSettings.from_env(public_url=_public_origin(serverapp))
    if not allowed:  # keys made while it runs are refused as those above (its login user is never an API user)
        settings = dataclasses.replace(settings, unconfined=unconfined)
    api = HTCApi(session, auth, owner=owner_name(), settings=settings)
    prefix = base.rstrip("/") + "/" + PREFIX
    feed = ChangeFeed(session.reads)
    serverapp.web_app.add_handlers(".*$", [(f"{prefix}/htc/changes", JupyterChangesSocket, {"api": api, "feed": feed}),
                                           *routes(JupyterHTCHandler, prefix, api)])
    serverapp.web_app.settings["htc_changes"] = feed
    serverapp.web_app.settings["htc_api"] = api
    serverapp.log.info(f"htc_notebook: HTC API at {base}{PREFIX} over {session.root}")


def _public_origin(serverapp) -> str | None:
    """`scheme://host:port` of Jupyter's configured address (its custom_display_url, else ip and port)."""
    try:
        parts = urllib.parse.urlsplit(serverapp.custom_display_url or serverapp.connection_url)
    except Exception as exc:  # noqa: BLE001 - no address known (a socket): `next` links are then relative
        serverapp.log.warning(f"htc_notebook: no public URL for `next` links ({exc}); set $HTC_PUBLIC_URL")
        return None
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "htc_notebook.server.extension"}]
