"""Issue 14 (item 2) in the extractor: md5 list bombs, implausible figures, released buffers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.errors import ArchiveTooLargeError, ImplausibleFiguresError
from tcia_fetch.series.expectation import SeriesExpectation
from tcia_fetch.series.extract import SeriesExtractor, VerifiedSeries
from tcia_fetch.series.plausible import MAX_PLAUSIBLE_BYTES, MAX_PLAUSIBLE_INSTANCES
from tests.series.archives import LICENSE_TEXT, build_series, zip_streamed
from tests.series.harness import Arena, extract

PADDING = 64 << 20  # blank lines appended to md5hashes.csv


def padded_series(padding: int) -> tuple[bytes, SeriesExpectation]:
    """An honest 5-instance series whose md5hashes.csv is followed by ``padding`` newlines."""
    series = build_series(5)
    assert series.md5_csv is not None
    members = [
        ("LICENSE", LICENSE_TEXT),
        *series.dicom.items(),
        ("md5hashes.csv", series.md5_csv + b"\n" * padding),
    ]
    return zip_streamed(members), series.expectation


def test_a_padded_md5_list_is_cut_off_by_the_members_seen(tmp_path: Path) -> None:
    body, expectation = padded_series(PADDING)
    arena = Arena.create(tmp_path)
    fed = 0
    extractor = SeriesExtractor(expectation, arena.staging)
    with pytest.raises(ArchiveTooLargeError, match=r"md5hashes\.csv' passed its cap of 2024 bytes"):
        try:
            for start in range(0, len(body), 4096):
                fed = start
                extractor.feed(body[start : start + 4096])
        finally:
            extractor.close()
    # The bomb is a few KiB past the DICOM members: the reader stopped right there.
    assert fed < len(body) - 32 * 1024
    arena.assert_untouched()


@pytest.mark.parametrize(
    ("count", "size", "words"),
    [
        (6_000_000, 6_000_000 * 1000, "6,000,000 instances"),
        (MAX_PLAUSIBLE_INSTANCES + 1, 10**9, "instances"),
        (10, MAX_PLAUSIBLE_BYTES + 1, "bytes"),
    ],
)
def test_implausible_figures_are_refused_before_anything_is_written(
    tmp_path: Path, count: int, size: int, words: str
) -> None:
    arena = Arena.create(tmp_path)
    with pytest.raises(ImplausibleFiguresError, match=words) as caught:
        SeriesExtractor(SeriesExpectation("1.2.3.4", count, size), arena.staging, keep="zip")
    error = caught.value
    assert (error.retryable, error.fatal, error.series_uid) == (False, False, "1.2.3.4")
    assert "implausible server data" in error.message
    assert list(arena.staging.iterdir()) == []


def test_the_largest_real_series_is_plausible(tmp_path: Path) -> None:
    """archive-shape.md: 13,712 instances and 195 GB are real; they must pass."""
    arena = Arena.create(tmp_path)
    extractor = SeriesExtractor(SeriesExpectation("1.2.3.4", 13_712, 195_185 * 10**6), arena.staging)
    extractor.close()


def test_close_releases_the_attempts_buffers(tmp_path: Path) -> None:
    series = build_series(5)
    arena = Arena.create(tmp_path)
    extractor = SeriesExtractor(series.expectation, arena.staging, fsync=False)
    extractor.feed(series.body[: len(series.body) - 200])  # md5hashes.csv under way
    extractor.close()
    assert extractor._md5_list is None and extractor._current is None and not extractor._dicom_md5


def test_a_good_series_still_verifies_after_streaming_its_list(tmp_path: Path) -> None:
    series = build_series(7)
    arena = Arena.create(tmp_path)
    result = extract(series.body, series.expectation, arena.staging, chunk_size=7, fsync=False)
    assert isinstance(result, VerifiedSeries)
    assert result.instance_count == 7
