"""getImage, getImageWithMD5Hash and getSingleImage: headers, zip layout, names, hashes, errors."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import struct
import zipfile

import aiohttp
import pydicom
import pytest

from tcia_fetch.testing import Catalog, FakeNBIA, RunningServer
from tests.testing._helpers import fetch, fetch_zip, with_runs
from tests.testing.conftest import serving

pytestmark = pytest.mark.anyio

Served = tuple[RunningServer, aiohttp.ClientSession]


def _md5_rows(archive: zipfile.ZipFile) -> list[tuple[str, str]]:
    text = archive.read("md5hashes.csv").decode("ascii")
    assert text.startswith("Filename,MD5Hash\n") and text.endswith("\n") and "\r" not in text
    return [tuple(line.split(",")) for line in text.splitlines()[1:]]  # type: ignore[misc]


async def test_get_image_headers_are_streaming_zip_headers(served: Served, catalog: Catalog) -> None:
    server, session = served
    uid = catalog.series[0].uid
    async with session.get(server.base_url + "getImage", params={"SeriesInstanceUID": uid}) as response:
        await response.read()
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{uid}.zip"'
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in response.headers


async def test_range_header_is_ignored(served: Served, catalog: Catalog) -> None:
    server, session = served
    uid = catalog.series[0].uid
    url = server.base_url + "getImage"
    async with session.get(url, params={"SeriesInstanceUID": uid}) as full:
        whole = await full.read()
    headers = {"Range": "bytes=100-"}
    async with session.get(url, params={"SeriesInstanceUID": uid}, headers=headers) as ranged:
        again = await ranged.read()
    assert ranged.status == 200 and "Content-Range" not in ranged.headers
    assert again == whole
    assert server.request_log[-1].headers["Range"] == "bytes=100-"


async def test_zip_members_use_data_descriptors_and_deflate(served: Served, catalog: Catalog) -> None:
    server, session = served
    _, _, body = await fetch(session, server.base_url + "getImage", SeriesInstanceUID=catalog.series[0].uid)
    flags, method = struct.unpack("<HH", body[6:10])
    assert flags & 0x0008 and method == 8
    assert struct.unpack("<III", body[14:26]) == (0, 0, 0)
    assert b"PK\x07\x08" in body
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())


async def test_default_names_are_database_order_with_license_first(served: Served, catalog: Catalog) -> None:
    server, session = served
    entry = with_runs(catalog)
    archive = await fetch_zip(session, server, "getImage", SeriesInstanceUID=entry.uid)
    names = archive.namelist()
    assert names[0] == "LICENSE"
    assert names[1:] == [f"{index:08d}.dcm" for index in range(1, entry.instance_count + 1)]
    license_text = archive.read("LICENSE").decode()
    assert entry.collection in license_text and entry.license_uri in license_text
    instance_numbers = [pydicom.dcmread(io.BytesIO(archive.read(name))).InstanceNumber for name in names[1:]]
    assert instance_numbers != sorted(instance_numbers)
    assert sorted(instance_numbers) == list(range(1, entry.instance_count + 1))


async def test_new_file_names_follow_instance_order_and_acquisition_runs(
    served: Served, catalog: Catalog
) -> None:
    server, session = served
    entry = with_runs(catalog)
    archive = await fetch_zip(session, server, "getImage", SeriesInstanceUID=entry.uid, NewFileNames="yes")
    names = archive.namelist()[1:]
    datasets = [pydicom.dcmread(io.BytesIO(archive.read(name))) for name in names]
    assert [ds.InstanceNumber for ds in datasets] == sorted(ds.InstanceNumber for ds in datasets)
    runs: list[int] = []
    for name, ds in zip(names, datasets, strict=True):
        run, position = name.removesuffix(".dcm").split("-")
        runs.append(int(run))
        assert int(run) == ds.AcquisitionNumber
        assert int(position) >= 1
    assert runs == sorted(runs) and runs[0] == 1 and runs[-1] == 2
    assert "md5hashes.csv" not in archive.namelist()


async def test_include_md5_appends_unsorted_correct_hashes_last(served: Served, catalog: Catalog) -> None:
    server, session = served
    entry = max(catalog.series, key=lambda item: item.instance_count)
    for new_names in ("No", "Yes"):
        archive = await fetch_zip(
            session, server, "getImage", SeriesInstanceUID=entry.uid, NewFileNames=new_names, IncludeMD5="YES"
        )
        names = archive.namelist()
        assert names[0] == "LICENSE" and names[-1] == "md5hashes.csv"
        rows = _md5_rows(archive)
        assert sorted(name for name, _ in rows) == sorted(names[1:-1])
        assert [name for name, _ in rows] != sorted(name for name, _ in rows)
        for name, digest in rows:
            assert digest == hashlib.md5(archive.read(name)).hexdigest()


async def test_dicom_bytes_in_the_zip_add_up_to_every_reported_size(served: Served, catalog: Catalog) -> None:
    server, session = served
    entry = catalog.series[3]
    archive = await fetch_zip(session, server, "getImage", SeriesInstanceUID=entry.uid)
    dicom_bytes = sum(info.file_size for info in archive.infolist() if info.filename.endswith(".dcm"))
    _, _, size_body = await fetch(session, server.base_url + "getSeriesSize", SeriesInstanceUID=entry.uid)
    _, _, series_body = await fetch(session, server.base_url + "getSeries", SeriesInstanceUID=entry.uid)
    async with session.post(
        server.base_url + "getSeriesMetadata", data={"list": entry.uid, "format": "JSON"}
    ) as response:
        metadata = await response.json()
    size_row = json.loads(size_body)[0]
    series_row = json.loads(series_body)[0]
    assert dicom_bytes == size_row["TotalSizeInBytes"] == series_row["FileSize"] == metadata[0]["FileSize"]
    count = len(archive.namelist()) - 1
    assert count == size_row["ObjectCount"] == series_row["ImageCount"] == metadata[0]["ImageCount"]


async def test_get_image_with_md5_hash_has_no_license(served: Served, catalog: Catalog) -> None:
    server, session = served
    entry = catalog.series[1]
    archive = await fetch_zip(session, server, "getImageWithMD5Hash", SeriesInstanceUID=entry.uid)
    names = archive.namelist()
    assert "LICENSE" not in names
    assert names[:-1] == [f"{index:08d}.dcm" for index in range(1, entry.instance_count + 1)]
    assert names[-1] == "md5hashes.csv"
    assert dict(_md5_rows(archive)) == {
        name: hashlib.md5(archive.read(name)).hexdigest() for name in names[:-1]
    }


@pytest.mark.parametrize(
    ("endpoint", "params", "expected"),
    [
        ("getImage", {}, "A parameter, SeriesInstanceUID, is required for this API call."),
        ("getImageWithMD5Hash", {}, "A parameter, SeriesInstanceUID, is required for this API call."),
        (
            "getImage",
            {"SeriesInstanceUID": "1.2.3", "format": "zip"},
            "Invalid query parameter: 'format'. Allowed parameters are: "
            "[SeriesInstanceUID, NewFileNames, IncludeMD5]",
        ),
        (
            "getImageWithMD5Hash",
            {"SeriesInstanceUID": "1.2.3", "NewFileNames": "Yes"},
            "Invalid query parameter: 'NewFileNames'. Allowed parameters are: [SeriesInstanceUID]",
        ),
        (
            "getImage",
            {"SeriesInstanceUID": "1.2.3.4"},
            "The user has not been granted the access to image with given SeriesInstanceUID,1.2.3.4. "
            "Please contact System Admin to resolve this issue.",
        ),
        (
            "getSingleImage",
            {"SeriesInstanceUID": "1.2.3"},
            "A parameter, SeriesInstanceUID and SOPInstanceUID, are required for this API call.",
        ),
    ],
)
async def test_download_request_errors_are_400_with_the_server_texts(
    served: Served, endpoint: str, params: dict[str, str], expected: str
) -> None:
    server, session = served
    status, _, body = await fetch(session, server.base_url + endpoint, **params)
    assert (status, body.decode()) == (400, expected)


async def test_restricted_series_is_refused_and_hidden(catalog: Catalog) -> None:
    hidden = catalog.series[0]
    async with serving(FakeNBIA(catalog, restricted_series=frozenset({hidden.uid}))) as (server, session):
        status, _, body = await fetch(session, server.base_url + "getImage", SeriesInstanceUID=hidden.uid)
        assert status == 400 and b"not been granted the access" in body and hidden.uid.encode() in body
        status, _, body = await fetch(
            session, server.base_url + "getSeriesSize", SeriesInstanceUID=hidden.uid
        )
        assert (status, body) == (200, b"")
        status, _, body = await fetch(session, server.base_url + "getSeries", Collection=hidden.collection)
        assert status == 200 and hidden.uid.encode() not in body


async def test_get_single_image_returns_the_instance(served: Served, catalog: Catalog) -> None:
    server, session = served
    entry = catalog.series[2]
    instance = entry.instance_files()[0]
    status, headers, body = await fetch(
        session,
        server.base_url + "getSingleImage",
        SeriesInstanceUID=entry.uid,
        SOPInstanceUID=instance.sop_instance_uid,
    )
    assert status == 200
    assert headers["Content-Type"] == "application/dicom"
    assert headers["Content-Disposition"] == f"attachment; filename={instance.sop_instance_uid}.dcm"
    assert body == instance.read_bytes()
    status, _, body = await fetch(
        session, server.base_url + "getSingleImage", SeriesInstanceUID=entry.uid, SOPInstanceUID="1.2.3"
    )
    assert (status, body) == (500, b"Server was not able to process your request\nnull")


async def test_concurrent_downloads_of_one_series_are_identical(served: Served, catalog: Catalog) -> None:
    server, session = served
    uid = catalog.series[5].uid
    bodies = await asyncio.gather(
        *(fetch(session, server.base_url + "getImage", SeriesInstanceUID=uid) for _ in range(4))
    )
    assert len({body for _, _, body in bodies}) == 1


async def test_large_instances_stream_through_the_worker_thread_path() -> None:
    catalog = Catalog.generate(
        seed=8, collections=1, patients_per_collection=1, series_per_study=1,
        instances_per_series=(6, 6), instance_bytes=(300_000, 300_000),
    )  # fmt: skip
    entry = catalog.series[0]
    async with serving(FakeNBIA(catalog)) as (server, session):
        archive = await fetch_zip(session, server, "getImage", SeriesInstanceUID=entry.uid, IncludeMD5="Yes")
        status, _, body = await fetch(session, server.base_url + "getImage", SeriesInstanceUID=entry.uid)
    assert archive.testzip() is None
    dicoms = [info for info in archive.infolist() if info.filename.endswith(".dcm")]
    assert sum(info.file_size for info in dicoms) == entry.total_bytes
    assert 0.25 < sum(info.compress_size for info in dicoms) / entry.total_bytes < 0.6
    assert dict(_md5_rows(archive)) == {
        info.filename: hashlib.md5(archive.read(info)).hexdigest() for info in dicoms
    }
    assert status == 200 and zipfile.ZipFile(io.BytesIO(body)).testzip() is None


@pytest.mark.slow
async def test_hundred_megabyte_series_streams_exactly() -> None:
    catalog = Catalog.generate(
        seed=12, collections=1, patients_per_collection=1, series_per_study=1,
        instances_per_series=(20, 20), instance_bytes=(5_000_000, 5_000_000),
    )  # fmt: skip
    entry = catalog.series[0]
    async with serving(FakeNBIA(catalog)) as (server, session):
        archive = await fetch_zip(session, server, "getImage", SeriesInstanceUID=entry.uid, IncludeMD5="Yes")
        stats = server.stats()
    dicoms = [info for info in archive.infolist() if info.filename.endswith(".dcm")]
    assert len(dicoms) == 20 and sum(info.file_size for info in dicoms) == entry.total_bytes
    assert archive.testzip() is None
    assert dict(_md5_rows(archive)) == {
        info.filename: hashlib.md5(archive.read(info)).hexdigest() for info in dicoms
    }
    assert stats.download_body_bytes < entry.total_bytes * 0.6


async def test_app_runs_under_aiohttp_test_server(catalog: Catalog) -> None:
    from aiohttp.test_utils import TestServer

    fake = FakeNBIA(catalog)
    async with TestServer(fake.app()) as test_server, aiohttp.ClientSession() as session:
        url = str(test_server.make_url("/nbia-api/services/v4/getImage"))
        status, _, body = await fetch(session, url, SeriesInstanceUID=catalog.series[0].uid)
    assert status == 200 and zipfile.ZipFile(io.BytesIO(body)).testzip() is None
    assert fake.request_log[-1].completed is True and fake.stats().downloads_completed == 1
