"""Bounded query bodies (issue 14 item 1): bombs, endless bodies, ceilings, streamed rows."""

from __future__ import annotations

import gzip
import resource
from contextlib import aclosing

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.config import ClientSettings, load_client_settings
from tcia_fetch.errors import BodyTooLargeError, InputError
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule

pytestmark = pytest.mark.anyio

_MIB = 2**20


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_gzip_bomb_on_a_value_list_stops_early_and_names_endpoint_and_limit(catalog: Catalog) -> None:
    plan = FaultPlan(rules=[FaultRule(FaultKind.QUERY_BOMB, times=None, inflated_bytes=2**30)])
    before = _max_rss_mb()
    async with (
        FakeNBIA(catalog, faults=plan).serve() as server,
        NBIAClient(base_url=server.base_url) as client,
    ):
        with pytest.raises(BodyTooLargeError) as caught:
            await client.collections()
    message = str(caught.value)
    assert "getCollectionValues" in message and "200x" in message and "decompression bomb" in message
    assert not caught.value.retryable and not caught.value.fatal
    # A GiB inflated whole would move this process's high-water mark by a GiB; cut at ~4 MiB it cannot.
    assert _max_rss_mb() - before < 300


async def test_plain_body_past_the_small_ceiling_ends_there(catalog: Catalog) -> None:
    plan = FaultPlan(rules=[FaultRule(FaultKind.ENDLESS_BODY, times=None)])
    settings = ClientSettings(max_body_bytes=_MIB)
    async with (
        FakeNBIA(catalog, faults=plan).serve() as server,
        NBIAClient(settings, base_url=server.base_url) as c,
    ):
        with pytest.raises(BodyTooLargeError) as caught:
            await c.collections()
    assert "getCollectionValues" in str(caught.value)
    assert "1.0 MiB" in str(caught.value) and "max_body_bytes" in str(caught.value)


async def test_endless_body_on_a_streamed_endpoint_ends_at_the_streamed_ceiling(catalog: Catalog) -> None:
    plan = FaultPlan(rules=[FaultRule(FaultKind.ENDLESS_BODY, times=None, endpoint="getSeries")])
    settings = ClientSettings(max_streamed_body_bytes=8 * _MIB)
    rows = 0
    async with (
        FakeNBIA(catalog, faults=plan).serve() as server,
        NBIAClient(settings, base_url=server.base_url) as c,
    ):
        with pytest.raises(BodyTooLargeError) as caught:
            async with aclosing(c.iter_rows("getSeries", {})) as stream:
                async for _row in stream:
                    rows += 1
    assert "max_streamed_body_bytes" in str(caught.value) and "8.0 MiB" in str(caught.value)
    assert rows > 50_000  # rows were handed out while the body streamed, before the ceiling


async def test_plain_metadata_bomb_is_cut_at_one_row(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    rule = FaultRule(FaultKind.QUERY_BOMB, times=1, endpoint="getSeriesMetadata", encoding="identity")
    async with (
        FakeNBIA(catalog, faults=FaultPlan(rules=[rule])).serve() as server,
        NBIAClient(base_url=server.base_url) as client,
    ):
        with pytest.raises(BodyTooLargeError) as caught:
            await client.series_metadata([uid])
        assert [row.series_uid for row in await client.series_metadata([uid])] == [uid]  # one firing
    assert "getSeriesMetadata" in str(caught.value)
    assert server.stats().faults_fired.get("QUERY_BOMB") == 1


async def test_iter_series_streams_the_same_rows_as_the_list(catalog: Catalog) -> None:
    async with FakeNBIA(catalog).serve() as server, NBIAClient(base_url=server.base_url) as client:
        listed = await client.series()
        async with aclosing(client.iter_series()) as stream:
            streamed = [row async for row in stream]
        metadata = [row async for row in client.iter_series_metadata([entry.uid for entry in catalog.series])]
    assert streamed == listed and len(streamed) == len(catalog.series)
    assert sorted(row.series_uid for row in metadata) == sorted(entry.uid for entry in catalog.series)


async def _compressed_server(body: bytes, encoding: str) -> TestServer:
    async def handler(request: web.Request) -> web.Response:
        del request
        return web.Response(
            body=body, headers={"Content-Encoding": encoding, "Content-Type": "application/json"}
        )

    app = web.Application()
    app.router.add_get("/nbia-api/services/v4/getCollectionValues", handler)
    return TestServer(app)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_legitimate_compressed_answers_are_decoded(encoding: str) -> None:
    import zlib

    document = b'[{"Collection":"A"},{"Collection":"B"}]'
    body = gzip.compress(document) if encoding == "gzip" else zlib.compress(document)
    async with await _compressed_server(body, encoding) as server:
        base = str(server.make_url("/nbia-api/services/v4/"))
        async with NBIAClient(base_url=base) as client:
            assert list(await client.collections()) == ["A", "B"]


def test_limits_come_from_config_file_and_environment(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    config = tmp_path / "config.toml"
    config.write_text('[server]\nmax_body_bytes = "2MiB"\nmax_streamed_body_bytes = 100000000\n')
    settings = load_client_settings(base_url=None, config_file=config, env={})
    assert settings.max_body_bytes == 2 * _MIB and settings.max_streamed_body_bytes == 100_000_000
    assert settings.cross_origin_redirects is False
    env = {"TCIA_FETCH_MAX_STREAMED_BODY_BYTES": "1GiB", "TCIA_FETCH_CROSS_ORIGIN_REDIRECTS": "true"}
    settings = load_client_settings(base_url=None, config_file=config, env=env)
    assert settings.max_streamed_body_bytes == 2**30 and settings.cross_origin_redirects is True
    with pytest.raises(InputError, match="TCIA_FETCH_MAX_BODY_BYTES"):
        load_client_settings(base_url=None, config_file=None, env={"TCIA_FETCH_MAX_BODY_BYTES": "lots"})
