"""The HTTP transport: the only module of the client that imports aiohttp.

One :class:`Transport` wraps one ``aiohttp.ClientSession``. What a caller may rely on:

* TLS is always verified; there is no switch to turn it off.
* Every request sends ``Accept: */*`` and ``User-Agent: tcia-fetch/<version>``; proxies
  from the environment are honoured (``trust_env``).
* Timeouts are separate values, never one total: ``connect_timeout_s`` (TCP+TLS),
  ``first_byte_timeout_s`` (until the response headers), ``stall_timeout_s`` (no bytes at
  all while reading a streamed body → :class:`StallError`; a slow live stream is fine) and
  ``query_timeout_s`` (a whole small query). A download has no total deadline: aiohttp's
  default 5-minute total would kill large series.
* Every aiohttp exception is translated to the most specific tcia-fetch error inside
  :func:`map_aiohttp_errors`, ``raise … from exc``; none escapes this module.
* An error status becomes the matching :class:`~tcia_fetch.errors.HTTPStatusError`
  (see :mod:`tcia_fetch.api.status`) with a body excerpt and the redacted URL.
* Streaming bodies are read in chunks of at most ``chunk_size_bytes`` (256 KiB by default, never
  below 64 KiB) and never held whole in memory; aiohttp's own buffer per connection is bounded.

Streams (downloads) and small requests (queries) queue on separate semaphores, each acquired
before the header deadline starts, so time spent queueing for a connection never counts as a
slow server. The connection pool holds exactly ``max_connections + query_connections``: every
download slot has its own connection, and queries (planner metadata, size refreshes) have a
few of their own, so neither can starve the other and nothing below the caller's download
concurrency silently caps it.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlencode

import aiohttp
import anyio

from tcia_fetch.api.status import error_for_status
from tcia_fetch.config import default_user_agent
from tcia_fetch.errors import (
    ConnectError,
    InputError,
    NameResolutionError,
    RemoteProtocolError,
    RequestTimeoutError,
    StallError,
    TciaFetchError,
    TLSError,
    TransportError,
    redact_url,
)

__all__ = [
    "MAX_CHUNK_SIZE_BYTES",
    "MIN_CHUNK_SIZE_BYTES",
    "QUERY_CONNECTIONS",
    "BufferedResponse",
    "StreamingResponse",
    "Transport",
    "map_aiohttp_errors",
]

MIN_CHUNK_SIZE_BYTES = 64 * 1024
#: The default read size of a streamed body (a run picks less when many streams share memory).
MAX_CHUNK_SIZE_BYTES = 256 * 1024
#: Connections reserved for small requests (planner metadata, size refreshes) on top of the
#: download slots: enough for the planner's few concurrent queries, never taken by a stream.
QUERY_CONNECTIONS = 4
_ERROR_BODY_READ_BYTES = 4096
_READ_BUFFER_BYTES = 64 * 1024

Phase = Literal["request", "body"]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def map_aiohttp_errors(
    *, url: str, series_uid: str | None = None, phase: Phase = "request"
) -> Iterator[None]:
    """Translate aiohttp (and timeout/socket) exceptions raised inside the block.

    ``phase`` says whether the failure happened before the response headers ("request")
    or while reading a body ("body"): a timeout while reading is a stall, a reset while
    reading is a cut stream rather than a failed connection. Errors of our own pass
    through untouched.
    """

    def make(kind: type[TransportError], message: str) -> TransportError:
        return kind(message, url=url, series_uid=series_uid)

    reading = phase == "body"
    try:
        yield
    except TciaFetchError:
        raise
    except aiohttp.ClientConnectorDNSError as exc:
        raise make(NameResolutionError, f"cannot resolve host ({_describe(exc)})") from exc
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
        raise make(TLSError, f"TLS verification failed ({_describe(exc)})") from exc
    except aiohttp.ServerFingerprintMismatch as exc:
        raise make(TLSError, f"TLS certificate mismatch ({_describe(exc)})") from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise make(RequestTimeoutError, "timed out connecting") from exc
    except aiohttp.ServerTimeoutError as exc:
        if reading:
            raise make(StallError, "no bytes received within the stall timeout") from exc
        raise make(RequestTimeoutError, "timed out waiting for the response") from exc
    except aiohttp.ClientConnectorError as exc:
        raise make(ConnectError, f"cannot connect ({_describe(exc)})") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise make(RemoteProtocolError, f"connection cut by the server ({_describe(exc)})") from exc
    except aiohttp.InvalidURL as exc:
        raise InputError(f"invalid URL {redact_url(str(exc.url))}") from exc
    except aiohttp.ClientResponseError as exc:
        raise make(RemoteProtocolError, f"malformed HTTP response ({exc.message})") from exc
    except (aiohttp.ClientOSError, aiohttp.ClientConnectionResetError, aiohttp.ServerConnectionError) as exc:
        if reading:
            raise make(RemoteProtocolError, f"connection lost while reading ({_describe(exc)})") from exc
        raise make(ConnectError, f"connection failed ({_describe(exc)})") from exc
    except aiohttp.ClientError as exc:
        raise make(TransportError, f"HTTP client error ({_describe(exc)})") from exc
    except ssl.CertificateError as exc:
        raise make(TLSError, f"TLS verification failed ({_describe(exc)})") from exc
    except TimeoutError as exc:
        if reading:
            raise make(StallError, "no bytes received within the stall timeout") from exc
        raise make(RequestTimeoutError, "timed out waiting for the response") from exc
    except OSError as exc:
        if reading:
            raise make(RemoteProtocolError, f"connection lost while reading ({_describe(exc)})") from exc
        raise make(ConnectError, f"connection failed ({_describe(exc)})") from exc


@dataclass(frozen=True)
class BufferedResponse:
    """A successful small response read whole (queries). ``url`` is redacted."""

    status: int
    headers: Mapping[str, str]
    url: str
    body: bytes

    @property
    def content_type(self) -> str | None:
        """The ``Content-Type`` header, or None."""
        return self.headers.get("Content-Type")


class StreamingResponse:
    """A successful response whose body is read chunk by chunk: ``async for chunk in resp``.

    The response is its own async iterator (no async generator to finalise). Each read
    waits at most ``stall_timeout_s`` for *some* bytes; a gap longer than that raises
    :class:`StallError`. A cut body raises :class:`RemoteProtocolError`. Iterate once; the
    owning context manager releases the connection.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        url: str,
        series_uid: str | None,
        chunk_size_bytes: int,
        stall_timeout_s: float,
    ) -> None:
        self._response = response
        self._series_uid = series_uid
        self._chunk_size_bytes = chunk_size_bytes
        self._stall_timeout_s = stall_timeout_s
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers
        self.url: str = redact_url(url)
        self.bytes_received = 0

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        with map_aiohttp_errors(url=self.url, series_uid=self._series_uid, phase="body"):
            with anyio.fail_after(self._stall_timeout_s):
                chunk = await self._response.content.read(self._chunk_size_bytes)
        if not chunk:
            raise StopAsyncIteration
        self.bytes_received += len(chunk)
        return chunk

    @property
    def finished(self) -> bool:
        """True once the whole body has been read."""
        return self._response.content.at_eof()


class Transport:
    """One aiohttp session with tcia-fetch's timeouts, headers and error mapping.

    Use as an async context manager (or call :meth:`aclose`). Not safe to share between
    event loops; safe to share between tasks.
    """

    def __init__(
        self,
        *,
        max_connections: int = 8,
        query_connections: int = QUERY_CONNECTIONS,
        connect_timeout_s: float = 30.0,
        first_byte_timeout_s: float = 120.0,
        stall_timeout_s: float = 120.0,
        query_timeout_s: float = 300.0,
        user_agent: str | None = None,
        chunk_size_bytes: int = MAX_CHUNK_SIZE_BYTES,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if query_connections < 1:
            raise ValueError("query_connections must be at least 1")
        for name, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("first_byte_timeout_s", first_byte_timeout_s),
            ("stall_timeout_s", stall_timeout_s),
            ("query_timeout_s", query_timeout_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive")
        self._max_connections = max_connections
        self._query_connections = query_connections
        self._connect_timeout_s = connect_timeout_s
        self._first_byte_timeout_s = first_byte_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._query_timeout_s = query_timeout_s
        self._chunk_size_bytes = max(chunk_size_bytes, MIN_CHUNK_SIZE_BYTES)
        self._user_agent = user_agent or default_user_agent()
        self._session: aiohttp.ClientSession | None = None
        self._slots = anyio.Semaphore(max_connections)
        self._query_slots = anyio.Semaphore(query_connections)

    @property
    def pool_size(self) -> int:
        """Connections the pool may hold at once: one per stream slot plus the query headroom."""
        return self._max_connections + self._query_connections

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=self.pool_size, ssl=True)
            # total=None: no whole-request deadline (downloads can take hours). Header and
            # stall deadlines are enforced around each await instead.
            timeout = aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=self._connect_timeout_s, sock_read=None
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # aiohttp stops reading a socket once about twice this much is buffered: with 64
                # streams, its own buffers stay a few MiB (the engine budgets everything past them).
                read_bufsize=_READ_BUFFER_BYTES,
                timeout=timeout,
                headers={"Accept": "*/*", "User-Agent": self._user_agent},
                trust_env=True,
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session and its connections. Idempotent."""
        if self._session is not None:
            session, self._session = self._session, None
            with anyio.CancelScope(shield=True):
                await session.close()

    @staticmethod
    def _display_url(url: str, params: Mapping[str, str] | None) -> str:
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        return redact_url(url)

    async def _start(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None,
        form: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        display_url: str,
        series_uid: str | None,
    ) -> aiohttp.ClientResponse:
        session = self._open()
        with map_aiohttp_errors(url=display_url, series_uid=series_uid, phase="request"):
            with anyio.fail_after(self._connect_timeout_s + self._first_byte_timeout_s):
                return await session.request(
                    method, url, params=params, data=form, headers=headers, allow_redirects=True
                )

    async def _raise_for_status(
        self, response: aiohttp.ClientResponse, *, display_url: str, series_uid: str | None
    ) -> None:
        if response.status < 400:
            return
        body = bytearray()
        try:
            with map_aiohttp_errors(url=display_url, series_uid=series_uid, phase="body"):
                with anyio.fail_after(self._stall_timeout_s):
                    while len(body) < _ERROR_BODY_READ_BYTES:
                        piece = await response.content.read(_ERROR_BODY_READ_BYTES - len(body))
                        if not piece:
                            break
                        body += piece
        except TransportError:
            pass  # the status is the news; a half-read error body still gives an excerpt
        error = error_for_status(
            response.status,
            body_text=bytes(body).decode("utf-8", errors="replace"),
            headers=response.headers,
            url=display_url,
            series_uid=series_uid,
            now=dt.datetime.now(dt.UTC),
        )
        if error is not None:
            raise error

    async def request(
        self,
        method: Literal["GET", "POST"],
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        series_uid: str | None = None,
    ) -> BufferedResponse:
        """Perform a small request and read the whole body within ``query_timeout_s``.

        ``form`` is sent ``application/x-www-form-urlencoded``. Raises a
        :class:`~tcia_fetch.errors.TransportError` subclass or an HTTP status error.
        """
        display_url = self._display_url(url, params)
        async with self._query_slots:
            with map_aiohttp_errors(url=display_url, series_uid=series_uid, phase="request"):
                with anyio.fail_after(self._query_timeout_s):
                    response = await self._start(
                        method,
                        url,
                        params=params,
                        form=form,
                        headers=headers,
                        display_url=display_url,
                        series_uid=series_uid,
                    )
                    try:
                        await self._raise_for_status(response, display_url=display_url, series_uid=series_uid)
                        with map_aiohttp_errors(url=display_url, series_uid=series_uid, phase="body"):
                            body = await response.read()
                    finally:
                        response.release()
        return BufferedResponse(status=response.status, headers=response.headers, url=display_url, body=body)

    @asynccontextmanager
    async def stream(
        self,
        method: Literal["GET", "POST"],
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        series_uid: str | None = None,
    ) -> AsyncIterator[StreamingResponse]:
        """Open a streamed response; the body is read by iterating the yielded object.

        The header deadline applies to opening; afterwards only the stall timeout does.
        The connection is released (or closed, when the body was not read to the end)
        on exit, even on cancellation.
        """
        display_url = self._display_url(url, params)
        async with self._slots:
            response = await self._start(
                method,
                url,
                params=params,
                form=None,
                headers=headers,
                display_url=display_url,
                series_uid=series_uid,
            )
            try:
                await self._raise_for_status(response, display_url=display_url, series_uid=series_uid)
                yield StreamingResponse(
                    response,
                    url=display_url,
                    series_uid=series_uid,
                    chunk_size_bytes=self._chunk_size_bytes,
                    stall_timeout_s=self._stall_timeout_s,
                )
            finally:
                if response.content.at_eof():
                    response.release()
                else:
                    response.close()
