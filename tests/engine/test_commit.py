"""Group commit: concurrent appends share flushes, and every record is durable when append returns."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import anyio
import pytest

from tcia_fetch.engine.commit import GroupCommit, GroupPublisher
from tcia_fetch.errors import FinalPathExistsError, JournalError
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
