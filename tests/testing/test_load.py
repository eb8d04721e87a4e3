"""The load model: paced byte rate, time to first byte, 429 above the download cap, query delay, counters."""

from __future__ import annotations

import asyncio
import time

import pytest

from tcia_fetch.testing import Catalog, FakeNBIA, LoadModel
from tests.testing._helpers import fetch
from tests.testing.conftest import serving

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def medium() -> Catalog:
    """One series of about 200 kB, compressed to roughly 80 kB."""
    return Catalog.generate(
        seed=4, collections=1, patients_per_collection=1, series_per_study=1,
        instances_per_series=(4, 4), instance_bytes=(50_000, 50_000),
    )  # fmt: skip


async def test_stream_is_paced_to_the_configured_rate(medium: Catalog) -> None:
    rate = 100_000.0
    uid = medium.series[0].uid
    async with serving(FakeNBIA(medium, load=LoadModel(bytes_per_s_per_connection=rate))) as (
        server,
        session,
    ):
        started = time.monotonic()
        _, _, body = await fetch(session, server.base_url + "getImage", SeriesInstanceUID=uid)
        elapsed = time.monotonic() - started
    measured = len(body) / elapsed
    assert len(body) > 50_000
    assert 0.5 * rate <= measured <= 1.15 * rate


async def test_a_shared_link_splits_its_rate_between_streams(medium: Catalog) -> None:
    total = 200_000.0
    uid = medium.series[0].uid
    async with serving(FakeNBIA(medium, load=LoadModel(total_bytes_per_s=total))) as (server, session):
        started = time.monotonic()
        results = await asyncio.gather(
            *(fetch(session, server.base_url + "getImage", SeriesInstanceUID=uid) for _ in range(4))
        )
        elapsed = time.monotonic() - started
    sent = sum(len(body) for _, _, body in results)
    assert all(status == 200 for status, _, _ in results)
    # four streams together still move at most the link's rate (a per-stream cap would be 4x)
    assert sent / elapsed <= 1.15 * total
    assert sent / elapsed >= 0.5 * total


async def test_first_byte_waits(medium: Catalog) -> None:
    uid = medium.series[0].uid
    async with serving(FakeNBIA(medium, load=LoadModel(first_byte_delay_s=0.4))) as (server, session):
        started = time.monotonic()
        async with session.get(server.base_url + "getImage", params={"SeriesInstanceUID": uid}) as response:
            assert response.status == 200
            headers_at = time.monotonic() - started
            await response.read()
    assert headers_at >= 0.35


async def test_downloads_above_the_cap_get_429(medium: Catalog) -> None:
    uid = medium.series[0].uid
    load = LoadModel(bytes_per_s_per_connection=200_000, max_concurrent_downloads=2, retry_after_s=2.5)
    async with serving(FakeNBIA(medium, load=load)) as (server, session):
        results = await asyncio.gather(
            *(fetch(session, server.base_url + "getImage", SeriesInstanceUID=uid) for _ in range(5))
        )
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200, 200, 429, 429, 429]
        assert {headers["Retry-After"] for status, headers, _ in results if status == 429} == {"3"}
        stats = server.stats()
        assert stats.rate_limited_responses == 3
        assert stats.peak_concurrent_downloads == 2
        assert stats.downloads_completed == 2 and stats.active_downloads == 0
        assert stats.download_body_bytes == sum(len(body) for status, _, body in results if status == 200)


async def test_query_delay(medium: Catalog) -> None:
    async with serving(FakeNBIA(medium, load=LoadModel(query_delay_s=0.3))) as (server, session):
        started = time.monotonic()
        await fetch(session, server.base_url + "getSeries")
        assert time.monotonic() - started >= 0.28


def test_load_model_validates() -> None:
    with pytest.raises(ValueError):
        LoadModel(bytes_per_s_per_connection=0)
    with pytest.raises(ValueError):
        LoadModel(max_concurrent_downloads=0)
