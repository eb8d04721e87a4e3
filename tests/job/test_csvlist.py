"""CSV/TSV UID tables: delimiter sniffing, column names, quoting, and honest problem reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_fetch.errors import InputError
from tcia_fetch.job.csvlist import parse_uid_table, parse_uid_table_bytes, read_uid_table

UID_A = "1.3.6.1.4.1.14519.5.2.1.7009.9004.180224303090109944523368212991"
UID_B = "2.25.159938781348401988370074200042204937718"
UID_C = "1.2.840.113654.2.55.1"
STUDY = "1.3.6.1.4.1.14519.5.2.1.7009.9004.111"


def test_comma_separated_with_other_columns_kept_per_uid() -> None:
    text = f"PatientID,SeriesInstanceUID,Modality\nP1,{UID_A},CT\nP2,{UID_B},PT\n"
    table = parse_uid_table(text, source="t.csv")
    assert table.delimiter == ","
    assert table.uid_column == "SeriesInstanceUID"
    assert table.uids == (UID_A, UID_B)
    assert table.uid_lines == (2, 3)
    assert table.row_for(UID_B) == {"PatientID": "P2", "SeriesInstanceUID": UID_B, "Modality": "PT"}
    assert list(table.origins()) == [(UID_A, "t.csv:2"), (UID_B, "t.csv:3")]


@pytest.mark.parametrize("delimiter", [",", "\t", ";"])
def test_delimiter_is_sniffed_from_the_header(delimiter: str) -> None:
    text = delimiter.join(["Collection", "SeriesInstanceUID", "Note"]) + "\n"
    text += delimiter.join(["HNSCC", UID_A, "a, b; c"]).replace("a, b; c", '"a, b; c\tx"') + "\n"
    table = parse_uid_table(text, source="t")
    assert table.delimiter == delimiter
    assert table.uids == (UID_A,)
    assert table.row_for(UID_A)["Note"] == "a, b; c\tx"


@pytest.mark.parametrize(
    "header",
    [
        "SeriesInstanceUID",
        "seriesinstanceuid",
        "Series Instance UID",
        "Series UID",
        "series_instance_uid",
        "Series ID",
    ],
)
def test_accepted_column_names(header: str) -> None:
    table = parse_uid_table(f"{header}\n{UID_A}\n", source="t.csv")
    assert table.uids == (UID_A,)
    assert table.uid_column == header


def test_exact_name_wins_over_looser_matches() -> None:
    table = parse_uid_table(f"Series UID,SeriesInstanceUID\n{UID_B},{UID_A}\n", source="t.csv")
    assert table.uids == (UID_A,)


def test_nbia_metadata_csv_is_read_by_its_series_uid_column() -> None:
    header = (
        "Series UID,Collection,3rd Party Analysis,Data Description URI,Subject ID,Study UID,"
        "Study Description,"
        "Study Date,Series Description,Manufacturer,Modality,SOP Class Name,SOP Class UID,Number of Images,"
        "File Size,File Location,Download Timestamp"
    )
    row = (
        f"{UID_A},HNSCC,null,httpsdoi.org10.7937k9tcia.2020.a8sh-7363,HNSCC-01-0001,{STUDY},RT SIMULATION,"
        "12-05-1998,NA,ADAC,RTPLAN,RT Plan Storage,1.2.840.10008.5.1.4.1.1.481.5,1,163.31 KB,"
        "./HNSCC/HNSCC-01-0001/12-05-1998-NA-RT SIMULATION-43582/1.000000-NA-27032,2021-09-30T21:38:59.207"
    )
    table = parse_uid_table_bytes(("\ufeff" + header + "\r\n" + row + "\r\n").encode(), source="metadata.csv")
    assert table.uids == (UID_A,)
    assert table.row_for(UID_A)["Subject ID"] == "HNSCC-01-0001"


def test_quoted_fields_bom_crlf_and_blank_lines() -> None:
    text = (
        f'\ufeff"SeriesInstanceUID","Desc"\r\n\r\n"{UID_A}","multi\r\nline, quoted"\r\n'
        f'  \r\n" {UID_B} ",x\r\n'
    )
    table = parse_uid_table(text, source="t.csv")
    assert table.uids == (UID_A, UID_B)
    assert table.uid_lines == (3, 6)
    assert table.row_for(UID_A)["Desc"] == "multi\r\nline, quoted"


def test_duplicates_counted_and_first_row_kept() -> None:
    text = f"SeriesInstanceUID,n\n{UID_A},1\n{UID_B},2\n{UID_A},3\n"
    table = parse_uid_table(text, source="t.csv")
    assert table.uids == (UID_A, UID_B)
    assert table.duplicates == 1
    assert table.duplicate_details[0].line == 4
    assert table.duplicate_details[0].first_line == 2
    assert table.row_for(UID_A)["n"] == "1"


def test_invalid_uid_names_file_line_and_column_in_strict_mode() -> None:
    with pytest.raises(InputError) as caught:
        parse_uid_table(f"SeriesInstanceUID\n{UID_A}\nabc\n", source="lists/x.csv")
    assert str(caught.value).startswith(
        "lists/x.csv:3: 'abc' in column 'SeriesInstanceUID' is not a DICOM UID "
        "(a UID holds only digits and dots)"
    )


def test_non_strict_reports_bad_rows() -> None:
    text = f"SeriesInstanceUID,Desc\n{UID_A},ok\n,empty\n1.02,bad\n{UID_B},ok\n"
    table = parse_uid_table(text, source="t.csv", strict=False)
    assert table.uids == (UID_A, UID_B)
    assert [(p.line, p.source) for p in table.problems] == [(3, "t.csv"), (4, "t.csv")]
    assert "empty SeriesInstanceUID cell" in table.problems[0].reason


def test_row_with_extra_fields_is_not_trusted() -> None:
    # An unquoted comma in a description shifts the Study UID into the Series UID column.
    text = f"Desc,SeriesInstanceUID,StudyInstanceUID\nAXIAL, 3MM,{UID_A},{STUDY}\nok,{UID_B},{STUDY}\n"
    with pytest.raises(InputError, match=r"t.csv:2: row has 4 fields but the header has 3"):
        parse_uid_table(text, source="t.csv")
    lenient = parse_uid_table(text, source="t.csv", strict=False)
    assert lenient.uids == (UID_B,)
    assert STUDY not in lenient.uids


def test_trailing_empty_fields_and_short_rows_are_fine() -> None:
    table = parse_uid_table(f"SeriesInstanceUID,Note\n{UID_A},,\n{UID_B}\n", source="t.csv")
    assert table.uids == (UID_A, UID_B)
    assert table.row_for(UID_B) == {"SeriesInstanceUID": UID_B, "Note": ""}


def test_missing_column_lists_the_columns_found() -> None:
    with pytest.raises(InputError) as caught:
        parse_uid_table("PatientID,StudyInstanceUID\nP1,1.2.3\n", source="t.csv")
    message = str(caught.value)
    assert message.startswith("t.csv:1: no SeriesInstanceUID column")
    assert "columns found: 'PatientID', 'StudyInstanceUID'" in message


def test_headerless_uid_list_gets_a_hint() -> None:
    with pytest.raises(InputError, match="the first line is a UID: add a header line"):
        parse_uid_table(f"{UID_A}\n{UID_B}\n", source="t.txt")


@pytest.mark.parametrize("header", ["Series UID,series uid", "SeriesInstanceUID,Modality,SeriesInstanceUID"])
def test_two_matching_columns_are_ambiguous(header: str) -> None:
    with pytest.raises(InputError, match="more than one series UID column"):
        parse_uid_table(f"{header}\n{UID_A},CT,{UID_B}\n", source="t.csv")


def test_repeated_other_column_names_give_the_leftmost() -> None:
    table = parse_uid_table(f"Note,SeriesInstanceUID,Note\nleft,{UID_A},right\n", source="t.csv")
    assert table.row_for(UID_A)["Note"] == "left"


@pytest.mark.parametrize("text", ["", "\n\n", "   \r\n"])
def test_empty_file_is_an_error(text: str) -> None:
    with pytest.raises(InputError, match=r"t\.csv: "):
        parse_uid_table(text, source="t.csv")


def test_header_only_is_an_error() -> None:
    with pytest.raises(InputError, match="no series UIDs in column 'SeriesInstanceUID'"):
        parse_uid_table("SeriesInstanceUID\n", source="t.csv")


def test_oversized_field_is_an_input_error_with_a_line() -> None:
    text = f'SeriesInstanceUID,Desc\n{UID_A},"' + "x" * 200_000 + '"\n'
    with pytest.raises(InputError, match=r"t.csv:\d+: unreadable CSV"):
        parse_uid_table(text, source="t.csv")


def test_read_uid_table_from_disk_and_binary_refused(tmp_path: Path) -> None:
    good = tmp_path / "list.tsv"
    good.write_bytes(f"SeriesInstanceUID\tModality\r\n{UID_C}\tCT\r\n".encode())
    assert read_uid_table(good).uids == (UID_C,)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"SeriesInstanceUID\n\xc3\x28\n")
    with pytest.raises(InputError, match=r"bad.csv:2: not UTF-8 text"):
        read_uid_table(bad)
