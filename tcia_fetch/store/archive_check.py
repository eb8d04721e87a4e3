"""``verify`` for per-series ``.tar.zst`` archives on disk: re-read and re-hash every member.

The generic re-check (store/reconcile.py) already compares each stored file's size and MD5 with
the journal's record, which for an archive covers every byte of it. This adds what only the
archive's content can tell: it decompresses to the end, every DICOM member matches its line in
the archive's ``MD5SUMS``, and it holds the recorded number of instances.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from tcia_fetch.errors import DestinationError
from tcia_fetch.series.archive import ARCHIVE_SUFFIX, check_tar_zst, file_blocks
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.reconcile import Damage

__all__ = ["merge_damage", "recheck_archives"]


def recheck_archives(destination: Destination, journal: Journal) -> list[Damage]:
    found: list[Damage] = []
    for record in journal.iter_latest("done"):  # streamed: bounded memory however large the job
        uid = record.series_uid
        if record.path is None:
            continue
        for entry in record.files:
            if not entry.name.endswith(ARCHIVE_SUFFIX):
                continue
            try:
                path = destination.final_path(PurePosixPath(record.path)) / entry.name
                with open(path, "rb") as stream:
                    check = check_tar_zst(file_blocks(stream))
            except (OSError, DestinationError) as exc:
                found.append(Damage(uid, record.path, (f"{entry.name} cannot be read: {exc}",)))
                continue
            problems = list(check.problems)
            if record.instance_count is not None and check.dicom_files != record.instance_count:
                problems.append(
                    f"{entry.name} holds {check.dicom_files} DICOM files, recorded {record.instance_count}"
                )
            if problems:
                found.append(Damage(uid, record.path, tuple(problems)))
    return found


def merge_damage(first: list[Damage], second: list[Damage]) -> list[Damage]:
    """One Damage per series, reasons of both lists joined (in series order)."""
    merged: dict[str, Damage] = {}
    for item in [*first, *second]:
        known = merged.get(item.series_uid)
        merged[item.series_uid] = (
            item if known is None else Damage(item.series_uid, item.path, known.reasons + item.reasons)
        )
    return [merged[uid] for uid in sorted(merged)]
