"""metadata.csv never hands a spreadsheet a formula from the server (issue 14)."""

from __future__ import annotations

import datetime
from pathlib import Path

from tcia_fetch.store.metadata_csv import metadata_csv_row, read_metadata_csv, write_metadata_csv


def test_server_text_cells_that_start_a_formula_are_prefixed(tmp_path: Path) -> None:
    row = metadata_csv_row(
        {
            "SeriesInstanceUID": "1.2.3",
            "Collection": "@SUM(A1)",
            "SeriesDescription": '=HYPERLINK("http://evil.example","open")',
            "Manufacturer": "+cmd|' /C calc'!A0",
            "StudyDesc": "-2+3",
            "Modality": "CT",
        },
        instance_count=3,
        dicom_bytes=1500,
        location="c/p/s",
        sop_class_uid=None,
        downloaded_at=datetime.datetime(2026, 1, 2, 3, 4, 5),
    )
    write_metadata_csv(tmp_path / "metadata.csv", [row])
    [read] = read_metadata_csv(tmp_path / "metadata.csv")
    assert read["Series Description"] == '\'=HYPERLINK("http://evil.example","open")'
    assert read["Manufacturer"] == "'+cmd|' /C calc'!A0"
    assert read["Study Description"] == "'-2+3"
    assert read["Collection"] == "'@SUM(A1)"
    assert read["Modality"] == "CT" and read["Series UID"] == "1.2.3"
    assert read["Number of Images"] == "3" and read["File Size (Bytes)"] == "1500"
