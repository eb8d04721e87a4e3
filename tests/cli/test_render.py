"""Rendering of query rows: CSV quoting, JSON fidelity, column selection."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tcia_fetch.cli.render import all_columns, parse_columns, render_rows
from tcia_fetch.errors import InputError

ROWS: list[dict[str, object]] = [
    {"SeriesInstanceUID": "1.2", "SeriesDescription": 'AX, "T1"\npost', "ImageCount": 5},
    {"SeriesInstanceUID": "1.3", "Extra": True},
]


def _render(fmt: str, columns: list[str] | None = None) -> str:
    out = io.StringIO()
    render_rows(ROWS, output_format=fmt, columns=columns, default_columns=["SeriesInstanceUID"], stream=out)  # type: ignore[arg-type]
    return out.getvalue()


def test_csv_is_properly_quoted_and_round_trips() -> None:
    records = list(csv.DictReader(io.StringIO(_render("csv"))))
    assert records[0]["SeriesDescription"] == 'AX, "T1"\npost'
    assert records[1] == {
        "SeriesInstanceUID": "1.3",
        "SeriesDescription": "",
        "ImageCount": "",
        "Extra": "true",
    }


def test_json_and_jsonl_keep_server_rows() -> None:
    assert json.loads(_render("json")) == ROWS
    assert [json.loads(line) for line in _render("jsonl").splitlines()] == ROWS
    assert json.loads(_render("json", ["ImageCount"])) == [{"ImageCount": 5}, {}]


def test_table_uses_default_columns_and_counts_rows() -> None:
    text = _render("table")
    assert "SeriesInstanceUID" in text and "SeriesDescription" not in text and "2 rows" in text


def test_columns_helpers() -> None:
    assert parse_columns(" a, b ,") == ["a", "b"]
    assert parse_columns(None) is None
    with pytest.raises(InputError):
        parse_columns(" , ")
    assert all_columns(ROWS) == ["SeriesInstanceUID", "SeriesDescription", "ImageCount", "Extra"]
    with pytest.raises(InputError, match="unknown column 'Nope'"):
        _render("csv", ["Nope"])
