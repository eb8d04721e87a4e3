"""Parameter allow-lists, legacy spellings and URL joining."""

from __future__ import annotations

import datetime as dt

import pytest

from tcia_fetch.api.endpoints import ENDPOINTS, build_params, endpoint_url, is_nlst
from tcia_fetch.errors import InputError


def test_get_patient_uses_patientid_with_lower_case_d() -> None:
    assert build_params(ENDPOINTS["getPatient"], {"PatientId": "P1", "Collection": None}) == {
        "PatientId": "P1"
    }
    with pytest.raises(InputError, match="PatientID"):
        build_params(ENDPOINTS["getPatient"], {"PatientID": "P1"})


def test_get_series_uses_patientid_with_upper_case_d() -> None:
    assert build_params(ENDPOINTS["getSeries"], {"PatientID": "P1"}) == {"PatientID": "P1"}
    with pytest.raises(InputError):
        build_params(ENDPOINTS["getSeries"], {"PatientId": "P1"})


@pytest.mark.parametrize(
    "name", ["getModalityValuesAndCounts", "getImage", "getImageWithMD5Hash", "getSingleImage"]
)
def test_format_is_never_allowed_where_v4_rejects_it(name: str) -> None:
    with pytest.raises(InputError):
        build_params(ENDPOINTS[name], {"format": "json"})


def test_no_endpoint_sends_format() -> None:
    assert all("format" not in endpoint.allowed for endpoint in ENDPOINTS.values())


def test_dates_and_flags_per_version() -> None:
    day = dt.date(2010, 8, 16)
    assert build_params(ENDPOINTS["NewPatientsInCollection"], {"Collection": "C", "fromDate": day}) == {
        "Collection": "C",
        "fromDate": "08-16-2010",
    }
    assert build_params(
        ENDPOINTS["NewPatientsInCollection"], {"Collection": "C", "fromDate": day}, api_version="v2"
    ) == {"Collection": "C", "Date": "2010/08/16"}
    assert build_params(ENDPOINTS["getUpdatedSeries"], {"fromDate": day}, api_version="v1") == {
        "fromDate": "16/08/2010"
    }
    assert build_params(ENDPOINTS["getImage"], {"SeriesInstanceUID": "1.2", "IncludeMD5": True}) == {
        "SeriesInstanceUID": "1.2",
        "IncludeMD5": "Yes",
    }


def test_v4_only_endpoints_refused_on_legacy() -> None:
    with pytest.raises(InputError, match="v4"):
        build_params(ENDPOINTS["getSeriesMetadata"], {"list": "1.2"}, api_version="v2")


@pytest.mark.parametrize(
    "base",
    [
        "https://nbia.cancerimagingarchive.net/nbia-api/services/v4/",
        "https://nbia.cancerimagingarchive.net/nbia-api/services/v4",
    ],
)
def test_endpoint_url_keeps_the_version_segment(base: str) -> None:
    assert (
        endpoint_url(base, ENDPOINTS["getSeries"])
        == "https://nbia.cancerimagingarchive.net/nbia-api/services/v4/getSeries"
    )


def test_series_metadata_is_a_post() -> None:
    assert ENDPOINTS["getSeriesMetadata"].method == "POST"


@pytest.mark.parametrize(
    ("name", "expected"), [("NLST", True), ("nlst", True), (" Nlst ", True), ("LIDC", False)]
)
def test_is_nlst(name: str, expected: bool) -> None:
    assert is_nlst(name) is expected
    assert is_nlst(None) is False
