"""Query endpoints of the fake NBIA (value lists, patients, studies, series, sizes, metadata).

Behaviour follows reference/nbia-api.md §3-4 and §6: strict per-endpoint allow-lists on v4 (legacy v1/v2
accept anything), case-insensitive value filters (trailing spaces ignored, as MySQL's PAD SPACE
comparison does), exact UIDs, null keys omitted, ``{}`` for a null value in value lists, 200 with an
empty body when nothing matches, and the endpoint's own 400 texts.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiohttp import web

from tcia_fetch.testing._badrows import hostile_rows
from tcia_fetch.testing._catalog import SeriesEntry
from tcia_fetch.testing._downloads import outage_guard
from tcia_fetch.testing._faults import FaultKind, FaultRule
from tcia_fetch.testing._formats import (
    ERROR_PREFIX,
    LEGACY_SERIES_COLUMNS,
    METADATA_COLUMNS,
    MISSING_COLLECTION_DATE,
    MISSING_COLLECTION_MODALITY,
    MISSING_LIST,
    MISSING_UID_QUERY,
    PATIENT_COLUMNS,
    SERIES_COLUMNS,
    SERVER_ERROR_NULL,
    SIZE_COLUMNS,
    STUDY_COLUMNS,
    Formatted,
    UnknownFormatError,
    format_rows,
)
from tcia_fetch.testing._hostile_bodies import hostile_body_guard
from tcia_fetch.testing._hostile_secrets import secrets_guard
from tcia_fetch.testing._state import ServerState, check_allowed, empty_ok, text_response

__all__ = ["QUERY_ENDPOINTS", "EndpointFunction"]

EndpointFunction = Callable[[ServerState, int, web.Request], Awaitable[web.StreamResponse]]

_SERIES_FILTERS: dict[str, Callable[[SeriesEntry], str | None]] = {
    "Collection": lambda entry: entry.collection,
    "PatientID": lambda entry: entry.patient_id,
    "Modality": lambda entry: entry.modality,
    "BodyPartExamined": lambda entry: entry.body_part,
    "Manufacturer": lambda entry: entry.manufacturer,
    "ManufacturerModelName": lambda entry: entry.manufacturer_model,
}
_UID_FILTERS: dict[str, Callable[[SeriesEntry], str]] = {
    "StudyInstanceUID": lambda entry: entry.study_uid,
    "SeriesInstanceUID": lambda entry: entry.uid,
}


def _param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    return value if value else None


def _same(left: str | None, right: str) -> bool:
    return left is not None and left.rstrip().upper() == right.rstrip().upper()


def _filtered(state: ServerState, request: web.Request, names: Iterable[str]) -> Sequence[SeriesEntry]:
    entries = state.visible()
    for name in names:
        wanted = _param(request, name)
        if wanted is None:
            continue
        if name in _UID_FILTERS:
            uid_of = _UID_FILTERS[name]
            entries = [entry for entry in entries if uid_of(entry) == wanted.strip()]
        else:
            value_of = _SERIES_FILTERS[name]
            entries = [entry for entry in entries if _same(value_of(entry), wanted)]
    return entries


def _respond(
    rows: Sequence[dict[str, object]], columns: Sequence[str], requested: str | None
) -> web.Response:
    if not rows:
        return empty_ok()
    try:
        formatted: Formatted = format_rows(rows, columns, requested)
    except UnknownFormatError:
        return text_response(500, ERROR_PREFIX)
    response = web.Response(status=200, body=formatted.body)
    if formatted.content_type:
        response.headers["Content-Type"] = formatted.content_type
    if formatted.disposition:
        response.headers["Content-Disposition"] = formatted.disposition
    return response


async def _slow_and_sizes(state: ServerState, uids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Apply SLOW_QUERY (and the load model's delay); return WRONG_SIZE deltas per series UID."""
    uid_list = list(uids)
    rules = state.faults.query_faults(uid_list)
    delay = sum(rule.param_float("delay_s") for rule in rules if rule.kind is FaultKind.SLOW_QUERY)
    deltas: dict[str, tuple[int, int]] = {}
    for rule in rules:
        if rule.kind is FaultKind.CLAIM_FIGURES:
            _claim_figures(state, rule, uid_list, deltas)
            continue
        if rule.kind is not FaultKind.WRONG_SIZE:
            continue
        targets = uid_list if rule.series_uid is None else [rule.series_uid]
        for uid in targets:
            old_bytes, old_count = deltas.get(uid, (0, 0))
            deltas[uid] = (
                old_bytes + rule.param_int("delta_bytes"),
                old_count + rule.param_int("delta_count"),
            )
    await state.query_delay(delay)
    return deltas


def _claim_figures(
    state: ServerState, rule: FaultRule, uids: Sequence[str], deltas: dict[str, tuple[int, int]]
) -> None:
    """CLAIM_FIGURES as deltas: the answer claims exactly the rule's count and bytes."""
    targets = uids if rule.series_uid is None else [rule.series_uid]
    for uid in targets:
        entry = state.catalog.get(uid)
        if entry is None:
            continue
        count, size = rule.params["image_count"], rule.params["total_bytes"]
        old_bytes, old_count = deltas.get(uid, (0, 0))
        deltas[uid] = (
            old_bytes + (rule.param_int("total_bytes") - entry.total_bytes if size is not None else 0),
            old_count + (rule.param_int("image_count") - entry.instance_count if count is not None else 0),
        )


def _allowed(generation: int, names: Sequence[str]) -> Sequence[str] | None:
    return names if generation == 4 else None


# ---- value lists ------------------------------------------------------------------------------
def _distinct(values: Iterable[str | None], *, upper: bool) -> list[str | None]:
    seen = {(value.upper() if upper and value is not None else value) for value in values}
    return sorted(seen, key=lambda value: (value is not None, value or ""))


async def get_collection_values(
    state: ServerState, generation: int, request: web.Request
) -> web.StreamResponse:
    """Collections with public series, alphabetical."""
    rejected = check_allowed(request, _allowed(generation, ("format",)))
    if rejected:
        return rejected
    await _slow_and_sizes(state, ())
    names = sorted({entry.collection for entry in state.visible()}, key=str.upper)
    rows: list[dict[str, object]] = [{"Collection": name} for name in names]
    return _respond(rows, ("Collection",), _param(request, "format"))


def _value_list(column: str, attribute: str, filters: tuple[str, ...], *, upper: bool) -> EndpointFunction:
    async def handler(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
        rejected = check_allowed(request, _allowed(generation, (*filters, "format")))
        if rejected:
            return rejected
        await _slow_and_sizes(state, ())
        entries = _filtered(state, request, filters)
        values = _distinct((getattr(entry, attribute) for entry in entries), upper=upper)
        rows: list[dict[str, object]] = [{} if value is None else {column: value} for value in values]
        return _respond(rows, (column,), _param(request, "format"))

    return handler


def _counts(column: str, attribute: str | None, filters: tuple[str, ...] | None) -> EndpointFunction:
    async def handler(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
        if filters is not None:
            rejected = check_allowed(request, _allowed(generation, filters))
            if rejected:
                return rejected
        await _slow_and_sizes(state, ())
        entries = _filtered(state, request, filters or ())
        patients: dict[str | None, set[tuple[str, str]]] = {}
        for entry in entries:
            raw = entry.collection if attribute is None else getattr(entry, attribute)
            key = raw.upper() if isinstance(raw, str) and attribute in ("modality", "body_part") else raw
            patients.setdefault(key, set()).add((entry.collection, entry.patient_id))
        rows: list[dict[str, object]] = []
        for key in sorted(patients, key=lambda value: (value is not None, value or "")):
            row: dict[str, object] = {} if key is None else {column: key}
            row["Count"] = len(patients[key])
            row["Authorized"] = 1
            rows.append(row)
        return _respond(rows, (column, "Count", "Authorized"), None)

    return handler


# ---- patients and studies -------------------------------------------------------------------------
def _parse_mdy(text: str) -> dt.date:
    return dt.datetime.strptime(text.strip(), "%m-%d-%Y").date()


def _patient_rows(entries: Iterable[SeriesEntry]) -> list[dict[str, object]]:
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for entry in entries:
        key = (entry.collection, entry.patient_id)
        if key in rows:
            continue
        row: dict[str, object | None] = {
            "PatientId": entry.patient_id,
            "PatientName": entry.patient_id,
            "PatientSex": entry.patient_sex,
            "EthnicGroup": None,
            "Collection": entry.collection,
            "Phantom": "NO",
            "SpeciesCode": "337915000",
            "SpeciesDescription": "Homo sapiens",
            "Authorized": 1,
        }
        rows[key] = {name: value for name, value in row.items() if value is not None}
    return list(rows.values())


def _study_rows(entries: Sequence[SeriesEntry]) -> list[dict[str, object]]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.study_uid] = counts.get(entry.study_uid, 0) + 1
    rows: dict[str, dict[str, object]] = {}
    for entry in entries:
        if entry.study_uid in rows:
            continue
        row: dict[str, object | None] = {
            "StudyInstanceUID": entry.study_uid,
            "StudyDate": entry.study_date.strftime("%m-%d-%Y"),
            "StudyDescription": entry.study_description,
            "AdmittingDiagnosesDescription": None,
            "StudyID": entry.study_id,
            "PatientAge": entry.patient_age,
            "PatientID": entry.patient_id,
            "PatientName": entry.patient_id,
            "PatientSex": entry.patient_sex,
            "EthnicGroup": None,
            "Collection": entry.collection,
            "SeriesCount": counts[entry.study_uid],
            "LongitudinalTemporalEventType": None,
            "LongitudinalTemporalOffsetFromEvent": None,
            "Authorized": 1,
        }
        rows[entry.study_uid] = {name: value for name, value in row.items() if value is not None}
    return list(rows.values())


async def get_patient(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
    """Patients, optionally by Collection and ``PatientId`` (lower-case d)."""
    rejected = check_allowed(request, _allowed(generation, ("Collection", "PatientId", "format")))
    if rejected:
        return rejected
    await _slow_and_sizes(state, ())
    entries = _filtered(state, request, ("Collection",))
    wanted = _param(request, "PatientId")
    if wanted is not None:
        entries = [entry for entry in entries if _same(entry.patient_id, wanted)]
    return _respond(_patient_rows(entries), PATIENT_COLUMNS, _param(request, "format"))


async def get_patient_by_collection_and_modality(
    state: ServerState, generation: int, request: web.Request
) -> web.StreamResponse:
    """Patient IDs having a series of that modality in that collection (both required)."""
    rejected = check_allowed(request, _allowed(generation, ("Collection", "Modality", "format")))
    if rejected:
        return rejected
    if _param(request, "Collection") is None or _param(request, "Modality") is None:
        return text_response(400, MISSING_COLLECTION_MODALITY)
    await _slow_and_sizes(state, ())
    entries = _filtered(state, request, ("Collection", "Modality"))
    patients = list(dict.fromkeys(entry.patient_id for entry in entries))
    rows: list[dict[str, object]] = [{"PatientId": patient, "Authorized": 1} for patient in patients]
    return _respond(rows, ("PatientId", "Authorized"), _param(request, "format"))


def _released_since(request: web.Request, generation: int) -> dt.date | str | None:
    """The ``fromDate`` (v4, MM-DD-YYYY) or ``Date`` (v1/v2, YYYY/MM/DD); "" when missing."""
    if generation == 4:
        text = _param(request, "fromDate")
        return "" if text is None else _parse_mdy(text)
    text = _param(request, "Date")
    return "" if text is None else dt.datetime.strptime(text.strip(), "%Y/%m/%d").date()


async def new_patients_in_collection(
    state: ServerState, generation: int, request: web.Request
) -> web.StreamResponse:
    """Patients with a series released on or after ``fromDate``."""
    rejected = check_allowed(request, _allowed(generation, ("Collection", "fromDate", "format")))
    if rejected:
        return rejected
    try:
        since = _released_since(request, generation)
    except ValueError:
        return text_response(500, SERVER_ERROR_NULL)
    if _param(request, "Collection") is None or not isinstance(since, dt.date):
        return text_response(400, MISSING_COLLECTION_DATE)
    await _slow_and_sizes(state, ())
    entries = [entry for entry in _filtered(state, request, ("Collection",)) if entry.date_released >= since]
    return _respond(_patient_rows(entries), PATIENT_COLUMNS, _param(request, "format"))


async def get_patient_study(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
    """Studies, filtered by Collection, PatientID, StudyInstanceUID."""
    rejected = check_allowed(
        request, _allowed(generation, ("Collection", "PatientID", "StudyInstanceUID", "format"))
    )
    if rejected:
        return rejected
    await _slow_and_sizes(state, ())
    entries = _filtered(state, request, ("Collection", "PatientID", "StudyInstanceUID"))
    return _respond(_study_rows(entries), STUDY_COLUMNS, _param(request, "format"))


async def new_studies_in_patient_collection(
    state: ServerState, generation: int, request: web.Request
) -> web.StreamResponse:
    """Studies with a series released on or after ``fromDate`` (Collection and fromDate required)."""
    rejected = check_allowed(request, _allowed(generation, ("Collection", "PatientID", "fromDate", "format")))
    if rejected:
        return rejected
    try:
        since = _released_since(request, generation)
    except ValueError:
        return text_response(500, SERVER_ERROR_NULL)
    if _param(request, "Collection") is None or not isinstance(since, dt.date):
        return text_response(400, MISSING_COLLECTION_DATE)
    await _slow_and_sizes(state, ())
    entries = [
        entry
        for entry in _filtered(state, request, ("Collection", "PatientID"))
        if entry.date_released >= since
    ]
    return _respond(_study_rows(entries), STUDY_COLUMNS, _param(request, "format"))


# ---- series ---------------------------------------------------------------------------------------
_GET_SERIES_PARAMS = (
    "Collection",
    "PatientID",
    "StudyInstanceUID",
    "Modality",
    "BodyPartExamined",
    "ManufacturerModelName",
    "Manufacturer",
    "SeriesInstanceUID",
)


def _series_rows(
    entries: Sequence[SeriesEntry], deltas: dict[str, tuple[int, int]], generation: int
) -> list[dict[str, object]]:
    rows = []
    for entry in entries:
        delta_bytes, delta_count = deltas.get(entry.uid, (0, 0))
        if generation == 4:
            rows.append(entry.series_row(delta_bytes=delta_bytes, delta_count=delta_count))
        else:
            rows.append(entry.legacy_series_row(delta_bytes=delta_bytes, delta_count=delta_count))
    return rows


async def _series_response(
    state: ServerState, generation: int, request: web.Request, entries: Sequence[SeriesEntry]
) -> web.StreamResponse:
    """getSeries-shaped rows for ``entries`` (v4 or legacy columns), after any query faults."""
    deltas = await _slow_and_sizes(state, (entry.uid for entry in entries))
    columns = SERIES_COLUMNS if generation == 4 else LEGACY_SERIES_COLUMNS
    rows = hostile_rows(state.faults, _series_rows(entries, deltas, generation))
    return _respond(rows, columns, _param(request, "format"))


async def get_series(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
    """Series rows by any combination of filters (none = every public series)."""
    rejected = check_allowed(request, _allowed(generation, (*_GET_SERIES_PARAMS, "format")))
    if rejected:
        return rejected
    entries = _filtered(state, request, _GET_SERIES_PARAMS)
    return await _series_response(state, generation, request, entries)


async def get_updated_series(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
    """Series released strictly after ``fromDate`` (v4 MM-DD-YYYY; v1/v2 dd/MM/yyyy; missing = all)."""
    rejected = check_allowed(request, _allowed(generation, ("fromDate", "format")))
    if rejected:
        return rejected
    text = _param(request, "fromDate")
    try:
        if text is None:
            since = dt.date(1900, 1, 1)
        elif generation == 4:
            since = _parse_mdy(text)
        else:
            since = dt.datetime.strptime(text.strip(), "%d/%m/%Y").date()
    except ValueError:
        return text_response(500, SERVER_ERROR_NULL)
    entries = [entry for entry in state.visible() if entry.date_released > since]
    return await _series_response(state, generation, request, entries)


async def get_series_size(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
    """``[{"TotalSizeInBytes": n, "ObjectCount": n}]``; empty body for unknown or restricted series."""
    rejected = check_allowed(request, _allowed(generation, ("SeriesInstanceUID", "format")))
    if rejected:
        return rejected
    uid = _param(request, "SeriesInstanceUID")
    if uid is None:
        return text_response(400, MISSING_UID_QUERY, "application/json")
    deltas = await _slow_and_sizes(state, (uid.strip(),))
    entry = state.visible_series(uid)
    if entry is None:
        return empty_ok()
    delta_bytes, delta_count = deltas.get(entry.uid, (0, 0))
    row = entry.size_row(delta_bytes=delta_bytes, delta_count=delta_count)
    return _respond([row], SIZE_COLUMNS, _param(request, "format"))


async def get_sop_instance_uids(
    state: ServerState, generation: int, request: web.Request
) -> web.StreamResponse:
    """SOP Instance UIDs of a series, unordered and, as in v4, without a visibility filter."""
    rejected = check_allowed(request, _allowed(generation, ("SeriesInstanceUID", "format")))
    if rejected:
        return rejected
    uid = _param(request, "SeriesInstanceUID")
    if uid is None:
        return text_response(400, MISSING_UID_QUERY, "application/json")
    await _slow_and_sizes(state, (uid.strip(),))
    entry = state.catalog.get(uid.strip())
    if entry is None:
        return empty_ok()
    rows: list[dict[str, object]] = [
        {"SOPInstanceUID": item.sop_instance_uid} for item in entry.instance_files()
    ]
    return _respond(rows, ("SOPInstanceUID",), _param(request, "format"))


_NOT_UID_CHARS = re.compile(r"[^0-9,.]")


async def get_series_metadata(
    state: ServerState, generation: int, request: web.Request
) -> web.StreamResponse:
    """POST form ``list``: rows for the public series named; quoted CSV by default, JSON on request."""
    del generation
    form = await request.post()
    lists = [str(value) for value in form.getall("list", [])]
    if not lists:
        return text_response(400, MISSING_LIST)
    requested_format = form.get("format") or request.query.get("format")
    ordered: list[SeriesEntry] = []
    for value in lists:
        seen: set[str] = set()
        for uid in _NOT_UID_CHARS.sub("", value).split(","):
            if not uid or uid in seen:
                continue
            seen.add(uid)
            entry = state.visible_series(uid)
            if entry is not None:
                ordered.append(entry)
    deltas = await _slow_and_sizes(state, (entry.uid for entry in ordered))
    rows = []
    for entry in ordered:
        delta_bytes, delta_count = deltas.get(entry.uid, (0, 0))
        rows.append(entry.metadata_row(delta_bytes=delta_bytes, delta_count=delta_count))
    rows = hostile_rows(state.faults, rows)
    choice = str(requested_format).upper() if requested_format else "CSV"
    return _respond(rows, METADATA_COLUMNS, "CSV-DOWNLOAD" if choice == "CSV" else choice)


QUERY_ENDPOINTS: dict[str, tuple[str, EndpointFunction]] = {
    "getCollectionValues": ("GET", get_collection_values),
    "getModalityValues": (
        "GET",
        _value_list("Modality", "modality", ("Collection", "BodyPartExamined"), upper=True),
    ),
    "getBodyPartValues": (
        "GET",
        _value_list("BodyPartExamined", "body_part", ("Collection", "Modality"), upper=True),
    ),
    "getManufacturerValues": (
        "GET",
        _value_list(
            "Manufacturer", "manufacturer", ("Collection", "Modality", "BodyPartExamined"), upper=False
        ),
    ),
    "getCollectionValuesAndCounts": ("GET", _counts("Collection", None, None)),
    "getModalityValuesAndCounts": (
        "GET",
        _counts("Modality", "modality", ("Collection", "BodyPartExamined")),
    ),
    "getBodyPartValuesAndCounts": ("GET", _counts("BodyPart", "body_part", ("Collection", "Modality"))),
    "getManufacturerValuesAndCounts": (
        "GET",
        _counts("Manufacturer", "manufacturer", ("Collection", "Modality", "BodyPartExamined")),
    ),
    "getPatient": ("GET", get_patient),
    "getPatientByCollectionAndModality": ("GET", get_patient_by_collection_and_modality),
    "NewPatientsInCollection": ("GET", new_patients_in_collection),
    "getPatientStudy": ("GET", get_patient_study),
    "NewStudiesInPatientCollection": ("GET", new_studies_in_patient_collection),
    "getSeries": ("GET", get_series),
    "getUpdatedSeries": ("GET", get_updated_series),
    "getSeriesSize": ("GET", get_series_size),
    "getSOPInstanceUIDs": ("GET", get_sop_instance_uids),
    "getSeriesMetadata": ("POST", get_series_metadata),
}
# Every query endpoint goes down with the server during an OUTAGE window; the hostile modes of
# _hostile_secrets.py (throttle storm, echoed headers, hostile names) apply to every query too.
QUERY_ENDPOINTS = {
    name: (method, outage_guard(secrets_guard(function)))
    for name, (method, function) in QUERY_ENDPOINTS.items()
}
# issue 14 (bodies): a QUERY_BOMB or ENDLESS_BODY rule naming an endpoint answers for it.
QUERY_ENDPOINTS = {
    name: (method, hostile_body_guard(name, function)) for name, (method, function) in QUERY_ENDPOINTS.items()
}
