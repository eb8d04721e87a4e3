"""Redirect policy (issue 14 items 6 and 7): bad Locations, other origins, the token POST."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.config import ClientSettings
from tcia_fetch.errors import InputError, RedirectError, RedirectRefusedError, UnauthorizedError
from tcia_fetch.testing import Catalog, FakeNBIA, FaultKind, FaultPlan, FaultRule
from tcia_fetch.testing._recorder import RecordingListener

pytestmark = pytest.mark.anyio

_PASSWORD = "pw-that-must-not-travel"


async def _drain(client: NBIAClient, uid: str) -> int:
    total = 0
    async with client.stream_image(uid) as response:
        async for chunk in response:
            total += len(chunk)
    return total


async def test_malformed_location_is_a_series_failure_not_bad_input(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    plan = FaultPlan(rules=[FaultRule(FaultKind.REDIRECT, series_uid=uid, times=1, location="http://[::1")])
    async with (
        FakeNBIA(catalog, faults=plan).serve() as server,
        NBIAClient(base_url=server.base_url) as client,
    ):
        with pytest.raises(RedirectError) as caught:
            await _drain(client, uid)
        assert await _drain(client, uid) > 0  # the next request (one firing) works: the client is fine
    error = caught.value
    assert not isinstance(error, InputError)
    assert not error.fatal and error.series_uid == uid and error.reference == "bad-redirect"
    assert "malformed Location" in error.message


async def test_cross_origin_download_redirect_is_refused_by_default(catalog: Catalog) -> None:
    uid = catalog.series[0].uid
    with RecordingListener() as other:
        plan = FaultPlan(rules=[FaultRule(FaultKind.REDIRECT, times=None, location=other.url + "/x.zip")])
        async with FakeNBIA(catalog, faults=plan).serve() as server:
            async with NBIAClient(base_url=server.base_url) as client:
                with pytest.raises(RedirectRefusedError) as caught:
                    await _drain(client, uid)
            assert not other.requests
            # A lab behind a CDN may allow it; then the request goes there.
            allowed = ClientSettings(base_url=server.base_url, cross_origin_redirects=True)
            async with NBIAClient(allowed) as client:
                await _drain(client, uid)
    assert "another origin" in caught.value.message and not caught.value.retryable
    assert [request.method for request in other.requests] == ["GET"]
    assert "Authorization" not in other.requests[0].headers


async def test_same_origin_redirect_is_followed() -> None:
    async def old(request: web.Request) -> web.Response:
        del request
        raise web.HTTPFound("/nbia-api/services/v4/moved/getCollectionValues")

    async def moved(request: web.Request) -> web.Response:
        del request
        return web.json_response([{"Collection": "MOVED"}])

    app = web.Application()
    app.router.add_get("/nbia-api/services/v4/getCollectionValues", old)
    app.router.add_get("/nbia-api/services/v4/moved/getCollectionValues", moved)
    async with TestServer(app) as server:
        base = str(server.make_url("/nbia-api/services/v4/"))
        async with NBIAClient(base_url=base) as client:
            assert list(await client.collections()) == ["MOVED"]


async def test_token_post_never_follows_a_redirect_and_no_credential_leaves(catalog: Catalog) -> None:
    with RecordingListener() as other:
        plan = FaultPlan(
            rules=[
                FaultRule(FaultKind.TOKEN_REDIRECT, times=None, location=other.url + "/nbia-api/oauth/token")
            ]
        )
        fake = FakeNBIA(catalog, faults=plan, users={"reader": _PASSWORD})
        async with fake.serve() as server:
            settings = ClientSettings(
                base_url=server.legacy_base_url(2), username="reader", password=SecretStr(_PASSWORD)
            )
            async with NBIAClient(settings) as client:
                with pytest.raises(UnauthorizedError) as caught:
                    await client.collections()
    assert other.requests == []
    message = str(caught.value)
    assert other.url.removeprefix("http://") in message and "redirect" in message
    assert _PASSWORD not in message and caught.value.fatal
    assert fake.tokens.grants == 0
