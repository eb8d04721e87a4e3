"""Query endpoints: rows, quirks (empty 200, omitted nulls, {} rows), allow-lists, formats, error texts."""

from __future__ import annotations

import csv
import io
import json

import aiohttp
import pytest

from tcia_fetch.testing import Catalog, FakeNBIA, RunningServer
from tests.testing._helpers import fetch
from tests.testing.conftest import serving

pytestmark = pytest.mark.anyio

Served = tuple[RunningServer, aiohttp.ClientSession]

SERIES_COLUMNS = [
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate", "SeriesDescription",
    "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection", "Site", "PatientID", "PatientSex",
    "PatientAge", "AdmittingDiagnosisDescription", "Manufacturer", "ManufacturerModelName",
    "SoftwareVersions", "ImageCount", "MaxSubmissionTimestamp", "LicenseName", "LicenseURI",
    "DataDescriptionURI", "FileSize", "ReleasedStatus", "DateReleased", "StudyDesc", "StudyDate",
    "ThirdPartyAnalysis", "Authorized",
]  # fmt: skip


async def get_json(session: aiohttp.ClientSession, url: str, **params: str) -> list[dict[str, object]]:
    status, headers, body = await fetch(session, url, **params)
    assert status == 200 and headers["Content-Type"].startswith("application/json"), body[:200]
    rows = json.loads(body)
    assert isinstance(rows, list)
    return rows


async def test_up(served: Served) -> None:
    server, session = served
    status, _, body = await fetch(session, server.root_url + "nbia-api/services/up")
    assert (status, body) == (200, b"up")


async def test_both_v4_prefixes_answer(served: Served, catalog: Catalog) -> None:
    server, session = served
    first = await get_json(session, server.base_url + "getCollectionValues")
    second = await get_json(session, server.root_url + "nbia-api/v4/getCollectionValues")
    assert (
        first == second == [{"Collection": name} for name in sorted(set(catalog.collections), key=str.upper)]
    )


async def test_body_part_values_have_an_empty_object_for_null_and_upper_case(served: Served) -> None:
    server, session = served
    rows = await get_json(session, server.base_url + "getBodyPartValues")
    assert rows[0] == {}
    values = [row["BodyPartExamined"] for row in rows[1:]]
    assert all(isinstance(value, str) and value == value.upper() for value in values)
    assert len(values) == len(set(values))
    assert any(isinstance(value, str) and value.endswith(" ") for value in values)


async def test_value_list_filters_are_case_insensitive(served: Served, catalog: Catalog) -> None:
    server, session = served
    collection = catalog.series[0].collection
    rows = await get_json(session, server.base_url + "getModalityValues", Collection=collection.lower())
    expected = sorted({entry.modality for entry in catalog.series if entry.collection == collection})
    assert rows == [{"Modality": value} for value in expected]


async def test_get_series_rows_omit_nulls_and_keep_column_order(served: Served, catalog: Catalog) -> None:
    server, session = served
    rows = await get_json(session, server.base_url + "getSeries")
    assert len(rows) == len(catalog.series)
    for row in rows:
        assert None not in row.values()
        assert list(row) == [column for column in SERIES_COLUMNS if column in row]
        assert (
            row["Authorized"] == 1 and isinstance(row["FileSize"], int) and isinstance(row["ImageCount"], int)
        )
        month, day, year = str(row["StudyDate"]).split("-")
        assert (len(month), len(day), len(year)) == (2, 2, 4)
    assert any("BodyPartExamined" not in row for row in rows)


async def test_get_series_filters(served: Served, catalog: Catalog) -> None:
    server, session = served
    entry = catalog.series[0]
    rows = await get_json(
        session,
        server.base_url + "getSeries",
        PatientID=entry.patient_id.lower(),
        Modality=entry.modality.lower(),
    )
    assert entry.uid in {row["SeriesInstanceUID"] for row in rows}
    assert all(row["PatientID"] == entry.patient_id for row in rows)
    rows = await get_json(session, server.base_url + "getSeries", SeriesInstanceUID=entry.uid)
    assert [row["SeriesInstanceUID"] for row in rows] == [entry.uid]


async def test_nothing_matching_is_200_with_an_empty_body(served: Served) -> None:
    server, session = served
    for endpoint, params in [
        ("getSeries", {"Collection": "No-Such-Collection"}),
        ("getPatient", {"Collection": "No-Such-Collection"}),
        ("getSeriesSize", {"SeriesInstanceUID": "1.2.3"}),
        ("getSOPInstanceUIDs", {"SeriesInstanceUID": "1.2.3"}),
    ]:
        status, _, body = await fetch(session, server.base_url + endpoint, **params)
        assert (status, body) == (200, b""), endpoint


@pytest.mark.parametrize(
    ("endpoint", "params", "expected"),
    [
        (
            "getSeries",
            {"collection": "x"},
            "Invalid query parameter: 'collection'. Allowed parameters are: [Collection, PatientID, "
            "StudyInstanceUID, Modality, BodyPartExamined, ManufacturerModelName, Manufacturer, "
            "SeriesInstanceUID, format]",
        ),
        (
            "getPatient",
            {"PatientID": "x"},
            "Invalid query parameter: 'PatientID'. Allowed parameters are: [Collection, PatientId, format]",
        ),
        (
            "getModalityValuesAndCounts",
            {"format": "json"},
            "Invalid query parameter: 'format'. Allowed parameters are: [Collection, BodyPartExamined]",
        ),
        ("getSeriesSize", {}, "A parameter, SeriesInstanceUID is required for this API call."),
        ("getSOPInstanceUIDs", {}, "A parameter, SeriesInstanceUID is required for this API call."),
        (
            "getPatientByCollectionAndModality",
            {"Collection": "x"},
            "A parameter, Collection and Modality, are required for this API call.",
        ),
        (
            "NewPatientsInCollection",
            {"Collection": "x"},
            "A parameter, Collection and Date are required for this API call.",
        ),
        (
            "NewStudiesInPatientCollection",
            {"fromDate": "01-01-2000"},
            "A parameter, Collection and Date are required for this API call.",
        ),
    ],
)
async def test_query_400_texts(served: Served, endpoint: str, params: dict[str, str], expected: str) -> None:
    server, session = served
    status, _, body = await fetch(session, server.base_url + endpoint, **params)
    assert (status, body.decode()) == (400, expected)


async def test_collection_counts_ignore_parameters(served: Served, catalog: Catalog) -> None:
    server, session = served
    rows = await get_json(session, server.base_url + "getCollectionValuesAndCounts", anything="goes")
    assert {row["Collection"]: row["Count"] for row in rows} == {
        name: len({entry.patient_id for entry in catalog.series if entry.collection == name})
        for name in catalog.collections
    }
    assert all(list(row) == ["Collection", "Count", "Authorized"] for row in rows)


async def test_body_part_counts_use_the_body_part_key(served: Served) -> None:
    server, session = served
    rows = await get_json(session, server.base_url + "getBodyPartValuesAndCounts")
    assert any("BodyPart" in row for row in rows) and all("Count" in row for row in rows)


async def test_patients_and_studies(served: Served, catalog: Catalog) -> None:
    server, session = served
    entry = catalog.series[0]
    patients = await get_json(session, server.base_url + "getPatient", PatientId=entry.patient_id)
    assert [row["PatientId"] for row in patients] == [entry.patient_id]
    assert "PatientBirthDate" not in patients[0] and patients[0]["Authorized"] == 1
    studies = await get_json(session, server.base_url + "getPatientStudy", PatientID=entry.patient_id)
    assert entry.study_uid in {row["StudyInstanceUID"] for row in studies}
    series_count = sum(1 for item in catalog.series if item.study_uid == entry.study_uid)
    assert (
        next(row for row in studies if row["StudyInstanceUID"] == entry.study_uid)["SeriesCount"]
        == series_count
    )
    by_modality = await get_json(
        session,
        server.base_url + "getPatientByCollectionAndModality",
        Collection=entry.collection,
        Modality=entry.modality,
    )
    assert {"PatientId": entry.patient_id, "Authorized": 1} in by_modality


async def test_release_date_filters_are_inclusive_for_new_and_strict_for_updated(
    served: Served, catalog: Catalog
) -> None:
    server, session = served
    entry = catalog.series[0]
    day = entry.date_released.strftime("%m-%d-%Y")
    updated = await fetch(session, server.base_url + "getUpdatedSeries", fromDate=day)
    updated_uids = {row["SeriesInstanceUID"] for row in json.loads(updated[2] or b"[]")}
    assert entry.uid not in updated_uids
    assert updated_uids == {item.uid for item in catalog.series if item.date_released > entry.date_released}
    patients = await get_json(
        session, server.base_url + "NewPatientsInCollection", Collection=entry.collection, fromDate=day
    )
    assert entry.patient_id in {row["PatientId"] for row in patients}
    studies = await get_json(
        session, server.base_url + "NewStudiesInPatientCollection", Collection=entry.collection, fromDate=day
    )
    assert entry.study_uid in {row["StudyInstanceUID"] for row in studies}


async def test_series_size_and_sop_uids(served: Served, catalog: Catalog) -> None:
    server, session = served
    entry = catalog.series[4]
    rows = await get_json(session, server.base_url + "getSeriesSize", SeriesInstanceUID=entry.uid)
    assert rows == [{"TotalSizeInBytes": entry.total_bytes, "ObjectCount": entry.instance_count}]
    sops = await get_json(session, server.base_url + "getSOPInstanceUIDs", SeriesInstanceUID=entry.uid)
    assert sorted(str(row["SOPInstanceUID"]) for row in sops) == sorted(
        item.sop_instance_uid for item in entry.instance_files()
    )


async def test_csv_format_single_column_unquoted_multi_column_quoted(served: Served) -> None:
    server, session = served
    status, headers, body = await fetch(session, server.base_url + "getBodyPartValues", format="csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    lines = body.decode().split("\n")
    assert lines[0] == "BodyPartExamined" and lines[1] == "" and '"' not in body.decode()
    status, _, body = await fetch(session, server.base_url + "getSeries", format="CSV")
    text = body.decode()
    assert (
        text.startswith('"SeriesInstanceUID","StudyInstanceUID",')
        and text.endswith("\n")
        and "\r" not in text
    )


async def test_unknown_format_is_a_500(served: Served) -> None:
    server, session = served
    status, _, body = await fetch(session, server.base_url + "getSeries", format="df")
    assert (status, body) == (500, b"Server was not able to process your request")


async def test_html_and_xml_formats(served: Served) -> None:
    server, session = served
    _, headers, body = await fetch(session, server.base_url + "getCollectionValues", format="html")
    assert headers["Content-Type"].startswith("text/html") and body.startswith(b"<P ALIGN='center'><TABLE")
    _, headers, body = await fetch(session, server.base_url + "getCollectionValues", format="xml")
    assert headers["Content-Type"].startswith("application/xml") and b"<Results><Row>" in body


async def test_series_metadata_default_is_quoted_csv_download(served: Served, catalog: Catalog) -> None:
    server, session = served
    uids = [entry.uid for entry in catalog.series[:3]]
    form = {"list": " " + ",".join(uids) + "\n"}
    async with session.post(server.base_url + "getSeriesMetadata", data=form) as response:
        body = await response.text()
    assert response.status == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="SeriesMetaData.csv"'
    assert response.headers["Content-Type"].startswith("text/csv")
    lines = body.split("\n")
    assert lines[0].startswith('"PatientID","PatientName","PatientSex","EthnicGroup"')
    assert all(line.startswith('"') for line in lines if line)
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [row["SeriesInstanceUID"] for row in rows] == uids
    assert rows[0]["EthnicGroup"] == "" and rows[0]["Authorized"] == "1"
    assert [int(row["FileSize"]) for row in rows] == [entry.total_bytes for entry in catalog.series[:3]]


async def test_series_metadata_json_repeated_fields_and_duplicates(served: Served, catalog: Catalog) -> None:
    server, session = served
    first, second = catalog.series[0].uid, catalog.series[1].uid
    form = aiohttp.FormData(
        [("list", f"{first},{first}"), ("list", second), ("list", first), ("format", "JSON")]
    )
    async with session.post(server.base_url + "getSeriesMetadata", data=form) as response:
        rows = await response.json()
    assert [row["SeriesInstanceUID"] for row in rows] == [first, second, first]
    assert all(None not in row.values() for row in rows)


async def test_series_metadata_without_list_is_400(served: Served) -> None:
    server, session = served
    async with session.post(server.base_url + "getSeriesMetadata", data={"format": "JSON"}) as response:
        body = await response.text()
    assert (response.status, body) == (
        400,
        "A form parameter, list, containing at least one SeriesInstanceUID is required.",
    )


async def test_unknown_path_is_the_mapped_500(served: Served) -> None:
    server, session = served
    status, _, body = await fetch(session, server.base_url + "getSeriesMetaData")
    assert (status, body) == (500, b"Server was not able to process your request\nHTTP 404 Not Found")


async def test_unknown_path_can_be_a_plain_404(catalog: Catalog) -> None:
    async with serving(FakeNBIA(catalog, unknown_path_status=404)) as (server, session):
        status, _, _ = await fetch(session, server.base_url + "nothingHere")
        assert status == 404


async def test_any_real_authorization_header_on_v4_is_401(served: Served) -> None:
    server, session = served
    url = server.base_url + "getCollectionValues"
    async with session.get(url, headers={"Authorization": "Bearer stale-token"}) as response:
        assert (response.status, await response.read()) == (401, b"")
    async with session.get(url, headers={"Authorization": "Bearer undefined"}) as response:
        assert response.status == 200


async def test_request_log_records_queries(served: Served) -> None:
    server, session = served
    await fetch(session, server.base_url + "getSeries", Collection="x")
    record = server.request_log[-1]
    assert (record.method, record.endpoint, record.query, record.status) == (
        "GET",
        "getSeries",
        {"Collection": "x"},
        200,
    )
