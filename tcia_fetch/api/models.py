"""Typed rows of the NBIA query endpoints (pydantic v2), keyed in snake_case.

Each field's ``alias`` is the v4 column name (nbia-api.md §4); legacy v1/v2 spellings are
accepted through ``validation_alias`` (``CollectionURI`` → ``data_description_uri``,
``TimeStamp`` → ``max_submission_timestamp``). Models are frozen, accept construction by
field name (``populate_by_name``) and keep unknown columns (``extra="allow"``), so a
column the server adds tomorrow survives into JSON output and ``metadata.csv``.

:meth:`ServerRow.server_dict` returns the row exactly as the server sent it (nulls
omitted, original key spelling and value text): the CLI's JSON output and the
downloader's ``metadata.csv`` use it, never a re-serialisation of parsed values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Self, TypeVar

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from tcia_fetch.api.parse import coerce_count, format_server_date, parse_server_date
from tcia_fetch.errors import ResponseFormatError, TciaFetchError

__all__ = [
    "PatientRow",
    "RejectedRow",
    "ScreenedRows",
    "SeriesMetadataRow",
    "SeriesRow",
    "SeriesSize",
    "ServerRow",
    "SopInstanceRow",
    "StudyRow",
    "ValueCount",
    "ValueList",
    "rejected_rows",
    "rows_to_models",
    "screen_row",
    "screen_rows",
]


def _to_text(value: object) -> object:
    """Numbers become their text (``SeriesNumber: 2`` → ``"2"``); strings stay verbatim."""
    if isinstance(value, bool):
        raise ValueError("expected text, got a boolean")
    if isinstance(value, int | float):
        return str(value)
    return value


def _to_count(value: object) -> object:
    if value is None:
        return None
    try:
        return coerce_count(value)
    except TciaFetchError as exc:
        raise ValueError(exc.message) from None


def _to_date(value: object) -> object:
    if value is None:
        return None
    try:
        return parse_server_date(value)
    except TciaFetchError as exc:
        raise ValueError(exc.message) from None


Text = Annotated[str | None, BeforeValidator(_to_text)]
Count = Annotated[int | None, BeforeValidator(_to_count)]
RequiredCount = Annotated[int, BeforeValidator(_to_count)]
ServerDate = Annotated[dt.date | None, BeforeValidator(_to_date)]


def _field(alias: str, *legacy: str) -> Any:
    """A nullable field named ``alias`` on the wire, also read from legacy spellings."""
    if legacy:
        return Field(default=None, alias=alias, validation_alias=AliasChoices(alias, *legacy))
    return Field(default=None, alias=alias)


class ServerRow(BaseModel):
    """Base of every row model: frozen, by-name construction, unknown columns kept."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", frozen=True)

    _server_row: dict[str, object] | None = PrivateAttr(default=None)

    @classmethod
    def from_server(cls, row: Mapping[str, object]) -> Self:
        """Validate one server row and remember it verbatim for :meth:`server_dict`.

        Raises:
            ResponseFormatError: a value does not fit its column (a negative size, a
                date that is not a date); the message names the column.
        """
        try:
            model = cls.model_validate(dict(row))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or cls.__name__}: {error['msg']}"
                for error in exc.errors()[:3]
            )
            raise ResponseFormatError(f"{cls.__name__} row does not fit: {problems}") from None
        model._server_row = {key: value for key, value in row.items() if value is not None}
        return model

    def server_dict(self) -> dict[str, object]:
        """The row keyed exactly as the server named it, nulls omitted.

        For a row built from a server response this is that response's row, unchanged.
        For a row built in code, parsed values are written back in the server's form
        (dates as ``MM-DD-YYYY``).
        """
        if self._server_row is not None:
            return dict(self._server_row)
        dumped = self.model_dump(by_alias=True, exclude_none=True)
        return {
            key: format_server_date(value) if isinstance(value, dt.date) else value
            for key, value in dumped.items()
        }


_RowT = TypeVar("_RowT", bound="ServerRow")


def rows_to_models(model: type[_RowT], rows: Iterable[Mapping[str, object]]) -> list[_RowT]:
    """Validate server rows into ``model``; see :meth:`ServerRow.from_server`."""
    return [model.from_server(row) for row in rows]


#: How much of a rejected row's UID text is kept (a hostile row may carry megabytes there).
_REJECTED_UID_CHARS = 200


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A server row that did not fit its model, kept so the one series it names can be reported.

    ``uid_text`` is the row's ``SeriesInstanceUID`` as sent when it was text (cut to 200
    characters), else None; ``reason`` says which column did not fit. One such row fails its own
    series only: the rest of the answer is still used (issue 14).
    """

    uid_text: str | None
    reason: str


_ItemT = TypeVar("_ItemT")


class ScreenedRows(list[_ItemT]):
    """The rows of an answer that fit their model, in server order, plus those that did not."""

    def __init__(self, rows: Iterable[_ItemT], rejected: Iterable[RejectedRow]) -> None:
        super().__init__(rows)
        self.rejected: list[RejectedRow] = list(rejected)


def screen_row(model: type[_RowT], row: Mapping[str, object]) -> _RowT | RejectedRow:
    """One server row as ``model``, or set aside as a :class:`RejectedRow` when it does not fit."""
    try:
        return model.from_server(row)
    except ResponseFormatError as exc:
        uid = row.get("SeriesInstanceUID", row.get("Series UID")) if isinstance(row, Mapping) else None
        text = uid[:_REJECTED_UID_CHARS] if isinstance(uid, str) else None
        return RejectedRow(text, exc.message)


def screen_rows(model: type[_RowT], rows: Iterable[Mapping[str, object]]) -> ScreenedRows[_RowT]:
    """Validate each row on its own: one broken row is set aside instead of failing the answer."""
    good: list[_RowT] = []
    rejected: list[RejectedRow] = []
    for row in rows:
        screened = screen_row(model, row)
        if isinstance(screened, RejectedRow):
            rejected.append(screened)
        else:
            good.append(screened)
    return ScreenedRows(good, rejected)


def rejected_rows(rows: Sequence[object]) -> list[RejectedRow]:
    """The rows :func:`screen_rows` set aside from ``rows`` (none for a plain list)."""
    return list(rows.rejected) if isinstance(rows, ScreenedRows) else []


class _SeriesColumns(ServerRow):
    """Columns shared by ``getSeries`` and ``getSeriesMetadata`` (v4 names).

    ``series_uid`` is required: a series row without its UID is a broken response.
    """

    series_uid: str = Field(
        alias="SeriesInstanceUID", validation_alias=AliasChoices("SeriesInstanceUID", "Series UID")
    )
    study_uid: Text = _field("StudyInstanceUID", "Study UID")
    collection: Text = _field("Collection")
    patient_id: Text = _field("PatientID", "Subject ID")
    modality: Text = _field("Modality")
    protocol_name: Text = _field("ProtocolName")
    series_date: ServerDate = _field("SeriesDate")
    series_description: Text = _field("SeriesDescription")
    body_part: Text = _field("BodyPartExamined")
    series_number: Text = _field("SeriesNumber")
    annotations_flag: Text = _field("AnnotationsFlag")
    site: Text = _field("Site")
    patient_sex: Text = _field("PatientSex")
    patient_age: Text = _field("PatientAge")
    admitting_diagnosis_description: Text = _field("AdmittingDiagnosisDescription")
    manufacturer: Text = _field("Manufacturer")
    manufacturer_model: Text = _field("ManufacturerModelName")
    software_versions: Text = _field("SoftwareVersions")
    image_count: Count = _field("ImageCount")
    max_submission_timestamp: ServerDate = _field("MaxSubmissionTimestamp", "TimeStamp")
    license_name: Text = _field("LicenseName")
    license_uri: Text = _field("LicenseURI")
    data_description_uri: Text = _field("DataDescriptionURI", "CollectionURI")
    file_size: Count = _field("FileSize")
    released_status: Text = _field("ReleasedStatus")
    date_released: ServerDate = _field("DateReleased")
    study_date: ServerDate = _field("StudyDate")
    third_party_analysis: Text = _field("ThirdPartyAnalysis")
    authorized: Count = _field("Authorized")


class SeriesRow(_SeriesColumns):
    """A row of ``getSeries`` / ``getUpdatedSeries`` (30 v4 columns)."""

    study_description: Text = _field("StudyDesc")


class SeriesMetadataRow(_SeriesColumns):
    """A row of ``getSeriesMetadata`` (40 v4 columns; POST, quoted CSV by default)."""

    study_description: Text = _field("StudyDesc")
    patient_name: Text = _field("PatientName")
    ethnic_group: Text = _field("EthnicGroup")
    phantom: Text = _field("Phantom")
    species_code: Text = _field("SpeciesCode")
    species_description: Text = _field("SpeciesDescription")
    study_id: Text = _field("StudyID")
    longitudinal_temporal_event_type: Text = _field("LongitudinalTemporalEventType")
    longitudinal_temporal_offset_from_event: Text = _field("LongitudinalTemporalOffsetFromEvent")
    pixel_spacing_row_mm: Text = _field("PixelSpacing(mm)-Row")
    slice_thickness_mm: Text = _field("SliceThickness(mm)")


class SeriesSize(ServerRow):
    """``getSeriesSize``: the sum of stored DICOM file sizes and the number of instances.

    ``total_size_bytes`` is the uncompressed ``.dcm`` total, not the zip size (§6).
    """

    total_size_bytes: RequiredCount = Field(alias="TotalSizeInBytes")
    object_count: RequiredCount = Field(alias="ObjectCount")


class ValueCount(ServerRow):
    """A row of a ``*ValuesAndCounts`` endpoint; ``value`` is None for a null value."""

    value: Text = Field(
        default=None,
        alias="Value",
        validation_alias=AliasChoices(
            "Value", "Collection", "Modality", "BodyPart", "Manufacturer", "Species"
        ),
    )
    count: Count = _field("Count", "count")
    authorized: Count = _field("Authorized")


class PatientRow(ServerRow):
    """A row of ``getPatient`` / ``NewPatientsInCollection`` / ``getPatientByCollectionAndModality``."""

    patient_id: Text = _field("PatientId", "PatientID")
    patient_name: Text = _field("PatientName")
    patient_sex: Text = _field("PatientSex")
    ethnic_group: Text = _field("EthnicGroup")
    collection: Text = _field("Collection")
    phantom: Text = _field("Phantom")
    species_code: Text = _field("SpeciesCode")
    species_description: Text = _field("SpeciesDescription")
    authorized: Count = _field("Authorized")


class StudyRow(ServerRow):
    """A row of ``getPatientStudy`` / ``NewStudiesInPatientCollection``."""

    study_uid: Text = _field("StudyInstanceUID")
    study_date: ServerDate = _field("StudyDate")
    study_description: Text = _field("StudyDescription")
    admitting_diagnoses_description: Text = _field("AdmittingDiagnosesDescription")
    study_id: Text = _field("StudyID")
    patient_age: Text = _field("PatientAge")
    patient_id: Text = _field("PatientID")
    patient_name: Text = _field("PatientName")
    patient_sex: Text = _field("PatientSex")
    ethnic_group: Text = _field("EthnicGroup")
    collection: Text = _field("Collection")
    series_count: Count = _field("SeriesCount")
    longitudinal_temporal_event_type: Text = _field("LongitudinalTemporalEventType")
    longitudinal_temporal_offset_from_event: Text = _field("LongitudinalTemporalOffsetFromEvent")
    authorized: Count = _field("Authorized")


class SopInstanceRow(ServerRow):
    """A row of ``getSOPInstanceUIDs`` (unordered; no visibility filter on the server)."""

    sop_uid: Text = _field("SOPInstanceUID")


class ValueList(list[str | None]):
    """The values of a value-list endpoint, in server order, plus the rows they came from.

    A ``{}`` row (the server's null value) appears as ``None``. ``rows`` keeps the
    server's objects for JSON output.
    """

    def __init__(self, values: Iterable[str | None], rows: Iterable[Mapping[str, object]]) -> None:
        super().__init__(values)
        self.rows: list[dict[str, object]] = [dict(row) for row in rows]
