"""The sidebar's cluster cards on the test cluster: the owner adapts a SLURM profile's pilots
through the API (the pilots follow the work between its bounds), `scale` stops adapting, `stop`
ends them; bad bounds are refused naming the field; a local profile cannot adapt."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from test_slurm import REPO, site  # noqa: F401 - the discovered site fixture

from htc_notebook import Session
from htc_notebook.server.api import ApiError, HTCApi
from htc_notebook.server.auth import Auth, Caller

pytestmark = pytest.mark.slurm
OWNER = Caller("owner", owner=True)


def _pilots() -> list[str]:
    return subprocess.run(["squeue", "-h", "-n", "htc-pilot-cpu", "-o", "%i"], capture_output=True, text=True,
                          check=True).stdout.split()


def _until(what, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (got := what()):
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.5)
    return got


def test_the_owner_adapts_scales_and_stops_a_profiles_pilots_through_the_api(site):  # noqa: F811 - the fixture
    root = REPO / "test-output" / f"clusters-api-{uuid.uuid4().hex[:8]}"
    with Session(root, site=site) as s:
        api = HTCApi(s, Auth(s.root), owner=OWNER.name)
        for bad, field in (({"minimum": -1}, "minimum"), ({"maximum": "2"}, "maximum"),
                           ({"minimum": 2, "maximum": 1}, "maximum")):
            with pytest.raises(ApiError, match=f"{field} = .* is not allowed"):
                api.cluster_action(OWNER, "cpu", {"action": "adapt", **bad})
        assert _pilots() == []  # nothing was asked for by a refused request
        with pytest.raises(ApiError, match="a local profile cannot scale or adapt"):
            api.cluster_action(OWNER, "local", {"action": "adapt"})
        with pytest.raises(ApiError) as refused:
            api.cluster_action(Caller("ada"), "cpu", {"action": "adapt", "minimum": 1})
        assert refused.value.status == 403
        cards = api.cluster_action(OWNER, "cpu", {"action": "adapt", "minimum": 1, "maximum": 2})["items"]
        assert [(c["profile"], c["kind"], c["adaptive"]) for c in cards] == [("cpu", "pilots", True)]
        _until(_pilots)  # the minimum is kept: a pilot is asked for with no work at all
        workers = _until(lambda: api.clusters(OWNER)["items"][0]["workers"])
        assert workers >= 1
        cards = api.cluster_action(OWNER, "cpu", {"action": "scale", "jobs": 0})["items"]
        assert cards[0]["adaptive"] is False  # a scale stops adapting
        _until(lambda: not _pilots())
        assert api.cluster_action(OWNER, "cpu", {"action": "stop"})["items"] == []
