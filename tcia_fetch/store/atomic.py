"""Atomic small-file writes: a reader sees the old content or the new one, never a torn mix.

The protocol is the usual one (pip, aria2): write a uniquely named temporary file *beside* the
target (same directory, so the same filesystem and an atomic ``rename``), flush and fsync it,
rename it over the target, then fsync the directory so the rename itself survives a power loss.
If anything fails the temporary file is removed and the target is untouched.

Files are created private (mode ``0600``, before the umask) unless the caller asks otherwise:
run reports, plans and state may quote the server, and nobody else on a shared login node has
a reason to read them. Data meant for others (``metadata.csv``) passes ``mode=0o644``.

The async variants are for run reports and plan JSON written from the event loop; they go through
aiofiles (this is the only module that imports it), so no blocking call runs on the loop. The sync
twins serve code that already runs in a worker thread (the journal snapshot, metadata.csv).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import aiofiles
import aiofiles.os

from tcia_fetch.store._fs import fsync_directory, storage_error

__all__ = [
    "PRIVATE_FILE_MODE",
    "open_atomic_sync",
    "temporary_owner_pid",
    "write_bytes_atomic",
    "write_bytes_atomic_sync",
    "write_chunks_atomic_sync",
    "write_text_atomic",
    "write_text_atomic_sync",
]

#: Mode of the files written here unless a caller says otherwise (the umask applies on top).
PRIVATE_FILE_MODE = 0o600

_TEMPORARY_RE = re.compile(r"\.(?P<target>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{12}\.tmp")


def _temporary_sibling(path: Path) -> Path:
    # Leading dot: hidden from casual listings; pid + random nonce: unique across processes and hosts.
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def temporary_owner_pid(name: str) -> int | None:
    """The pid that wrote an atomic-write temporary named ``name``, or None if it is not one.

    Startup cleanup uses it to remove the temporaries of writers killed mid-write.
    """
    match = _TEMPORARY_RE.fullmatch(name)
    return int(match.group("pid")) if match else None


def write_bytes_atomic_sync(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably. Raises DiskFullError/DestinationError."""
    write_chunks_atomic_sync(path, (data,), mode=mode)


def write_chunks_atomic_sync(path: Path, chunks: Iterable[bytes], *, mode: int = PRIVATE_FILE_MODE) -> None:
    """:func:`write_bytes_atomic_sync` from an iterable of chunks (big files are never held whole).

    If producing the chunks fails, the temporary file is removed and ``path`` is untouched.
    """
    with open_atomic_sync(path, mode=mode) as stream:
        for chunk in chunks:
            stream.write(chunk)


@contextlib.contextmanager
def open_atomic_sync(
    path: Path, *, mode: int = PRIVATE_FILE_MODE, action: str = "write"
) -> Iterator[BinaryIO]:
    """A new file that replaces ``path`` atomically and durably when the block ends normally.

    For writers that produce a file through a file object (the Parquet catalog writes two tables
    in one pass over the journal). If the block raises, the temporary file is removed and
    ``path`` is untouched. An ``OSError`` becomes DiskFullError/DestinationError, its message
    ``cannot {action} {path}: ...``.
    """
    temporary = _temporary_sibling(path)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with open(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(fd)
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except OSError as exc:
        _remove_quietly(temporary)
        raise storage_error(exc, action=action, path=path) from exc
    except BaseException:
        _remove_quietly(temporary)
        raise


def write_text_atomic_sync(path: Path, text: str, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """UTF-8 twin of :func:`write_bytes_atomic_sync`. Newlines are written exactly as given."""
    write_bytes_atomic_sync(path, text.encode("utf-8"), mode=mode)


async def write_bytes_atomic(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Async :func:`write_bytes_atomic_sync`: every file operation runs in aiofiles' thread pool."""
    temporary = _temporary_sibling(path)
    fsync = aiofiles.os.wrap(os.fsync)
    sync_directory = aiofiles.os.wrap(fsync_directory)

    def create(name: str, flags: int) -> int:
        return os.open(name, flags | os.O_NOFOLLOW, mode)

    try:
        async with aiofiles.open(temporary, "xb", opener=create) as stream:
            await stream.write(data)
            await stream.flush()
            await fsync(stream.fileno())
        await aiofiles.os.replace(temporary, path)
        await sync_directory(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            await aiofiles.os.unlink(temporary)
        raise storage_error(exc, action="write", path=path) from exc


async def write_text_atomic(path: Path, text: str, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """UTF-8 twin of :func:`write_bytes_atomic`."""
    await write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
