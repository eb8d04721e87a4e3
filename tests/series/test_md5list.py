"""md5hashes.csv parsing: the server's format and its harmless variants; refusals with line numbers."""

from __future__ import annotations

import pytest

from tcia_fetch.errors import ChecksumMismatchError
from tcia_fetch.series.md5list import parse_md5_list

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
