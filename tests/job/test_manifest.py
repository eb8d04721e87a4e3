"""The .tcia parser against real manifests and every malformed variant users produce."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tcia_fetch.errors import InputError
from tcia_fetch.job.manifest import looks_like_manifest, parse_manifest, parse_manifest_bytes, read_manifest
from tcia_fetch.job.uidlist import MAX_RECORDED_DETAILS
from tcia_fetch.uid import is_valid_uid

from .conftest import MANIFEST_DIR

HEADER = (
    "downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet\n"
    "includeAnnotation=true\n"
    "noOfrRetry=4\n"
    "databasketId=manifest-1.tcia\n"
    "manifestVersion=3.0\n"
    "ListOfSeriesToDownload=\n"
)
UID_A = "1.3.6.1.4.1.14519.5.2.1.7009.9004.180224303090109944523368212991"
UID_B = "2.25.159938781348401988370074200042204937718"
UID_C = "1.2.840.113654.2.55.1"

REAL_MANIFESTS = [
    (
        "small_manifest.tcia",
        5,
        "1.2.246.352.71.2.494841863751.4253616.20190218155318",
        "1.3.6.1.4.1.9590.100.1.2.99703178712084378434031648251378087426",
    ),
    (
        "medium_manifest.tcia",
        20,
        "1.2.246.352.71.2.494841863751.4253616.20190218155318",
        "1.2.246.352.71.2.494841863751.4253622.20190218161509",
    ),
    (
        "NSCLC-RADIOMICS-INTEROBSERVER1-Aug-31-2020-NBIA-manifest.tcia",
        64,
        "1.2.246.352.71.2.494841863751.4253616.20190218155318",
        "1.2.276.0.7230010.3.1.3.8323329.9335.1556877126.514416",
    ),
    (
        "NBIA-Submission-Test-Data_225series_3.4gbytes.tcia",
        225,
        "2.25.159938781348401988370074200042204937718",
        "1.2.276.0.7230010.3.1.3.3496549722.3300.1315754421.326",
    ),
    (
        "NBIA-Submission-Test-Data_2524series-56gbytes.tcia",
        2524,
        "2.25.159938781348401988370074200042204937718",
        "1.2.276.0.7230010.3.1.3.3496549722.2068.1317076082.401",
    ),
]


@pytest.mark.parametrize(("name", "count", "first", "last"), REAL_MANIFESTS)
def test_real_manifest_parses_exactly(name: str, count: int, first: str, last: str) -> None:
    manifest = read_manifest(MANIFEST_DIR / name)
    assert len(manifest.uids) == count
    assert manifest.uids[0] == first
    assert manifest.uids[-1] == last
    assert manifest.duplicates == 0
    assert manifest.problems == []
    assert manifest.problem_count == 0
    assert manifest.manifest_version == "3.0"
    assert manifest.marker_line == 6
    assert all(is_valid_uid(uid) for uid in manifest.uids)
    assert len(set(manifest.uids)) == count


def test_real_manifest_with_series_id_line_records_it_as_a_header() -> None:
    manifest = read_manifest(MANIFEST_DIR / "NBIA-Submission-Test-Data_225series_3.4gbytes.tcia")
    assert manifest.header_lines == (7,)
    assert manifest.uid_lines[0] == 8
    assert "Series ID" not in manifest.uids
    assert manifest.properties["databasketId"] == "manifest-1683661704579.tcia"


def test_real_manifest_without_trailing_newline_keeps_its_last_uid() -> None:
    raw = (MANIFEST_DIR / "small_manifest.tcia").read_bytes()
    assert not raw.endswith(b"\n")
    manifest = read_manifest(MANIFEST_DIR / "small_manifest.tcia")
    assert manifest.uid_lines[-1] == 11
    assert manifest.properties == {
        "downloadServerUrl": "https://public.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet",
        "includeAnnotation": "true",
        "noOfrRetry": "4",
        "databasketId": "test-manifest-small",
        "manifestVersion": "3.0",
    }
    assert manifest.download_server_url is not None
    assert next(iter(manifest.origins())) == (manifest.uids[0], f"{MANIFEST_DIR / 'small_manifest.tcia'}:7")


def test_bom_crlf_blank_lines_whitespace_and_trailing_commas_are_tolerated() -> None:
    text = (
        "\ufeff" + HEADER.replace("\n", "\r\n") + f"\r\n  {UID_A} \r\n\r\n{UID_B},\r\n\t{UID_C} , ,,\r\n\r\n"
    )
    manifest = parse_manifest(text, source="m.tcia")
    assert manifest.uids == (UID_A, UID_B, UID_C)
    assert manifest.uid_lines == (8, 10, 11)
    assert manifest.properties["downloadServerUrl"].endswith("/DownloadServlet")
    assert manifest.problems == []


def test_bytes_with_utf8_bom_are_decoded() -> None:
    manifest = parse_manifest_bytes(b"\xef\xbb\xbf" + (HEADER + UID_A).encode(), source="m.tcia")
    assert manifest.uids == (UID_A,)
    assert manifest.properties["downloadServerUrl"].startswith("https://")


def test_lone_cr_line_endings_are_line_breaks() -> None:
    manifest = parse_manifest((HEADER + f"{UID_A}\n{UID_B}\n").replace("\n", "\r"), source="m.tcia")
    assert manifest.uids == (UID_A, UID_B)
    assert manifest.uid_lines == (7, 8)


def test_marker_is_found_by_key_not_line_count() -> None:
    seven_header_lines = "dataType=DICOM\n# exported by hand\n" + HEADER
    assert parse_manifest(seven_header_lines + UID_A, source="m").uids == (UID_A,)
    no_header = f"  listofseriestodownload =  \n{UID_A}\n"
    manifest = parse_manifest(no_header, source="m")
    assert manifest.uids == (UID_A,)
    assert manifest.properties == {}


def test_uid_on_the_marker_line_counts_as_the_first_uid() -> None:
    manifest = parse_manifest(f"ListOfSeriesToDownload={UID_A}\n{UID_B}\n", source="m")
    assert manifest.uids == (UID_A, UID_B)
    assert manifest.uid_lines == (1, 2)


def test_duplicates_are_kept_once_in_first_seen_order_and_counted() -> None:
    text = HEADER + f"{UID_A}\n{UID_B}\n {UID_A}\n{UID_C}\n{UID_B},\n{UID_A}\n"
    manifest = parse_manifest(text, source="m.tcia")
    assert manifest.uids == (UID_A, UID_B, UID_C)
    assert manifest.duplicates == 3
    assert [(d.uid, d.line, d.first_line) for d in manifest.duplicate_details] == [
        (UID_A, 9, 7),
        (UID_B, 11, 8),
        (UID_A, 12, 7),
    ]


def test_junk_line_is_an_error_naming_file_and_line_in_strict_mode() -> None:
    text = HEADER + f"{UID_A}\n" * 5 + "abc\n"
    with pytest.raises(InputError) as caught:
        parse_manifest(text, source="jobs/a.tcia")
    message = str(caught.value)
    assert message.startswith("jobs/a.tcia:12: 'abc' is not a DICOM UID (a UID holds only digits and dots)")
    assert caught.value.source == "jobs/a.tcia"
    assert caught.value.location == "12"
    assert caught.value.exit_code == 2


def test_strict_error_lists_first_problems_and_counts_the_rest() -> None:
    junk = [f"junk{i}" for i in range(8)]
    text = HEADER + UID_A + "\n" + "\n".join(junk) + "\n1.02.3\n" + "9" * 70 + "\n"
    with pytest.raises(InputError) as caught:
        parse_manifest(text, source="a.tcia")
    message = str(caught.value)
    assert "a.tcia:8: 'junk0'" in message
    assert "a.tcia:9: 'junk1'" in message
    assert "a.tcia:12: 'junk4'" in message
    assert "junk5" not in message
    assert "and 5 more invalid lines" in message
    assert "10 invalid lines in total" in message


def test_non_strict_keeps_going_and_reports_every_problem_with_its_line() -> None:
    text = HEADER + f"{UID_A}\nnot-a-uid\n1.2.03\n..\n{UID_B}\n\x1b[31mred\n" + "1." * 40 + "1\n"
    manifest = parse_manifest(text, source="a.tcia", strict=False)
    assert manifest.uids == (UID_A, UID_B)
    assert [p.line for p in manifest.problems] == [8, 9, 10, 12, 13]
    assert manifest.problem_count == 5
    reasons = [p.reason for p in manifest.problems]
    assert "starts with 0" in reasons[1]
    assert "empty component" in reasons[2]
    assert "limit is 64" in reasons[4]
    escaped = manifest.problems[3].text
    assert "\x1b" not in escaped and "\\x1b" in escaped
    assert manifest.problems[0].describe() == (
        "a.tcia:8: 'not-a-uid' is not a DICOM UID (a UID holds only digits and dots)"
    )
    assert str(manifest.problems[0]) == manifest.problems[0].describe()


def test_problem_text_is_truncated() -> None:
    manifest = parse_manifest(HEADER + UID_A + "\n" + "x" * 5000 + "\n", source="a", strict=False)
    assert len(manifest.problems[0].text) <= 61
    assert manifest.problems[0].text.endswith("…")


def test_junk_in_header_is_reported() -> None:
    with pytest.raises(InputError, match=r"m:2: 'just some prose' before 'ListOfSeriesToDownload='"):
        parse_manifest("manifestVersion=3.0\njust some prose\nListOfSeriesToDownload=\n" + UID_A, source="m")


def test_concatenated_manifests_are_reported_not_merged_silently() -> None:
    with pytest.raises(InputError, match="two manifests concatenated"):
        parse_manifest(HEADER + UID_A + "\n" + HEADER + UID_B + "\n", source="m")
    lenient = parse_manifest(HEADER + UID_A + "\n" + HEADER + UID_B + "\n", source="m", strict=False)
    assert lenient.uids == (UID_A, UID_B)
    assert lenient.problem_count == 6


def test_comment_lines_in_the_list_are_skipped() -> None:
    manifest = parse_manifest(HEADER + f"# first batch\n{UID_A}\n", source="m")
    assert manifest.uids == (UID_A,)


def test_series_id_header_is_only_accepted_as_the_first_list_line() -> None:
    manifest = parse_manifest(HEADER + f"\nSeries ID\n{UID_A}\n", source="m")
    assert manifest.header_lines == (8,)
    with pytest.raises(InputError, match=r"m:8: 'Series ID'"):
        parse_manifest(HEADER + f"{UID_A}\nSeries ID\n", source="m")


def test_no_marker_explains_what_a_manifest_looks_like() -> None:
    with pytest.raises(InputError) as caught:
        parse_manifest("hello world\n", source="x.tcia")
    message = str(caught.value)
    assert message.startswith("x.tcia: no 'ListOfSeriesToDownload=' line found")
    assert "manifestVersion=3.0" in message


def test_plain_uid_list_without_marker_gets_a_hint() -> None:
    with pytest.raises(InputError, match="looks like a plain list of UIDs"):
        parse_manifest(f"{UID_A}\n{UID_B}\n", source="x.tcia")


@pytest.mark.parametrize("body", ["", "\n\n  \n", "Series ID\n", "# nothing yet\n"])
def test_empty_list_is_an_error(body: str) -> None:
    with pytest.raises(InputError, match=r"m.tcia:6: no series UIDs after"):
        parse_manifest(HEADER + body, source="m.tcia")


def test_all_invalid_in_lenient_mode_is_still_an_error() -> None:
    with pytest.raises(InputError, match=r"no series UIDs .*\(2 invalid lines skipped\)"):
        parse_manifest(HEADER + "abc\ndef\n", source="m", strict=False)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"PK\x03\x04\x14\x00" + b"\x00" * 40, "zip archive"),
        (b"\x00" * 128 + b"DICM" + b"\x00" * 20, "DICOM file"),
        (HEADER.encode() + b"1.2.3\x00\x00\x01\n", f"m.tcia:7: NUL byte at byte offset {len(HEADER) + 5}"),
        (
            HEADER.encode() + b"1.2.3\n\xff\xfe\x80garbage",
            f"m.tcia:8: not UTF-8 text: byte 0xff at byte offset {len(HEADER) + 6}",
        ),
        (bytes(range(256)) * 50, "NUL byte"),
    ],
)
def test_binary_garbage_is_an_input_error(data: bytes, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        parse_manifest_bytes(data, source="m.tcia")


def test_utf16_with_bom_is_decoded() -> None:
    manifest = parse_manifest_bytes((HEADER + UID_A + "\r\n").encode("utf-16"), source="m")
    assert manifest.uids == (UID_A,)


def test_unreadable_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found") as caught:
        read_manifest(tmp_path / "missing.tcia")
    assert str(tmp_path / "missing.tcia") in str(caught.value)
    with pytest.raises(InputError, match="is a directory"):
        read_manifest(tmp_path)


def test_looks_like_manifest_finds_the_marker_near_the_top() -> None:
    assert looks_like_manifest(HEADER + UID_A)
    assert looks_like_manifest("LISTOFSERIESTODOWNLOAD=\r\n")
    assert not looks_like_manifest(f"SeriesInstanceUID\n{UID_A}\n")


def test_million_lines_parse_in_bounded_time_and_memory() -> None:
    distinct = 200_000
    text = HEADER + "".join(f"1.2.840.{i % distinct}\n" for i in range(1_000_000))
    started = time.monotonic()
    manifest = parse_manifest(text, source="big.tcia")
    elapsed = time.monotonic() - started
    assert len(manifest.uids) == distinct
    assert manifest.duplicates == 800_000
    assert len(manifest.duplicate_details) == MAX_RECORDED_DETAILS
    assert elapsed < 30


def test_million_junk_lines_keep_bounded_problem_details() -> None:
    text = HEADER + UID_A + "\n" + "garbage line\n" * 1_000_000
    started = time.monotonic()
    manifest = parse_manifest(text, source="big.tcia", strict=False)
    assert time.monotonic() - started < 30
    assert manifest.uids == (UID_A,)
    assert manifest.problem_count == 1_000_000
    assert len(manifest.problems) == MAX_RECORDED_DETAILS
    with pytest.raises(InputError, match="1000000 invalid lines in total"):
        parse_manifest(text, source="big.tcia")


def test_one_enormous_line_is_rejected_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(InputError, match="limit is 64"):
        parse_manifest(HEADER + "1" * 50_000_000, source="m")
    assert time.monotonic() - started < 10
