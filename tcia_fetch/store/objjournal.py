"""Adapter: today's file-based :class:`Journal` with its records stored in a bucket.

TEMPORARY, until ``Journal.open(storage: StateStorage, ...)`` lands (issue 13): then the
integrator replaces :func:`open_bucket_journal` with ``Journal.open(ObjectStateStorage(...))``
and deletes this module.

How it works: at open, the bucket's snapshot and every journal log are copied into a private
local mirror directory (the run holds the bucket lock, so they cannot change meanwhile) and the
ordinary Journal reads them there. Every ``extend`` (one group commit) is written to the local
segment AND, before it returns, appended to the bucket log of the same name
(``ObjectStateStorage.append``: one new object per commit). So a record the worker considers
durable is durable in the bucket, and another machine resumes from the bucket alone.
``compact`` writes the snapshot locally, PUTs it to the bucket, then deletes the bucket logs it
folded (a crash in between leaves records twice, which merging tolerates: the latest wins).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from tcia_fetch.errors import JournalError, StorageError
from tcia_fetch.store.journal import SEGMENT_DIR, SNAPSHOT_NAME, Journal
from tcia_fetch.store.objstate import ObjectStateStorage
from tcia_fetch.store.records import SeriesRecord

__all__ = ["BucketJournal", "open_bucket_journal"]

_LOG_PREFIX: Final = SEGMENT_DIR + "/"


class BucketJournal(Journal):
    """A Journal whose appends and compactions are mirrored to an :class:`ObjectStateStorage`."""

    storage: ObjectStateStorage
    pulled_logs: list[str]

    def extend(self, records: Iterable[SeriesRecord]) -> None:
        batch = list(records)
        if not batch:
            return
        super().extend(batch)
        segment = self._segment_path
        assert segment is not None
        data = b"".join((record.to_json() + "\n").encode("utf-8") for record in batch)
        try:
            self.storage.append(_LOG_PREFIX + segment.name, data)
        except StorageError as exc:
            raise JournalError(f"cannot append to the journal in the bucket: {exc}") from exc

    def compact(self) -> int:
        own = self._segment_path.name if self._segment_path is not None else None
        count = super().compact()
        snapshot = self._state_dir / SNAPSHOT_NAME
        folded = [*self.pulled_logs, *([_LOG_PREFIX + own] if own else [])]
        if not folded:
            return count
        self.storage.write(SNAPSHOT_NAME, snapshot.read_bytes())
        for log in folded:
            self.storage.delete_log(log)
        self.pulled_logs = []
        return count


def open_bucket_journal(storage: ObjectStateStorage, mirror: Path, *, run_id: str) -> BucketJournal:
    """Copy the bucket's journal into ``mirror`` (wiped first) and open it there."""
    shutil.rmtree(mirror, ignore_errors=True)
    (mirror / SEGMENT_DIR).mkdir(parents=True)
    snapshot = storage.read(SNAPSHOT_NAME)
    if snapshot is not None:
        (mirror / SNAPSHOT_NAME).write_bytes(snapshot)
    logs = storage.list_logs(_LOG_PREFIX)
    for log in logs:
        (mirror / log).write_bytes(storage.read_log(log))
    journal = BucketJournal.open(mirror, run_id=run_id)
    assert isinstance(journal, BucketJournal)
    journal.storage = storage
    journal.pulled_logs = logs
    return journal
