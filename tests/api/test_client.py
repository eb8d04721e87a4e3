"""NBIAClient against the fake NBIA server over loopback: every method, exact wire parameters."""

from __future__ import annotations

import datetime as dt
import io
import zipfile

import pytest

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.api.models import SeriesMetadataRow, SeriesRow
from tcia_fetch.errors import InputError, SeriesUnavailableError
from tcia_fetch.testing import Catalog, RunningServer

pytestmark = pytest.mark.anyio


def _public(catalog: Catalog) -> list:  # type: ignore[type-arg]
    return catalog.series[:-1]  # the fixture restricts the last series


def _calls(server: RunningServer, endpoint: str) -> list:  # type: ignore[type-arg]
    return [record for record in server.request_log if record.endpoint == endpoint]


async def test_value_lists_match_the_catalog(fake_server: RunningServer, catalog: Catalog) -> None:
    public = _public(catalog)
    async with NBIAClient(base_url=fake_server.base_url) as client:
        collections = await client.collections()
        modalities = await client.modalities()
        ct_lung = await client.modalities(collection=public[0].collection, body_part=public[0].body_part)
        body_parts = await client.body_parts(collection=public[0].collection)
        manufacturers = await client.manufacturers(modality=public[0].modality)
    assert set(collections) == {entry.collection for entry in public}
    assert collections.rows and all(set(row) <= {"Collection"} for row in collections.rows)
    assert set(modalities) == {entry.modality.upper() for entry in public}
    assert public[0].modality.upper() in ct_lung
    assert {v for v in body_parts if v} == {
        (e.body_part or "").upper() for e in public if e.collection == public[0].collection and e.body_part
    }
    assert set(manufacturers) >= {e.manufacturer for e in public if e.modality == public[0].modality}
    [record] = [r for r in _calls(fake_server, "getModalityValues") if r.query]
    assert record.query == {"Collection": public[0].collection, "BodyPartExamined": public[0].body_part}
    assert all("format" not in r.query for r in fake_server.request_log)


async def test_value_counts(fake_server: RunningServer, catalog: Catalog) -> None:
    public = _public(catalog)
    async with NBIAClient(base_url=fake_server.base_url) as client:
        collections = await client.collection_counts()
        modalities = await client.modality_counts(collection=public[0].collection)
        body_parts = await client.body_part_counts()
        manufacturers = await client.manufacturer_counts(body_part=public[0].body_part)
    assert {c.value for c in collections} == {e.collection for e in public}
    assert all(c.count is not None and c.count > 0 for c in collections)
    assert modalities and all(c.count for c in modalities)
    assert body_parts and manufacturers
    assert collections[0].server_dict().keys() >= {"Collection", "Count"}


async def test_patients_and_studies(fake_server: RunningServer, catalog: Catalog) -> None:
    entry = _public(catalog)[0]
    async with NBIAClient(base_url=fake_server.base_url) as client:
        everyone = await client.patients(collection=entry.collection)
        one = await client.patients(collection=entry.collection, patient_id=entry.patient_id)
        by_modality = await client.patients_by_modality(entry.collection, entry.modality)
        new = await client.new_patients(entry.collection, dt.date(1990, 1, 1))
        none_new = await client.new_patients(entry.collection, dt.date(2090, 1, 1))
        studies = await client.studies(collection=entry.collection, patient_id=entry.patient_id)
        study = await client.studies(study_uid=entry.study_uid)
        new_studies = await client.new_studies(
            entry.collection, dt.date(1990, 1, 1), patient_id=entry.patient_id
        )
    assert entry.patient_id in {p.patient_id for p in everyone}
    assert [p.patient_id for p in one] == [entry.patient_id]
    assert entry.patient_id in {p.patient_id for p in by_modality}
    assert entry.patient_id in {p.patient_id for p in new}
    assert none_new == []
    assert entry.study_uid in {s.study_uid for s in studies}
    assert [s.study_uid for s in study] == [entry.study_uid]
    assert study[0].series_count and study[0].series_count >= 1
    assert entry.study_uid in {s.study_uid for s in new_studies}
    patient_calls = [r.query for r in _calls(fake_server, "getPatient")]
    assert {"Collection": entry.collection, "PatientId": entry.patient_id} in patient_calls
    assert _calls(fake_server, "NewPatientsInCollection")[0].query["fromDate"] == "01-01-1990"


async def test_series_filters_and_rows(fake_server: RunningServer, catalog: Catalog) -> None:
    entry = _public(catalog)[0]
    async with NBIAClient(base_url=fake_server.base_url) as client:
        by_collection = await client.series(collection=entry.collection)
        exact = await client.series(
            collection=entry.collection.lower(),
            patient_id=entry.patient_id,
            study_uid=entry.study_uid,
            modality=entry.modality,
            body_part=entry.body_part,
            series_uid=entry.uid,
        )
        nothing = await client.series(collection="No-Such-Collection")
    assert {row.series_uid for row in by_collection} == {
        e.uid for e in _public(catalog) if e.collection == entry.collection
    }
    [row] = exact
    assert isinstance(row, SeriesRow)
    assert row.series_uid == entry.uid and row.study_uid == entry.study_uid
    assert row.image_count == entry.instance_count
    assert row.file_size == entry.total_bytes
    assert row.server_dict() == entry.series_row()
    assert nothing == []  # empty 200 body
    query = _calls(fake_server, "getSeries")[1].query
    assert query == {
        "Collection": entry.collection.lower(),
        "PatientID": entry.patient_id,
        "StudyInstanceUID": entry.study_uid,
        "Modality": entry.modality,
        "BodyPartExamined": entry.body_part,
        "SeriesInstanceUID": entry.uid,
    }


async def test_restricted_series_is_invisible_to_queries(
    fake_server: RunningServer, catalog: Catalog
) -> None:
    hidden = catalog.series[-1]
    async with NBIAClient(base_url=fake_server.base_url) as client:
        assert await client.series(series_uid=hidden.uid) == []
        assert await client.series_size(hidden.uid) is None
        assert await client.series_metadata([hidden.uid]) == []


async def test_updated_series(fake_server: RunningServer, catalog: Catalog) -> None:
    async with NBIAClient(base_url=fake_server.base_url) as client:
        everything = await client.updated_series(dt.date(1900, 1, 1))
        future = await client.updated_series(dt.date(2100, 1, 1))
    assert {row.series_uid for row in everything} == {e.uid for e in _public(catalog)}
    assert future == []
    assert _calls(fake_server, "getUpdatedSeries")[0].query == {"fromDate": "01-01-1900"}


async def test_series_metadata_is_one_post_of_comma_joined_uids(
    fake_server: RunningServer, catalog: Catalog
) -> None:
    entries = _public(catalog)[:3]
    uids = [e.uid for e in entries] + ["1.2.3.4.5"]
    async with NBIAClient(base_url=fake_server.base_url) as client:
        rows = await client.series_metadata(uids)
        assert await client.series_metadata([]) == []
    [call] = _calls(fake_server, "getSeriesMetadata")
    assert call.method == "POST"
    assert call.form_items == (("list", ",".join(uids)),)
    assert not call.query
    by_uid = {row.series_uid: row for row in rows}
    assert set(by_uid) == {e.uid for e in entries}
    for entry in entries:
        row = by_uid[entry.uid]
        assert isinstance(row, SeriesMetadataRow)
        assert row.image_count == entry.instance_count
        assert row.file_size == entry.total_bytes
        assert row.patient_id == entry.patient_id
        assert row.study_id is not None
        expected = {k: str(v) for k, v in entry.metadata_row().items()}
        assert row.server_dict() == expected  # CSV sends text; "" (null) columns omitted


async def test_series_size_and_sop_uids(fake_server: RunningServer, catalog: Catalog) -> None:
    entry = _public(catalog)[0]
    async with NBIAClient(base_url=fake_server.base_url) as client:
        size = await client.series_size(entry.uid)
        unknown = await client.series_size("1.2.3.4.5.6")
        sops = await client.sop_instance_uids(entry.uid)
    assert size is not None
    assert (size.total_size_bytes, size.object_count) == (entry.total_bytes, entry.instance_count)
    assert unknown is None
    assert len(sops) == entry.instance_count == len(set(sops))


@pytest.mark.parametrize("bad", ["", "abc", "1.02.3", "1..2", "1." + "2" * 70])
async def test_bad_uids_are_refused_before_any_request(fake_server: RunningServer, bad: str) -> None:
    async with NBIAClient(base_url=fake_server.base_url) as client:
        with pytest.raises(InputError):
            await client.series_size(bad)
        with pytest.raises(InputError):
            await client.series_metadata(["1.2.3", bad])
        with pytest.raises(InputError):
            await client.series(series_uid=bad)
        with pytest.raises(InputError):
            async with client.stream_image(bad):
                pass
    assert fake_server.request_log == []


async def _read_zip(
    client: NBIAClient, uid: str, *, new_file_names: bool = False, include_md5: bool = True
) -> zipfile.ZipFile:
    async with client.stream_image(uid, new_file_names=new_file_names, include_md5=include_md5) as response:
        assert response.headers["Content-Type"].startswith("application/octet-stream")
        body = b"".join([chunk async for chunk in response])
    return zipfile.ZipFile(io.BytesIO(body))


async def test_stream_image_variants(fake_server: RunningServer, catalog: Catalog) -> None:
    entry = _public(catalog)[0]
    async with NBIAClient(base_url=fake_server.base_url) as client:
        default = await _read_zip(client, entry.uid)
        plain = await _read_zip(client, entry.uid, include_md5=False, new_file_names=True)
        async with client.stream_image_with_md5(entry.uid) as response:
            md5_zip = zipfile.ZipFile(io.BytesIO(b"".join([chunk async for chunk in response])))
    names = default.namelist()
    assert names[0] == "LICENSE" and names[-1] == "md5hashes.csv"
    assert len([n for n in names if n.endswith(".dcm")]) == entry.instance_count
    assert "md5hashes.csv" not in plain.namelist() and plain.namelist()[1].startswith("1-")
    assert "LICENSE" not in md5_zip.namelist() and "md5hashes.csv" in md5_zip.namelist()
    queries = [r.query for r in _calls(fake_server, "getImage")]
    assert queries == [
        {"SeriesInstanceUID": entry.uid, "IncludeMD5": "Yes"},
        {"SeriesInstanceUID": entry.uid, "NewFileNames": "Yes"},
    ]
    assert _calls(fake_server, "getImageWithMD5Hash")[0].query == {"SeriesInstanceUID": entry.uid}


async def test_stream_single_image(fake_server: RunningServer, catalog: Catalog) -> None:
    entry = _public(catalog)[0]
    async with NBIAClient(base_url=fake_server.base_url) as client:
        sop = (await client.sop_instance_uids(entry.uid))[0]
        async with client.stream_single_image(entry.uid, sop) as response:
            body = b"".join([chunk async for chunk in response])
    assert response.headers["Content-Type"] == "application/dicom"
    assert body[128:132] == b"DICM"


async def test_restricted_series_download_is_series_unavailable(
    fake_server: RunningServer, catalog: Catalog
) -> None:
    hidden = catalog.series[-1]
    async with NBIAClient(base_url=fake_server.base_url) as client:
        with pytest.raises(SeriesUnavailableError) as caught:
            async with client.stream_image(hidden.uid):
                pytest.fail("the stream must not open")
    assert caught.value.series_uid == hidden.uid
    assert caught.value.status == 400
    assert "not been granted" in caught.value.body_excerpt


async def test_v4_never_sends_authorization(fake_server: RunningServer, catalog: Catalog) -> None:
    async with NBIAClient(base_url=fake_server.base_url) as client:
        await client.collections()
        await client.series_size(_public(catalog)[0].uid)
    assert fake_server.request_log
    assert all("Authorization" not in record.headers for record in fake_server.request_log)
    assert all(
        record.headers.get("User-Agent", "").startswith("tcia-fetch/") for record in fake_server.request_log
    )
