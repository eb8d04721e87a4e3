"""NBIAClient error mapping and parsing quirks: fault injection, NLST routing, odd bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.api.models import rejected_rows
from tcia_fetch.config import ClientSettings
from tcia_fetch.errors import (
    InvalidParameterError,
    RateLimitedError,
    RemoteProtocolError,
    ResponseFormatError,
    ServerError,
    StallError,
    TciaFetchError,
)
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule

pytestmark = pytest.mark.anyio


async def _drain(client: NBIAClient, uid: str) -> int:
    total = 0
    async with client.stream_image(uid) as response:
        async for chunk in response:
            total += len(chunk)
    return total


@pytest.mark.parametrize(
    ("rule", "kind"),
    [
        ({"kind": FaultKind.RATE_LIMIT, "retry_after": "2"}, RateLimitedError),
        ({"kind": FaultKind.UNAVAILABLE, "retry_after": "5"}, RateLimitedError),
        ({"kind": FaultKind.SERVER_ERROR}, ServerError),
        ({"kind": FaultKind.CUT, "after_bytes": 2000}, RemoteProtocolError),
        ({"kind": FaultKind.STALL, "after_bytes": 500, "stall_s": 3.0}, StallError),
    ],
)
async def test_download_faults_map_to_error_classes(
    catalog: Catalog, rule: dict[str, object], kind: type[TciaFetchError]
) -> None:
    entry = catalog.series[0]
    rule = dict(rule)
    kind_value = rule.pop("kind")
    assert isinstance(kind_value, FaultKind)
    plan = FaultPlan(rules=[FaultRule(kind_value, series_uid=entry.uid, times=1, **rule)])
    settings = ClientSettings(stall_timeout_s=0.5)
    async with (
        FakeNBIA(catalog, faults=plan).serve() as server,
        NBIAClient(settings, base_url=server.base_url) as client,
    ):
        with pytest.raises(kind) as caught:
            await _drain(client, entry.uid)
        # the fault fired once; the next attempt (the engine's job) succeeds
        assert await _drain(client, entry.uid) > 0
    error = caught.value
    assert error.series_uid == entry.uid
    if isinstance(error, RateLimitedError):
        assert error.retry_after_s == float(str(rule["retry_after"]))


async def test_nlst_goes_to_the_nlst_server(catalog: Catalog) -> None:
    nlst_catalog = Catalog.generate(seed=11)
    nlst_entry = nlst_catalog.series[0]
    async with FakeNBIA(catalog).serve() as main, FakeNBIA(nlst_catalog).serve() as nlst:
        settings = ClientSettings(base_url=main.base_url, nlst_base_url=nlst.base_url)
        async with NBIAClient(settings) as client:
            await client.series(collection="nlst")
            size = await client.series_size(nlst_entry.uid, collection="NLST")
            await _drain_nlst(client, nlst_entry.uid)
            await client.collections()
    assert size is not None and size.total_size_bytes == nlst_entry.total_bytes
    assert [r.endpoint for r in nlst.request_log] == ["getSeries", "getSeriesSize", "getImage"]
    assert [r.endpoint for r in main.request_log] == ["getCollectionValues"]


async def _drain_nlst(client: NBIAClient, uid: str) -> None:
    async with client.stream_image(uid, collection="NLST") as response:
        async for _ in response:
            pass


# --- quirks the fake does not produce on its own: a tiny server with hand-written bodies --------

BODIES: dict[str, tuple[int, str, bytes]] = {
    "getBodyPartValues": (
        200,
        "application/json",
        b'[{}, {"BodyPartExamined": "CHEST"}, {"BodyPartExamined": ["x"]}]',
    ),
    "getSeriesSize": (
        200,
        "application/json",
        b'{"TotalSizeInBytes": "26405888.000000", "ObjectCount": "50"}',
    ),
    "getCollectionValues": (200, "text/html", b"<html><body>Down for maintenance</body></html>"),
    "getModalityValues": (200, "application/json", b"   \n"),
    "getManufacturerValues": (200, "application/json", b'[{"Manufacturer": "GE"'),
    "getSeries": (200, "application/json", b'[{"SeriesInstanceUID": "1.2.3", "FileSize": -5}]'),
    "getPatient": (
        400,
        "application/json",
        b"Invalid query parameter: 'format'. Allowed parameters are: [x]",
    ),
    "getSeriesMetadata": (
        200,
        "text/csv",
        b'"SeriesInstanceUID","SeriesDescription","ImageCount","FileSize"\n'
        b'"1.2.3","a ""quoted"", multi\nline","2","10"\n',
    ),
}


@pytest.fixture
async def quirk_server() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        status, content_type, body = BODIES[request.match_info["name"]]
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/nbia-api/services/v4/{name}", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/nbia-api/services/v4/"))


async def test_non_text_values_in_a_value_list_are_refused(quirk_server: str) -> None:
    async with NBIAClient(base_url=quirk_server) as client:
        with pytest.raises(ResponseFormatError, match="BodyPartExamined"):
            await client.body_parts()


async def test_single_object_with_numeric_strings(quirk_server: str) -> None:
    async with NBIAClient(base_url=quirk_server) as client:
        size = await client.series_size("1.2.3")
    assert size is not None and (size.total_size_bytes, size.object_count) == (26405888, 50)


async def test_whitespace_body_is_no_rows(quirk_server: str) -> None:
    async with NBIAClient(base_url=quirk_server) as client:
        assert await client.modalities() == []


@pytest.mark.parametrize("method", ["collections", "manufacturers"])
async def test_html_truncated_json_and_impossible_values_are_format_errors(
    quirk_server: str, method: str
) -> None:
    async with NBIAClient(base_url=quirk_server) as client:
        with pytest.raises(ResponseFormatError) as caught:
            await getattr(client, method)()
    assert caught.value.retryable


async def test_a_series_row_with_an_impossible_value_is_set_aside_not_fatal(quirk_server: str) -> None:
    """Issue 14: one bad row fails its own series (the planner reports it), not the whole answer."""
    async with NBIAClient(base_url=quirk_server) as client:
        rows = await client.series()
    assert list(rows) == []
    [rejected] = rejected_rows(rows)
    assert rejected.uid_text == "1.2.3" and "FileSize" in rejected.reason


async def test_invalid_parameter_answer(quirk_server: str) -> None:
    async with NBIAClient(base_url=quirk_server) as client:
        with pytest.raises(InvalidParameterError):
            await client.patients()


async def test_quoted_csv_metadata(quirk_server: str) -> None:
    async with NBIAClient(base_url=quirk_server) as client:
        [row] = await client.series_metadata(["1.2.3"])
    assert row.series_description == 'a "quoted", multi\nline'
    assert (row.image_count, row.file_size) == (2, 10)


async def test_value_list_with_empty_object_rows() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'[{}, {"BodyPartExamined": "CHEST"}]', content_type="application/json")

    app = web.Application()
    app.router.add_get("/nbia-api/services/v4/getBodyPartValues", handler)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        NBIAClient(base_url=str(server.make_url("/nbia-api/services/v4/"))) as client,
    ):
        values = await client.body_parts()
    assert list(values) == [None, "CHEST"]
    assert values.rows == [{}, {"BodyPartExamined": "CHEST"}]
