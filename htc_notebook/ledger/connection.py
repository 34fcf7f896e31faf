"""The ledger's core, which every concern builds on: its SQLite file (created 0600), one connection per
thread (PRAGMAs run, schema made or upgraded on open), and the transactions: `_write` (BEGIN IMMEDIATE,
so concurrent writers queue on the lock instead of failing halfway), `_snapshot` and `_read`."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from ..errors import LedgerError
from .migrations import ensure_schema
from .schema import PRAGMAS
from .statements import LOCK_WAIT, retry


def _create_private(path: Path) -> None:
    """Make the ledger file 0600 if it is not there (SQLite's -wal and -shm take its mode). Only when
    missing: closing any descriptor of a database file drops every POSIX lock this process holds on
    it, which SQLite's connections in other threads rely on (it answers "disk I/O error")."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass


_WRITERS: dict[tuple[int, str], threading.Lock] = {}  # (pid, ledger file) -> its writers' lock in this process
_WRITERS_LOCK = threading.Lock()


def _writers(path: Path) -> threading.Lock:
    """The lock this process's threads take before they ask SQLite for the write lock of `path`. Queued
    on it, a writer starts the moment the last one commits; queued on SQLite's busy handler, it slept
    1, 2, 5, 10 ... ms between looks (measured: a release's write took 4.9 ms under the recorder's
    commits, most of it asleep). Other processes still queue on SQLite's lock. Keyed by pid: a forked
    child never inherits a lock a thread of its parent held."""
    key = (os.getpid(), str(path.resolve()))
    with _WRITERS_LOCK:
        lock = _WRITERS.get(key)
        if lock is None:
            lock = _WRITERS[key] = threading.Lock()
        return lock


class LedgerCore:
    """The ledger file and its transactions. Safe for many threads (one connection each) and many processes."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._writing: tuple[int, threading.Lock] | None = None  # (pid, its writers' lock): see _writers
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._con()  # open now: errors surface here, and the schema exists afterwards

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def _con(self) -> sqlite3.Connection:
        if self._closed:
            raise LedgerError(f"ledger {self.path} is closed")
        con = getattr(self._local, "con", None)
        if con is None or self._local.pid != os.getpid():  # new thread, or a forked child
            con = self._open()
            self._local.con, self._local.pid = con, os.getpid()
            with self._lock:
                self._connections.append(con)
        return con

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(self.path)
            con = sqlite3.connect(self.path, timeout=LOCK_WAIT, isolation_level=None,
                                  check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise LedgerError(f"cannot open ledger {self.path}: {e}") from e
        try:
            for pragma in PRAGMAS:
                def run(p: str = pragma) -> list[Any]:
                    return con.execute(p).fetchall()
                retry(run, self.path)
            ensure_schema(con, self.path)
        except BaseException as e:
            con.close()
            if isinstance(e, LedgerError):
                raise LedgerError(f"cannot open ledger {self.path}: {e.__cause__ or e}") from e
            raise
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any error (this process's
        writers queued on one lock first)."""
        con = self._con()
        if self._writing is None or self._writing[0] != os.getpid():
            self._writing = (os.getpid(), _writers(self.path))
        with self._writing[1]:
            retry(lambda: con.execute("BEGIN IMMEDIATE"), self.path)
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as e:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise LedgerError(f"ledger {self.path}: {e}") from e
                raise

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs see one consistent state."""
        con = self._con()
        try:
            con.execute("BEGIN")
            try:
                yield con
            finally:
                con.execute("COMMIT")
        except sqlite3.Error as e:
            raise LedgerError(f"ledger {self.path}: {e}") from e

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._con().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise LedgerError(f"ledger {self.path}: {e}") from e

    def close(self) -> None:
        """Close every thread's connection; the Ledger cannot be used afterwards."""
        with self._lock:
            self._closed = True
            for con in self._connections:
                con.close()
            self._connections.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
