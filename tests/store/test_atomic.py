"""Atomic small-file writes: old or new content, never a mix, never a stray temp file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcia_fetch.errors import DestinationError
from tcia_fetch.store.atomic import (
    open_atomic_sync,
    write_bytes_atomic,
    write_text_atomic,
    write_text_atomic_sync,
)

pytestmark = pytest.mark.anyio


def _names(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


async def test_async_write_creates_and_replaces_without_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    await write_text_atomic(target, '{"a": 1}\n')
    await write_text_atomic(target, '{"a": 2}\n')
    assert target.read_text() == '{"a": 2}\n'
    assert _names(tmp_path) == ["report.json"]


async def test_async_write_failure_leaves_the_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    target.write_bytes(b"old")
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing").rmdir()
    with pytest.raises(DestinationError, match="ENOENT"):
        await write_bytes_atomic(tmp_path / "missing" / "plan.json", b"new")
    assert target.read_bytes() == b"old"


async def test_sync_twin_writes_exact_text(tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    write_text_atomic_sync(target, "a,b\r\nc,d\r\n")
    assert target.read_bytes() == b"a,b\r\nc,d\r\n"
    assert _names(tmp_path) == ["x.csv"]


async def test_write_refuses_to_follow_a_symlinked_temp_name_and_target_is_replaced_not_followed(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    target = tmp_path / "report.json"
    target.symlink_to(outside)
    await write_text_atomic(target, "new")
    assert outside.read_text() == "precious"
    assert not target.is_symlink()
    assert target.read_text() == "new"


async def test_a_file_written_through_a_block_replaces_the_target_only_if_the_block_ends_normally(
    tmp_path: Path,
) -> None:
    target = tmp_path / "table.parquet"
    target.write_bytes(b"old")
    with pytest.raises(TypeError), open_atomic_sync(target, mode=0o644) as stream:
        stream.write(b"half a table")
        raise TypeError("a writer refused a row")
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["table.parquet"]
    with open_atomic_sync(target, mode=0o644) as stream:
        stream.write(b"new")
    assert target.read_bytes() == b"new" and _names(tmp_path) == ["table.parquet"]
    assert target.stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
