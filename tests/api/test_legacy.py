"""Legacy v1/v2 API: same methods, legacy columns, guest token flow, single-flight refresh."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping

import anyio
import pytest
from pydantic import SecretStr

from tcia_fetch.api.auth import TokenManager
from tcia_fetch.api.client import NBIAClient
from tcia_fetch.config import ClientSettings
from tcia_fetch.errors import InputError, UnauthorizedError
from tcia_fetch.testing import Catalog, FakeNBIA, RunningServer

pytestmark = pytest.mark.anyio


def _token_posts(server: RunningServer) -> list[dict[str, str]]:
    return [dict(r.form_items) for r in server.request_log if r.path.endswith("/oauth/token")]


def _v2(server: RunningServer, **extra: object) -> ClientSettings:
    return ClientSettings(base_url=server.legacy_base_url(2), token_url=server.token_url, **extra)


async def test_v1_needs_no_token_and_maps_legacy_columns(catalog: Catalog) -> None:
    entry = catalog.series[0]
    async with FakeNBIA(catalog).serve() as server, NBIAClient(base_url=server.legacy_base_url(1)) as client:
        assert client.api_version == "v1"
        [row] = await client.series(series_uid=entry.uid)
        size = await client.series_size(entry.uid)
        collections = await client.collections()
    assert row.series_uid == entry.uid and row.image_count == entry.instance_count
    assert row.data_description_uri is not None  # from CollectionURI on v1/v2
    assert "CollectionURI" in row.server_dict() and "DataDescriptionURI" not in row.server_dict()
    assert size is not None and size.total_size_bytes == entry.total_bytes
    assert entry.collection in collections
    assert all("Authorization" not in r.headers for r in server.request_log)


async def test_v2_guest_token_is_obtained_once_and_sent(catalog: Catalog) -> None:
    entry = catalog.series[0]
    async with FakeNBIA(catalog).serve() as server, NBIAClient(_v2(server)) as client:
        await client.collections()
        await client.series(collection=entry.collection)
        async with client.stream_image(entry.uid) as response:
            body = b"".join([chunk async for chunk in response])
    [grant] = _token_posts(server)
    assert grant == {"grant_type": "password", "username": "nbia_guest", "password": "", "client_id": "NBIA"}
    api_calls = [r for r in server.request_log if "/services/v2/" in r.path]
    assert len(api_calls) == 3
    assert all(r.headers.get("Authorization", "").startswith("Bearer ") for r in api_calls)
    assert api_calls[-1].endpoint == "getImageWithMD5Hash"  # legacy MD5 download
    assert "md5hashes.csv" in zipfile.ZipFile(io.BytesIO(body)).namelist()


async def test_eight_concurrent_401s_cause_exactly_one_refresh(catalog: Catalog) -> None:
    async with FakeNBIA(catalog).serve() as server, NBIAClient(_v2(server)) as client:
        await client.collections()
        server.fake.expire_tokens()
        results: list[int] = []

        async def call() -> None:
            results.append(len(await client.series()))

        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(call)
    assert len(results) == 8 and len(set(results)) == 1 and results[0] > 0
    grants = _token_posts(server)
    assert [g["grant_type"] for g in grants] == ["password", "refresh_token"]
    assert client.token_requests_made == 2
    statuses = [r.status for r in server.request_log if r.endpoint == "getSeries"]
    assert statuses.count(401) == 8 and statuses.count(200) == 8


async def test_token_refreshed_before_expiry_without_a_401(catalog: Catalog) -> None:
    now = [1000.0]
    async with FakeNBIA(catalog).serve() as server, NBIAClient(_v2(server), clock=lambda: now[0]) as client:
        await client.collections()
        now[0] += 7200  # past the token's expires_in (minus the safety margin)
        await client.collections()
    assert [g["grant_type"] for g in _token_posts(server)] == ["password", "refresh_token"]
    assert all(r.status == 200 for r in server.request_log)


async def test_second_401_is_unauthorized_and_tokens_never_leak(catalog: Catalog) -> None:
    async with FakeNBIA(catalog, token_lifetime_s=0.0).serve() as server, NBIAClient(_v2(server)) as client:
        with pytest.raises(UnauthorizedError) as caught:
            await client.collections()
        with pytest.raises(UnauthorizedError):
            async with client.stream_image(catalog.series[0].uid):
                pass
        text = f"{caught.value} {caught.value!r} {caught.value.body_excerpt} {client!r}"
    tokens = {
        r.headers["Authorization"].split()[-1] for r in server.request_log if "Authorization" in r.headers
    }
    assert tokens
    assert not any(token in text for token in tokens)
    assert caught.value.fatal


async def test_wrong_password_is_unauthorized_without_echoing_it(catalog: Catalog) -> None:
    async with FakeNBIA(catalog, users={"alice": "right-pw"}).serve() as server:
        settings = _v2(server, username="alice", password=SecretStr("wrong-pw-123"))
        async with NBIAClient(settings) as client:
            with pytest.raises(UnauthorizedError) as caught:
                await client.collections()
            good = _v2(server, username="alice", password=SecretStr("right-pw"))
        async with NBIAClient(good) as client:
            assert await client.collections()
    assert "wrong-pw-123" not in str(caught.value) and "wrong-pw-123" not in repr(settings)


async def test_v4_only_endpoints_refused_on_legacy(catalog: Catalog) -> None:
    async with FakeNBIA(catalog).serve() as server, NBIAClient(base_url=server.legacy_base_url(1)) as client:
        with pytest.raises(InputError, match="v4"):
            await client.collection_counts()
        with pytest.raises(InputError, match="v4"):
            await client.series_metadata(["1.2.3"])
        with pytest.raises(InputError):
            async with client.stream_image(catalog.series[0].uid, new_file_names=True):
                pass
    assert server.request_log == []


async def test_token_manager_single_flight_in_memory() -> None:
    posts: list[Mapping[str, str]] = []

    async def post(url: str, form: Mapping[str, str]) -> bytes:
        posts.append(form)
        await anyio.sleep(0.05)
        return b'{"access_token": "tok-%d", "expires_in": 300, "refresh_token": "r"}' % len(posts)

    manager = TokenManager(post, token_url="http://x/token", username="nbia_guest", password=SecretStr(""))
    token, generation = await manager.current()
    seen: list[str] = []

    async def refresh() -> None:
        seen.append((await manager.refresh(generation))[0])

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(refresh)
    assert token == "tok-1"
    assert seen == ["tok-2"] * 8
    assert len(posts) == 2 and posts[1]["grant_type"] == "refresh_token"
    assert "tok-" not in repr(manager)
