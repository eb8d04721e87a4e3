"""Group commit: concurrent appends share flushes, and every record is durable when append returns."""

from __future__ import annotations

import errno
from pathlib import Path, PurePosixPath

import anyio
import pytest

import tcia_fetch.store.destination as destination_module
from tcia_fetch.engine.commit import GroupCommit, GroupPublisher
from tcia_fetch.errors import DestinationError, FinalPathExistsError, JournalError
from tcia_fetch.store import _fs
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.journal import FileEntry, Journal, SeriesRecord

pytestmark = pytest.mark.anyio


def record(index: int) -> SeriesRecord:
    return SeriesRecord(series_uid=f"1.2.{index}", status="failed", at=float(index), run_id="r", reason="x")


async def test_concurrent_appends_are_all_durable_in_fewer_flushes(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, run_id="r")
    commit = GroupCommit(journal)
    returned: list[int] = []

    async def append(index: int) -> None:
        await commit.append(record(index))
        returned.append(index)

    async with anyio.create_task_group() as group:
        for index in range(50):
            group.start_soon(append, index)
    journal.close()
    reread = Journal.open(tmp_path, run_id="check")
    assert sorted(returned) == list(range(50))
    assert set(reread.latest()) == {f"1.2.{index}" for index in range(50)}
    assert commit.flushes < 50


async def test_a_failed_flush_fails_every_caller_whose_record_it_held(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, run_id="r")
    (tmp_path / "journal").write_text("a file where the segment directory must go")
    commit = GroupCommit(journal)
    outcomes: list[str] = []

    async def append(index: int) -> None:
        try:
            await commit.append(record(index))
        except JournalError:
            outcomes.append("error")
        else:
            outcomes.append("returned")

    async with anyio.create_task_group() as group:
        for index in range(5):
            group.start_soon(append, index)
    assert outcomes == ["error"] * 5
    assert commit.flushes == 0


# --- the group publisher ----------------------------------------------------------------------


def _series_record(index: int, status: str) -> SeriesRecord:
    return SeriesRecord(
        series_uid=f"1.2.{index}",
        status=status,  # type: ignore[arg-type]
        at=float(index),
        run_id="r",
        path=f"s{index}",
        files=(FileEntry("1.dcm", 4, "0" * 32),),
        instance_count=1,
        dicom_bytes=4,
    )


def _staged(destination: Destination, index: int) -> Path:
    staging = destination.new_staging(f"1.2.{index}")
    (staging / "1.dcm").write_bytes(b"DICM")
    return staging


async def test_finished_series_are_published_together_verified_before_done(tmp_path: Path) -> None:
    destination = Destination(tmp_path / "out")
    destination.prepare()
    journal = Journal.open(destination.state_dir, run_id="r")
    publisher = GroupPublisher(journal)
    (destination.root / "s3").mkdir()  # series 3's final path is taken: only it must fail
    outcomes: dict[int, str] = {}

    async def publish(index: int) -> None:
        try:
            await publisher.publish(
                _series_record(index, "verified"),
                _series_record(index, "done"),
                destination.publish,
                _staged(destination, index),
                PurePosixPath(f"s{index}"),
            )
        except FinalPathExistsError:
            outcomes[index] = "taken"
        else:
            outcomes[index] = "published"

    async with anyio.create_task_group() as group:
        for index in range(12):
            group.start_soon(publish, index)
    journal.close()
    assert outcomes == {index: "taken" if index == 3 else "published" for index in range(12)}
    assert publisher.flushes < 12  # series that finished together shared thread hops and fsyncs
    reread = Journal.open(destination.state_dir, run_id="check")
    latest = reread.latest()
    assert {uid for uid, rec in latest.items() if rec.status == "done"} == {
        f"1.2.{index}" for index in range(12) if index != 3
    }
    assert latest["1.2.3"].status == "verified"  # recorded, never placed: reconcile drops it
    for index in range(12):
        if index != 3:
            assert (destination.root / f"s{index}" / "1.dcm").read_bytes() == b"DICM"
    # per series, in the segment: verified strictly before done
    lines = [line for path in sorted((destination.state_dir / "journal").rglob("*")) if path.is_file()
             for line in path.read_text(errors="replace").splitlines()]  # fmt: skip
    for index in range(12):
        if index == 3:
            continue
        uid = f'"1.2.{index}"'
        statuses = [("verified" if '"verified"' in line else "done") for line in lines if uid in line]
        assert statuses == ["verified", "done"]


async def test_a_caller_cancelled_before_its_turn_leaves_nothing_published(tmp_path: Path) -> None:
    destination = Destination(tmp_path / "out")
    destination.prepare()
    journal = Journal.open(destination.state_dir, run_id="r")
    publisher = GroupPublisher(journal)
    staging = _staged(destination, 1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await publisher.publish(
            _series_record(1, "verified"), _series_record(1, "done"), destination.publish, staging,
            PurePosixPath("s1"),
        )  # fmt: skip
    assert not (destination.root / "s1").exists()
    assert staging.exists()
    assert journal.latest() == {}


async def test_a_batch_syncs_each_directory_once_after_its_renames_and_before_its_done_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Series renamed into the same parent share its fsync; every rename of the batch is synced
    before the first done record is written."""
    destination = Destination(tmp_path / "out")
    destination.prepare()
    journal = Journal.open(destination.state_dir, run_id="r")
    publisher = GroupPublisher(journal)
    events: list[str] = []
    real_fsync_directory = _fs.fsync_directory
    real_extend = journal.extend

    def fsync_directory(path: Path) -> None:
        events.append(f"sync {path.relative_to(destination.root)}")
        real_fsync_directory(path)

    def extend(records: list[SeriesRecord]) -> None:
        events.append("records " + ",".join(sorted({r.status for r in records})))
        real_extend(records)

    def rename(staging: Path, final: Path) -> None:
        events.append(f"rename {final.relative_to(destination.root)}")
        real_rename(staging, final)

    real_rename = destination_module.rename_no_replace
    monkeypatch.setattr(_fs, "fsync_directory", fsync_directory)
    monkeypatch.setattr(destination_module, "fsync_directory", fsync_directory)
    monkeypatch.setattr(destination_module, "rename_no_replace", rename)
    monkeypatch.setattr(journal, "extend", extend)
    staged = {index: _staged(destination, index) for index in range(6)}

    async def publish(index: int) -> None:
        await publisher.publish(
            _series_record(index, "verified"),
            _series_record(index, "done"),
            destination.publish,
            staged[index],
            PurePosixPath(f"study{index % 2}/s{index}"),
        )

    # the lock held: all six queue behind it, and the first to take it flushes them as one batch
    async with anyio.create_task_group() as group, publisher._lock:
        for index in range(6):
            group.start_soon(publish, index)
        await anyio.wait_all_tasks_blocked()
    journal.close()
    assert publisher.flushes == 1
    syncs = [event for event in events if event.startswith("sync ")]
    assert sorted(syncs) == sorted(
        [f"sync study{index % 2}/s{index}" for index in range(6)] + ["sync study0", "sync study1"]
    )
    assert events[0] == "records verified"
    assert events[-1] == "records done"
    last_rename = max(i for i, event in enumerate(events) if event.startswith("rename "))
    first_sync = min(i for i, event in enumerate(events) if event.startswith("sync "))
    assert last_rename < first_sync  # the directories are synced once, after every rename
    assert Journal.open(destination.state_dir, run_id="check").counts().done == 6


async def test_a_failed_directory_sync_leaves_the_batch_verified_not_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the renames cannot be made durable, no series of the batch is recorded done: each caller
    gets the error, and reconciliation checks the renamed directories on the next run."""
    destination = Destination(tmp_path / "out")
    destination.prepare()
    journal = Journal.open(destination.state_dir, run_id="r")
    publisher = GroupPublisher(journal)

    def failing(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(_fs, "fsync_directory", failing)
    with pytest.raises(DestinationError, match=r"cannot sync .*Input/output error"):
        await publisher.publish(
            _series_record(1, "verified"), _series_record(1, "done"), destination.publish,
            _staged(destination, 1), PurePosixPath("s1"),
        )  # fmt: skip
    journal.close()
    assert (destination.root / "s1" / "1.dcm").read_bytes() == b"DICM"
    assert Journal.open(destination.state_dir, run_id="check").latest()["1.2.1"].status == "verified"
