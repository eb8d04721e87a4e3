"""Startup reconciliation and destination checks: make the journal and the disk agree again.

Run :func:`reconcile` once at startup, after the destination lock is held and before any
download. It closes every crash window of the publish protocol (reliability §4.7, row D1), and
looks only at what a crash can have left, so that a rerun of a 600,000-series job does not stat
600,000 directories (issue 13):

* staging and trash left by dead runs are removed (row D10);
* ``verified`` without ``done`` (crash between verification and the done record): if the final
  directory exists and holds exactly the recorded files with their sizes, the publish happened,
  so ``done`` is appended now; if no final directory exists the series is pending again; if one
  exists but does not match, the series is reported damaged (the engine re-fetches it and swaps it
  in with ``Destination.replace``);
* ``done`` series whose directory a dead repair had moved to the trash (a crash inside
  ``Destination.replace``): checked on disk, and reported damaged when not intact.

Every other ``done`` series is trusted: the journal records it only after a durable publish.
Damage done to the files later (a user deleting or editing them) is found by ``tcia-fetch
verify`` (:func:`recheck`, which can also re-hash every file), which records it in the journal
so the next run fetches those series again. :func:`summarize` counts without touching the disk.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from tcia_fetch._crashpoint import crash_point
from tcia_fetch.errors import DestinationError
from tcia_fetch.store._fs import describe_os_error
from tcia_fetch.store.destination import Destination, default_live_owner, leftover_stem, parse_owner
from tcia_fetch.store.digests import SortedDigests
from tcia_fetch.store.journal import DAMAGED_ON_DISK, Journal, Kind
from tcia_fetch.store.records import SeriesRecord

__all__ = [
    "DAMAGED_ON_DISK",
    "Damage",
    "DestinationStatus",
    "Reconciliation",
    "check_published",
    "iter_damage",
    "recheck",
    "reconcile",
    "summarize",
]

_HASH_CHUNK_BYTES: Final = 1 << 20
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
    """What startup reconciliation found and did.

    ``done`` lists only the series this reconciliation inspected and found intact (adopted
    ``verified`` ones, and ``done`` ones a dead repair had touched), not every done series:
    ``Journal.counts()`` has the totals.
    """

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


def _dead_trash_stems(destination: Destination, live_owner: Callable[[str, int], bool]) -> set[str]:
    """Directory-name stems of trash entries whose owner is dead (repairs cut short by a crash)."""
    try:
        names = os.listdir(destination.trash_dir)
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise DestinationError(f"cannot list {destination.trash_dir}: {describe_os_error(exc)}") from exc
    stems = set()
    for name in names:
        owner = parse_owner(name)
        if owner is not None and not live_owner(*owner):
            stems.add(name.split("~", 1)[0])
    return stems


def reconcile(
    destination: Destination,
    journal: Journal,
    *,
    live_owner: Callable[[str, int], bool] = default_live_owner,
) -> Reconciliation:
    """Bring journal and disk back in line after any crash; see the module docstring."""
    repairs_cut_short = _dead_trash_stems(destination, live_owner)
    removed = destination.cleanup_leftovers(live_owner=live_owner)
    crash_point("reconcile.after_cleanup")
    done: list[str] = []
    adopted: list[str] = []
    damaged: list[Damage] = []
    pending: list[str] = []
    counts = journal.counts()
    kinds: list[Kind] = []
    if counts.verified:
        kinds.append("verified")
    if repairs_cut_short and counts.done:
        kinds.append("done")
    found: list[SeriesRecord] = []
    if kinds:
        for record in journal.iter_latest(*kinds):
            if record.status == "done" and leftover_stem(PurePosixPath(record.path or "").name) not in (
                repairs_cut_short
            ):
                continue
            found.append(record)
    for record in sorted(found, key=lambda item: item.series_uid):
        uid = record.series_uid
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
    """Check every ``done`` series on disk; with ``check_md5`` also re-hash each file (sorted list)."""
    return sorted(iter_damage(destination, journal, check_md5=check_md5), key=lambda item: item.series_uid)


def iter_damage(destination: Destination, journal: Journal, *, check_md5: bool) -> Iterator[Damage]:
    """:func:`recheck` one record at a time, in journal order (for destinations of any size)."""
    for record in journal.iter_latest("done"):
        problems, _ = _inspect(destination, record, check_md5=check_md5)
        if problems:
            yield Damage(record.series_uid, record.path, problems)


def check_published(
    destination: Destination, record: SeriesRecord, *, check_md5: bool = False
) -> tuple[str, ...]:
    """The problems with one recorded series on disk; empty when it matches its record."""
    problems, _ = _inspect(destination, record, check_md5=check_md5)
    return problems


def summarize(journal: Journal, planned: SortedDigests | Iterable[str] | None = None) -> DestinationStatus:
    """Done/failed/pending counts. Without a plan, pending counts ``verified`` series only.

    ``planned`` is the last plan as UID digests (``last-plan`` file) or UIDs; counting walks it
    with one O(log n) lookup per planned series, never holding records.
    """
    counts = journal.counts()
    if planned is None:
        return DestinationStatus(
            done=counts.done,
            failed=counts.failed,
            pending=counts.verified,
            done_bytes=counts.done_bytes,
            done_file_bytes=counts.done_file_bytes,
            not_planned_done=0,
        )
    plan = planned if isinstance(planned, SortedDigests) else SortedDigests.of_uids(planned)
    done = failed = done_bytes = done_file_bytes = 0
    for digest in plan:
        brief = journal.brief(digest)
        if brief is None:
            continue
        status, dicom, file_bytes = brief
        if status == "done":
            done += 1
            done_bytes += dicom
            done_file_bytes += file_bytes
        elif status == "failed":
            failed += 1
    return DestinationStatus(
        done=done,
        failed=failed,
        pending=len(plan) - done - failed,
        done_bytes=done_bytes,
        done_file_bytes=done_file_bytes,
        not_planned_done=counts.done - done,
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
