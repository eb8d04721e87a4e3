"""Shared builders for the store tests: staged series, records, and a filesystem that can be made full."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from tcia_fetch.store.destination import Destination
from tcia_fetch.store.records import FileEntry, SeriesRecord

UID_A = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
UID_B = "1.3.6.1.4.1.14519.5.2.1.1706.8040.150602874655732880945154527032"
UID_C = "1.2.840.113654.2.55.1"


def stage_series(
    destination: Destination, series_uid: str, files: Mapping[str, bytes]
) -> tuple[Path, tuple[FileEntry, ...]]:
    """A staging directory holding ``files``, as the extractor would leave it, and their entries."""
    staging = destination.new_staging(series_uid)
    entries = []
    for name, data in files.items():
        (staging / name).write_bytes(data)
        entries.append(FileEntry(name=name, size=len(data), md5=hashlib.md5(data).hexdigest()))
    return staging, tuple(entries)


def record(
    series_uid: str,
    status: str = "done",
    *,
    run_id: str = "run-1",
    path: str | None = None,
    files: tuple[FileEntry, ...] = (),
    at: float | None = None,
    **extra: object,
) -> SeriesRecord:
    return SeriesRecord(
        series_uid=series_uid,
        status=status,  # type: ignore[arg-type]
        at=time.time() if at is None else at,
        run_id=run_id,
        path=path,
        files=files,
        **extra,  # type: ignore[arg-type]
    )


def publish_series(
    destination: Destination, series_uid: str, relative: str, files: Mapping[str, bytes]
) -> tuple[Path, tuple[FileEntry, ...]]:
    staging, entries = stage_series(destination, series_uid, files)
    final = destination.publish(staging, PurePosixPath(relative))
    return final, entries


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped), so it is certainly not alive."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@contextlib.contextmanager
def zombie_pid() -> Iterator[int]:
    """The pid of a process that has exited but is not yet reaped (a zombie), reaped on exit.

    What the child of a SIGKILLed process becomes where PID 1 does not reap orphans.
    """
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{process.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        yield process.pid
    finally:
        process.wait()


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, *, size: str = "256k", read_only: bool = False) -> Iterator[Path]:
    """Mount a tiny tmpfs (needs root and mount rights); the caller skips when this raises OSError."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise OSError(f"cannot mount tmpfs: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
