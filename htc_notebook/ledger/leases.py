"""Leases: named leases (one holder at a time, e.g. the data root's SLURM status poll) and owners'
heartbeat leases (runtime/owner.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from .connection import LedgerCore
from .schema import ACTIVE_SQL
from .statements import IN_JSON


class Leases(LedgerCore):
    """Named leases and owners' heartbeat leases."""

    def lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease `name` for `ttl` seconds. True if `owner` holds it now; False while
        another owner's lease has not expired (of many processes asking, one holds it at a time)."""
        now = time.time()
        with self._write() as con:
            con.execute("INSERT INTO leases (name, owner, expires) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE "
                        "SET owner = ?2, expires = ?3 WHERE leases.owner = ?2 OR leases.expires < ?4",
                        (name, owner, now + ttl, now))
            return con.execute("SELECT owner FROM leases WHERE name = ?", (name,)).fetchone()[0] == owner

    def release(self, name: str, owner: str) -> None:
        """Give the lease up (if `owner` holds it), so another process takes it at once."""
        with self._write() as con:
            con.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    # --- owners' heartbeat leases (runtime/owner.py) -------------------------------------------

    def renew_owner(self, owner: str, ttl: float) -> float | None:
        """Renew `owner`'s heartbeat lease for `ttl` seconds (never shortened: a lease extended for a long
        write stays so); returns when it was due to expire before (None: it had none). The leases of
        other owners that lapsed with no active job left are dropped in the same transaction (a lookup
        by the owner index for each; nothing refers to them)."""
        with self._write() as con:
            now = time.time()  # once the write lock is held: a wait for it does not shorten the lease
            before = con.execute("SELECT expires FROM owners WHERE owner = ?", (owner,)).fetchone()
            con.execute("INSERT INTO owners (owner, expires) VALUES (?1, ?2) ON CONFLICT (owner) DO UPDATE "
                        "SET expires = MAX(expires, ?2)", (owner, now + ttl))
            con.execute(f"DELETE FROM owners WHERE expires < ? AND NOT EXISTS (SELECT 1 FROM jobs WHERE "
                        f"json_extract(spec, '$.owner') = owners.owner AND status IN ({ACTIVE_SQL}))", (now,))
        return before[0] if before else None

    def owner_leases(self, owners: Iterable[str]) -> dict[str, float]:
        """When each of `owners`' heartbeat lease expires (an owner that never renewed one is absent)."""
        return dict(self._read(f"SELECT owner, expires FROM owners WHERE owner IN {IN_JSON}",
                               (json.dumps(list(owners)),)))
