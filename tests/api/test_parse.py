"""Body parsing and scalar coercion: every NBIA quirk from nbia-api.md §3.3/§3.4/§8.4."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcia_fetch.api.parse import (
    coerce_count,
    format_server_date,
    parse_csv_rows,
    parse_json_rows,
    parse_rows,
    parse_server_date,
)
from tcia_fetch.errors import ResponseFormatError


@pytest.mark.parametrize("body", [b"", b"   ", b"\n\r\n\t"])
def test_empty_body_means_no_rows(body: bytes) -> None:
    assert parse_rows(body, "application/json") == []
    assert parse_rows(body, None) == []
    assert parse_rows(body, "text/csv") == []


def test_json_array_keeps_keys_and_drops_nulls() -> None:
    body = b'[{"Collection": "4D-Lung"}, {}, {"BodyPartExamined": "ABD", "X": null}]'
    assert parse_json_rows(body) == [{"Collection": "4D-Lung"}, {}, {"BodyPartExamined": "ABD"}]


def test_single_object_instead_of_array_is_one_row() -> None:
    assert parse_json_rows(b'{"TotalSizeInBytes": 5, "ObjectCount": 1}') == [
        {"TotalSizeInBytes": 5, "ObjectCount": 1}
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Gateway timeout</body></html>",
        b"Server was not able to process your request\nnull",
        b"[1, 2, 3]",
        b'[{"a": 1},',
        b"\xff\xfe\x00garbage",
        b'"just a string"',
    ],
)
def test_non_json_body_on_json_endpoint_is_a_format_error(body: bytes) -> None:
    with pytest.raises(ResponseFormatError):
        parse_rows(body, "application/json")


def test_html_content_type_is_rejected_even_for_csv_endpoint() -> None:
    with pytest.raises(ResponseFormatError, match="HTML"):
        parse_rows(b"<p>maintenance</p>", "text/html; charset=utf-8", csv_expected=True)


def test_quoted_csv_with_escaped_quotes_commas_and_newlines() -> None:
    body = (
        b'"PatientID","SeriesDescription","SeriesNumber","ProtocolName"\n'
        b'"100_HM10395","P4^P100, Gated ""0.0%""","500.000000",""\n'
        b'"p2","two\nlines","2","x"\n'
    )
    rows = parse_rows(body, "text/csv")
    assert rows == [
        {
            "PatientID": "100_HM10395",
            "SeriesDescription": 'P4^P100, Gated "0.0%"',
            "SeriesNumber": "500.000000",
        },
        {"PatientID": "p2", "SeriesDescription": "two\nlines", "SeriesNumber": "2", "ProtocolName": "x"},
    ]


def test_csv_expected_reads_octet_stream_as_csv() -> None:
    rows = parse_rows(b'"A","B"\n"1","2"\n', "application/octet-stream", csv_expected=True)
    assert rows == [{"A": "1", "B": "2"}]


def test_csv_with_ragged_record_is_a_format_error() -> None:
    with pytest.raises(ResponseFormatError, match="record 3"):
        parse_csv_rows(b'"A","B"\n"1","2"\n"3"\n')


def test_csv_with_html_is_a_format_error() -> None:
    with pytest.raises(ResponseFormatError):
        parse_csv_rows(b"<html>oops</html>")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (48, 48),
        ("48", 48),
        (48.0, 48),
        ("500.000000", 500),
        (" 7 ", 7),
        (0, 0),
        ("1e3", 1000),
        (2**60, 2**60),
    ],
)
def test_coerce_count_accepts_numbers_in_every_shape(value: object, expected: int) -> None:
    assert coerce_count(value) == expected


def test_coerce_count_keeps_big_sizes_exact() -> None:
    assert coerce_count("123456789012345678") == 123456789012345678


@pytest.mark.parametrize(
    "value", [-1, "-5", "1.5", "abc", "", None, True, float("nan"), "inf", [1], {"a": 1}]
)
def test_coerce_count_rejects_garbage(value: object) -> None:
    with pytest.raises(ResponseFormatError):
        coerce_count(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("01-06-2018", dt.date(2018, 1, 6)),
        ("12-31-1999", dt.date(1999, 12, 31)),
        ("2003-12-12 00:00:00.0", dt.date(2003, 12, 12)),
        ("2015-05-27 17:12:21.0", dt.date(2015, 5, 27)),
        ("2015-05-27", dt.date(2015, 5, 27)),
    ],
)
def test_server_dates(text: str, expected: dt.date) -> None:
    assert parse_server_date(text) == expected


@pytest.mark.parametrize("text", ["13-01-2018", "2018/01/06", "02-30-2020", "yesterday", "", 20180106])
def test_bad_server_dates(text: object) -> None:
    with pytest.raises(ResponseFormatError):
        parse_server_date(text)


@given(st.integers(min_value=0, max_value=10**20))
def test_coerce_count_property(number: int) -> None:
    assert coerce_count(number) == number
    assert coerce_count(str(number)) == number
    assert coerce_count(f"{number}.000000") == number
    if number:
        with pytest.raises(ResponseFormatError):
            coerce_count(-number)
        with pytest.raises(ResponseFormatError):
            coerce_count(f"{number}.5")


@given(st.dates())
def test_date_format_round_trip(day: dt.date) -> None:
    assert parse_server_date(format_server_date(day)) == day


@given(st.binary(max_size=400), st.sampled_from([None, "application/json", "text/csv", "text/html", "x/y"]))
def test_parsers_never_crash_on_arbitrary_bytes(body: bytes, content_type: str | None) -> None:
    for csv_expected in (False, True):
        try:
            rows = parse_rows(body, content_type, csv_expected=csv_expected)
        except ResponseFormatError:
            continue
        assert isinstance(rows, list)
        assert all(isinstance(row, dict) for row in rows)


@given(st.text(max_size=300))
def test_json_parser_never_crashes_on_arbitrary_text(text: str) -> None:
    with contextlib.suppress(ResponseFormatError):
        parse_json_rows(text.encode())


_cell = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r"), min_size=1
)


@given(
    st.lists(
        st.from_regex(r"[A-Za-z][A-Za-z0-9()\-]{0,12}", fullmatch=True), min_size=1, max_size=6, unique=True
    ),
    st.data(),
)
def test_quoted_csv_round_trip(header: list[str], data: st.DataObject) -> None:
    records = data.draw(st.lists(st.lists(_cell, min_size=len(header), max_size=len(header)), max_size=5))
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(records)
    rows = parse_csv_rows(buffer.getvalue().encode())
    assert rows == [dict(zip(header, record, strict=True)) for record in records]


@given(
    st.lists(
        st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4), max_size=5
    )
)
def test_json_round_trip(rows: list[dict[str, object]]) -> None:
    assert parse_json_rows(json.dumps(rows).encode()) == rows
