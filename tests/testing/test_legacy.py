"""Legacy v1/v2 paths and the OAuth token flow the v2 API needs."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tcia_fetch.testing import Catalog, FakeNBIA, RunningServer
from tests.testing._helpers import fetch
from tests.testing.conftest import serving

pytestmark = pytest.mark.anyio


async def _token(session: aiohttp.ClientSession, url: str, **form: str) -> tuple[int, dict[str, object]]:
    async with session.post(url, data=form) as response:
        return response.status, await response.json()


async def _v2(session: aiohttp.ClientSession, server: RunningServer, token: str | None) -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with session.get(server.legacy_base_url(2) + "getCollectionValues", headers=headers) as response:
        await response.read()
        return response.status


async def test_guest_token_with_any_password_then_v2_works(catalog: Catalog) -> None:
    async with serving(FakeNBIA(catalog)) as (server, session):
        status, body = await _token(
            session,
            server.token_url,
            username="nbia_guest",
            password="",
            client_id="NBIA",
            grant_type="password",
        )
        assert status == 200
        assert {"access_token", "expires_in", "refresh_token", "refresh_expires_in", "token_type"} <= set(
            body
        )
        assert body["token_type"] == "bearer" and body["expires_in"] == 7200
        assert await _v2(session, server, str(body["access_token"])) == 200
        assert server.stats().token_grants == 1


async def test_v2_without_header_is_the_null_500_and_bad_token_401(catalog: Catalog) -> None:
    async with serving(FakeNBIA(catalog)) as (server, session):
        status, _, body = await fetch(session, server.legacy_base_url(2) + "getCollectionValues")
        assert (status, body) == (500, b"Server was not able to process your request\nnull")
        assert len(body) == 48
        assert await _v2(session, server, "not-a-token") == 401


async def test_configured_users_and_bad_passwords(catalog: Catalog) -> None:
    async with serving(FakeNBIA(catalog, users={"alice": "s3cret"})) as (server, session):
        url = server.root_url + "nbia-api/services/oauth/token"
        ok, _ = await _token(session, url, username="alice", password="s3cret", grant_type="password")
        bad, body = await _token(session, url, username="alice", password="wrong", grant_type="password")
        assert (ok, bad, body["error"]) == (200, 401, "invalid_grant")


async def test_expired_token_is_401_and_refresh_issues_a_new_one(catalog: Catalog) -> None:
    async with serving(FakeNBIA(catalog, token_lifetime_s=0.3)) as (server, session):
        _, grant = await _token(session, server.token_url, username="nbia_guest", grant_type="password")
        assert await _v2(session, server, str(grant["access_token"])) == 200
        await asyncio.sleep(0.4)
        assert await _v2(session, server, str(grant["access_token"])) == 401
        status, renewed = await _token(
            session, server.token_url, grant_type="refresh_token", refresh_token=str(grant["refresh_token"])
        )
        assert status == 200 and renewed["access_token"] != grant["access_token"]
        assert await _v2(session, server, str(renewed["access_token"])) == 200
        reused, _ = await _token(
            session, server.token_url, grant_type="refresh_token", refresh_token=str(grant["refresh_token"])
        )
        assert reused == 400
        stats = server.stats()
        assert (stats.token_grants, stats.token_refreshes, stats.token_rejections) == (1, 1, 1)


async def test_expire_tokens_forces_401(catalog: Catalog) -> None:
    fake = FakeNBIA(catalog)
    async with serving(fake) as (server, session):
        _, grant = await _token(session, server.token_url, username="nbia_guest", grant_type="password")
        fake.expire_tokens()
        assert await _v2(session, server, str(grant["access_token"])) == 401


async def test_v1_uses_legacy_columns_and_texts(catalog: Catalog) -> None:
    async with serving(FakeNBIA(catalog)) as (server, session):
        entry = catalog.series[0]
        status, _, body = await fetch(
            session, server.legacy_base_url(1) + "getSeries", SeriesInstanceUID=entry.uid
        )
        row = json.loads(body)[0]
        assert status == 200 and "CollectionURI" in row and "TimeStamp" in row and "Authorized" not in row
        assert str(row["StudyDate"]).endswith(" 00:00:00.0")
        status, _, body = await fetch(
            session, server.legacy_base_url(1) + "getImage", SeriesInstanceUID="1.2.3"
        )
        assert (status, body.decode()) == (
            400,
            "Image with given SeriesInstanceUID,1.2.3, is not in public domain.",
        )
        status, _, body = await fetch(
            session, server.legacy_base_url(1) + "getSeriesSize", SeriesInstanceUID=entry.uid
        )
        assert json.loads(body) == [
            {"TotalSizeInBytes": entry.total_bytes, "ObjectCount": entry.instance_count}
        ]


async def test_legacy_off_serves_v4_only(catalog: Catalog) -> None:
    async with serving(FakeNBIA(catalog, legacy=False)) as (server, session):
        status, _, _ = await fetch(session, server.legacy_base_url(1) + "getCollectionValues")
        assert status == 500
        async with session.post(server.token_url, data={"grant_type": "password"}) as response:
            assert response.status == 500
