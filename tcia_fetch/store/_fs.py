"""Small filesystem helpers shared by the store modules: directory fsync and OS error mapping.

Kept private so that every store module maps ``OSError`` the same way: a full disk or quota is
:class:`DiskFullError`, anything else about the destination is :class:`DestinationError`, and the
message always names the path and the errno text, which is what a user needs in a batch log.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tcia_fetch.errors import DestinationError, DiskFullError, StorageError

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Filesystems that cannot fsync a directory (some FUSE and network mounts) answer with these;
# a directory fsync is a durability hint there, not something to fail a run over.
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF})


def describe_os_error(exc: OSError) -> str:
    """``"Read-only file system (EROFS)"``: the errno text and its symbolic name."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def storage_error(exc: OSError, *, action: str, path: Path | str) -> StorageError:
    """Translate an ``OSError`` raised while doing ``action`` on ``path`` into our tree.

    ENOSPC and EDQUOT become :class:`DiskFullError`; everything else (EROFS, EACCES, EPERM,
    ESTALE, ENOENT, ...) becomes :class:`DestinationError`. Callers ``raise ... from exc``.
    """
    message = f"cannot {action} {path}: {describe_os_error(exc)}"
    if exc.errno in _DISK_FULL_ERRNOS:
        return DiskFullError(message)
    return DestinationError(message)


def fsync_directory(path: Path) -> None:
    """Make a rename or create inside ``path`` durable (POSIX needs the directory fsynced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


class DirectorySyncs:
    """Directories whose fsync a batch of publications shares (``Destination.publish(deferred=)``).

    Publishing one series fsyncs its directory and the parent it was renamed into; for a batch of
    tiny series that is two journal commits each, in one thread behind one lock. Collected here,
    each distinct directory is fsynced once, after every rename of the batch, and the first fsync
    commits all of the batch's renames at once (ext4, XFS: one running transaction), so the
    others find nothing left to write.
    """

    def __init__(self) -> None:
        self._paths: dict[Path, None] = {}

    def add(self, path: Path) -> None:
        self._paths[path] = None

    def run(self) -> None:
        """fsync every collected directory once, in the order added; raise on the first failure."""
        paths, self._paths = self._paths, {}
        for path in paths:
            try:
                fsync_directory(path)
            except OSError as exc:
                raise storage_error(exc, action="sync", path=path) from exc


def host_name() -> str:
    """This machine's short host name, safe for use inside a file name (no dots, no separators)."""
    raw = socket.gethostname().split(".", 1)[0] or "localhost"
    return "".join(ch if ch.isalnum() or ch == "-" else "_" for ch in raw)[:64]


def pid_is_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this host (EPERM means it exists but is not ours).

    A zombie is dead: it has exited and only waits for its parent to collect its status. A
    writer whose parent was SIGKILLed (such as a run's catalog child, before runs wrote the
    catalog themselves) stays such a zombie wherever PID 1 does not reap orphans (containers
    and micro-VMs whose init is a plain service): counting it as alive kept the temporaries it
    left from ever being removed.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Linux: the state letter in ``/proc/PID/stat`` is Z (zombie) or X (dead); elsewhere False."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read(4096)
    except OSError:
        return False
    # "pid (comm) S ...": comm may hold spaces and parentheses, so read after the last ")".
    state = text[text.rfind(b")") + 1 :].split(maxsplit=1)[:1]
    return state in ([b"Z"], [b"X"])


_AT_FDCWD: Final = -100
_RENAME_NOREPLACE: Final = 1
_NOREPLACE_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def _load_renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[..., int] = libc.renameat2
    except (OSError, AttributeError):
        return None
    return function


_renameat2 = _load_renameat2() if sys.platform == "linux" else None


def rename_no_replace(source: Path, target: Path) -> None:
    """``rename(source, target)`` that fails with FileExistsError instead of replacing ``target``.

    Plain ``rename(2)`` silently replaces an *empty* directory at the target; Linux's
    ``renameat2(RENAME_NOREPLACE)`` refuses atomically. Filesystems without it (NFS, older
    kernels, other systems) get an ``lstat`` check before a plain rename: exact while only one
    run writes the destination, which the destination lock ensures.
    """
    if _renameat2 is not None:
        result = _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in _NOREPLACE_UNSUPPORTED:
            raise OSError(code, os.strerror(code), str(target))
    try:
        os.lstat(target)
    except FileNotFoundError:
        os.rename(source, target)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
