"""Which process owns a job: `host:pid`, recorded in its spec when it is submitted or retried.

A job on the local backend lives inside its owner; when the owner has exited, so has the work
(the reconcile loop marks it LOST, runtime/reconcile.py).

>>> Owner.parse("node1:4242"), Owner.parse("junk")
(Owner(host='node1', pid=4242), None)
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass


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

    def alive(self) -> bool | None:
        """True/False on this host; None when the owner is on another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def kill_orphan_group(native_id: str | None) -> bool:
    """Kill what is left of a local command job (`pid:N`, its own process group) after its owner died."""
    if not native_id or not native_id.startswith("pid:") or not native_id[4:].isdigit():
        return False
    try:
        os.killpg(int(native_id[4:]), signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False
