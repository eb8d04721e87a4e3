"""Startup reconciliation and destination checks: make the journal and the disk agree again.

Run :func:`reconcile` once at startup, after the destination lock is held and before any
download. It closes every crash window of the publish protocol (reliability §4.7, row D1):

* staging and trash left by dead runs are removed (row D10);
* ``verified`` without ``done`` (crash between verification and the done record): if the final
  directory exists and holds exactly the recorded files with their sizes, the publish happened,
  so ``done`` is appended now; if no final directory exists the series is pending again; if one
  exists but does not match, the series is reported damaged (the engine re-fetches it and swaps it
  in with ``Destination.replace``);
* ``done``: a cheap stat check (directory present, every recorded file present with its recorded
  size, nothing else in it); anything else is reported damaged with the reasons (row D9).

:func:`recheck` is the expensive variant for ``tcia-fetch verify``: it may also re-hash every
published file against the recorded MD5. :func:`summarize` counts without touching the disk.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from tcia_fetch._crashpoint import crash_point
from tcia_fetch.errors import DestinationError
from tcia_fetch.store._fs import describe_os_error
from tcia_fetch.store.destination import Destination, default_live_owner
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.records import SeriesRecord

__all__ = [
    "DAMAGED_ON_DISK",
    "Damage",
    "DestinationStatus",
    "Reconciliation",
    "check_published",
    "recheck",
    "reconcile",
    "summarize",
]

_HASH_CHUNK_BYTES: Final = 1 << 20
#: The reference of a ``failed`` record written by ``tcia-fetch verify`` for a published series
#: whose files no longer match: the next run fetches it again and swaps it in with ``replace``.
DAMAGED_ON_DISK: Final = "damaged-on-disk"
_MAX_PROBLEMS_LISTED: Final = 5


@dataclass(frozen=True, slots=True)
class Damage:
    """A series the journal calls done (or verified) whose directory does not match the record."""

    series_uid: str
    path: str | None
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What startup reconciliation found and did."""

    leftovers_removed: int
    done: tuple[str, ...]
    adopted: tuple[str, ...]
    damaged: tuple[Damage, ...]
    pending_verified: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DestinationStatus:
    """Counts for ``tcia-fetch status``; bytes are DICOM bytes as recorded at verification."""

    done: int
    failed: int
    pending: int
    done_bytes: int
    done_file_bytes: int
    not_planned_done: int


def reconcile(
    destination: Destination,
    journal: Journal,
    *,
    live_owner: Callable[[str, int], bool] = default_live_owner,
) -> Reconciliation:
    """Bring journal and disk back in line after any crash; see the module docstring."""
    removed = destination.cleanup_leftovers(live_owner=live_owner)
    crash_point("reconcile.after_cleanup")
    done: list[str] = []
    adopted: list[str] = []
    damaged: list[Damage] = []
    pending: list[str] = []
    for uid, record in sorted(journal.latest().items()):
        if record.status == "failed":
            continue
        problems, exists = _inspect(destination, record, check_md5=False)
        if record.status == "done":
            if problems:
                damaged.append(Damage(uid, record.path, problems))
            else:
                done.append(uid)
        elif not exists:
            pending.append(uid)
        elif problems:
            damaged.append(
                Damage(uid, record.path, ("found after a crash but unlike the verified record", *problems))
            )
        else:
            journal.append(record.with_status("done", run_id=journal.run_id))
            adopted.append(uid)
            done.append(uid)
    return Reconciliation(
        leftovers_removed=removed,
        done=tuple(done),
        adopted=tuple(adopted),
        damaged=tuple(damaged),
        pending_verified=tuple(pending),
    )


def recheck(destination: Destination, journal: Journal, *, check_md5: bool) -> list[Damage]:
    """Check every ``done`` series on disk; with ``check_md5`` also re-hash each file."""
    found: list[Damage] = []
    for uid, record in sorted(journal.latest().items()):
        if record.status != "done":
            continue
        problems, _ = _inspect(destination, record, check_md5=check_md5)
        if problems:
            found.append(Damage(uid, record.path, problems))
    return found


def check_published(
    destination: Destination, record: SeriesRecord, *, check_md5: bool = False
) -> tuple[str, ...]:
    """The problems with one recorded series on disk; empty when it matches its record."""
    problems, _ = _inspect(destination, record, check_md5=check_md5)
    return problems


def summarize(journal: Journal, planned: Iterable[str] | None = None) -> DestinationStatus:
    """Done/failed/pending counts. Without a plan, pending counts ``verified`` series only."""
    latest = journal.latest()
    done_records = [record for record in latest.values() if record.status == "done"]
    if planned is None:
        failed = sum(1 for record in latest.values() if record.status == "failed")
        pending = sum(1 for record in latest.values() if record.status == "verified")
        counted_done = done_records
        not_planned = 0
    else:
        plan = set(planned)
        counted_done = [record for record in done_records if record.series_uid in plan]
        failed = sum(
            1 for uid in plan if (record := latest.get(uid)) is not None and record.status == "failed"
        )
        pending = len(plan) - len(counted_done) - failed
        not_planned = len(done_records) - len(counted_done)
    return DestinationStatus(
        done=len(counted_done),
        failed=failed,
        pending=pending,
        done_bytes=sum(record.dicom_bytes or 0 for record in counted_done),
        done_file_bytes=sum(record.total_file_bytes for record in counted_done),
        not_planned_done=not_planned,
    )


def _inspect(
    destination: Destination, record: SeriesRecord, *, check_md5: bool
) -> tuple[tuple[str, ...], bool]:
    """(problems, whether the series directory exists)."""
    if record.path is None:
        return ("no directory recorded",), False
    try:
        final = destination.final_path(PurePosixPath(record.path))
    except DestinationError as exc:
        return (str(exc),), False
    try:
        mode = os.lstat(final).st_mode
    except FileNotFoundError:
        return (f"directory {record.path} is missing",), False
    except OSError as exc:
        return (f"cannot inspect {record.path}: {describe_os_error(exc)}",), False
    if not stat.S_ISDIR(mode):
        return (f"{record.path} is not a directory (symlink or file)",), True
    on_disk, walk_problems = _list_tree(final)
    problems = list(walk_problems)
    expected = {entry.name: entry for entry in record.files}
    for name, entry in expected.items():
        actual_size = on_disk.get(name)
        if actual_size is None:
            problems.append(f"{name} is missing")
        elif actual_size != entry.size:
            problems.append(f"{name} has {actual_size} bytes, recorded {entry.size}")
        elif check_md5 and entry.md5 is not None:
            try:
                digest = _md5_of(final / name)
            except OSError as exc:
                problems.append(f"{name} cannot be read: {describe_os_error(exc)}")
                continue
            if digest != entry.md5.lower():
                problems.append(f"{name} has MD5 {digest}, recorded {entry.md5}")
    extras = sorted(set(on_disk) - set(expected))
    if extras:
        shown = ", ".join(extras[:_MAX_PROBLEMS_LISTED]) + (
            " ..." if len(extras) > _MAX_PROBLEMS_LISTED else ""
        )
        problems.append(f"{len(extras)} unexpected file(s): {shown}")
    return tuple(problems), True


def _list_tree(top: Path) -> tuple[dict[str, int], list[str]]:
    """Regular files under ``top`` (posix relative name → size), never following links."""
    sizes: dict[str, int] = {}
    problems: list[str] = []
    pending = [(top, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            problems.append(f"cannot list {prefix or '.'}: {describe_os_error(exc)}")
            continue
        for entry in entries:
            name = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                pending.append((Path(entry.path), name + "/"))
            elif entry.is_file(follow_symlinks=False):
                sizes[name] = entry.stat(follow_symlinks=False).st_size
            else:
                problems.append(f"{name} is not a regular file")
    return sizes, problems


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
