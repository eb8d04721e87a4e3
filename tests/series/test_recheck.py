"""recheck_series_dir: a published directory is compared with the files it was verified with."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tcia_fetch.series.extract import VerifiedSeries
from tcia_fetch.series.recheck import recheck_series_dir
from tests.series.archives import build_series
from tests.series.harness import extract


@pytest.fixture
def verified(tmp_path: Path) -> tuple[Path, VerifiedSeries]:
    archive = build_series(3)
    staging = tmp_path / "series"
    staging.mkdir()
    outcome = extract(archive.body, archive.expectation, staging)
    assert isinstance(outcome, VerifiedSeries)
    return staging, outcome


def test_intact_directory_has_no_problems(verified: tuple[Path, VerifiedSeries]) -> None:
    path, series = verified
    assert recheck_series_dir(path, series.files, check_md5=True) == []


def test_missing_extra_resized_and_modified_files_are_reported(verified: tuple[Path, VerifiedSeries]) -> None:
    path, series = verified
    (path / "00000001.dcm").unlink()
    (path / "notes.txt").write_text("x")
    with open(path / "00000002.dcm", "ab") as handle:
        handle.write(b"!")
    third = path / "00000003.dcm"
    data = bytearray(third.read_bytes())
    data[500] ^= 1
    third.write_bytes(bytes(data))
    problems = recheck_series_dir(path, series.files, check_md5=True)
    expected_md5 = series.files[3].md5
    assert problems == [
        "00000001.dcm: missing",
        f"00000002.dcm: size is {series.files[2].size + 1} bytes, expected {series.files[2].size}",
        f"00000003.dcm: MD5 is {hashlib.md5(bytes(data)).hexdigest()}, expected {expected_md5}",
        "notes.txt: extra file, not part of the verified series",
    ]
    without_md5 = recheck_series_dir(path, series.files, check_md5=False)
    assert not any(line.startswith("00000003.dcm") for line in without_md5)


def test_symlinks_and_non_regular_files_are_reported(
    verified: tuple[Path, VerifiedSeries], tmp_path: Path
) -> None:
    path, series = verified
    target = tmp_path / "elsewhere.dcm"
    os.replace(path / "00000001.dcm", target)
    (path / "00000001.dcm").symlink_to(target)
    (path / "00000002.dcm").unlink()
    (path / "00000002.dcm").mkdir()
    problems = recheck_series_dir(path, series.files, check_md5=True)
    assert problems == [
        "00000001.dcm: is a symlink, not a regular file",
        "00000002.dcm: is not a regular file",
    ]


def test_missing_or_linked_directory(verified: tuple[Path, VerifiedSeries], tmp_path: Path) -> None:
    path, series = verified
    assert "is missing" in recheck_series_dir(tmp_path / "nope", series.files, check_md5=False)[0]
    link = tmp_path / "link"
    link.symlink_to(path)
    assert "is a symlink" in recheck_series_dir(link, series.files, check_md5=False)[0]
    assert "not a directory" in recheck_series_dir(path / "LICENSE", series.files, check_md5=False)[0]
