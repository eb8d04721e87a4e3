"""Fixtures for the store tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tcia_fetch.store.destination import Destination
from tests.store.helpers import small_tmpfs


@pytest.fixture
def destination(tmp_path: Path) -> Destination:
    prepared = Destination(tmp_path / "dest")
    prepared.prepare()
    return prepared


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, to provoke ENOSPC for real; skipped where mounting is not allowed."""
    try:
        with small_tmpfs(tmp_path / "tiny") as mount_point:
            yield mount_point
    except OSError as exc:
        pytest.skip(f"needs a mountable tmpfs (root in a privileged container): {exc}")


@pytest.fixture
def read_only_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (EROFS for every write, even for root); skipped where mounting is not allowed."""
    try:
        with small_tmpfs(tmp_path / "ro", read_only=True) as mount_point:
            yield mount_point
    except OSError as exc:
        pytest.skip(f"needs a mountable read-only tmpfs (root in a privileged container): {exc}")
