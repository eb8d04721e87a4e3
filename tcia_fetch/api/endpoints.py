"""NBIA endpoint names, parameter allow-lists and URL building (sans-I/O).

v4 answers 400 ``Invalid query parameter`` to any parameter outside an endpoint's
allow-list, and parameter names are case-sensitive (``PatientId`` on ``getPatient`` but
``PatientID`` on ``getPatientStudy``/``getSeries``) — nbia-api.md §3.1, §4. So requests are
built only from the tables below: a parameter an endpoint does not allow is a bug in our
code and is refused here, before any I/O. ``format`` is never sent: every JSON endpoint
answers JSON by default, and several endpoints refuse the parameter outright.

Legacy v1/v2 differences handled here: ``New*`` endpoints take ``Date=YYYY/MM/DD`` instead
of ``fromDate=MM-DD-YYYY``, and ``getUpdatedSeries`` reads ``fromDate`` as ``DD/MM/YYYY``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tcia_fetch.api.parse import format_server_date
from tcia_fetch.errors import InputError

__all__ = [
    "ENDPOINTS",
    "ApiVersion",
    "Endpoint",
    "build_params",
    "endpoint_url",
    "is_nlst",
]

ApiVersion = Literal["v4", "v2", "v1"]


@dataclass(frozen=True)
class Endpoint:
    """One NBIA endpoint: its path segment, HTTP method and the parameters it accepts.

    ``legacy`` is False for endpoints that exist only in v4 (the ``*ValuesAndCounts`` family
    and ``getSeriesMetadata``, whose legacy namesakes have other shapes).
    """

    name: str
    method: Literal["GET", "POST"]
    allowed: frozenset[str]
    legacy: bool = True


def _get(name: str, *allowed: str, legacy: bool = True) -> Endpoint:
    return Endpoint(name, "GET", frozenset(allowed), legacy)


#: Every endpoint the client calls, by its v4 path segment (nbia-api.md §4, §5).
ENDPOINTS: dict[str, Endpoint] = {
    endpoint.name: endpoint
    for endpoint in (
        _get("getCollectionValues"),
        _get("getModalityValues", "Collection", "BodyPartExamined"),
        _get("getBodyPartValues", "Collection", "Modality"),
        _get("getManufacturerValues", "Collection", "Modality", "BodyPartExamined"),
        _get("getCollectionValuesAndCounts", legacy=False),
        _get("getModalityValuesAndCounts", "Collection", "BodyPartExamined", legacy=False),
        _get("getBodyPartValuesAndCounts", "Collection", "Modality", legacy=False),
        _get("getManufacturerValuesAndCounts", "Collection", "Modality", "BodyPartExamined", legacy=False),
        _get("getPatient", "Collection", "PatientId"),
        _get("getPatientByCollectionAndModality", "Collection", "Modality"),
        _get("NewPatientsInCollection", "Collection", "fromDate"),
        _get("getPatientStudy", "Collection", "PatientID", "StudyInstanceUID"),
        _get("NewStudiesInPatientCollection", "Collection", "PatientID", "fromDate"),
        _get(
            "getSeries",
            "Collection",
            "PatientID",
            "StudyInstanceUID",
            "Modality",
            "BodyPartExamined",
            "ManufacturerModelName",
            "Manufacturer",
            "SeriesInstanceUID",
        ),
        _get("getUpdatedSeries", "fromDate"),
        Endpoint("getSeriesMetadata", "POST", frozenset({"list"}), legacy=False),
        _get("getSeriesSize", "SeriesInstanceUID"),
        _get("getSOPInstanceUIDs", "SeriesInstanceUID"),
        _get("getImage", "SeriesInstanceUID", "NewFileNames", "IncludeMD5"),
        _get("getImageWithMD5Hash", "SeriesInstanceUID"),
        _get("getSingleImage", "SeriesInstanceUID", "SOPInstanceUID"),
    )
}

_LEGACY_NEW_ENDPOINTS = frozenset({"NewPatientsInCollection", "NewStudiesInPatientCollection"})


def _format_value(endpoint: str, name: str, value: object, api_version: ApiVersion) -> str:
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, dt.date):
        if api_version == "v4":
            return format_server_date(value)
        if endpoint in _LEGACY_NEW_ENDPOINTS:
            return f"{value.year:04d}/{value.month:02d}/{value.day:02d}"
        return f"{value.day:02d}/{value.month:02d}/{value.year:04d}"
    if isinstance(value, str):
        return value
    raise TypeError(f"{endpoint}: parameter {name} has unsupported type {type(value).__name__}")


def build_params(
    endpoint: Endpoint, params: Mapping[str, object | None], *, api_version: ApiVersion = "v4"
) -> dict[str, str]:
    """Return the wire parameters for ``endpoint``: Nones dropped, values formatted.

    Names are given in v4 spelling. Dates become ``MM-DD-YYYY`` (v4) or the legacy forms;
    booleans become ``Yes``/``No``.

    Raises:
        InputError: a parameter outside the endpoint's allow-list, or a v4-only endpoint
            asked of a legacy API. Both mean a caller asked for something this server
            cannot answer; nothing has been sent.
    """
    if api_version != "v4" and not endpoint.legacy:
        raise InputError(f"{endpoint.name} is available only on the v4 API (this server is {api_version})")
    wire: dict[str, str] = {}
    for name, value in params.items():
        if value is None:
            continue
        if name not in endpoint.allowed:
            allowed = ", ".join(sorted(endpoint.allowed)) or "none"
            raise InputError(f"{endpoint.name} does not accept parameter {name!r} (allowed: {allowed})")
        wire_name = name
        if api_version != "v4" and endpoint.name in _LEGACY_NEW_ENDPOINTS and name == "fromDate":
            wire_name = "Date"
        wire[wire_name] = _format_value(endpoint.name, name, value, api_version)
    return wire


def endpoint_url(base_url: str, endpoint: Endpoint) -> str:
    """Join an API root (``…/services/v4/``) and an endpoint name.

    Plain concatenation after ensuring one trailing slash: ``urljoin`` would drop the last
    path segment of a root given without its slash.
    """
    return base_url.rstrip("/") + "/" + endpoint.name


def is_nlst(collection: str | None) -> bool:
    """True when ``collection`` names NLST, which lives on its own server (§1.2)."""
    return collection is not None and collection.strip().upper() == "NLST"
