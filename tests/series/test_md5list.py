"""md5hashes.csv parsing: the server's format and its harmless variants; refusals with line numbers."""

from __future__ import annotations

import tracemalloc

import pytest

from tcia_fetch.errors import ChecksumMismatchError
from tcia_fetch.series.md5list import MAX_LINE_BYTES, Md5ListParser, parse_md5_list

A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"


def test_server_format_is_parsed() -> None:
    text = f"Filename,MD5Hash\n00000002.dcm,{B}\n00000001.dcm,{A}\n".encode()
    assert parse_md5_list(text) == {"00000002.dcm": B, "00000001.dcm": A}


def test_bom_crlf_uppercase_and_missing_header_are_tolerated() -> None:
    text = f"\ufeff00000001.dcm,{A.upper()}\r\n\r\n00000002.dcm, {B} \r\n".encode()
    assert parse_md5_list(text) == {"00000001.dcm": A, "00000002.dcm": B}


def test_empty_list_is_empty() -> None:
    assert parse_md5_list(b"Filename,MD5Hash\n") == {}
    assert parse_md5_list(b"") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"Filename,MD5Hash\na/b.dcm,{A}\n", "line 2 names 'a/b.dcm'"),
        (f"x\\b.dcm,{A}\n", "path separator"),
        (f"a.dcm,{A}\na.dcm,{B}\n", "line 2 lists 'a.dcm' a second time"),
        (f"a.dcm;{A}\n", "1 fields"),
        (f"a.dcm,{A},x\n", "3 fields"),
        ("a.dcm,xyz\n", "not a 32-digit hex"),
        (f"a.dcm,{A}0\n", "not a 32-digit hex"),
        (f",{A}\n", "empty file name"),
        (f"Filename,MD5Hash\nFilename,MD5Hash\na.dcm,{A}\n", "not a 32-digit hex"),
    ],
)
def test_malformed_rows_are_refused(text: str, message: str) -> None:
    with pytest.raises(ChecksumMismatchError, match=message.replace("\\", "\\\\")):
        parse_md5_list(text.encode())


def test_non_utf8_is_refused() -> None:
    with pytest.raises(ChecksumMismatchError, match="not UTF-8"):
        parse_md5_list(b"a.dcm,\xff\n")


# --- streaming (issue 14): the list is parsed as it arrives, never held whole ----------------


def _streamed(data: bytes, chunk: int, *, max_entries: int = 100) -> dict[str, str]:
    parser = Md5ListParser(max_entries=max_entries)
    for start in range(0, len(data), chunk):
        parser.feed(data[start : start + chunk])
    return parser.finish()


@pytest.mark.parametrize("chunk", [1, 2, 5, 33, 1 << 16])
def test_any_chunking_gives_the_whole_list(chunk: int) -> None:
    text = f"\ufeffFilename,MD5Hash\r\n\r\n00000002.dcm,{B}\r\n\n\n00000001.dcm,{A.upper()}".encode()
    assert _streamed(text, chunk) == {"00000002.dcm": B, "00000001.dcm": A}


def test_line_numbers_count_blank_lines_across_chunks() -> None:
    text = f"{A[:4]}.dcm,{A}\n\n\n\nbad.dcm,xyz\n".encode()
    with pytest.raises(ChecksumMismatchError, match=r"line 5: 'xyz'"):
        _streamed(text, 3)


def test_blank_lines_are_skipped_without_keeping_anything() -> None:
    """24 MiB of blank lines stream through; the parser allocates almost nothing meanwhile."""
    parser = Md5ListParser(max_entries=2)
    parser.feed(f"Filename,MD5Hash\n00000001.dcm,{A}\n".encode())
    blank = b"\n\r\n" * (1 << 18)  # 768 KiB per feed
    tracemalloc.start()
    try:
        for _ in range(32):
            parser.feed(blank)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    parser.feed(f"00000002.dcm,{B}".encode())
    assert parser.finish() == {"00000001.dcm": A, "00000002.dcm": B}
    assert peak < 64 * 1024, f"{peak} bytes allocated while blank lines streamed"


def test_a_line_longer_than_any_row_is_refused_before_it_ends() -> None:
    parser = Md5ListParser(max_entries=5)
    parser.feed(b"x" * 600)
    with pytest.raises(ChecksumMismatchError, match=f"line 1 is longer than {MAX_LINE_BYTES} bytes"):
        parser.feed(b"y" * 600)


def test_more_rows_than_members_are_refused_at_once() -> None:
    parser = Md5ListParser(max_entries=1)
    parser.feed(f"00000001.dcm,{A}\n".encode())
    with pytest.raises(ChecksumMismatchError, match="one file more than the 1 DICOM member"):
        parser.feed(f"00000002.dcm,{B}\n".encode())
