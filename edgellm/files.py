"""Reading a file edgellm did not write (sysfs, a model, a grammar, a report): regular files only,
bounded. A FIFO or /dev/zero named where a file was wanted would block or never end."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)



class NotARegularFileError(OSError):
    """A path that names a directory, FIFO, device or socket where a file's contents were wanted."""

    def __init__(self, path: Path | str, kind: str) -> None:
        super().__init__(errno.EINVAL, f"is {kind}, not a regular file", str(path))
        self.kind = kind



def file_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a directory', ... for an st_mode that is not a regular file."""
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")



def open_regular_file(path: Path | str) -> int:
    """A read-only descriptor of `path`, refusing anything but a regular file (after symlinks).

    Opening a FIFO blocks until a writer comes and /dev/zero never ends, so the type is checked
    before opening; O_NONBLOCK and a second check on the open descriptor close the race.
    Real /proc and /sys files are regular (with st_size 0), so they pass.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(path, file_kind(mode))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(path, file_kind(mode))
    except BaseException:
        os.close(fd)
        raise
    return fd



def read_regular_file(path: Path | str, limit: int) -> bytes:
    """At most `limit` bytes of a regular file (raises OSError, NotARegularFileError for the rest)."""
    fd = open_regular_file(path)
    try:
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1024**2))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
