"""Dask dashboards through the Jupyter server (jupyter-server-proxy), so that a pilot cluster's
dashboard opens in JupyterLab on a cluster with no port forwarding.

The server extension (server/extension.py) sets `HTC_JUPYTER_BASE_URL` to its base URL when
jupyter-server-proxy is enabled; the kernels it starts inherit it. A Session then sets dask's
`distributed.dashboard.link` to `{base}proxy/{port}/status`: dask's own links (`client.dashboard_link`,
the cluster's repr) and the toolkit's (`%htc clusters`, the launcher, the lab sidebar) all point
through the server. The dashboard is served by the kernel's dask scheduler, on the host of the
kernel and the server (a scheduler elsewhere is reached with `/proxy/<host>:<port>/`, which the
server's proxy must allow). A link set by the user (`DASK_DISTRIBUTED__DASHBOARD__LINK`) is kept.

>>> link_template("/user/ada/")
'/user/ada/proxy/{port}/status'
"""

from __future__ import annotations

import os

PROXY_BASE_ENV = "HTC_JUPYTER_BASE_URL"


def proxy_dashboards() -> str | None:
    """Point dask's dashboard links through the Jupyter server, if one set PROXY_BASE_ENV; the link template set."""
    base = os.environ.get(PROXY_BASE_ENV)
    if not base or os.environ.get("DASK_DISTRIBUTED__DASHBOARD__LINK"):
        return None
    import dask

    link = link_template(base)
    dask.config.set({"distributed.dashboard.link": link})
    return link


def link_template(base: str) -> str:
    """dask's dashboard link template for a Jupyter server at `base` (dask fills in `{port}`)."""
    return base.rstrip("/") + "/proxy/{port}/status"
