"""``metadata.csv``: one row per downloaded series, in NBIA Data Retriever's columns.

Users and their scripts already read Data Retriever's ``metadata.csv`` (nbia-api.md §9.1), so the
first 17 columns are DR's, in DR's order, with DR's value formats: ``null`` for a missing value,
``File Size`` in SI units with two decimals (``163.31 KB``; 1000-based, half-up like Java's
``%.2f``), ``File Location`` as ``./<relative path>``, ``Download Timestamp`` as local ISO date-time
with milliseconds, CRLF line endings. Two columns are added at the end: ``File Size (Bytes)``
(exact) and ``Absolute Location``.

Unlike DR, fields are quoted when they need it (RFC 4180 via the csv module), so a comma, quote
or newline in a description survives a round trip; rows without such characters read exactly
like DR's. A server text cell that a spreadsheet would evaluate as a formula (it begins with
``=``, ``+``, ``-``, ``@``, a tab or CR and is not a plain number) gets a leading ``'``
(``untrusted.spreadsheet_cell``); counts and sizes are ours and never need it. The file is
mode 0644 (data to share, unlike the run's state) and is written atomically and streamed
(``atomic.write_chunks_atomic_sync``).
"""

from __future__ import annotations

import csv
import datetime
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Final

from tcia_fetch.store.atomic import write_chunks_atomic_sync
from tcia_fetch.untrusted import spreadsheet_cell

__all__ = [
    "DR_COLUMNS",
    "METADATA_COLUMNS",
    "SOP_CLASS_NAMES",
    "human_readable_size",
    "metadata_csv_row",
    "read_metadata_csv",
    "render_metadata_csv",
    "sop_class_name",
    "write_metadata_csv",
]

DR_COLUMNS: Final = (
    "Series UID",
    "Collection",
    "3rd Party Analysis",
    "Data Description URI",
    "Subject ID",
    "Study UID",
    "Study Description",
    "Study Date",
    "Series Description",
    "Manufacturer",
    "Modality",
    "SOP Class Name",
    "SOP Class UID",
    "Number of Images",
    "File Size",
    "File Location",
    "Download Timestamp",
)
METADATA_COLUMNS: Final = (*DR_COLUMNS, "File Size (Bytes)", "Absolute Location")

_NULL: Final = "null"

#: Column of metadata.csv ← server metadata key (v4 getSeries / getSeriesMetadata names).
_SERVER_KEYS: Final = {
    "Series UID": "SeriesInstanceUID",
    "Collection": "Collection",
    "3rd Party Analysis": "ThirdPartyAnalysis",
    "Data Description URI": "DataDescriptionURI",
    "Subject ID": "PatientID",
    "Study UID": "StudyInstanceUID",
    "Study Description": "StudyDesc",
    "Study Date": "StudyDate",
    "Series Description": "SeriesDescription",
    "Manufacturer": "Manufacturer",
    "Modality": "Modality",
}

#: Names of the SOP classes TCIA serves most (DICOM PS3.4 Annex B names).
SOP_CLASS_NAMES: Final[Mapping[str, str]] = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State Storage",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data Storage",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration Storage",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration Storage",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.6": "VL Whole Slide Microscopy Image Storage",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.481.1": "RT Image Storage",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose Storage",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
    "1.2.840.10008.5.1.4.1.1.481.4": "RT Beams Treatment Record Storage",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan Storage",
}

_FLUSH_CHARS: Final = 1 << 20
_ISO_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SIZE_UNITS: Final = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "KB"))


def sop_class_name(sop_class_uid: str | None) -> str:
    """The SOP class's name when known, else the UID itself, else ``null``."""
    if not sop_class_uid:
        return _NULL
    return SOP_CLASS_NAMES.get(sop_class_uid, sop_class_uid)


def human_readable_size(size_bytes: int) -> str:
    """Data Retriever's size text: ``512 B``, ``163.31 KB``, ``117.84 MB`` (1000-based, half-up)."""
    if size_bytes < 0:
        raise ValueError(f"size must be non-negative, got {size_bytes}")
    for factor, unit in _SIZE_UNITS:
        if size_bytes >= factor:
            # Java's %.2f rounds the shortest decimal form of the double half-up; so do we.
            value = Decimal(repr(size_bytes / factor)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
            return f"{value} {unit}"
    return f"{size_bytes} B"


def _text(value: object) -> str:
    if value is None:
        return _NULL
    if isinstance(value, datetime.datetime):
        value = value.date()
    if isinstance(value, datetime.date):
        return value.strftime("%m-%d-%Y")
    return str(value)


def _date_text(value: object) -> str:
    """A date column as the NBIA Data Retriever prints it (``MM-DD-YYYY``).

    The journal stores dates as ISO strings (``json_safe_metadata``); they are turned back here so
    metadata.csv keeps DR's form whatever representation the metadata arrived in.
    """
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        return datetime.date.fromisoformat(value).strftime("%m-%d-%Y")
    return _text(value)


def _timestamp(moment: datetime.datetime) -> str:
    local = moment.astimezone() if moment.tzinfo is not None else moment
    return local.replace(tzinfo=None).isoformat(timespec="milliseconds")


def metadata_csv_row(
    metadata: Mapping[str, object],
    *,
    instance_count: int,
    dicom_bytes: int,
    location: str,
    sop_class_uid: str | None,
    downloaded_at: datetime.datetime,
    root: Path | None = None,
) -> dict[str, str]:
    """One metadata.csv row for a published series.

    ``metadata`` is the server's row (v4 column names); ``location`` the series directory relative
    to the destination root (posix); ``root`` the destination root for ``Absolute Location``
    (empty when not given). Counts and sizes come from verification, not from the server.
    """
    # Server text never reaches a spreadsheet as a formula ("=HYPERLINK(...)" in a description).
    row = {column: spreadsheet_cell(_text(metadata.get(key))) for column, key in _SERVER_KEYS.items()}
    row["Study Date"] = spreadsheet_cell(_date_text(metadata.get(_SERVER_KEYS["Study Date"])))
    relative = location.lstrip("/")
    row.update(
        {
            "SOP Class Name": spreadsheet_cell(sop_class_name(sop_class_uid)),
            "SOP Class UID": spreadsheet_cell(sop_class_uid or _NULL),
            "Number of Images": str(instance_count),
            "File Size": human_readable_size(dicom_bytes),
            "File Location": f"./{relative}",
            "Download Timestamp": _timestamp(downloaded_at),
            "File Size (Bytes)": str(dicom_bytes),
            "Absolute Location": str(root.joinpath(relative)) if root is not None else "",
        }
    )
    return row


def render_metadata_csv(rows: Iterable[Mapping[str, str]]) -> str:
    """The whole file as text: header and rows, RFC 4180 quoting, CRLF line endings."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=METADATA_COLUMNS, lineterminator="\r\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: row.get(column, "") for column in METADATA_COLUMNS} | dict(row))
    return buffer.getvalue()


def write_metadata_csv(path: Path, rows: Iterable[Mapping[str, str]]) -> int:
    """Write ``metadata.csv`` atomically (readers never see a half-written file); return the rows.

    Rows are streamed to the temporary file as they come, so a 600,000-series destination never
    holds the file's text (or its rows) in memory.
    """
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(
            buffer, fieldnames=METADATA_COLUMNS, lineterminator="\r\n", extrasaction="raise"
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in METADATA_COLUMNS} | dict(row))
            count += 1
            if buffer.tell() >= _FLUSH_CHARS:
                yield buffer.getvalue().encode("utf-8")
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue().encode("utf-8")

    write_chunks_atomic_sync(path, chunks(), mode=0o644)  # data for the user's colleagues, not state
    return count


def read_metadata_csv(path: Path) -> list[dict[str, str]]:
    """Read a metadata.csv back (ours or Data Retriever's) as one dict per row."""
    with open(path, encoding="utf-8", newline="") as stream:
        return [dict(row) for row in csv.DictReader(stream)]
