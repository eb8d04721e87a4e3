"""The caps derived from a series' expectation, with the slack documented in limits.py."""

from __future__ import annotations

from tcia_fetch.series.expectation import SeriesExpectation
from tcia_fetch.series.limits import ArchiveLimits


def test_caps_follow_the_documented_formulas() -> None:
    limits = ArchiveLimits.for_expectation(SeriesExpectation("1.2.3", 100, 50_000_000))
    assert limits.max_dicom_bytes == 50_000_000
    assert limits.max_members == 102
    assert limits.max_archive_bytes == 50_500_000 + (1 << 20) + 102 * 1024
    assert limits.max_license_bytes == 1 << 20
    assert limits.max_md5_list_bytes == 100 * 200 + 1024
