"""State and report files are private (0600); metadata.csv, data for colleagues, stays 0644."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcia_fetch.store.atomic import write_bytes_atomic, write_text_atomic_sync
from tcia_fetch.store.metadata_csv import write_metadata_csv


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever is private is private because we asked for it."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.anyio
async def test_atomic_writes_are_private_by_default(tmp_path: Path, open_umask: None) -> None:
    write_text_atomic_sync(tmp_path / "last-report.json", "{}")
    await write_bytes_atomic(tmp_path / "plan.digests", b"\x00")
    (tmp_path / "old.json").write_text("{}")
    os.chmod(tmp_path / "old.json", 0o644)
    write_text_atomic_sync(tmp_path / "old.json", "{}")  # a replaced file does not keep the old mode
    modes = {name: _mode(tmp_path / name) for name in ("last-report.json", "plan.digests", "old.json")}
    assert modes == {
        "last-report.json": 0o600,
        "plan.digests": 0o600,
        "old.json": 0o600,
    }


def test_metadata_csv_is_readable_by_others(tmp_path: Path, open_umask: None) -> None:
    write_metadata_csv(tmp_path / "metadata.csv", [])
    assert _mode(tmp_path / "metadata.csv") == 0o644
