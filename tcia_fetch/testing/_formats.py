"""NBIA response texts and output formats (pure): column lists, allow-lists, error bodies, JSON/CSV/...

Mirrors ``restAPI/v4/getData.java:formatResponse`` and ``restUtil/FormatOutput.java`` as described in
reference/nbia-api.md §3.2-3.5: JSON arrays with null keys omitted, single-column CSV unquoted and
multi-column CSV fully quoted with ``\\n`` rows, HTML/XML tables, and 500 for an unknown ``format``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ERROR_PREFIX",
    "METADATA_COLUMNS",
    "NOT_GRANTED",
    "SERIES_COLUMNS",
    "Formatted",
    "UnknownFormatError",
    "format_rows",
    "invalid_parameter_text",
]

ERROR_PREFIX = "Server was not able to process your request"
SERVER_ERROR_NULL = ERROR_PREFIX + "\nnull"
NOT_GRANTED = (
    "The user has not been granted the access to image with given SeriesInstanceUID,{uid}. "
    "Please contact System Admin to resolve this issue."
)
NOT_PUBLIC_V1 = "Image with given SeriesInstanceUID,{uid}, is not in public domain."
MISSING_UID_DOWNLOAD = "A parameter, SeriesInstanceUID, is required for this API call."
MISSING_UID_QUERY = "A parameter, SeriesInstanceUID is required for this API call."
MISSING_SINGLE_IMAGE = "A parameter, SeriesInstanceUID and SOPInstanceUID, are required for this API call."
MISSING_COLLECTION_DATE = "A parameter, Collection and Date are required for this API call."
MISSING_COLLECTION_MODALITY = "A parameter, Collection and Modality, are required for this API call."
MISSING_LIST = "A form parameter, list, containing at least one SeriesInstanceUID is required."

SERIES_COLUMNS = (
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate", "SeriesDescription",
    "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection", "Site", "PatientID", "PatientSex",
    "PatientAge", "AdmittingDiagnosisDescription", "Manufacturer", "ManufacturerModelName",
    "SoftwareVersions", "ImageCount", "MaxSubmissionTimestamp", "LicenseName", "LicenseURI",
    "DataDescriptionURI", "FileSize", "ReleasedStatus", "DateReleased", "StudyDesc", "StudyDate",
    "ThirdPartyAnalysis", "Authorized",
)  # fmt: skip
LEGACY_SERIES_COLUMNS = (
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate", "SeriesDescription",
    "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection", "PatientID", "Manufacturer",
    "ManufacturerModelName", "SoftwareVersions", "ImageCount", "TimeStamp", "LicenseName", "LicenseURI",
    "CollectionURI", "FileSize", "DateReleased", "StudyDesc", "StudyDate", "ThirdPartyAnalysis",
)  # fmt: skip
METADATA_COLUMNS = (
    "PatientID", "PatientName", "PatientSex", "EthnicGroup", "Phantom", "SpeciesCode", "SpeciesDescription",
    "StudyInstanceUID", "StudyDate", "StudyDesc", "AdmittingDiagnosisDescription", "StudyID", "PatientAge",
    "LongitudinalTemporalEventType", "LongitudinalTemporalOffsetFromEvent", "SeriesInstanceUID", "Collection",
    "Site", "Modality", "ProtocolName", "SeriesDate", "SeriesDescription", "BodyPartExamined", "SeriesNumber",
    "AnnotationsFlag", "Manufacturer", "ManufacturerModelName", "PixelSpacing(mm)-Row", "SliceThickness(mm)",
    "SoftwareVersions", "ImageCount", "MaxSubmissionTimestamp", "LicenseName", "LicenseURI",
    "DataDescriptionURI", "FileSize", "ReleasedStatus", "DateReleased", "ThirdPartyAnalysis", "Authorized",
)  # fmt: skip
PATIENT_COLUMNS = (
    "PatientId", "PatientName", "PatientSex", "EthnicGroup", "Collection", "Phantom", "SpeciesCode",
    "SpeciesDescription", "Authorized",
)  # fmt: skip
STUDY_COLUMNS = (
    "StudyInstanceUID", "StudyDate", "StudyDescription", "AdmittingDiagnosesDescription", "StudyID",
    "PatientAge", "PatientID", "PatientName", "PatientSex", "EthnicGroup", "Collection", "SeriesCount",
    "LongitudinalTemporalEventType", "LongitudinalTemporalOffsetFromEvent", "Authorized",
)  # fmt: skip
SIZE_COLUMNS = ("TotalSizeInBytes", "ObjectCount")


class UnknownFormatError(ValueError):
    """``format`` names no known output format (the server answers 500)."""


@dataclass(frozen=True, slots=True)
class Formatted:
    """A formatted body and the headers that go with it."""

    body: bytes
    content_type: str | None
    disposition: str | None = None


def invalid_parameter_text(name: str, allowed: Sequence[str]) -> str:
    """The v4 400 body for a parameter outside the endpoint's allow-list (Java ``Set.toString()``)."""
    return f"Invalid query parameter: '{name}'. Allowed parameters are: [{', '.join(allowed)}]"


def _csv_quote(value: object | None) -> str:
    if value is None:
        return '""'
    return '"' + str(value).replace('"', '""') + '"'


def _to_csv(rows: Sequence[dict[str, object]], columns: Sequence[str], *, quoted: bool) -> str:
    if len(columns) == 1 and not quoted:
        column = columns[0]
        lines = [column] + ["" if row.get(column) is None else str(row[column]) for row in rows]
        return "\n".join(lines) + "\n"
    lines = [",".join(_csv_quote(column) for column in columns)]
    lines += [",".join(_csv_quote(row.get(column)) for column in columns) for row in rows]
    return "\n".join(lines) + "\n"


def _to_html(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    head = "".join(f"<TH>{html.escape(column)}</TH>" for column in columns)
    body = "".join(
        "<TR>"
        + "".join(
            "<TD>&nbsp;</TD>" if row.get(column) is None else f"<TD>{html.escape(str(row[column]))}</TD>"
            for column in columns
        )
        + "</TR>"
        for row in rows
    )
    return f"<P ALIGN='center'><TABLE BORDER=1><TR>{head}</TR>{body}</TABLE></P>"


def _to_xml(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    parts = ['<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Results>']
    for row in rows:
        parts.append("<Row>")
        for column in columns:
            value = row.get(column)
            if value is None:
                continue
            java_type = "java.lang.Long" if isinstance(value, int) else "java.lang.String"
            parts.append(f"<{column} type='{java_type}'>{html.escape(str(value))}</{column}>")
        parts.append("</Row>")
    parts.append("</Results>")
    return "".join(parts)


def json_body(rows: Sequence[dict[str, object]]) -> bytes:
    """Compact JSON array, keys in column order (rows already omit nulls)."""
    return json.dumps(list(rows), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def format_rows(
    rows: Sequence[dict[str, object]], columns: Sequence[str], requested: str | None
) -> Formatted:
    """Render rows as the ``format`` parameter asks; raise UnknownFormatError for other values.

    The caller handles "no rows" (200 with an empty body) before calling this, as the server does.
    """
    choice = (requested or "JSON").upper()
    if choice == "JSON":
        return Formatted(json_body(rows), "application/json")
    if choice == "CSV":
        return Formatted(_to_csv(rows, columns, quoted=False).encode(), "text/csv")
    if choice == "CSVQUOTED":
        return Formatted(_to_csv(rows, columns, quoted=len(columns) > 1).encode(), "text/csv")
    if choice == "CSV-DOWNLOAD":
        single = len(columns) == 1
        return Formatted(
            _to_csv(rows, columns, quoted=not single).encode(),
            "application/force-download" if single else "text/csv",
            'attachment; filename="SeriesMetaData.csv"',
        )
    if choice == "HTML":
        return Formatted(_to_html(rows, columns).encode(), "text/html")
    if choice == "XML":
        return Formatted(_to_xml(rows, columns).encode(), "application/xml")
    raise UnknownFormatError(requested)
