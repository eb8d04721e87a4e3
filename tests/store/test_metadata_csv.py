"""metadata.csv: Data Retriever's columns and formats, plus proper quoting that round-trips."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from tcia_fetch.store.metadata_csv import (
    DR_COLUMNS,
    METADATA_COLUMNS,
    human_readable_size,
    metadata_csv_row,
    read_metadata_csv,
    sop_class_name,
    write_metadata_csv,
)

# A real Data Retriever row (2021), nbia-api.md §9.1.
DR_REAL_ROW = (
    "1.3.6.1.4.1.14519.5.2.1.1706.8040.150602874655732880945154527032,HNSCC,null,"
    "httpsdoi.org10.7937k9tcia.2020.a8sh-7363,HNSCC-01-0001,"
    "1.3.6.1.4.1.14519.5.2.1.1706.8040.141473127645431244275904143582,"
    "RT SIMULATION,12-05-1998,NA,ADAC,RTPLAN,"
    "RT Plan Storage,1.2.840.10008.5.1.4.1.1.481.5,1,163.31 KB,"
    "./HNSCC/HNSCC-01-0001/12-05-1998-NA-RT SIMULATION-43582/1.000000-NA-27032,2021-09-30T21:38:59.207"
)
HNSCC_METADATA: dict[str, object] = {
    "SeriesInstanceUID": "1.3.6.1.4.1.14519.5.2.1.1706.8040.150602874655732880945154527032",
    "Collection": "HNSCC",
    "ThirdPartyAnalysis": None,
    "DataDescriptionURI": "httpsdoi.org10.7937k9tcia.2020.a8sh-7363",
    "PatientID": "HNSCC-01-0001",
    "StudyInstanceUID": "1.3.6.1.4.1.14519.5.2.1.1706.8040.141473127645431244275904143582",
    "StudyDesc": "RT SIMULATION",
    "StudyDate": datetime.date(1998, 12, 5),
    "SeriesDescription": "NA",
    "Manufacturer": "ADAC",
    "Modality": "RTPLAN",
}


def _hnscc_row(root: Path | None = None) -> dict[str, str]:
    return metadata_csv_row(
        HNSCC_METADATA,
        instance_count=1,
        dicom_bytes=163_310,
        location="HNSCC/HNSCC-01-0001/12-05-1998-NA-RT SIMULATION-43582/1.000000-NA-27032",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.481.5",
        downloaded_at=datetime.datetime(2021, 9, 30, 21, 38, 59, 207_000),
        root=root,
    )


def test_first_columns_reproduce_a_real_data_retriever_row() -> None:
    row = _hnscc_row()
    assert ",".join(row[column] for column in DR_COLUMNS) == DR_REAL_ROW
    assert row["File Size (Bytes)"] == "163310"


def test_header_is_data_retriever_header_plus_two_columns(tmp_path: Path) -> None:
    path = tmp_path / "metadata.csv"
    write_metadata_csv(path, [_hnscc_row(Path("/data/dest"))])
    header = path.read_bytes().split(b"\r\n")[0].decode()
    assert header == (
        "Series UID,Collection,3rd Party Analysis,Data Description URI,Subject ID,Study UID,"
        "Study Description,"
        "Study Date,Series Description,Manufacturer,Modality,SOP Class Name,SOP Class UID,Number of Images,"
        "File Size,File Location,Download Timestamp,File Size (Bytes),Absolute Location"
    )
    assert tuple(header.split(",")) == METADATA_COLUMNS


def test_rows_without_special_characters_are_written_unquoted_with_crlf(tmp_path: Path) -> None:
    path = tmp_path / "metadata.csv"
    write_metadata_csv(path, [_hnscc_row(Path("/data/dest"))])
    data = path.read_bytes()
    assert data.endswith(b"\r\n")
    assert data.count(b"\r\n") == 2
    assert b"\n" not in data.replace(b"\r\n", b"")
    second_line = data.split(b"\r\n")[1].decode()
    assert second_line.startswith(DR_REAL_ROW + ",163310,/data/dest/HNSCC/")


def test_commas_quotes_and_newlines_survive_a_round_trip(tmp_path: Path) -> None:
    nasty = dict(
        HNSCC_METADATA, SeriesDescription='T1, "post" contrast\nline two', StudyDesc="a,b", Collection=""
    )
    row = metadata_csv_row(
        nasty,
        instance_count=3,
        dicom_bytes=999,
        location="C/P/S/1.2.3",
        sop_class_uid=None,
        downloaded_at=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    )
    path = tmp_path / "metadata.csv"
    write_metadata_csv(path, [row, _hnscc_row()])
    back = read_metadata_csv(path)
    assert back == [row, _hnscc_row()]
    assert back[0]["Series Description"] == 'T1, "post" contrast\nline two'
    assert back[0]["Collection"] == ""
    assert back[0]["SOP Class Name"] == "null"
    assert back[0]["File Size"] == "999 B"
    assert [p.name for p in tmp_path.iterdir()] == ["metadata.csv"]


def test_timestamp_is_local_iso_with_milliseconds() -> None:
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=datetime.UTC)
    row = metadata_csv_row(
        HNSCC_METADATA,
        instance_count=1,
        dicom_bytes=1,
        location="x",
        sop_class_uid=None,
        downloaded_at=moment,
    )
    expected = moment.astimezone().replace(tzinfo=None).isoformat(timespec="milliseconds")
    assert row["Download Timestamp"] == expected
    assert row["File Location"] == "./x"


def test_unknown_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Bogus"):
        write_metadata_csv(tmp_path / "m.csv", [{"Bogus": "1"}])


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.00 KB"),
        (163_305, "163.31 KB"),  # half-up like Java's %.2f, where Python's round() gives 163.30
        (117_840_000, "117.84 MB"),
        (5 * 10**9, "5.00 GB"),
        (12 * 10**12, "12.00 TB"),
    ],
)
def test_sizes_read_like_data_retriever(size: int, text: str) -> None:
    assert human_readable_size(size) == text


def test_sop_class_names() -> None:
    assert sop_class_name("1.2.840.10008.5.1.4.1.1.2") == "CT Image Storage"
    assert sop_class_name("1.2.840.10008.5.1.4.1.1.66.4") == "Segmentation Storage"
    assert sop_class_name("1.2.840.10008.5.1.4.1.1.481.3") == "RT Structure Set Storage"
    assert sop_class_name("1.2.3.4") == "1.2.3.4"
    assert sop_class_name(None) == "null"


def test_iso_study_date_from_the_journal_prints_as_dr_does() -> None:
    row = metadata_csv_row(
        {"StudyDate": "1998-12-05", "SeriesInstanceUID": "1.2.3"},
        instance_count=1,
        dicom_bytes=10,
        location="C/P/S/1.2.3",
        sop_class_uid=None,
        downloaded_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    )
    assert row["Study Date"] == "12-05-1998"
