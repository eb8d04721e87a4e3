"""Where a destination's run state lives: a small synchronous storage protocol and its local form.

The journal (segments, snapshot, compaction lease) must live either in a local directory
(``<dest>/.tcia-fetch/``) or under an object-store prefix (``s3://bucket/prefix/.tcia-fetch/``).
Everything the journal does with its state goes through :class:`StateStorage`, so both places
behave alike. The protocol is synchronous on purpose: the journal is called from worker threads
(``anyio.to_thread``), never from the event loop.

Names are ``/``-separated and relative to the state root. Two kinds of thing are stored:

* objects (``write``/``create``/``read``/``read_stream``/``delete``/``version``): replaced whole and
  atomically, e.g. the snapshot and the compaction lease;
* append-only logs (``append``/``read_log``/``list_logs``/``delete_log``): journal segments. A log
  is owned by exactly one writer, so no two processes ever append to the same log; an object store
  (which cannot append) keeps each append as a new object under the log's name.

:class:`LocalStateStorage` is the filesystem implementation: ``write`` is temp + fsync + rename +
directory fsync, ``create`` is ``O_EXCL``, ``append`` is an ``O_APPEND`` write followed by fsync
(one open descriptor per log, kept for the life of the storage object so that a run of 10^5
appends does not pay an open/close each). ``ObjectStateStorage`` lives with the object-store code.

Errors: a full disk or quota is :class:`DiskFullError`; any other failure to store state is
:class:`JournalError` naming the location (state that cannot be written must stop the run).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Final, Protocol, runtime_checkable

from tcia_fetch.errors import DiskFullError, JournalError
from tcia_fetch.store._fs import describe_os_error, fsync_directory

__all__ = ["LocalStateStorage", "StateStorage"]

_DISK_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


@runtime_checkable
class StateStorage(Protocol):
    """The run-state area of one destination. Names are '/'-separated, relative to the state root."""

    def describe(self, name: str) -> str:
        """A human-readable location for messages (a path or a URL)."""
        ...

    def list(self, prefix: str) -> builtins.list[str]:
        """Names of stored objects under ``prefix``, sorted."""
        ...

    def read(self, name: str) -> bytes | None:
        """The whole content of an object; None if absent."""
        ...

    def read_stream(self, name: str) -> BinaryIO | None:
        """A streaming reader (for big snapshots); None if absent. The caller closes it."""
        ...

    def write(self, name: str, data: bytes) -> None:
        """Atomically replace ``name`` with ``data``; durable when it returns."""
        ...

    def write_from(self, name: str, chunks: Iterable[bytes]) -> None:
        """Like :meth:`write`, from an iterable of chunks (a snapshot too big to hold at once).

        Added to the agreed interface: a 600,000-series snapshot is tens of MB compressed, which
        must not be assembled in memory. Object stores implement it as a multipart/streaming PUT.
        """
        ...

    def create(self, name: str, data: bytes) -> bool:
        """Create ``name`` exclusively; False (and nothing written) if it already exists."""
        ...

    def delete(self, name: str) -> None:
        """Remove an object; absent is fine."""
        ...

    def version(self, name: str) -> str | None:
        """A token that changes whenever the content is replaced; None if absent."""
        ...

    def append(self, log: str, data: bytes) -> None:
        """Durably add ``data`` to the end of ``log`` (creating it)."""
        ...

    def read_log(self, log: str) -> bytes:
        """Everything appended to ``log`` so far (b"" if none)."""
        ...

    def list_logs(self, prefix: str) -> builtins.list[str]:
        """Names of the logs under ``prefix``, sorted."""
        ...

    def delete_log(self, log: str) -> None:
        """Remove a log; absent is fine."""
        ...


def _check_name(name: str) -> None:
    """Refuse names that could leave the state root (they come from our own code, but cheaply)."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise JournalError(f"invalid state name {name!r}")


class LocalStateStorage:
    """:class:`StateStorage` over a local (or NFS/Lustre) directory, usually ``<dest>/.tcia-fetch``.

    Nothing is created until the first write, so read-only use (``status`` of a destination that
    has no state yet) leaves no trace.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._log_fds: dict[str, int] = {}
        self._fd_mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalStateStorage({str(self.state_dir)!r})"

    def _path(self, name: str) -> Path:
        _check_name(name)
        return self.state_dir / name

    def describe(self, name: str) -> str:
        return str(self._path(name)) if name else str(self.state_dir)

    def _failure(self, exc: OSError, action: str, name: str) -> JournalError | DiskFullError:
        message = f"{self.describe(name)}: cannot {action}: {describe_os_error(exc)}"
        if exc.errno in _DISK_FULL:
            return DiskFullError(message)
        return JournalError(message)

    def _ensure_parent(self, path: Path) -> None:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            fsync_directory(path.parent.parent)

    # --- objects ------------------------------------------------------------------------------

    def list(self, prefix: str) -> builtins.list[str]:
        directory = self.state_dir / prefix if prefix else self.state_dir
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._failure(exc, "list", prefix) from exc
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        return sorted(
            base + name for name in names if (directory / name).is_file() and not name.startswith(".")
        )

    def read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._failure(exc, "read", name) from exc

    def read_stream(self, name: str) -> BinaryIO | None:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._failure(exc, "read", name) from exc

    def write(self, name: str, data: bytes) -> None:
        self.write_from(name, (data,))

    def write_from(self, name: str, chunks: Iterable[bytes]) -> None:
        path = self._path(name)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
        try:
            self._ensure_parent(path)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                for chunk in chunks:
                    _write_all(fd, chunk)
                # A fine-grained mtime makes ``version`` change on every replace even where the
                # filesystem's own clock is coarse and the old inode number is reused at once.
                stamp = time.time_ns()
                os.utime(fd, ns=(stamp, stamp))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
            fsync_directory(path.parent)
        except OSError as exc:
            _unlink_quietly(temporary)
            raise self._failure(exc, "write", name) from exc
        except BaseException:
            _unlink_quietly(temporary)  # the chunks' producer failed: keep the old object
            raise

    def create(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        try:
            self._ensure_parent(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._failure(exc, "create", name) from exc
        try:
            _write_all(fd, data)
            os.fsync(fd)
            fsync_directory(path.parent)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise self._failure(exc, "create", name) from exc
        os.close(fd)
        return True

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._failure(exc, "delete", name) from exc

    def version(self, name: str) -> str | None:
        try:
            info = os.stat(self._path(name))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._failure(exc, "inspect", name) from exc
        return f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"

    # --- logs ---------------------------------------------------------------------------------

    def _log_fd(self, log: str) -> int:
        with self._fd_mutex:
            fd = self._log_fds.get(log)
            if fd is not None:
                return fd
            path = self._path(log)
            self._ensure_parent(path)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fsync_directory(path.parent)
            except OSError:
                os.close(fd)
                raise
            self._log_fds[log] = fd
            return fd

    def append(self, log: str, data: bytes) -> None:
        """Append and fsync; on failure the log is cut back to its old length (no torn tail)."""
        try:
            fd = self._log_fd(log)
        except OSError as exc:
            raise self._failure(exc, "create the log", log) from exc
        try:
            before = os.fstat(fd).st_size
        except OSError as exc:
            raise self._failure(exc, "append to", log) from exc
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, before)
                os.fsync(fd)
            except OSError:
                self.close_log(log)
            raise self._failure(exc, "append to", log) from exc

    def close_log(self, log: str) -> None:
        """Close the descriptor kept for ``log`` (local only; appending again reopens it)."""
        with self._fd_mutex:
            fd = self._log_fds.pop(log, None)
        if fd is not None:
            os.close(fd)

    def read_log(self, log: str) -> bytes:
        try:
            return self._path(log).read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise self._failure(exc, "read", log) from exc

    def list_logs(self, prefix: str) -> builtins.list[str]:
        return self.list(prefix)

    def delete_log(self, log: str) -> None:
        self.close_log(log)
        self.delete(log)

    def sync_prefix(self, prefix: str) -> None:
        """Make deletions under ``prefix`` durable (a directory fsync; no-op when absent)."""
        directory = self.state_dir / prefix if prefix else self.state_dir
        try:
            fsync_directory(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._failure(exc, "sync", prefix) from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
