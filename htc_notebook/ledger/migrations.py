"""The ledger's schema on open: created (schema.py's DDL) in a new file, or upgraded from any older
version (1..13) to SCHEMA_VERSION, in one write transaction that concurrent openers queue on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import LedgerError
from ..states import JobStatus
from .schema import (DDL, LEASES_DDL, SCHEMA_VERSION, V1_STATUSES, V3_UPGRADE, V4_UPGRADE, V5_UPGRADE, V6_UPGRADE,
                     V7_UPGRADE, V8_UPGRADE, V9_STATUSES, V9_UPGRADE, V10_UPGRADE, V11_UPGRADE,
                     V12_UPGRADE, V13_BACKFILL, V13_UPGRADE, V14_UPGRADE, sql_list)
from .statements import retry


def ensure_schema(con: sqlite3.Connection, path: Path) -> None:
    """Make `con`'s database the current schema (nothing to do if it is)."""
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    retry(lambda: con.execute("BEGIN IMMEDIATE"), path)
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
        if version == 0:
            for statement in DDL:
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif 1 <= version < SCHEMA_VERSION:
            if version == 1:
                widen_statuses(con, V1_STATUSES)
                con.execute(LEASES_DDL)
            elif version <= 9:
                widen_statuses(con, V9_STATUSES)
            for statement in ((V3_UPGRADE if version < 3 else ()) + (V4_UPGRADE if version < 4 else ())
                              + (V5_UPGRADE if version < 5 else ()) + (V6_UPGRADE if version < 6 else ())
                              + (V7_UPGRADE if version < 7 else ()) + (V8_UPGRADE if version < 8 else ())
                              + (V9_UPGRADE if version < 9 else ()) + (V10_UPGRADE if version < 10 else ())
                              + (V11_UPGRADE if version < 11 else ()) + (V12_UPGRADE if version < 12 else ())
                              + (V13_UPGRADE + V13_BACKFILL if version < 13 else ()) + V14_UPGRADE):
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:  # equal: another process made it while we waited for the lock
            raise LedgerError(f"schema version {version}, this htc_notebook understands "
                              f"{SCHEMA_VERSION}; upgrade htc_notebook or use another data root")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def widen_statuses(con: sqlite3.Connection, old: str) -> None:
    """New states (v2: HELD, v10: WAITING) join the status CHECK constraints of jobs and attempts,
    which admitted `old`. A CHECK that admits more values changes no stored row, so the table
    definitions are edited in place (the procedure in SQLite's ALTER TABLE documentation), then the
    schema cookie is bumped and checked."""
    new = sql_list(frozenset(JobStatus))
    cookie = con.execute("PRAGMA schema_version").fetchone()[0]
    con.execute("PRAGMA writable_schema = ON")
    con.execute("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name IN "
                "('jobs', 'attempts')", (old, new))
    con.execute(f"PRAGMA schema_version = {cookie + 1}")
    con.execute("PRAGMA writable_schema = OFF")
    problems = con.execute("PRAGMA integrity_check").fetchall()
    if problems != [("ok",)]:
        raise LedgerError(f"upgrading the ledger to schema {SCHEMA_VERSION} failed: {problems[:3]}")
