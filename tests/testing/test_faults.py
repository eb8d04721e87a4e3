"""Each fault kind has its observable effect, fires ``times`` times, then the series behaves again."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import zipfile
import zlib

import aiohttp
import pytest

from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule
from tests.testing._helpers import fetch
from tests.testing.conftest import serving

pytestmark = pytest.mark.anyio


def _plan(kind: FaultKind, uid: str | None = None, **params: object) -> FaultPlan:
    return FaultPlan(rules=[FaultRule(kind, series_uid=uid, times=1, **params)])


async def _image(
    session: aiohttp.ClientSession, base: str, uid: str, **params: str
) -> tuple[int, dict[str, str], bytes]:
    return await fetch(session, base + "getImage", SeriesInstanceUID=uid, **params)


async def _healthy_after(session: aiohttp.ClientSession, base: str, uid: str) -> None:
    status, _, body = await _image(session, base, uid)
    assert status == 200
    assert zipfile.ZipFile(io.BytesIO(body)).testzip() is None


async def test_rate_limit_sends_429_with_retry_after(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    fake = FakeNBIA(catalog, faults=_plan(FaultKind.RATE_LIMIT, uid, retry_after="7"))
    async with serving(fake) as (server, session):
        status, headers, _ = await _image(session, server.base_url, uid)
        assert (status, headers["Retry-After"]) == (429, "7")
        await _healthy_after(session, server.base_url, uid)
        assert server.stats().rate_limited_responses == 1
        assert server.stats().faults_fired == {"RATE_LIMIT": 1}


async def test_rate_limit_accepts_an_http_date(catalog: Catalog) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    async with serving(FakeNBIA(catalog, faults=_plan(FaultKind.RATE_LIMIT, retry_after=date))) as (
        server,
        session,
    ):
        status, headers, _ = await _image(session, server.base_url, catalog.series[1].uid)
        assert (status, headers["Retry-After"]) == (429, date)


async def test_server_error_and_unavailable(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    plan = FaultPlan(
        rules=[
            FaultRule(FaultKind.SERVER_ERROR, series_uid=uid),
            FaultRule(FaultKind.UNAVAILABLE, series_uid=uid, retry_after="3"),
        ]
    )
    async with serving(FakeNBIA(catalog, faults=plan)) as (server, session):
        status, _, body = await _image(session, server.base_url, uid)
        assert (status, body) == (500, b"Server was not able to process your request\nnull")
        status, headers, _ = await _image(session, server.base_url, uid)
        assert (status, headers["Retry-After"]) == (503, "3")
        await _healthy_after(session, server.base_url, uid)


async def test_cut_closes_the_connection_mid_body(catalog: Catalog) -> None:
    uid = catalog.series[2].uid
    async with serving(FakeNBIA(catalog, faults=_plan(FaultKind.CUT, uid, after_bytes=700))) as (
        server,
        session,
    ):
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(
                server.base_url + "getImage", params={"SeriesInstanceUID": uid}
            ) as response:
                assert response.status == 200
                async for chunk in response.content.iter_any():
                    received += chunk
        assert len(received) == 700
        assert server.request_log[-1].completed is False
        assert server.stats().downloads_aborted == 1
        await _healthy_after(session, server.base_url, uid)


async def test_stall_pauses_the_body(catalog: Catalog) -> None:
    uid = catalog.series[2].uid
    fake = FakeNBIA(catalog, faults=_plan(FaultKind.STALL, uid, after_bytes=500, stall_s=0.6))
    async with serving(fake) as (server, session):
        async with session.get(server.base_url + "getImage", params={"SeriesInstanceUID": uid}) as response:
            first = await response.content.readexactly(500)
            started = time.monotonic()
            rest = await response.content.read()
            waited = time.monotonic() - started
        assert waited >= 0.5
        assert zipfile.ZipFile(io.BytesIO(first + rest)).testzip() is None


async def test_stalled_client_timeout_sees_silence(catalog: Catalog) -> None:
    uid = catalog.series[2].uid
    fake = FakeNBIA(catalog, faults=_plan(FaultKind.STALL, uid, after_bytes=500, stall_s=5))
    async with serving(fake) as (server, session):
        timeout = aiohttp.ClientTimeout(sock_read=0.3)
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(
                server.base_url + "getImage", params={"SeriesInstanceUID": uid}, timeout=timeout
            ) as response:
                await response.read()


async def test_short_zip_is_valid_but_missing_instances(catalog: Catalog) -> None:
    entry = max(catalog.series, key=lambda item: item.instance_count)
    fake = FakeNBIA(catalog, faults=_plan(FaultKind.SHORT_ZIP, entry.uid, missing=2))
    async with serving(fake) as (server, session):
        status, _, body = await _image(session, server.base_url, entry.uid, IncludeMD5="Yes")
        archive = zipfile.ZipFile(io.BytesIO(body))
        assert status == 200 and archive.testzip() is None
        dicoms = [name for name in archive.namelist() if name.endswith(".dcm")]
        assert len(dicoms) == entry.instance_count - 2
        assert "md5hashes.csv" not in archive.namelist()


async def test_wrong_md5_lists_one_bad_hash(catalog: Catalog) -> None:
    entry = catalog.series[0]
    async with serving(FakeNBIA(catalog, faults=_plan(FaultKind.WRONG_MD5, entry.uid))) as (server, session):
        status, _, body = await fetch(
            session, server.base_url + "getImageWithMD5Hash", SeriesInstanceUID=entry.uid
        )
        archive = zipfile.ZipFile(io.BytesIO(body))
        rows = [line.split(",") for line in archive.read("md5hashes.csv").decode().splitlines()[1:]]
        wrong = [name for name, digest in rows if hashlib.md5(archive.read(name)).hexdigest() != digest]
        assert status == 200 and len(wrong) == 1


async def test_flip_byte_breaks_one_member_crc(catalog: Catalog) -> None:
    entry = catalog.series[0]
    async with serving(FakeNBIA(catalog, faults=_plan(FaultKind.FLIP_BYTE, entry.uid))) as (server, session):
        status, _, body = await _image(session, server.base_url, entry.uid)
        archive = zipfile.ZipFile(io.BytesIO(body))
        assert status == 200
        assert archive.testzip() == archive.namelist()[1]
        await _healthy_after(session, server.base_url, entry.uid)


async def test_html_and_empty_200(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    plan = FaultPlan(
        rules=[FaultRule(FaultKind.HTML_200, series_uid=uid), FaultRule(FaultKind.EMPTY_200, series_uid=uid)]
    )
    async with serving(FakeNBIA(catalog, faults=plan)) as (server, session):
        status, headers, body = await _image(session, server.base_url, uid)
        assert (
            status == 200
            and headers["Content-Type"].startswith("text/html")
            and body.startswith(b"<!DOCTYPE html>")
        )
        status, headers, body = await _image(session, server.base_url, uid)
        assert (status, body) == (200, b"")
        await _healthy_after(session, server.base_url, uid)


async def test_zip_slip_member_name(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    async with serving(FakeNBIA(catalog, faults=_plan(FaultKind.ZIP_SLIP, uid))) as (server, session):
        _, _, body = await _image(session, server.base_url, uid)
        assert "../evil.dcm" in zipfile.ZipFile(io.BytesIO(body)).namelist()
    async with serving(FakeNBIA(catalog, faults=_plan(FaultKind.ZIP_SLIP, uid, name="/etc/evil.dcm"))) as (
        server,
        session,
    ):
        _, _, body = await _image(session, server.base_url, uid)
        assert "/etc/evil.dcm" in zipfile.ZipFile(io.BytesIO(body)).namelist()


async def test_request_rejected_is_the_unknown_series_text(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    async with serving(FakeNBIA(catalog, faults=_plan(FaultKind.REQUEST_REJECTED, uid))) as (server, session):
        status, _, body = await _image(session, server.base_url, uid)
        assert status == 400 and body.decode().startswith("The user has not been granted the access")
        await _healthy_after(session, server.base_url, uid)


async def test_wrong_size_changes_reported_figures(catalog: Catalog) -> None:
    entry = catalog.series[0]
    plan = FaultPlan(
        rules=[
            FaultRule(FaultKind.WRONG_SIZE, series_uid=entry.uid, times=None, delta_bytes=-10, delta_count=1)
        ]
    )
    async with serving(FakeNBIA(catalog, faults=plan)) as (server, session):
        _, _, body = await fetch(session, server.base_url + "getSeriesSize", SeriesInstanceUID=entry.uid)
        assert json.loads(body) == [
            {"TotalSizeInBytes": entry.total_bytes - 10, "ObjectCount": entry.instance_count + 1}
        ]
        _, _, body = await fetch(session, server.base_url + "getSeries", SeriesInstanceUID=entry.uid)
        assert json.loads(body)[0]["FileSize"] == entry.total_bytes - 10
        other = catalog.series[1]
        _, _, body = await fetch(session, server.base_url + "getSeriesSize", SeriesInstanceUID=other.uid)
        assert json.loads(body)[0]["TotalSizeInBytes"] == other.total_bytes


async def test_slow_query_delays_queries_once(catalog: Catalog) -> None:
    plan = FaultPlan(rules=[FaultRule(FaultKind.SLOW_QUERY, delay_s=0.4)])
    async with serving(FakeNBIA(catalog, faults=plan)) as (server, session):
        started = time.monotonic()
        await fetch(session, server.base_url + "getCollectionValues")
        assert time.monotonic() - started >= 0.35
        started = time.monotonic()
        await fetch(session, server.base_url + "getCollectionValues")
        assert time.monotonic() - started < 0.3


async def test_times_counts_matching_requests(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    plan = FaultPlan(rules=[FaultRule(FaultKind.SERVER_ERROR, series_uid=uid, times=2)])
    async with serving(FakeNBIA(catalog, faults=plan)) as (server, session):
        other_status, _, _ = await _image(session, server.base_url, catalog.series[1].uid)
        statuses = [(await _image(session, server.base_url, uid))[0] for _ in range(3)]
        assert other_status == 200 and statuses == [500, 500, 200]


async def test_random_faults_are_deterministic_for_a_seed(catalog: Catalog) -> None:
    async def statuses(seed: int) -> list[int]:
        plan = FaultPlan(random_rate=0.5, random_kinds=(FaultKind.SERVER_ERROR,), seed=seed)
        async with serving(FakeNBIA(catalog, faults=plan)) as (server, session):
            return [(await _image(session, server.base_url, catalog.series[0].uid))[0] for _ in range(16)]

    first = await statuses(4)
    assert first == await statuses(4)
    assert 500 in first and 200 in first


def test_unknown_fault_parameter_is_rejected() -> None:
    with pytest.raises(ValueError, match="after_bytes"):
        FaultRule(FaultKind.SERVER_ERROR, after_bytes=3)


def test_flipped_member_is_a_crc_failure_not_an_inflate_error(catalog: Catalog) -> None:
    from tcia_fetch.testing._downloads import _build_member, _flip_preamble_byte

    member = _build_member(catalog.series[0].instance_files()[0], want_md5=False)
    data = zlib.decompress(_flip_preamble_byte(member.stored_header) + member.pixel_deflated, -15)
    assert len(data) == member.uncompressed_size and zlib.crc32(data) != member.crc
