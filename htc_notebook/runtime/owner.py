"""Which process owns a job: `host:pid`, recorded in its spec when it is submitted or retried, and
whether that process is still there.

A job on the local backend lives inside its owner; when the owner has exited, so has the work
(the reconcile loop marks it LOST, runtime/reconcile.py). On this host the owner's pid says so at
once. A process on another host (a kernel on a compute node: Open OnDemand, batchspawner) cannot be
looked at by its pid, so every session that reconciles renews a heartbeat lease in the ledger every
`heartbeat_seconds()`, valid for LEASE_LAPSE heartbeats: an owner on another host whose lease has
lapsed is dead. An owner on another host that never took a lease (a session that does not
reconcile, a ledger from before leases) cannot be told, and is left alone. Hosts' clocks may differ
by less than the lease (LEASE_LAPSE - 1 heartbeats) without harm.

>>> Owner.parse("node1:4242"), Owner.parse("junk")
(Owner(host='node1', pid=4242), None)
>>> Owner("elsewhere", 1).gone(leases={"elsewhere:1": 100.0}, now=160.0)
'stopped renewing its heartbeat lease 60 s ago'
>>> Owner("elsewhere", 1).gone(leases={"elsewhere:1": 100.0}, now=99.0) is None
True
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from htc_notebook.states import NativeId

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0  # between two renewals of a session's lease (HEARTBEAT_ENV sets another)
LEASE_LAPSE = 6  # heartbeats a session may miss before it counts as exited wherever it ran
HEARTBEAT_ENV = "HTC_HEARTBEAT_SECONDS"


def heartbeat_seconds() -> float:
    """The heartbeat interval: `$HTC_HEARTBEAT_SECONDS` if it is a positive number, else HEARTBEAT_SECONDS."""
    text = os.environ.get(HEARTBEAT_ENV)
    if text is None:
        return HEARTBEAT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        log.warning("%s=%r is not a positive number of seconds: %g s is used", HEARTBEAT_ENV, text, HEARTBEAT_SECONDS)
        return HEARTBEAT_SECONDS
    return value


@dataclass(frozen=True)
class Owner:
    """Which process is responsible for a job on the local backend."""

    host: str
    pid: int

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"

    @classmethod
    def parse(cls, text: str | None) -> "Owner | None":
        if not text or ":" not in text:
            return None
        host, _, pid = text.rpartition(":")
        return cls(host, int(pid)) if pid.isdigit() else None

    @property
    def here(self) -> bool:
        """Does it run on this host (its pid can be looked at)?"""
        return self.host == socket.gethostname()

    def alive(self) -> bool | None:
        """True/False on this host; None when the owner is on another host (cannot tell)."""
        if not self.here:
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def gone(self, leases: Mapping[str, float], now: float) -> str | None:
        """Why this owner counts as exited (None: it does not, or cannot be told). On this host its pid
        decides, at once; on another its heartbeat lease (`leases`: owner -> expiry) lapsed before `now`."""
        here = self.alive()
        if here is not None:
            return None if here else "has exited"
        expires = leases.get(str(self))
        if expires is not None and expires < now:
            return f"stopped renewing its heartbeat lease {now - expires:.0f} s ago"
        return None


def kill_orphan_group(native: NativeId) -> bool:
    """Kill what is left of a local command job (`pid:N`, its own process group) after its owner died.
    Only for an owner on this host: a pid of another host names another process here."""
    return orphan_group(native) == "killed"


def orphan_group(native: NativeId) -> str | None:
    """`kill_orphan_group`, saying what it found: "killed", "gone" (nothing of the group was left: a
    confined job dies with its owner, its zygote's PID namespace with it) or None (no pid, or not ours)."""
    if native.pid is None:
        return None
    try:
        os.killpg(native.pid, signal.SIGKILL)
        return "killed"
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return None
