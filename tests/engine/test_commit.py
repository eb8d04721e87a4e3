"""Group commit: concurrent appends share flushes, and every record is durable when append returns."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tcia_fetch.engine.commit import GroupCommit
from tcia_fetch.errors import JournalError
from tcia_fetch.store.journal import Journal, SeriesRecord

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
