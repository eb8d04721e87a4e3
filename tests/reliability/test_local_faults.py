"""Disk full, read-only destination, and a destination shared by two concurrent runs (real CLI).

Disk full and read-only need root to mount a small tmpfs; elsewhere they are skipped with the
reason. The shared-destination test runs everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.campaign.local import mount_support, run_disk_full, run_read_only, run_shared_destination

pytestmark = pytest.mark.e2e

_MOUNT_PROBLEM = mount_support()
needs_mount = pytest.mark.skipif(
    _MOUNT_PROBLEM is not None, reason=f"cannot mount a tmpfs here: {_MOUNT_PROBLEM}"
)


@needs_mount
@pytest.mark.parametrize("size_kib", [300, 900])
def test_disk_full_is_fatal_and_clean_and_a_rerun_finishes(tmp_path: Path, size_kib: int) -> None:
    outcome = run_disk_full(tmp_path, size_kib=size_kib)
    assert outcome.problems == []
    assert outcome.exit_codes == [3, 0]
    assert outcome.loss.total == 0, outcome.loss.counts()
    assert "space" in outcome.messages[0].lower()


@needs_mount
def test_read_only_destination_fails_before_downloading_and_recovers(tmp_path: Path) -> None:
    outcome = run_read_only(tmp_path)
    assert outcome.problems == []
    assert outcome.exit_codes == [3, 0]
    assert outcome.loss.total == 0, outcome.loss.counts()


def test_two_runs_on_one_destination_corrupt_nothing(tmp_path: Path) -> None:
    outcome = run_shared_destination(tmp_path)
    assert outcome.problems == []
    assert 0 in outcome.exit_codes[:2]
    assert outcome.exit_codes[2] == 0
    assert outcome.loss.total == 0, outcome.loss.counts()
