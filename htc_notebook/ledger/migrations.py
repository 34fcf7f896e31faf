"""The ledger's schema on open: created (schema.py's DDL) in a new file, or upgraded from any older
version (1..8) to SCHEMA_VERSION, in one write transaction that concurrent openers queue on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import LedgerError
from ..states import JobStatus
from .schema import (DDL, LEASES_DDL, SCHEMA_VERSION, V1_STATUSES, V3_UPGRADE, V4_UPGRADE, V5_UPGRADE, V6_UPGRADE,
                     V7_UPGRADE, V8_UPGRADE, V9_UPGRADE, sql_list)
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
                _upgrade_v1(con)
            for statement in ((V3_UPGRADE if version < 3 else ()) + (V4_UPGRADE if version < 4 else ())
                              + (V5_UPGRADE if version < 5 else ()) + (V6_UPGRADE if version < 6 else ())
                              + (V7_UPGRADE if version < 7 else ()) + (V8_UPGRADE if version < 8 else ())
                              + V9_UPGRADE):
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:  # equal: another process made it while we waited for the lock
            raise LedgerError(f"schema version {version}, this htc_notebook understands "
                              f"{SCHEMA_VERSION}; upgrade htc_notebook or use another data root")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _upgrade_v1(con: sqlite3.Connection) -> None:
    """v1 -> v2 (then v3 follows): the HELD state joins the CHECK constraints of jobs and attempts,
    and leases appear. A CHECK that admits more values changes no stored row, so the table
    definitions are edited in place (the procedure in SQLite's ALTER TABLE documentation), then the
    schema cookie is bumped and checked."""
    new = sql_list(frozenset(JobStatus))
    cookie = con.execute("PRAGMA schema_version").fetchone()[0]
    con.execute("PRAGMA writable_schema = ON")
    con.execute("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name IN "
                "('jobs', 'attempts')", (V1_STATUSES, new))
    con.execute(f"PRAGMA schema_version = {cookie + 1}")
    con.execute("PRAGMA writable_schema = OFF")
    problems = con.execute("PRAGMA integrity_check").fetchall()
    if problems != [("ok",)]:
        raise LedgerError(f"upgrading the ledger to schema {SCHEMA_VERSION} failed: {problems[:3]}")
    con.execute(LEASES_DDL)
