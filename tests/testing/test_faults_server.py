"""The fault kinds added for the reliability campaign: 502, 504, RST, HTTP-date 429, outage windows."""

from __future__ import annotations

import asyncio
import time
from email.utils import parsedate_to_datetime

import aiohttp
import pytest

from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule
from tests.testing._helpers import fetch
from tests.testing.conftest import serving

pytestmark = pytest.mark.anyio


def _plan(kind: FaultKind, uid: str | None = None, times: int | None = 1, **params: object) -> FaultPlan:
    return FaultPlan(rules=[FaultRule(kind, series_uid=uid, times=times, **params)])


async def _image_status(session: aiohttp.ClientSession, base: str, uid: str) -> int:
    status, _, _ = await fetch(session, base + "getImage", SeriesInstanceUID=uid)
    return status


@pytest.mark.parametrize(
    ("kind", "status", "title"),
    [
        (FaultKind.BAD_GATEWAY, 502, b"502 Bad Gateway"),
        (FaultKind.GATEWAY_TIMEOUT, 504, b"504 Gateway Time-out"),
    ],
)
async def test_gateway_errors_answer_an_nginx_page_once(
    catalog: Catalog, kind: FaultKind, status: int, title: bytes
) -> None:
    uid = catalog.series[0].uid
    async with serving(FakeNBIA(catalog, faults=_plan(kind, uid))) as (server, session):
        got, headers, body = await fetch(session, server.base_url + "getImage", SeriesInstanceUID=uid)
        assert (got, headers["Content-Type"].split(";")[0]) == (status, "text/html")
        assert title in body
        assert await _image_status(session, server.base_url, uid) == 200
        assert server.stats().faults_fired == {kind.name: 1}


async def test_reset_aborts_the_stream_with_a_connection_error(catalog: Catalog) -> None:
    uid = catalog.series[1].uid
    async with serving(FakeNBIA(catalog, faults=_plan(FaultKind.RESET, uid, after_bytes=600))) as (
        server,
        session,
    ):
        received = bytearray()
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
            async with session.get(
                server.base_url + "getImage", params={"SeriesInstanceUID": uid}
            ) as response:
                async for chunk in response.content.iter_any():
                    received += chunk
        assert len(received) <= 600
        assert server.request_log[-1].completed is False
        assert await _image_status(session, server.base_url, uid) == 200


@pytest.mark.parametrize("skew_s", [0.0, -600.0, 600.0])
async def test_rate_limit_date_is_measured_from_the_servers_own_date(catalog: Catalog, skew_s: float) -> None:
    uid = catalog.series[0].uid
    fake = FakeNBIA(catalog, faults=_plan(FaultKind.RATE_LIMIT_DATE, uid, retry_in_s=3, clock_skew_s=skew_s))
    async with serving(fake) as (server, session):
        status, headers, _ = await fetch(session, server.base_url + "getImage", SeriesInstanceUID=uid)
        assert status == 429
        server_date = parsedate_to_datetime(headers["Date"]).timestamp()
        retry_at = parsedate_to_datetime(headers["Retry-After"]).timestamp()
        assert retry_at - server_date == 3
        assert abs(server_date - (time.time() + skew_s)) < 3
        assert server.stats().rate_limited_responses == 1


async def test_outage_fails_every_endpoint_for_its_window_then_recovers(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    fake = FakeNBIA(catalog, faults=_plan(FaultKind.OUTAGE, duration_s=0.6, after_requests=1))
    async with serving(fake) as (server, session):
        assert await _image_status(session, server.base_url, uid) == 200  # before the window
        opened = time.monotonic()
        statuses = [await _image_status(session, server.base_url, uid)]
        size_status, _, _ = await fetch(session, server.base_url + "getSeriesSize", SeriesInstanceUID=uid)
        series_status, _, _ = await fetch(session, server.base_url + "getSeries")
        assert statuses == [503] and size_status == 503 and series_status == 503
        await asyncio.sleep(max(0.0, 0.7 - (time.monotonic() - opened)))
        assert await _image_status(session, server.base_url, uid) == 200
        assert server.stats().faults_fired == {"OUTAGE": 3}


async def test_outage_close_mode_drops_connections_without_an_answer(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    fake = FakeNBIA(catalog, faults=_plan(FaultKind.OUTAGE, duration_s=0.5, mode="close"))
    async with serving(fake) as (server, session):
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await fetch(session, server.base_url + "getSeriesSize", SeriesInstanceUID=uid)
        await asyncio.sleep(0.6)
        assert await _image_status(session, server.base_url, uid) == 200


def test_outage_mode_is_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="mode"):
        FaultRule(FaultKind.OUTAGE, mode="teapot")


def test_outage_is_not_a_download_fault_for_random_plans() -> None:
    with pytest.raises(ValueError, match="download faults"):
        FaultPlan(random_rate=0.1, random_kinds=(FaultKind.OUTAGE,))


async def test_truncate_ends_the_body_cleanly_but_short(catalog: Catalog) -> None:
    uid = catalog.series[1].uid
    async with serving(FakeNBIA(catalog, faults=_plan(FaultKind.TRUNCATE, uid, after_bytes=900))) as (
        server,
        session,
    ):
        status, _, body = await fetch(session, server.base_url + "getImage", SeriesInstanceUID=uid)
        assert (status, len(body)) == (200, 900)
        assert body.startswith(b"PK\x03\x04")
        status, _, full = await fetch(session, server.base_url + "getImage", SeriesInstanceUID=uid)
        assert status == 200 and len(full) > 900 and full.startswith(body)
