"""The spool's file operations: durable writes, directory and file-system syncs, and reads that refuse tricks.

Every write goes through a descriptor and is fsynced by the caller's protocol
(:mod:`gateway.spool.store`); reads of records and message files go through
:func:`read_regular_file`, which refuses links, FIFOs and devices, for the
root-run queue commands.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path

from gateway.message import FileSpan, FileText, MessageText, message_parts

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@functools.cache
def _syncfs_call() -> Callable[[int], int]:
    """libc's syncfs(2) as ``call(fd) -> errno`` (0: done).

    Made at the first call: ctypes (0.4 MB) is loaded only where ``spool_sync_method = "syncfs"``.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def call(fd: int) -> int:
        return 0 if libc.syncfs(fd) == 0 else ctypes.get_errno()

    return call


def syncfs(fd: int) -> None:
    # syncfs(2): write back and wait for everything of this file system, then commit its journal;
    # since Linux 5.8 it reports writeback errors that happened since the fd was opened.
    code = _syncfs_call()(fd)
    if code:
        raise OSError(code, os.strerror(code))


def syncfs_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


MAX_RECORD_BYTES = 16 * 1024 * 1024  # a record is a few kB; more is garbage, not read into memory


def open_regular_file(path: Path) -> tuple[int, int]:
    """Open ``path`` for reading only if it, and the directory holding it, are what they claim to be.

    The queue commands run as root over a spool the gateway's user can write: a
    record or message file replaced by a symbolic link (to /etc/shadow), a FIFO
    (which would block) or a device is refused, and so is a state directory
    replaced by a link. Opened with ``O_NOFOLLOW`` through the directory's own
    descriptor, so nothing can be swapped in between the checks and the read.

    Returns:
        The open descriptor (the caller closes it) and the file's size in bytes.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: a link or not a regular file.
        OSError: another error opening it.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ValueError(f"{path.parent} is not a directory of the spool (a link?)") from None
        raise
    try:
        fd = os.open(path.name, flags, dir_fd=directory)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link, not a spool file") from None
        raise
    finally:
        os.close(directory)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def read_regular_file(path: Path, limit: int | None = None) -> bytes:
    """Read ``path`` with the checks of :func:`open_regular_file`.

    Args:
        path: a file directly inside one of the spool's directories.
        limit: most bytes read; a larger file is refused (None: no limit).

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: a link, not a regular file, or larger than ``limit``.
        OSError: another error reading it.
    """
    fd, size = open_regular_file(path)
    try:
        if limit is not None and size > limit:
            raise ValueError(f"{path} has {size} bytes, more than a spool record has")
        # One read of the size fstat gave: one bytes object, no second copy of a large message.
        data = os.read(fd, size + 1)
        if len(data) <= size:
            while chunk := os.read(fd, 1 << 20):  # a short read, or a file that grew
                data += chunk
        return data
    finally:
        os.close(fd)


def map_regular_file(path: Path) -> FileText | bytes:
    """``path`` (checked as by :func:`open_regular_file`) mapped as a :class:`FileText`; b"" when empty.

    Raises:
        FileNotFoundError, ValueError, OSError: as :func:`open_regular_file`.
    """
    fd, size = open_regular_file(path)
    try:
        return FileText(fd, size) if size else b""
    finally:
        os.close(fd)  # FileText keeps a duplicate


def copy_span(span: FileSpan, fd: int) -> None:
    """Append ``span`` to ``fd`` with ``copy_file_range(2)``: the kernel copies, no message bytes in our memory.

    Falls back to bounded reads and writes where the kernel cannot (another
    file system, an old kernel).

    Raises:
        OSError: reading or writing failed (ENOSPC on a full file system).
    """
    offset, left = span.offset, span.length
    try:
        while left:
            copied = os.copy_file_range(span.text.fd, fd, left, offset)
            if copied == 0:
                raise OSError(errno.EIO, f"message file ends {left} octets early")
            offset += copied
            left -= copied
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        for chunk in span.text.chunks(offset, offset + left):
            write_all(fd, chunk)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:  # os.write may take less than all
        view = view[os.write(fd, view) :]


def rewrite_file(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` (created mode 0600 if missing) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)  # a partial tmp/ file of ours
        raise
    os.close(fd)


def create_and_write(path: str, data: MessageText) -> int:
    """Create ``path`` (O_EXCL, mode 0600), write ``data`` (bytes, or pieces in order); returns the open fd.

    The fd is not fsynced.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for piece in message_parts(data):
            if isinstance(piece, FileSpan):
                copy_span(piece, fd)
            else:
                write_all(fd, piece)
    except BaseException:
        os.close(fd)
        os.unlink(path)  # ours: O_EXCL created it
        raise
    return fd


def free_bytes(directory: Path | str) -> int:
    """Bytes an unprivileged process may still write on ``directory``'s file system (``f_bavail``, as df).

    Raises:
        OSError: when ``statvfs(2)`` fails.
    """
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize


def has_room(directory: Path, size: int, minfree: int) -> bool:
    """Whether the file system of ``directory`` can take ``size`` more bytes (0: unknown) above ``minfree``.

    As Postfix's smtpd checks a ``SIZE=`` (``smtpd_check_size``): refused when the
    free space is at most ``minfree``, when the message would eat into it, or
    when it would take half of what is free. An error examining the file system
    says yes: the commit will tell.
    """
    try:
        free = free_bytes(directory)
    except OSError:
        return True
    return free > minfree and size < free - minfree and size < free / 2
