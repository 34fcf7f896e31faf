"""When the client asks for a pilot's replacement (`PilotLifetimes`, a clock of the test's own):
a queue wait, as measured for the cluster's pilots, ahead of its deadline; and once a pilot has
had no worker for LOST_AFTER s (it ended early). The SLURM side is in test_pilot_faults.py and
test_retries_slurm.py."""

from __future__ import annotations

from htc_notebook.backends.slurm.pilot_lifetimes import DEFAULT_WAIT, FLOOR_WAIT, LOST_AFTER, MARGIN, PilotLifetimes

LIFETIME = 600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_pilot_without_a_worker_is_never_replaced():
    clock = Clock()
    lifetimes = PilotLifetimes(LIFETIME, clock=clock)
    for _ in range(10):
        assert lifetimes.due({"p-0"}, set()) == {}
        clock.now += 3 * LIFETIME  # queued for ever: nothing to replace, nothing measured
    assert lifetimes.waits == () and lifetimes.expected_wait() == DEFAULT_WAIT


def test_a_pilot_is_replaced_a_measured_queue_wait_ahead_of_its_deadline_and_once():
    clock = Clock()
    lifetimes = PilotLifetimes(LIFETIME, clock=clock)
    assert lifetimes.due(set(), set()) == {}  # looking before the first pilot is asked for
    clock.now += 1.0
    assert lifetimes.due({"p-0"}, set()) == {}  # asked for (at the latest at the look before)
    clock.now += 99.0
    assert lifetimes.due({"p-0"}, {"p-0"}) == {}  # its worker arrived: a wait of 100 s
    assert lifetimes.waits == (100.0,) and lifetimes.expected_wait() == 100.0
    arrived = clock.now
    clock.now = arrived + LIFETIME - 100.0 - MARGIN - 1  # just before its time
    assert lifetimes.due({"p-0"}, {"p-0"}) == {}
    clock.now += 1
    assert lifetimes.due({"p-0"}, {"p-0"}) == {"p-0": 100.0 + MARGIN}
    clock.now += 1
    assert lifetimes.due({"p-0"}, {"p-0"}) == {}  # once only, even while still in the plan
    clock.now += 50
    assert lifetimes.due({"p-1"}, set()) == {}  # p-0 left the plan (it works on: not our business)
    clock.now += LIFETIME
    assert lifetimes.due({"p-1"}, set()) == {}  # p-1 is still queued


def test_before_any_wait_is_measured_the_default_holds_and_a_short_wait_counts_as_the_floor():
    clock = Clock()
    lifetimes = PilotLifetimes(LIFETIME, clock=clock)
    assert lifetimes.due({"p-0"}, set()) == {}  # asked before the first look: its wait is unknown
    clock.now += 200.0
    assert lifetimes.due({"p-0"}, {"p-0"}) == {}
    assert lifetimes.waits == () and lifetimes.expected_wait() == DEFAULT_WAIT
    clock.now += LIFETIME - DEFAULT_WAIT - MARGIN
    assert lifetimes.due({"p-0"}, {"p-0"}) == {"p-0": DEFAULT_WAIT + MARGIN}
    clock.now += 1.0
    assert lifetimes.due({"p-1", "p-2"}, {"p-2"}) == {}  # both asked since the last look, p-2 there already
    p2 = clock.now
    clock.now += 1.0
    assert lifetimes.due({"p-1", "p-2"}, {"p-1", "p-2"}) == {}
    assert lifetimes.waits == (1.0, 2.0) and lifetimes.expected_wait() == FLOOR_WAIT  # an idle cluster
    clock.now = p2 + LIFETIME - FLOOR_WAIT - MARGIN - 0.5
    assert lifetimes.due({"p-1", "p-2"}, {"p-1", "p-2"}) == {}
    clock.now += 0.5
    assert lifetimes.due({"p-1", "p-2"}, {"p-1", "p-2"}) == {"p-2": FLOOR_WAIT + MARGIN}
    clock.now += 1.0
    assert lifetimes.due({"p-1"}, {"p-1"}) == {"p-1": FLOOR_WAIT + MARGIN}


def test_the_expected_wait_is_the_p95_of_the_last_20_waits():
    clock = Clock()
    lifetimes = PilotLifetimes(LIFETIME, clock=clock)
    lifetimes.due(set(), set())

    def measure(*waits: float) -> float:
        for wait in waits:
            job = f"p-{clock.now}"
            lifetimes.due({job}, set())
            clock.now += wait
            lifetimes.due({job}, {job})
        return lifetimes.expected_wait()

    assert measure(30.0, 3000.0) == 3000.0  # few waits: the longest
    assert measure(*[30.0] * 18) == 30.0  # one long wait in 20 is an outlier
    assert measure(3000.0) == 3000.0  # two are not
    assert measure(*[40.0] * 19) == 40.0  # the first long wait fell out: one in 20 again


def test_a_runner_tells_its_hook_of_its_client_however_it_was_started():
    """The pilots' drain subscription (`replace_draining_pilots`) was made only by a first
    submission: pilots started by `Session.scale` or `start` never had their draining noticed."""
    from distributed import LocalCluster

    from htc_notebook.backends.dask_jobs import DaskJobs

    seen = []
    runner = DaskJobs(lambda: LocalCluster(n_workers=1, processes=False, dashboard_address=None), reporter=None,
                      on_client=lambda client, cluster: seen.append((client, cluster)))
    try:
        cluster = runner.cluster  # what Session.scale reaches first
        assert seen == [(runner.client, cluster)]
        runner.client  # noqa: B018 - made once: told once
        assert len(seen) == 1
    finally:
        runner.close()


def test_a_pilot_whose_workers_are_gone_for_a_while_is_lost_once_and_a_nanny_restart_is_not_that():
    clock = Clock()
    lifetimes = PilotLifetimes(LIFETIME, clock=clock)
    lifetimes.due({"p-0", "p-1"}, set())
    assert lifetimes.lost() == []  # queued, no worker yet: not lost (however long it waits)
    clock.now += 5 * LOST_AFTER
    lifetimes.due({"p-0", "p-1"}, {"p-0", "p-1"})
    clock.now += 1.0
    lifetimes.due({"p-0", "p-1"}, {"p-1"})  # p-0's workers left (its only worker restarting, say)
    clock.now += LOST_AFTER - 2
    lifetimes.due({"p-0", "p-1"}, {"p-0", "p-1"})  # and came back in time
    assert lifetimes.lost() == []
    clock.now += 1.0
    lifetimes.due({"p-0", "p-1"}, {"p-1"})  # gone again (scancelled)
    gone = clock.now
    clock.now = gone + LOST_AFTER - 0.5
    lifetimes.due({"p-0", "p-1"}, {"p-1"})
    assert lifetimes.lost() == []
    clock.now = gone + LOST_AFTER
    lifetimes.due({"p-0", "p-1"}, {"p-1"})
    assert lifetimes.lost() == ["p-0"]
    clock.now += 1.0
    lifetimes.due({"p-0", "p-1"}, {"p-1"})
    assert lifetimes.lost() == []  # once only, even while still in the plan
    assert lifetimes.due({"p-1"}, {"p-1"}) == {}  # and due() does not return it either


def test_a_pilot_replaced_for_its_deadline_is_not_lost_when_it_leaves():
    clock = Clock()
    lifetimes = PilotLifetimes(LIFETIME, clock=clock)
    lifetimes.due({"p-0"}, set())
    clock.now += 10.0
    lifetimes.due({"p-0"}, {"p-0"})
    clock.now += LIFETIME
    assert lifetimes.due({"p-0"}, {"p-0"}) != {}  # replaced (it stays planned until the client drops it)
    clock.now += 1.0
    lifetimes.due({"p-0"}, set())  # it drained and left
    clock.now += 2 * LOST_AFTER
    lifetimes.due({"p-0"}, set())
    assert lifetimes.lost() == []
