"""Files a job could have touched, opened as untrusted input.

A job writes its task directory, so any name under it (`logs/`, `logs/job-1.out`) may have been
replaced by a symlink to a file of the server's user, a FIFO that blocks its reader for ever, a
device, a directory or a hard link to another file. Everything the toolkit reads or appends to
there after a job ran goes through this module:

- each component below the trusted directory (the task directory, which the job cannot replace)
  is opened with O_NOFOLLOW, relative to the descriptor of the one above (`openat`);
- the file is opened with O_NONBLOCK (a FIFO never blocks: refused) and kept only if it is a
  regular file with one name (a hard link to a file elsewhere is refused);
- reads are bounded: a tail, a head, or the whole file only up to a limit.

A refusal is an `errors.UntrustedFile` (a PermissionError) naming the path and what was found there.

>>> import tempfile, os
>>> d = tempfile.mkdtemp(); os.mkdir(f"{d}/logs"); os.symlink("/etc/passwd", f"{d}/logs/job-1.out")
>>> read_tail(f"{d}/logs/job-1.out", 100, below=2)
Traceback (most recent call last):
...
htc_notebook.errors.UntrustedFile: refused .../logs/job-1.out: a symbolic link (a job's file is never followed)
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Iterator

from ..errors import UntrustedFile

MIB = 1 << 20
LOG_READ_LIMIT = 8 * MIB  # what a reader of a job's log gets at most: its last 8 MiB
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def open_below(path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o600, *, below: int) -> int:
    """A descriptor of `path`, whose last `below` components a job could have replaced (the
    directories above them are the toolkit's own): each of those opened without following a
    link, the file without blocking, kept only if it is a regular file with one name.
    `flags` may add O_WRONLY/O_APPEND/O_CREAT/O_EXCL; the caller closes the descriptor."""
    p = Path(path)
    parts = p.parts[-below:]
    if below < 1 or len(p.parts) <= below or any(part in ("..", ".") for part in parts):
        raise ValueError(f"{p}: {below} untrusted components below an absolute, plain path")
    top = os.open(p.parents[below - 1], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=top)
            except OSError as exc:
                _refuse_link(exc, p, part, top)
                raise
            os.close(top)
            top = sub
        return open_in(top, parts[-1], p, flags, mode)
    finally:
        os.close(top)


def open_in(dir_fd: int, name: str, path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """`open_below`'s last step: `name` in the directory `dir_fd` (opened by `open_below` or
    `open_dir_below`), not through a link, without blocking, kept only if it is a regular file
    with one name; `path` names it in a refusal."""
    try:
        fd = os.open(name, flags | _FILE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        _refuse_link(exc, path, name, dir_fd)
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UntrustedFile(Path(path), _kind(st.st_mode) if not stat.S_ISREG(st.st_mode)
                            else f"a regular file with {st.st_nlink} names (a hard link)")
    return fd


def open_dir_below(top: str | os.PathLike[str], *names: str, create: bool) -> int | None:
    """A descriptor of top/names... (the caller closes it), each component opened without following
    a link (made 0700 if `create`); None if one is missing and not `create`."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create:
                    raise
                return None
            except OSError as exc:
                raise UntrustedFile(Path(top, name), "not a directory of the toolkit's (a link?)") from exc
            os.close(fd)
            fd = sub
        fd, out = -1, fd
        return out
    finally:
        if fd >= 0:
            os.close(fd)


def _refuse_link(exc: OSError, path: str | os.PathLike[str], name: str, dir_fd: int) -> None:
    """Turn the OS's answer to an O_NOFOLLOW open (ELOOP, ENOTDIR, ENXIO: a FIFO without a
    reader) into an UntrustedFile that says what the job left there."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EISDIR, errno.EWOULDBLOCK):
        return
    try:
        found = _kind(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return
    raise UntrustedFile(Path(path), found) from None


def read_tail(path: str | os.PathLike[str], limit: int, *, below: int) -> bytes:
    """The last `limit` bytes of a job's file (see `open_below` for `below`)."""
    fd = open_below(path, below=below)
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, min(limit, size), max(0, size - limit))
    finally:
        os.close(fd)


def read_head(path: str | os.PathLike[str], limit: int, *, below: int) -> bytes:
    """The first `limit` bytes of a job's file (an exit or start file: a few words)."""
    fd = open_below(path, below=below)
    try:
        return os.pread(fd, min(limit, os.fstat(fd).st_size), 0)
    finally:
        os.close(fd)


def read_text_tail(path: str | os.PathLike[str] | None, limit: int = LOG_READ_LIMIT, *, below: int) -> str:
    """A job's log as text: "" if it is not there, its last `limit` bytes (from a line's start,
    after a note of what was left out) if it is longer."""
    if not path:
        return ""
    try:
        fd = open_below(path, below=below)
    except FileNotFoundError:
        return ""
    try:
        return text_tail(fd, 0, os.fstat(fd).st_size, limit, os.fspath(path))
    finally:
        os.close(fd)


def text_tail(fd: int, base: int, size: int, limit: int, name: str) -> str:
    """The last `limit` bytes of the `size` bytes at `base` of `fd` as text (see `read_text_tail`;
    `name` is the log's name in the note of what was left out)."""
    data = os.pread(fd, min(limit, size), base + max(0, size - limit))
    if size <= limit:
        return data.decode(errors="replace")
    cut = data.find(b"\n") + 1
    return (f"[first {size - len(data) + cut} bytes not shown: the whole log is {name}]\n"
            + data[cut:].decode(errors="replace"))


@contextlib.contextmanager
def job_logs(out: str | os.PathLike[str], err: str | os.PathLike[str], *, below: int = 2) -> Iterator[tuple[int, int]]:
    """A job's stdout and stderr files opened for appending by its runner (descriptors for Popen),
    created 0600 if missing; refused (UntrustedFile) if the job left anything there but a plain file
    of its own: a link, a FIFO, a directory, a hard link. Closed on leaving the block."""
    fds: list[int] = []
    try:
        for path in (out, err):
            fds.append(open_below(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600, below=below))
        yield fds[0], fds[1]
    finally:
        for fd in fds:
            os.close(fd)


def lines_from_end(path: str | os.PathLike[str], end: int | None, count: int, *, below: int,
                   max_line: int = 64 * 1024, block: int = 64 * 1024) -> tuple[list[tuple[int, bytes]], int | None]:
    """A page of a job's file read backwards: up to `count` lines that end at byte `end` (None:
    the file's end), newest first, each as (its line number from 1, its bytes; a line longer than
    `max_line` keeps its last `max_line` bytes), and the `end` of the page before (None at the
    file's start). Holds a block and a line at a time in memory, whatever the file's size; the
    line numbers come from counting newlines before the page, a block at a time."""
    fd = open_below(path, below=below)
    try:
        return lines_in(fd, 0, os.fstat(fd).st_size, end, count, max_line=max_line, block=block)
    finally:
        os.close(fd)


def lines_in(fd: int, base: int, size: int, end: int | None, count: int, *, max_line: int = 64 * 1024,
             block: int = 64 * 1024) -> tuple[list[tuple[int, bytes]], int | None]:
    """`lines_from_end` on the `size` bytes at `base` of `fd` (a log packed among others): offsets
    are the log's own, from 0."""
    if end is None:
        end = size - 1 if size and os.pread(fd, 1, base + size - 1) == b"\n" else size  # a last newline ends a line
    end = max(0, min(end, size))
    found: list[tuple[int, bytes]] = []  # (offset, bytes)
    pos, tail = end, b""  # `tail`: the end of the line being read back (at most max_line bytes)
    while pos > 0 and len(found) < count:
        start = max(0, pos - block)
        chunk, pos = os.pread(fd, pos - start, base + start), start
        while len(found) < count:
            nl = chunk.rfind(b"\n")
            if nl < 0:
                tail = (chunk + tail)[-max_line:]
                break
            found.append((pos + nl + 1, (chunk[nl + 1:] + tail)[-max_line:]))
            chunk, tail = chunk[:nl], b""
    if len(found) < count and pos == 0 and end > 0:
        found.append((0, tail))
    first = found[-1][0] if found else 0
    number = _newlines(fd, base, first, block) + len(found)
    return [(number - i, text) for i, (_, text) in enumerate(found)], (first - 1 if first > 0 else None)


def _newlines(fd: int, base: int, before: int, block: int) -> int:
    n, pos = 0, 0
    while pos < before:
        chunk = os.pread(fd, min(block * 16, before - pos), base + pos)
        if not chunk:
            break
        n, pos = n + chunk.count(b"\n"), pos + len(chunk)
    return n
