"""SeriesExtractor end states: verified files in staging, or an exception and nothing outside it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tcia_fetch.errors import (
    ArchiveCorruptError,
    ArchiveTooLargeError,
    ChecksumMismatchError,
    CountMismatchError,
    DestinationError,
    DiskFullError,
    IntegrityError,
    MetadataError,
    NotAnArchiveError,
    SizeMismatchError,
    TciaFetchError,
    UnsafeArchiveError,
)
from tcia_fetch.series.expectation import SeriesExpectation
from tcia_fetch.series.extract import SeriesExtractor, VerifiedFile, VerifiedSeries
from tcia_fetch.series.limits import ArchiveLimits
from tests.series.archives import (
    CT_IMAGE_STORAGE,
    LICENSE_TEXT,
    SERIES_UID,
    RawMember,
    build_raw_zip,
    build_series,
    make_dicom,
    md5_csv_for,
    raw_series_members,
    tree,
    zip_streamed,
)
from tests.series.harness import Arena, extract


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[Arena]:
    arena = Arena.create(tmp_path)
    yield arena
    arena.assert_untouched()


def rejected(outcome: VerifiedSeries | TciaFetchError, kind: type[TciaFetchError]) -> TciaFetchError:
    assert not isinstance(outcome, VerifiedSeries), "a bad archive was accepted"
    assert isinstance(outcome, kind), f"expected {kind.__name__}, got {type(outcome).__name__}: {outcome}"
    assert str(outcome)
    return outcome


# --- happy paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("new_file_names", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 333, 1 << 20])
def test_series_is_extracted_and_verified_at_any_chunk_size(
    arena: Arena, new_file_names: bool, chunk_size: int
) -> None:
    archive = build_series(4, new_file_names=new_file_names)
    outcome = extract(archive.body, archive.expectation, arena.staging, chunk_size=chunk_size)
    assert isinstance(outcome, VerifiedSeries)
    assert outcome.series_uid == SERIES_UID
    assert outcome.instance_count == 4
    assert outcome.dicom_bytes == archive.expectation.total_bytes
    assert outcome.archive_bytes == len(archive.body)
    assert outcome.sop_class_uid == CT_IMAGE_STORAGE
    expected_files = {"LICENSE": LICENSE_TEXT, **archive.dicom}
    assert outcome.files == tuple(
        VerifiedFile(
            name, len(data), hashlib.md5(data).hexdigest(), "license" if name == "LICENSE" else "dicom"
        )
        for name, data in expected_files.items()
    )
    assert {path.name: path.read_bytes() for path in arena.staging.iterdir()} == expected_files
    for path in arena.staging.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_results_are_identical_for_every_chunking(arena: Arena) -> None:
    archive = build_series(3, new_file_names=True)
    outcomes = []
    for chunk_size in (1, 2, 13, 4096, len(archive.body)):
        outcomes.append(
            extract(archive.body, archive.expectation, arena.fresh_staging(), chunk_size=chunk_size)
        )
    assert all(isinstance(outcome, VerifiedSeries) for outcome in outcomes)
    assert all(outcome == outcomes[0] for outcome in outcomes)


@pytest.mark.parametrize("new_file_names", [False, True])
def test_keep_zip_stores_the_body_as_served_and_still_verifies(arena: Arena, new_file_names: bool) -> None:
    archive = build_series(3, new_file_names=new_file_names)
    outcome = extract(archive.body, archive.expectation, arena.staging, keep="zip", chunk_size=99)
    assert isinstance(outcome, VerifiedSeries)
    zip_path = arena.staging / f"{SERIES_UID}.zip"
    assert tree(arena.staging) == {zip_path.name: len(archive.body)}
    assert zip_path.read_bytes() == archive.body
    assert outcome.files == (
        VerifiedFile(zip_path.name, len(archive.body), hashlib.md5(archive.body).hexdigest(), "zip"),
    )
    assert outcome.dicom_bytes == archive.expectation.total_bytes


def test_keep_zip_rejects_a_bad_archive_the_same_way(arena: Arena) -> None:
    archive = build_series(3)
    wrong = replace(archive.expectation, instance_count=4, total_bytes=archive.expectation.total_bytes + 10)
    rejected(extract(archive.body, wrong, arena.staging, keep="zip"), CountMismatchError)


def test_series_without_license_or_md5_list_when_md5_not_required(arena: Arena) -> None:
    archive = build_series(2, license=False, md5=False)
    outcome = extract(archive.body, archive.expectation, arena.staging, require_md5=False, fsync=False)
    assert isinstance(outcome, VerifiedSeries)
    assert [file.name for file in outcome.files] == list(archive.dicom)


def test_progress_attributes_follow_the_stream(arena: Arena) -> None:
    archive = build_series(3)
    extractor = SeriesExtractor(archive.expectation, arena.staging)
    try:
        half = len(archive.body) // 2
        extractor.feed(archive.body[:half])
        assert extractor.archive_bytes == half
        assert 0 < extractor.dicom_bytes < archive.expectation.total_bytes
        extractor.feed(archive.body[half:])
        verified = extractor.finish()
        assert extractor.finish() is verified
    finally:
        extractor.close()
        extractor.close()
    assert extractor.dicom_bytes == archive.expectation.total_bytes


# --- names and member kinds --------------------------------------------------------------------

HOSTILE_NAMES = [
    b"../x",
    b"../../etc/passwd",
    b"/etc/passwd",
    b"/x",
    b"C:\\x",
    b"C:x",
    b"..\\x",
    b"a/../../x",
    b"\\\\host\\share\\x",
    b"sub/00000001.dcm",
    b"a\x00b.dcm",
    b"a\nb.dcm",
    b"A" * 4096,
    b".",
    b"..",
    b"",
    b".hidden",
    b"dir/",
    "é.dcm".encode(),
    "\u202egpj.dcm".encode(),
    "０１.dcm".encode(),
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[repr(name[:20]) for name in HOSTILE_NAMES])
def test_unsafe_member_names_are_refused(arena: Arena, name: bytes) -> None:
    members, expectation = raw_series_members(2)
    members[1] = replace(members[1], name=name, flags=members[1].flags | 0x0800)
    rejected(extract(build_raw_zip(members), expectation, arena.staging), UnsafeArchiveError)
    assert {path.name for path in arena.staging.iterdir()} == {"LICENSE"}


@pytest.mark.parametrize(
    ("first", "second"),
    [(b"00000001.dcm", b"00000001.dcm"), (b"00000001.dcm", b"00000001.DCM"), (b"LICENSE", b"license")],
)
def test_duplicate_and_case_duplicate_names_are_refused(arena: Arena, first: bytes, second: bytes) -> None:
    members, expectation = raw_series_members(2)
    members[1] = replace(members[1], name=first)
    members[2] = replace(members[2], name=second)
    if first == b"LICENSE":
        members[0] = replace(members[0], name=b"00000009.dcm", data=make_dicom(1500, 9))
        members[1] = replace(members[1], data=LICENSE_TEXT)
    outcome = rejected(extract(build_raw_zip(members), expectation, arena.staging), UnsafeArchiveError)
    assert "duplicate" in str(outcome) or "only by case" in str(outcome)
    assert (arena.staging / first.decode()).read_bytes() == members[1].data


@pytest.mark.parametrize(
    ("made_by", "external_attr", "kind"),
    [
        (0x0314, 0o120777 << 16, "symlink"),
        (0x0314, 0o010644 << 16, "other"),
        (0x0314, 0o040755 << 16, "directory"),
        (0x0014, 0x10, "directory"),
    ],
)
def test_non_regular_members_are_refused_at_finish(
    arena: Arena, made_by: int, external_attr: int, kind: str
) -> None:
    members, expectation = raw_series_members(2)
    members[2] = replace(members[2], made_by=made_by, external_attr=external_attr)
    outcome = rejected(extract(build_raw_zip(members), expectation, arena.staging), UnsafeArchiveError)
    assert kind in str(outcome) and "00000002.dcm" in str(outcome)


def test_regular_unix_mode_is_accepted(arena: Arena) -> None:
    members, expectation = raw_series_members(2)
    members[1] = replace(members[1], made_by=0x0314, external_attr=0o100644 << 16)
    assert isinstance(extract(build_raw_zip(members), expectation, arena.staging), VerifiedSeries)


@pytest.mark.parametrize(("flags", "method"), [(0x0009, 8), (0x0041, 8), (0x0008, 14), (0x0008, 93)])
def test_encrypted_or_unsupported_members_are_refused(arena: Arena, flags: int, method: int) -> None:
    members, expectation = raw_series_members(2)
    members[1] = replace(members[1], flags=flags, method=method)
    rejected(extract(build_raw_zip(members), expectation, arena.staging), UnsafeArchiveError)
    assert not (arena.staging / "00000001.dcm").exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"<html><body>Internal error</body></html>" * 10,
        bytes(600),
        make_dicom(1500, 1)[:100],
        zip_streamed([("inner.dcm", make_dicom(1500, 1))]),
    ],
    ids=["html", "zeros", "truncated-dicom", "nested-zip"],
)
def test_a_member_that_is_not_dicom_is_refused(arena: Arena, payload: bytes) -> None:
    members, _ = raw_series_members(2)
    members[2] = replace(members[2], data=payload)
    dicom = {m.name.decode(): m.data for m in members[1:3]}
    members[3] = replace(members[3], data=md5_csv_for(dicom))
    expectation = SeriesExpectation(SERIES_UID, 2, 1500 + len(payload))
    outcome = rejected(extract(build_raw_zip(members), expectation, arena.staging), ArchiveCorruptError)
    assert "not a DICOM Part-10 file" in str(outcome) and "00000002.dcm" in str(outcome)


# --- caps --------------------------------------------------------------------------------------


def test_license_over_its_cap_is_cut_off(arena: Arena) -> None:
    members, expectation = raw_series_members(1)
    members[0] = replace(
        members[0], data=bytes(ArchiveLimits.for_expectation(expectation).max_license_bytes + 1)
    )
    limits = replace(ArchiveLimits.for_expectation(expectation), max_archive_bytes=1 << 30)
    outcome = rejected(
        extract(build_raw_zip(members), expectation, arena.staging, limits=limits), ArchiveTooLargeError
    )
    assert "LICENSE" in str(outcome)


def test_md5_list_over_its_cap_is_cut_off(arena: Arena) -> None:
    members, expectation = raw_series_members(1)
    members[-1] = replace(members[-1], data=members[-1].data + b"\n" * 2000)
    outcome = rejected(extract(build_raw_zip(members), expectation, arena.staging), ArchiveTooLargeError)
    assert "md5hashes.csv" in str(outcome)


def test_too_many_members_are_cut_off_while_streaming(arena: Arena) -> None:
    members, expectation = raw_series_members(2)
    extra = [RawMember(f"9{index:07d}.dcm".encode(), make_dicom(300, 50 + index)) for index in range(3)]
    body = build_raw_zip(members[:-1] + extra + members[-1:])
    extractor = SeriesExtractor(
        expectation,
        arena.staging,
        limits=replace(ArchiveLimits.for_expectation(expectation), max_dicom_bytes=1 << 20),
    )
    try:
        with pytest.raises(ArchiveTooLargeError, match="past the 4 members"):
            extractor.feed(body)
    finally:
        extractor.close()


def test_dicom_bytes_past_total_are_cut_off_while_streaming(arena: Arena) -> None:
    archive = build_series(3)
    smaller = replace(archive.expectation, total_bytes=archive.expectation.total_bytes - 1)
    extractor = SeriesExtractor(smaller, arena.staging)
    try:
        with pytest.raises(ArchiveTooLargeError, match="TotalSizeInBytes"):
            extractor.feed(archive.body)
        with pytest.raises(ArchiveTooLargeError):
            extractor.finish()
    finally:
        extractor.close()


def test_raw_archive_bytes_past_the_cap_are_cut_off(arena: Arena) -> None:
    archive = build_series(3)
    limits = replace(
        ArchiveLimits.for_expectation(archive.expectation), max_archive_bytes=len(archive.body) - 1
    )
    outcome = rejected(
        extract(archive.body, archive.expectation, arena.staging, limits=limits), ArchiveTooLargeError
    )
    assert str(len(archive.body) - 1) in str(outcome)


def test_default_caps_leave_room_for_incompressible_data(arena: Arena) -> None:
    dicom = {f"{index:08d}.dcm": make_dicom(300, index)[:132] + os.urandom(50_000) for index in range(1, 4)}
    members = [("LICENSE", LICENSE_TEXT), *dicom.items(), ("md5hashes.csv", md5_csv_for(dicom))]
    body = zip_streamed(members)
    expectation = SeriesExpectation(SERIES_UID, 3, sum(map(len, dicom.values())))
    assert len(body) > expectation.total_bytes
    assert isinstance(extract(body, expectation, arena.staging), VerifiedSeries)


# --- totals ------------------------------------------------------------------------------------


def test_short_but_well_formed_archive_is_a_count_mismatch(arena: Arena) -> None:
    archive = build_series(3)
    with zipfile.ZipFile(io.BytesIO(archive.body)) as whole:
        kept = [(name, whole.read(name)) for name in whole.namelist()[:3]]
    outcome = rejected(extract(zip_streamed(kept), archive.expectation, arena.staging), CountMismatchError)
    assert "2 DICOM instances" in str(outcome) and "ObjectCount is 3" in str(outcome)


def test_license_only_archive_is_a_count_mismatch(arena: Arena) -> None:
    archive = build_series(3)
    rejected(
        extract(zip_streamed([("LICENSE", LICENSE_TEXT)]), archive.expectation, arena.staging),
        CountMismatchError,
    )


def test_empty_zip_is_not_a_verified_series(arena: Arena) -> None:
    archive = build_series(1)
    empty = zip_streamed([])
    rejected(extract(empty, archive.expectation, arena.staging), CountMismatchError)


def test_size_short_by_one_byte_is_a_size_mismatch(arena: Arena) -> None:
    archive = build_series(3)
    larger = replace(archive.expectation, total_bytes=archive.expectation.total_bytes + 1)
    outcome = rejected(extract(archive.body, larger, arena.staging), SizeMismatchError)
    assert "difference -1" in str(outcome)


@pytest.mark.parametrize(("count", "total"), [(0, 0), (0, 1000), (3, 100)])
def test_impossible_expectations_are_refused_up_front(arena: Arena, count: int, total: int) -> None:
    with pytest.raises(MetadataError):
        SeriesExtractor(SeriesExpectation(SERIES_UID, count, total), arena.staging)


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>maintenance</html>", b'{"error":"x"}', b"\x1f\x8b\x08\x00junk"],
    ids=["empty", "html", "json", "gzip"],
)
def test_bodies_that_are_not_archives(arena: Arena, body: bytes) -> None:
    archive = build_series(1)
    rejected(extract(body, archive.expectation, arena.staging), NotAnArchiveError)


# --- md5hashes.csv -----------------------------------------------------------------------------


def with_csv(csv: bytes, count: int = 3) -> tuple[bytes, SeriesExpectation, dict[str, bytes]]:
    members, expectation = raw_series_members(count)
    members[-1] = replace(members[-1], data=csv)
    return build_raw_zip(members), expectation, {m.name.decode(): m.data for m in members[1:-1]}


def csv_rows(dicom: dict[str, bytes]) -> list[tuple[str, str]]:
    return [(name, hashlib.md5(data).hexdigest()) for name, data in dicom.items()]


def test_md5_list_is_required_when_asked(arena: Arena) -> None:
    archive = build_series(2, md5=False)
    outcome = rejected(extract(archive.body, archive.expectation, arena.staging), ChecksumMismatchError)
    assert "no md5hashes.csv" in str(outcome)


@pytest.mark.parametrize("variant", ["bom", "crlf", "upper", "no-header", "blank-lines"])
def test_harmless_md5_list_variants_are_tolerated(arena: Arena, variant: str) -> None:
    _, _, dicom = with_csv(b"")
    rows = csv_rows(dicom)
    header = "Filename,MD5Hash\n"
    body_rows = "".join(f"{name},{digest}\n" for name, digest in rows)
    text = {
        "bom": "\ufeff" + header + body_rows,
        "crlf": (header + body_rows).replace("\n", "\r\n"),
        "upper": header + body_rows.upper().replace(".DCM", ".dcm"),
        "no-header": body_rows,
        "blank-lines": header + "\n" + body_rows + "\n\n",
    }[variant]
    body, expectation, _ = with_csv(text.encode())
    assert isinstance(extract(body, expectation, arena.staging), VerifiedSeries)


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("separator", "path separator"),
        ("not-a-member", "not a DICOM member"),
        ("duplicate", "second time"),
        ("three-fields", "3 fields"),
        ("short-hash", "not a 32-digit hex"),
        ("missing-row", "not listed"),
        ("lists-license", "not a DICOM member"),
        ("empty-name", "empty file name"),
        ("not-utf8", "not UTF-8"),
    ],
)
def test_broken_md5_lists_are_refused(arena: Arena, variant: str, message: str) -> None:
    _, _, dicom = with_csv(b"")
    rows = csv_rows(dicom)
    first_name, first_digest = rows[0]
    lines = [f"{name},{digest}" for name, digest in rows]
    lines = {
        "separator": [*lines[1:], f"sub/{first_name},{first_digest}"],
        "not-a-member": [*lines, f"00000099.dcm,{first_digest}"],
        "duplicate": [*lines, lines[0]],
        "three-fields": [*lines[1:], f"{first_name},{first_digest},x"],
        "short-hash": [*lines[1:], f"{first_name},{first_digest[:31]}"],
        "missing-row": lines[1:],
        "lists-license": [*lines, f"LICENSE,{first_digest}"],
        "empty-name": [*lines, f",{first_digest}"],
        "not-utf8": [*lines, "\udcff"],
    }[variant]
    text = ("Filename,MD5Hash\n" + "\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape")
    body, expectation, _ = with_csv(text)
    for require_md5 in (True, False):
        outcome = rejected(
            extract(body, expectation, arena.fresh_staging(), require_md5=require_md5), ChecksumMismatchError
        )
        assert message in str(outcome)


def test_md5_mismatch_names_the_file_and_both_hashes(arena: Arena) -> None:
    _, _, dicom = with_csv(b"")
    rows = csv_rows(dicom)
    bad_name, good_digest = rows[1]
    wrong = "0" * 32
    text = "Filename,MD5Hash\n" + "".join(f"{n},{wrong if n == bad_name else d}\n" for n, d in rows)
    body, expectation, _ = with_csv(text.encode())
    for require_md5 in (True, False):
        outcome = rejected(
            extract(body, expectation, arena.fresh_staging(), require_md5=require_md5), ChecksumMismatchError
        )
        assert bad_name in str(outcome) and wrong in str(outcome) and good_digest in str(outcome)


# --- the file system ---------------------------------------------------------------------------


def test_missing_staging_directory_is_a_destination_error(tmp_path: Path) -> None:
    archive = build_series(1)
    with pytest.raises(DestinationError):
        SeriesExtractor(archive.expectation, tmp_path / "absent")


def test_planted_symlink_in_staging_is_never_followed(arena: Arena) -> None:
    archive = build_series(2)
    (arena.staging / "00000001.dcm").symlink_to(arena.root / "x")
    outcome = extract(archive.body, archive.expectation, arena.staging)
    rejected(outcome, DestinationError)
    (arena.staging / "00000001.dcm").unlink()


def test_errors_repeat_and_the_extractor_refuses_more_input(arena: Arena) -> None:
    archive = build_series(1)
    extractor = SeriesExtractor(archive.expectation, arena.staging)
    with pytest.raises(NotAnArchiveError) as first:
        extractor.feed(b"<html>")
    with pytest.raises(NotAnArchiveError) as again:
        extractor.feed(archive.body)
    assert again.value is first.value
    with pytest.raises(NotAnArchiveError):
        extractor.finish()
    extractor.close()
    extractor.close()


@contextlib.contextmanager
def small_tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_is_a_disk_full_error(tmp_path: Path) -> None:
    archive = build_series(3, sizes=[40_000, 40_000, 40_000])
    with small_tmpfs(tmp_path / "small", "size=64k") as mount:
        staging = mount / "staging"
        staging.mkdir()
        rejected(extract(archive.body, archive.expectation, staging), DiskFullError)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_read_only_destination_is_a_destination_error(tmp_path: Path) -> None:
    archive = build_series(1)
    with small_tmpfs(tmp_path / "ro", "size=64k,ro") as mount:
        rejected(extract(archive.body, archive.expectation, mount), DestinationError)


def test_every_failure_here_is_an_integrity_or_storage_error() -> None:
    assert issubclass(UnsafeArchiveError, IntegrityError) and issubclass(DiskFullError, TciaFetchError)


def test_zip64_archive_with_more_than_65535_members(arena: Arena) -> None:
    """B10: past the 16-bit entry count the end records move to zip64; memory stays flat."""
    count = 70_000
    instance = make_dicom(300, 1)
    members = [
        RawMember(f"{index:08d}.dcm".encode(), instance, method=0, flags=0) for index in range(1, count + 1)
    ]
    body = build_raw_zip(members, zip64_end=True)
    expectation = SeriesExpectation(SERIES_UID, count, count * len(instance))
    outcome = extract(
        body, expectation, arena.staging, keep="zip", require_md5=False, fsync=False, chunk_size=1 << 20
    )
    assert isinstance(outcome, VerifiedSeries)
    assert outcome.instance_count == count
    assert outcome.dicom_bytes == expectation.total_bytes
