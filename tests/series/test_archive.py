"""keep="tar.zst": one archive per series written from the verified stream, and its re-check."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from tcia_fetch.errors import ChecksumMismatchError, CountMismatchError
from tcia_fetch.series.archive import MD5SUMS_NAME, check_tar_zst, file_blocks
from tcia_fetch.series.extract import VerifiedFile, VerifiedSeries
from tests.series.archives import LICENSE_TEXT, SERIES_UID, build_series, tree
from tests.series.harness import Arena, extract


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[Arena]:
    arena = Arena.create(tmp_path)
    yield arena
    arena.assert_untouched()


def _members(path: Path) -> dict[str, bytes]:
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes())).read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


@pytest.mark.parametrize("chunk_size", [7, 4096, 1 << 20])
def test_keep_tar_zst_holds_every_verified_file_and_an_md5_list(arena: Arena, chunk_size: int) -> None:
    archive = build_series(4)
    outcome = extract(archive.body, archive.expectation, arena.staging, keep="tar.zst", chunk_size=chunk_size)
    assert isinstance(outcome, VerifiedSeries)
    name = f"{SERIES_UID}.tar.zst"
    stored = arena.staging / name
    # Only the archive is left: every spooled member was moved into it.
    assert tree(arena.staging) == {name: stored.stat().st_size}
    assert outcome.files == (
        VerifiedFile(name, stored.stat().st_size, hashlib.md5(stored.read_bytes()).hexdigest(), "tar.zst"),
    )
    members = _members(stored)
    assert members.pop("LICENSE") == LICENSE_TEXT
    sums = members.pop(MD5SUMS_NAME).decode()
    assert members == archive.dicom
    assert sums == "".join(f"{hashlib.md5(d).hexdigest()}  {n}\n" for n, d in sorted(archive.dicom.items()))
    assert outcome.instance_count == 4 and outcome.dicom_bytes == archive.expectation.total_bytes
    with stored.open("rb") as stream:
        check = check_tar_zst(file_blocks(stream))
    assert check.problems == ()
    assert (check.md5, check.size, check.dicom_files) == (outcome.files[0].md5, outcome.files[0].size, 4)
    assert check.dicom_bytes == archive.expectation.total_bytes


def test_standard_tools_unpack_and_check_the_archive(
    arena: Arena, tmp_path_factory: pytest.TempPathFactory
) -> None:
    archive = build_series(3)
    outcome = extract(archive.body, archive.expectation, arena.staging, keep="tar.zst")
    assert isinstance(outcome, VerifiedSeries)
    out = tmp_path_factory.mktemp("unpacked")
    # Python's own tar reader over the zstd stream stands in for `tar --zstd -x` (no binary needed).
    raw = (arena.staging / outcome.files[0].name).read_bytes()
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        tar.extractall(out, filter="data")
    result = subprocess.run(["md5sum", "-c", MD5SUMS_NAME], cwd=out, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_keep_tar_zst_rejects_a_bad_archive_and_leaves_no_finished_archive(arena: Arena) -> None:
    archive = build_series(3)
    wrong = replace(archive.expectation, instance_count=4, total_bytes=archive.expectation.total_bytes + 10)
    outcome = extract(archive.body, wrong, arena.staging, keep="tar.zst")
    assert isinstance(outcome, CountMismatchError)


def test_keep_tar_zst_requires_the_md5_list(arena: Arena) -> None:
    archive = build_series(3, md5=False)
    outcome = extract(archive.body, archive.expectation, arena.staging, keep="tar.zst")
    assert isinstance(outcome, ChecksumMismatchError)


def test_check_finds_a_flipped_byte_and_a_truncated_archive(arena: Arena) -> None:
    archive = build_series(3)
    outcome = extract(archive.body, archive.expectation, arena.staging, keep="tar.zst")
    assert isinstance(outcome, VerifiedSeries)
    raw = (arena.staging / outcome.files[0].name).read_bytes()
    members = {}
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    # Rebuild the archive with one DICOM byte changed but the original MD5SUMS.
    first = sorted(archive.dicom)[0]
    tampered = io.BytesIO()
    with tarfile.open(fileobj=tampered, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members.items():
            if name == first:
                content = bytes([content[0] ^ 1]) + content[1:]
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    bad = zstandard.ZstdCompressor().compress(tampered.getvalue())
    check = check_tar_zst(iter([bad]))
    assert any(first in problem and "MD5" in problem for problem in check.problems)
    cut = check_tar_zst(iter([raw[: len(raw) // 2]]))
    assert cut.problems and cut.size == len(raw) // 2
