"""The logs of ended jobs, packed into a few files per task and still read one job at a time.

While a job runs it writes `logs/job-<id>.out|err` in its task directory (read live by its owner).
Some time after it ended (`runtime/log_packer.py`), `pack_logs` appends both logs to the pack of its
id range in the task's `.htc/logs/`: `pack-<id // PACK_JOBS>.log` holds the bytes, `pack-<k>.idx` a
line per log, `<job id> <out|err> <offset> <length>`, written once the bytes are on disk; then the
loose files are removed. An empty log leaves nothing; a log over PACK_MAX_BYTES stays loose (few,
and read whole by whoever wants them). A task of 100,000 jobs keeps about 200 files, not 200,000.

Readers take the job's loose path (what the ledger records) and find its pack from it: the loose
file while it is there (a running job, a retry), else the job's last entry in the index.

Everything under the task directory may have been replaced by an unconfined job (`.htc/` is read-only
in the sandbox): it is opened as untrusted input (`storage.untrusted`), the index read bounded and
its numbers checked against the pack's size.

>>> import tempfile; task = Path(tempfile.mkdtemp()); (task / "logs").mkdir()
>>> _ = (task / "logs" / "job-7.out").write_text("hello\\n")
>>> pack_logs(task, [task / "logs" / "job-7.out"])
1
>>> (task / "logs" / "job-7.out").exists(), read_log_text(task / "logs" / "job-7.out")
(False, 'hello\\n')
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import UntrustedFile
from .untrusted import LOG_READ_LIMIT, MIB, lines_in, open_below, open_dir_below, open_in, text_tail

PACK_JOBS = 1024  # jobs whose logs share a pack (by id): a reader knows its pack without a search
PACK_MAX_BYTES = 1 * MIB  # a log longer than this stays loose
INDEX_MAX_BYTES = 8 * MIB  # an index longer than this (a job appended to it) is not read
_LOOSE = re.compile(r"^job-([0-9]+)\.(out|err)$")
log = logging.getLogger(__name__)


def pack_of(loose: str | os.PathLike[str]) -> tuple[Path, Path, int, str]:
    """(pack, index, job id, stream) of a loose log `task/logs/job-<id>.<out|err>`."""
    p = Path(loose)
    m = _LOOSE.match(p.name)
    if m is None or p.parent.name != "logs":
        raise ValueError(f"{p}: not a job's log (task/logs/job-<id>.out|err)")
    packs = p.parent.parent / ".htc" / "logs"
    k = int(m.group(1)) // PACK_JOBS
    return packs / f"pack-{k}.log", packs / f"pack-{k}.idx", int(m.group(1)), m.group(2)


def pack_logs(task_dir: str | os.PathLike[str], loose: Sequence[str | os.PathLike[str]]) -> int:
    """Move the `loose` logs (jobs of the task at `task_dir` that have ended) into their packs;
    returns how many were packed or, empty, removed. A log a job replaced by anything but a plain
    file, or longer than PACK_MAX_BYTES, is left where it is."""
    logs = os.path.join(os.fspath(task_dir), "logs")
    groups: dict[int, list[tuple[str, int, str]]] = {}  # pack -> (name, job id, stream)
    for path in loose:
        head, name = os.path.split(os.fspath(path))
        m = _LOOSE.match(name)
        if head != logs or m is None:
            raise ValueError(f"{path}: not a log of task {task_dir} (logs/job-<id>.out|err)")
        groups.setdefault(int(m.group(1)) // PACK_JOBS, []).append((name, int(m.group(1)), m.group(2)))
    if not groups:
        return 0
    logs_fd = open_dir_below(task_dir, "logs", create=False)
    if logs_fd is None:
        return 0  # no logs directory: nothing was written
    try:
        packs_fd = open_dir_below(task_dir, ".htc", "logs", create=True)
        assert packs_fd is not None  # made if missing
        try:
            return sum(_pack_group(k, names, logs, logs_fd, packs_fd) for k, names in groups.items())
        finally:
            os.close(packs_fd)
    finally:
        os.close(logs_fd)


def _pack_group(k: int, names: list[tuple[str, int, str]], logs: str, logs_fd: int, packs_fd: int) -> int:
    """Pack logs of pack `k`: append their bytes, sync, append their index lines, sync, unlink."""
    entries: list[tuple[str, str, bytes, os.stat_result]] = []  # (name, index line's key, bytes, stat)
    empty: list[tuple[str, os.stat_result]] = []
    for name, job_id, stream in names:
        try:
            fd = open_in(logs_fd, name, os.path.join(logs, name))
        except FileNotFoundError:
            continue
        except UntrustedFile as exc:
            log.warning("log left unpacked: %s", exc)
            continue
        try:
            st = os.fstat(fd)
            if st.st_size > PACK_MAX_BYTES:
                continue
            data = os.pread(fd, st.st_size, 0) if st.st_size else b""
        finally:
            os.close(fd)
        if data:
            entries.append((name, f"{job_id} {stream}", data, st))
        else:
            empty.append((name, st))
    if entries:
        packs = os.path.join(os.path.dirname(logs), ".htc", "logs")
        pfd = open_in(packs_fd, f"pack-{k}.log", os.path.join(packs, f"pack-{k}.log"),
                      os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            fcntl.flock(pfd, fcntl.LOCK_EX)  # one packer appends to a pack at a time
            offset = os.fstat(pfd).st_size
            lines = []
            for _, key, data, _ in entries:
                lines.append(f"{key} {offset} {len(data)}\n")
                offset += len(data)
            _write_all(pfd, b"".join(e[2] for e in entries))
            os.fsync(pfd)
            ifd = open_in(packs_fd, f"pack-{k}.idx", os.path.join(packs, f"pack-{k}.idx"),
                          os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                _write_all(ifd, "".join(lines).encode())
                os.fsync(ifd)
            finally:
                os.close(ifd)
        finally:
            os.close(pfd)
    for name, st in [(e[0], e[3]) for e in entries] + empty:
        _unlink_same(logs_fd, name, st)
    return len(entries) + len(empty)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink_same(dir_fd: int, name: str, st: os.stat_result) -> None:
    """Remove `name` from the directory if it is still the file that was packed (not a file a job
    put there since)."""
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino, now.st_size) == (st.st_dev, st.st_ino, st.st_size):
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def open_log(loose: str | os.PathLike[str]) -> Iterator[tuple[int, int, int]]:
    """(descriptor, offset, length) of a job's log: its loose file, else its packed bytes. Raises
    FileNotFoundError if it has neither (not written yet, or empty), UntrustedFile as `open_below`."""
    try:
        fd = open_below(loose, below=2)
    except FileNotFoundError:
        pass
    else:
        try:
            yield fd, 0, os.fstat(fd).st_size
        finally:
            os.close(fd)
        return
    try:
        pack, index, job_id, stream = pack_of(loose)
    except ValueError:
        raise FileNotFoundError(loose) from None  # not a job's log of a task: never packed
    where = _last_entry(index, job_id, stream)
    if where is None:
        raise FileNotFoundError(loose)
    fd = open_below(pack, below=3)
    try:
        offset, length = where
        if length > PACK_MAX_BYTES or offset + length > os.fstat(fd).st_size:
            raise UntrustedFile(index, f"an entry past the end of its pack ({offset} + {length})")
        yield fd, offset, length
    finally:
        os.close(fd)


def _last_entry(index: Path, job_id: int, stream: str) -> tuple[int, int] | None:
    try:
        fd = open_below(index, below=3)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > INDEX_MAX_BYTES:
            raise UntrustedFile(index, f"an index of {size} bytes (at most {INDEX_MAX_BYTES})")
        text = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    key = f"{job_id} {stream} ".encode()
    found = None
    for line in text.split(b"\n"):
        if line.startswith(key):
            words = line.split()
            if len(words) == 4 and words[2].isdigit() and words[3].isdigit():
                found = int(words[2]), int(words[3])
    return found


def read_log_text(loose: str | os.PathLike[str] | None, limit: int = LOG_READ_LIMIT) -> str:
    """A job's log as text ("" if there is none), at most its last `limit` bytes (`untrusted.text_tail`)."""
    if not loose:
        return ""
    try:
        with open_log(loose) as (fd, offset, length):
            return text_tail(fd, offset, length, limit, os.fspath(loose))
    except FileNotFoundError:
        return ""


def log_lines(loose: str | os.PathLike[str], end: int | None,
              count: int) -> tuple[list[tuple[int, bytes]], int | None]:
    """A page of a job's log read backwards (`untrusted.lines_from_end`), loose or packed alike:
    byte offsets are the log's own, so a page's `end` holds across packing. ([], None) if there is none."""
    try:
        with open_log(loose) as (fd, offset, length):
            return lines_in(fd, offset, length, end, count)
    except FileNotFoundError:
        return [], None
