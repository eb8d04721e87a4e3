"""The aiohttp transport against tiny in-test servers: statuses, timeouts, cuts, DNS, TLS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tcia_fetch.errors import (
    ConnectError,
    HTTPStatusError,
    InvalidParameterError,
    NameResolutionError,
    RateLimitedError,
    RemoteProtocolError,
    RequestRejectedError,
    RequestTimeoutError,
    SeriesUnavailableError,
    ServerError,
    StallError,
    TciaFetchError,
    TLSError,
    UnauthorizedError,
)
from tcia_fetch.testing import self_signed_certificate
from tcia_fetch.transport import (
    MAX_CHUNK_SIZE_BYTES,
    MIN_CHUNK_SIZE_BYTES,
    QUERY_CONNECTIONS,
    StreamingResponse,
    Transport,
    _StreamBuffers,
    socket_buffers_for,
)

pytestmark = pytest.mark.anyio

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _json(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        [{"Collection": "A"}], headers={"X-Seen-Accept": request.headers.get("Accept", "")}
    )


async def _echo_headers(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        {"ua": request.headers.get("User-Agent"), "auth": request.headers.get("Authorization")}
    )


async def _form(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    return web.json_response({key: str(value) for key, value in form.items()})


def _status(status: int, body: str = "", headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=body, headers=headers)

    return handler


async def _big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    block = bytes(range(256)) * 256  # 64 KiB
    for _ in range(48):  # 3 MiB
        await response.write(block)
    await response.write_eof()
    return response


async def _slow_but_alive(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(8):
        await response.write(b"x" * 100)
        await asyncio.sleep(0.05)
    await response.write_eof()
    return response


async def _stall(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"x" * 1000)
    await asyncio.sleep(5)
    return response


async def _cut(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"PK" * 5000)
    assert request.transport is not None
    request.transport.close()
    return response


async def _short_content_length(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": "100000"})
    await response.prepare(request)
    await response.write(b"x" * 100)
    assert request.transport is not None
    request.transport.close()
    return response


async def _late_headers(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(0.3)
    return web.Response(text="late")


async def _slow_headers(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(5)
    return web.Response(text="late")


ROUTES: dict[str, Handler] = {
    "/json": _json,
    "/headers": _echo_headers,
    "/form": _form,
    "/429": _status(429, "slow down", {"Retry-After": "2"}),
    "/503": _status(
        503, "busy", {"Retry-After": "Thu, 01 Jan 2026 12:00:30 GMT", "Date": "Thu, 01 Jan 2026 12:00:00 GMT"}
    ),
    "/500": _status(500, "Server was not able to process your request\nnull"),
    "/401": _status(401),
    "/400-access": _status(
        400,
        "The user has not been granted the access to image with given SeriesInstanceUID,1.2.3. "
        "Please contact System Admin to resolve this issue.",
    ),
    "/400-param": _status(
        400, "Invalid query parameter: 'format'. Allowed parameters are: [SeriesInstanceUID]"
    ),
    "/404": _status(404, "nope"),
    "/big": _big,
    "/slow": _slow_but_alive,
    "/stall": _stall,
    "/cut": _cut,
    "/short": _short_content_length,
    "/slow-headers": _slow_headers,
    "/late-headers": _late_headers,
}


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    for path, handler in ROUTES.items():
        app.router.add_route("*", path, handler)
    test_server = TestServer(app, host="127.0.0.1")
    async with test_server:
        yield test_server


def _transport(**overrides: float) -> Transport:
    settings: dict[str, float] = {
        "connect_timeout_s": 2.0,
        "first_byte_timeout_s": 1.0,
        "stall_timeout_s": 0.5,
        "query_timeout_s": 3.0,
        **overrides,
    }
    return Transport(
        max_connections=4,
        connect_timeout_s=settings["connect_timeout_s"],
        first_byte_timeout_s=settings["first_byte_timeout_s"],
        stall_timeout_s=settings["stall_timeout_s"],
        query_timeout_s=settings["query_timeout_s"],
    )


async def test_query_reads_json_and_sends_default_headers(server: TestServer) -> None:
    async with _transport() as transport:
        response = await transport.request("GET", str(server.make_url("/json")), params={"a": "b"})
        echoed = await transport.request("GET", str(server.make_url("/headers")))
    assert response.status == 200
    assert response.body == b'[{"Collection": "A"}]'
    assert response.content_type is not None and response.content_type.startswith("application/json")
    assert response.headers["X-Seen-Accept"] == "*/*"
    assert response.url.endswith("/json?a=b")
    assert b'"ua": "tcia-fetch/' in echoed.body
    assert b'"auth": null' in echoed.body


async def test_the_fastest_recent_answer_is_kept_for_pacing(server: TestServer) -> None:
    async with _transport() as transport:
        assert transport.fastest_answer_s is None
        await transport.request("GET", str(server.make_url("/late-headers")))
        late = transport.fastest_answer_s
        assert late is not None and late >= 0.3
        await transport.request("GET", str(server.make_url("/json")))
        fast = transport.fastest_answer_s
        assert fast is not None and fast < late
        for _ in range(32):  # the window moves on: a late answer alone is what remains
            await transport.request("GET", str(server.make_url("/late-headers")))
        assert transport.fastest_answer_s is not None and transport.fastest_answer_s >= 0.3


async def test_form_post(server: TestServer) -> None:
    async with _transport() as transport:
        response = await transport.request("POST", str(server.make_url("/form")), form={"list": "1.2,1.3"})
    assert response.body == b'{"list": "1.2,1.3"}'


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/429", RateLimitedError),
        ("/503", RateLimitedError),
        ("/500", ServerError),
        ("/401", UnauthorizedError),
        ("/400-access", SeriesUnavailableError),
        ("/400-param", InvalidParameterError),
        ("/404", RequestRejectedError),
    ],
)
async def test_error_statuses_map_to_classes(
    server: TestServer, path: str, kind: type[HTTPStatusError]
) -> None:
    url = str(server.make_url(path)).replace("http://", "http://user:pw@")
    async with _transport() as transport:
        with pytest.raises(kind) as caught:
            await transport.request("GET", url, params={"access_token": "sekrit"}, series_uid="1.2.3")
        with pytest.raises(kind):
            async with transport.stream("GET", url, series_uid="1.2.3"):
                pass
    error = caught.value
    assert type(error) is kind
    assert error.series_uid == "1.2.3"
    assert "pw" not in str(error) and "sekrit" not in str(error)
    assert error.url is not None and path in error.url


async def test_retry_after_seconds_and_http_date(server: TestServer) -> None:
    async with _transport() as transport:
        with pytest.raises(RateLimitedError) as seconds:
            await transport.request("GET", str(server.make_url("/429")))
        with pytest.raises(RateLimitedError) as http_date:
            await transport.request("GET", str(server.make_url("/503")))
    assert seconds.value.retry_after_s == 2.0
    assert seconds.value.body_excerpt == "slow down"
    assert http_date.value.retry_after_s == 30.0  # measured against the response's Date header


async def test_stream_reads_big_body_in_large_chunks(server: TestServer) -> None:
    async with _transport() as transport, transport.stream("GET", str(server.make_url("/big"))) as response:
        chunks = [chunk async for chunk in response]
        assert response.finished
    assert sum(len(chunk) for chunk in chunks) == 3 * 1024 * 1024
    assert max(len(chunk) for chunk in chunks) <= MAX_CHUNK_SIZE_BYTES  # the default read size
    assert MIN_CHUNK_SIZE_BYTES == 64 * 1024


def test_what_connections_buffer_outside_the_engine_budget_stays_small_at_any_pool_size() -> None:
    # a socket read waiting in aiohttp's buffer, plus up to twice its read buffer before it pauses
    for connections in range(1, 200):
        socket_read, buffer = socket_buffers_for(connections)
        assert 64 << 10 <= socket_read <= 256 << 10 and 16 << 10 <= buffer <= 64 << 10
        if connections <= 64 + 4:  # --concurrency 64 plus the query connections
            assert connections * (socket_read + 2 * buffer) <= 6.5 * 2**20, connections
    assert socket_buffers_for(12) == (256 << 10, 64 << 10)  # a few streams keep asyncio's reads


@pytest.mark.parametrize("connections", [4, 68])
async def test_a_download_socket_reads_no_more_than_its_share(server: TestServer, connections: int) -> None:
    # Through asyncio's private ``max_size``: if a Python release renamed it, the bound would
    # silently vanish (the mem64 benchmark's peak would rise ~5 MB); this test would say so.
    async with (
        Transport(max_connections=connections) as transport,
        transport.stream("GET", str(server.make_url("/big"))) as response,
    ):
        connection = response._response.connection
        assert connection is not None and connection.transport is not None
        assert connection.transport.max_size == socket_buffers_for(transport.pool_size)[0]  # type: ignore[attr-defined]
        assert sum([len(chunk) async for chunk in response]) == 3 * 1024 * 1024


def _socket_read_size(response: StreamingResponse) -> int:
    connection = response._response.connection
    assert connection is not None and connection.transport is not None
    size: int = connection.transport.max_size  # type: ignore[attr-defined]
    return size


def test_download_reads_are_sized_from_the_downloads_open_lately() -> None:
    # A run starts as if every slot streamed; a share grows only once fewer were open for a whole
    # window (cap24 at -j 64: 24 open, 23 % fewer system calls), and shrinks as soon as more open.
    buffers = _StreamBuffers(64, QUERY_CONNECTIONS)

    def share(streams: int) -> int:
        return socket_buffers_for(streams + QUERY_CONNECTIONS)[0]

    assert buffers.current == share(64)
    for _ in range(24):
        buffers.opened(now=0.0)
    buffers.closed(now=0.5)
    assert buffers.current == share(64)  # the first window still counts every slot
    buffers.closed(now=1.5)  # a window ended with at most 24 open
    assert buffers.current == share(24) > share(64)
    for _ in range(40):
        buffers.opened(now=1.6)
    assert buffers.current == share(62) < share(24)  # more open: smaller at once
    for _ in range(60):
        buffers.closed(now=2.0)
    assert buffers.current == share(62)  # the peak of this window
    buffers.closed(now=2.7)
    assert buffers.current == share(62)  # ... and of the one before it
    buffers.closed(now=9.0)  # long idle: the windows in between saw what is open now
    assert buffers.current == share(1)


async def test_an_open_download_applies_a_changed_share_at_its_next_read(server: TestServer) -> None:
    url = str(server.make_url("/big"))
    crowded = socket_buffers_for(64 + QUERY_CONNECTIONS)[0]
    alone = socket_buffers_for(2 + QUERY_CONNECTIONS)[0]
    assert alone > crowded
    async with Transport(max_connections=64) as transport, contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(transport.stream("GET", url))
        body = len(await anext(first))
        assert _socket_read_size(first) == crowded  # as if every slot streamed
        await anyio.sleep(1.1)
        await stack.enter_async_context(transport.stream("GET", url))  # a window with one open
        body += len(await anext(first))
        assert _socket_read_size(first) == alone
        for _ in range(62):
            await stack.enter_async_context(transport.stream("GET", url))
        body += len(await anext(first))
        assert _socket_read_size(first) == crowded
        body += sum([len(chunk) async for chunk in first])
    assert body == 3 * 1024 * 1024


@pytest.mark.parametrize("connections", [4, 68])
async def test_waiting_for_a_read_never_grows_what_aiohttp_buffers(
    server: TestServer, connections: int
) -> None:
    # aiohttp raises a connection's buffer to the size of any larger read(n) it is asked for and
    # keeps it raised: waiting with the engine's read size let each of 64 connections hold ~200 KB
    # outside the byte budget (mem64 over TLS). The buffer must stay the transport's own choice.
    async with (
        Transport(max_connections=connections) as transport,
        transport.stream("GET", str(server.make_url("/big"))) as response,
    ):
        buffer = socket_buffers_for(transport.pool_size)[1]
        content = response._response.content
        body = 0
        async for chunk in response:
            body += len(chunk)
            assert content.get_read_buffer_limits() == (buffer, 2 * buffer)
    assert body == 3 * 1024 * 1024


TLS_READS = """
import anyio, ssl, sys
from tcia_fetch.testing import Catalog, FakeNBIA
from tcia_fetch.transport import Transport, socket_buffers_for

async def main():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    catalog = Catalog.generate(seed=1, collections=1, patients_per_collection=1, series_per_study=1,
                               instances_per_series=(3, 3), instance_bytes=(400_000, 400_000))
    params = {"SeriesInstanceUID": catalog.series[0].uid}
    async with FakeNBIA(catalog).serve(ssl_context=context) as server:
        assert server.base_url.startswith("https://")
        for connections in (4, 68):
            async with Transport(max_connections=connections) as transport, transport.stream(
                "GET", server.base_url + "getImage", params=params
            ) as response:
                protocol = response._response.connection.transport._ssl_protocol
                body = sum([len(chunk) async for chunk in response])
                share = socket_buffers_for(transport.pool_size)[0]
                print(connections, len(protocol._ssl_buffer), share, body, protocol._incoming_high_water)

anyio.run(main)
"""


def test_a_tls_connection_keeps_buffers_of_its_share_only(tmp_path: Path) -> None:
    # In a child: the certificate is trusted through SSL_CERT_FILE, read when aiohttp is imported.
    # Reaches into asyncio's private SSL buffers, as the transport does: if a Python release
    # renamed them, the bound would silently vanish (mem64 over TLS: 151 MB instead of ~102 MB).
    cert, key = self_signed_certificate(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", TLS_READS, str(cert), str(key)],
        env={**os.environ, "SSL_CERT_FILE": str(cert)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split() for line in done.stdout.splitlines()]
    rows = {int(row[0]): [int(value) for value in row[1:]] for row in lines}
    few_buffer, few_share, few_body, few_pending = rows[4]
    many_buffer, many_share, many_body, many_pending = rows[68]
    assert few_share == 256 * 1024 and few_buffer == 256 * 1024  # asyncio's own size, untouched
    assert few_pending == 256 * 1024  # asyncio's own limit, untouched
    assert many_share == 64 * 1024 and many_buffer == many_share
    assert many_pending == 16 * 1024  # stops reading at a quarter of its share, undecrypted
    assert few_body == many_body > 400_000  # the whole zip (its DICOM deflates)


async def test_slow_live_stream_is_not_a_stall(server: TestServer) -> None:
    async with (
        _transport(stall_timeout_s=0.5) as transport,
        transport.stream("GET", str(server.make_url("/slow"))) as response,
    ):
        body = b"".join([chunk async for chunk in response])
    assert body == b"x" * 800


async def test_no_bytes_for_stall_timeout_is_stall_error(server: TestServer) -> None:
    async with _transport(stall_timeout_s=0.3) as transport:
        with pytest.raises(StallError):
            async with transport.stream("GET", str(server.make_url("/stall")), series_uid="1.2") as response:
                async for _ in response:
                    pass


@pytest.mark.parametrize("path", ["/cut", "/short"])
async def test_cut_body_is_remote_protocol_error(server: TestServer, path: str) -> None:
    async with _transport() as transport:
        with pytest.raises(RemoteProtocolError):
            async with transport.stream("GET", str(server.make_url(path))) as response:
                async for _ in response:
                    pass


async def test_slow_headers_is_request_timeout(server: TestServer) -> None:
    async with _transport(first_byte_timeout_s=0.3, connect_timeout_s=0.2) as transport:
        with pytest.raises(RequestTimeoutError):
            await transport.request("GET", str(server.make_url("/slow-headers")))
        with pytest.raises(RequestTimeoutError):
            async with transport.stream("GET", str(server.make_url("/slow-headers"))):
                pass


async def test_query_timeout_bounds_a_whole_query(server: TestServer) -> None:
    async with _transport(first_byte_timeout_s=10, query_timeout_s=0.3) as transport:
        with pytest.raises(RequestTimeoutError):
            await transport.request("GET", str(server.make_url("/slow-headers")))


async def test_download_has_no_total_timeout(server: TestServer) -> None:
    # The slow stream takes ~0.4 s; a query deadline shorter than that must not apply to streams.
    async with (
        _transport(query_timeout_s=0.1, stall_timeout_s=1.0) as transport,
        transport.stream("GET", str(server.make_url("/slow"))) as response,
    ):
        body = b"".join([chunk async for chunk in response])
    assert len(body) == 800


async def test_connection_refused_is_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with _transport() as transport:
        with pytest.raises(ConnectError) as caught:
            await transport.request("GET", f"http://127.0.0.1:{port}/x")
    assert not isinstance(caught.value, NameResolutionError)


async def test_unresolvable_host_is_name_resolution_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with _transport(connect_timeout_s=5) as transport:
        with pytest.raises(NameResolutionError):
            await transport.request("GET", "http://tcia-fetch-test.invalid/x")


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_untrusted_certificate_is_tls_error(self_signed: ssl.SSLContext) -> None:
    app = web.Application()
    app.router.add_get("/json", _json)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self_signed)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with _transport() as transport:
            with pytest.raises(TLSError) as caught:
                await transport.request("GET", f"https://127.0.0.1:{port}/json")
        assert caught.value.fatal and not caught.value.retryable
    finally:
        await runner.cleanup()


async def test_no_aiohttp_exception_ever_escapes(server: TestServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    urls = [str(server.make_url(path)) for path in ROUTES] + [
        f"http://127.0.0.1:{closed_port}/",
        "http://[::1",
    ]
    async with _transport(stall_timeout_s=0.2, first_byte_timeout_s=0.3, query_timeout_s=0.5) as transport:
        for url in urls:
            for mode in ("request", "stream"):
                try:
                    if mode == "request":
                        await transport.request("GET", url)
                    else:
                        async with transport.stream("GET", url) as response:
                            async for _ in response:
                                pass
                except TciaFetchError as exc:
                    assert not isinstance(exc, aiohttp.ClientError)
                    chain = exc.__cause__
                    assert chain is None or not isinstance(chain, TciaFetchError) or chain is exc
                except Exception as exc:  # pragma: no cover - the assertion below explains
                    pytest.fail(f"{url} ({mode}) leaked {type(exc).__module__}.{type(exc).__name__}: {exc}")


async def test_cancellation_closes_the_stream(server: TestServer) -> None:
    async with _transport(stall_timeout_s=10) as transport:
        with anyio.move_on_after(0.3) as scope:
            async with transport.stream("GET", str(server.make_url("/stall"))) as response:
                async for _ in response:
                    pass
        assert scope.cancelled_caught
        # the pool is usable again afterwards
        response2 = await transport.request("GET", str(server.make_url("/json")))
    assert response2.status == 200


async def test_connection_limit_caps_requests_in_flight() -> None:
    in_flight = 0
    peak = 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.1)
            return web.Response(body=b"ok")
        finally:
            in_flight -= 1

    app = web.Application()
    app.router.add_get("/slow", slow)
    test_server = TestServer(app, host="127.0.0.1")
    async with (
        test_server,
        Transport(
            max_connections=5, query_connections=2, connect_timeout_s=0.05, first_byte_timeout_s=0.15
        ) as transport,
    ):
        url = str(test_server.make_url("/slow"))
        async with anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(transport.request, "GET", url)
    # the last requests queue ~0.2 s for a slot, longer than the 0.2 s header deadline: queueing
    # for a connection must not count as a slow server
    assert peak == 2


async def test_streams_fill_every_slot_and_queries_still_get_through() -> None:
    gate = asyncio.Event()
    all_busy = asyncio.Event()
    streaming = 0
    peak = 0

    async def held(request: web.Request) -> web.StreamResponse:
        nonlocal streaming, peak
        streaming += 1
        peak = max(peak, streaming)
        if peak == 12:
            all_busy.set()
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"x")
        await gate.wait()
        await response.write_eof()
        streaming -= 1
        return response

    async def query(request: web.Request) -> web.Response:
        return web.Response(body=b"[]")

    app = web.Application()
    app.router.add_get("/held", held)
    app.router.add_get("/query", query)
    test_server = TestServer(app, host="127.0.0.1")
    answered: list[bytes] = []

    async def one_stream(transport: Transport) -> None:
        async with transport.stream("GET", str(test_server.make_url("/held"))) as response:
            async for _ in response:
                pass

    async with test_server, Transport(max_connections=12, query_connections=1) as transport:
        assert transport.pool_size == 13
        async with anyio.create_task_group() as group:
            for _ in range(16):
                group.start_soon(one_stream, transport)
            with anyio.fail_after(5):
                await all_busy.wait()
                # every download slot is busy: a query still has a connection of its own
                answered.append((await transport.request("GET", str(test_server.make_url("/query")))).body)
            await anyio.sleep(0.1)
            assert peak == 12  # all 12 stream slots in use, never more
            gate.set()
    assert answered == [b"[]"]


async def _forward_proxy(request: web.Request) -> web.StreamResponse:
    """A forward proxy that answers for every origin itself: what it was asked, and by whom."""
    return web.json_response(
        {"url": str(request.url), "proxy_auth": request.headers.get("Proxy-Authorization")}
    )


@pytest.fixture
async def forward_proxy() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _forward_proxy)
    test_server = TestServer(app, host="127.0.0.1")
    async with test_server:
        yield test_server


def _basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


def _clear_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for scheme in ("http", "https", "all", "no"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)


async def test_the_environment_proxy_carries_every_request_and_no_proxy_bypasses_it(
    forward_proxy: TestServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear_proxy_environment(monkeypatch)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))
    monkeypatch.setenv("http_proxy", f"http://squid:pw@127.0.0.1:{forward_proxy.port}")
    async with _transport() as transport:
        answers = [
            await transport.request("GET", f"http://tcia-fetch-test.invalid/v4/getSeries?n={n}")
            for n in range(3)
        ]
    for n, answer in enumerate(answers):
        seen = json.loads(answer.body)
        # Only the proxy could answer for a host that does not resolve.
        assert seen["url"] == f"http://tcia-fetch-test.invalid/v4/getSeries?n={n}"
        assert seen["proxy_auth"] == _basic("squid", "pw")
    monkeypatch.setenv("no_proxy", "tcia-fetch-test.invalid")
    async with _transport(connect_timeout_s=5) as transport:
        with pytest.raises(NameResolutionError):
            await transport.request("GET", "http://tcia-fetch-test.invalid/x")


async def test_netrc_credentials_never_reach_the_server(
    server: TestServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # aiohttp's trust_env would send them; the v4 API needs none, and tcia-fetch's own
    # credentials come from its settings alone (a v2 bearer token still goes out).
    _clear_proxy_environment(monkeypatch)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cret\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    async with _transport() as transport:
        plain = await transport.request("GET", str(server.make_url("/headers")))
        bearer = await transport.request(
            "GET", str(server.make_url("/headers")), headers={"Authorization": "Bearer t0ken"}
        )
    assert json.loads(plain.body)["auth"] is None
    assert json.loads(bearer.body)["auth"] == "Bearer t0ken"
