"""The HTTP transport: the only module of the client that imports aiohttp.

One :class:`Transport` wraps one ``aiohttp.ClientSession``. What a caller may rely on:

* TLS is always verified; there is no switch to turn it off.
* Every request sends ``Accept: */*`` and ``User-Agent: tcia-fetch/<version>``; proxies
  from the environment (``HTTP(S)_PROXY``, ``NO_PROXY``, proxy credentials in the proxy URL or
  in ``~/.netrc``) are honoured as aiohttp's ``trust_env`` honours them, but looked up once per
  origin (:class:`_EnvironmentRoutes`) instead of on every request. ``~/.netrc`` never supplies
  credentials for the server itself: they come only from tcia-fetch's own settings.
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
* Every body is bounded whatever it claims or contains (issue 14). aiohttp's own inflating is
  off: :class:`~tcia_fetch.bodylimit.BodyDecoder` inflates gzip/deflate in bounded pieces,
  counts decoded bytes and refuses a decompression bomb (ratio past ``max_compression_ratio``).
  A small answer read whole stops at ``max_body_bytes``; a large answer read as a stream
  (:meth:`Transport.stream_query`) at ``max_streamed_body_bytes``. Either raises
  :class:`~tcia_fetch.errors.BodyTooLargeError` naming the endpoint and the limit.
* Redirects are followed here, not by aiohttp, so each hop is checked: a malformed or missing
  ``Location`` is the server's fault (:class:`~tcia_fetch.errors.RedirectError`, per series,
  never an input error); https->http is always refused, another origin is refused unless
  ``cross_origin_redirects`` allows it (then without the Authorization header), and a body is
  never re-sent to another origin. Credential requests (the token POST) follow no redirect.

Streams (downloads) and small requests (queries) queue on separate semaphores, each acquired
before the header deadline starts, so time spent queueing for a connection never counts as a
slow server. The connection pool holds exactly ``max_connections + query_connections``: every
download slot has its own connection, and queries (planner metadata, size refreshes) have a
few of their own, so neither can starve the other and nothing below the caller's download
concurrency silently caps it.
"""

from __future__ import annotations

import datetime as dt
import math
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp
import aiohttp.helpers
import anyio
import anyio.to_thread
import yarl

from tcia_fetch.api.status import error_for_status
from tcia_fetch.bodylimit import ACCEPT_ENCODING, BodyDecoder
from tcia_fetch.config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_COMPRESSION_RATIO,
    DEFAULT_MAX_STREAMED_BODY_BYTES,
    default_user_agent,
)
from tcia_fetch.errors import (
    ConnectError,
    InputError,
    NameResolutionError,
    RedirectError,
    RedirectRefusedError,
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
    "QueryBody",
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
#: What all connections together may hold outside the engine's byte budget: each socket read
#: (one bytes object) plus what aiohttp buffers before it pauses the socket. Split per connection
#: by :func:`socket_buffers_for`.
_UNBUDGETED_BYTES = 4 << 20
_MIN_SOCKET_READ_BYTES = 64 << 10
#: asyncio's own recv() size for a socket transport.
_MAX_SOCKET_READ_BYTES = 256 << 10
#: Download connections are sized from the most open over the last one to two of these.
_STREAM_COUNT_WINDOW_S = 1.0
#: How many recent answers :attr:`Transport.fastest_answer_s` looks back over.
_ANSWER_WINDOW = 32
#: The least undecrypted bytes a TLS connection may hold before it stops reading (one record).
_MIN_TLS_PENDING_BYTES = 16 << 10
#: Raw bytes per read of a query body (decoded pieces are bounded by the decoder).
_QUERY_READ_BYTES = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
_MAX_LOCATION_CHARS = 8192

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


def _endpoint_name(url: str) -> str:
    """The last path segment (``getSeries``): how messages name the body that broke a bound."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return "response"
    return path.rstrip("/").rsplit("/", 1)[-1] or "response"


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


class _DecodedBody:
    """A response body read raw from aiohttp and decoded by a :class:`BodyDecoder`.

    Each read waits at most ``stall_timeout_s`` for some bytes (and never past ``deadline``,
    a value of :func:`anyio.current_time`); one raw read may decode into several pieces, which
    are handed out one at a time. No cancel scope spans a yield: the object is its own iterator.
    ``url`` is the request's display URL, already redacted (:meth:`Transport._display_url`).

    A read that must wait asks aiohttp for at most ``buffer_bytes``, the connection's own read
    buffer: aiohttp (3.14 here) raises a connection's buffer to the size of any larger
    ``read(n)`` and keeps it raised, so waiting with ``read(read_bytes)`` let every connection hold
    two reads' worth outside the run's byte budget (mem64 over TLS: 212 KB per connection, 14 MB
    at 64 streams). Whatever else is buffered is taken by the next read, without waiting.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        url: str,
        series_uid: str | None,
        read_bytes: int,
        buffer_bytes: int,
        stall_timeout_s: float,
        decoder: BodyDecoder,
        deadline: float = math.inf,
    ) -> None:
        self._response = response
        self._series_uid = series_uid
        self._read_bytes = read_bytes
        self._wait_read_bytes = min(read_bytes, buffer_bytes)
        self._stall_timeout_s = stall_timeout_s
        self._decoder = decoder
        self._deadline = deadline
        self._pending: deque[bytes] = deque()
        self._ended = False
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers
        self.url: str = url
        #: Decoded bytes handed out so far.
        self.bytes_received = 0
        decoder.check_declared_length(_content_length(response.headers))

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            await self._fill()
        piece = self._pending.popleft()
        self.bytes_received += len(piece)
        return piece

    async def _fill(self) -> None:
        wait = self._stall_timeout_s
        if self._deadline != math.inf:
            remaining = self._deadline - anyio.current_time()
            if remaining <= 0:
                raise RequestTimeoutError(
                    "the answer took longer than the query timeout", url=self.url, series_uid=self._series_uid
                )
            wait = min(wait, remaining)
        content = self._response.content
        with map_aiohttp_errors(url=self.url, series_uid=self._series_uid, phase="body"):
            # Bytes aiohttp already holds are taken without a cancel scope: a timeout can only
            # fire while waiting, and a tiny series' whole body usually came with its headers
            # (one scope per read was a measurable share of the CPU per tiny series).
            raw = content.read_nowait(self._read_bytes)
            if not raw and not content.at_eof():
                with anyio.fail_after(wait):
                    raw = await content.read(self._wait_read_bytes)
        # A bound broken mid-body is the server's fault: name where it happened.
        try:
            if raw:
                self._pending.extend(self._decoder.feed(raw))
            else:
                self._ended = True
                self._pending.extend(self._decoder.finish())
        except TciaFetchError as exc:
            exc.url = exc.url or self.url
            exc.series_uid = exc.series_uid or self._series_uid
            raise

    @property
    def finished(self) -> bool:
        """True once the whole body has been read and handed out."""
        return self._response.content.at_eof() and not self._pending


def socket_buffers_for(connections: int) -> tuple[int, int]:
    """(largest socket read, aiohttp's read buffer) for a pool of ``connections``.

    Each recv() becomes one bytes object that waits in aiohttp's buffer until the engine takes
    it, and aiohttp pauses a socket only once it holds about twice its read buffer: at 64 streams
    asyncio's 256 KiB reads and a 64 KiB buffer could hold 24 MB outside the engine's budget. So
    the connections share :data:`_UNBUDGETED_BYTES`: a few connections keep asyncio's large reads
    (fewer system calls on a fast link), 64 read 64 KiB at a time with a 16 KiB buffer (measured
    on the mem64 benchmark: the downloader's peak ~5 MB lower, ~1 MB with either bound alone).
    """
    share = _UNBUDGETED_BYTES // max(1, connections)
    socket_read = max(_MIN_SOCKET_READ_BYTES, min(_MAX_SOCKET_READ_BYTES, share))
    return socket_read, max(16 << 10, min(64 << 10, socket_read // 4))


class _StreamBuffers:
    """The buffers of download connections, sized from how many downloads were open lately.

    :func:`socket_buffers_for` splits :data:`_UNBUDGETED_BYTES` between connections. Sized from
    the pool, a run with ``--concurrency 64`` against a server that admits 24 read 64 KiB at a
    time on each of its 24 connections where 146 KiB keeps the same bound: cap24 made ~30 % more
    system calls, and used ~0.5 CPU-seconds more in 10, than with the share of the downloads open.

    So the share follows the most downloads open over the last one to two seconds, plus the query
    connections. A run starts as if every slot were open: sized from the downloads open, the first
    connections of a ramp kept asyncio's 256 KiB reads until the next read, and mem64 over TLS
    peaked ~5 MB higher. When more downloads open, every open one applies the smaller share at its
    next read (:meth:`StreamingResponse._fill`), so the bound holds whatever the limiter does, bar
    the one read each connection already made. aiohttp's read buffer stays sized from the pool
    (growing it with the socket reads cost mem64 over TLS a few MB more, and saved no system call:
    a connection pauses after each read either way), and a TLS connection's buffers only ever
    shrink (:func:`_bound_socket_reads`).
    """

    __slots__ = ("_bucket_peak", "_bucket_start", "_open", "_previous_peak", "_query_connections", "current")

    def __init__(self, download_connections: int, query_connections: int) -> None:
        self._query_connections = query_connections
        self._open = 0
        self._bucket_start: float | None = None
        self._bucket_peak = 0
        self._previous_peak = download_connections
        #: The largest socket read of a download connection now.
        self.current = socket_buffers_for(download_connections + query_connections)[0]

    def opened(self, now: float) -> None:
        self._open += 1
        self._resize(now)

    def closed(self, now: float) -> None:
        self._open -= 1
        self._resize(now)

    def _resize(self, now: float) -> None:
        if self._bucket_start is None:
            self._bucket_start = now
        elif now >= self._bucket_start + _STREAM_COUNT_WINDOW_S:
            recent = now < self._bucket_start + 2 * _STREAM_COUNT_WINDOW_S
            self._previous_peak = self._bucket_peak if recent else self._open
            self._bucket_start, self._bucket_peak = now, self._open
        self._bucket_peak = max(self._bucket_peak, self._open)
        streams = max(1, self._previous_peak, self._bucket_peak)
        self.current = socket_buffers_for(streams + self._query_connections)[0]


def _bound_socket_reads(response: aiohttp.ClientResponse, read_bytes: int) -> None:
    """Make the connection read at most ``read_bytes`` at a time, plain or TLS.

    asyncio's selector transport reads ``self.max_size`` per recv() (CPython 3.4-3.13). Over TLS
    (every real TCIA connection) asyncio's SSL layer keeps more per connection: a 256 KiB receive
    buffer, up to 256 KiB of encrypted bytes before it stops reading the socket, and each read of
    decrypted bytes joined into one object; measured on mem64 over TLS, 151 MB at 64 streams
    against 95 MB over plain HTTP. So its receive buffer is replaced by one of ``read_bytes``, and
    it stops reading the socket once it holds a quarter of that undecrypted (the transport's
    ``set_read_buffer_limits``): a paused connection holds one read plus that quarter, not two
    reads (mem64 over TLS: ~2 MB less, no more CPU; halving the reads too saved ~4 MB but cost
    ~1 CPU-second in 9). The buffer's attributes are private and checked before use: on any other
    implementation (uvloop's, a later CPython's) the connection is left as it is, and
    tests/api/test_transport.py says when that happens here.
    Called between reads, on the loop: no read is using the old buffer.
    """
    connection = response.connection
    transport = None if connection is None else connection.transport
    if transport is None:
        return
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = read_bytes  # type: ignore[attr-defined]
        return
    set_limits = getattr(transport, "set_read_buffer_limits", None)
    protocol = getattr(transport, "_ssl_protocol", None)
    buffer = getattr(protocol, "_ssl_buffer", None)
    if set_limits is None or not isinstance(buffer, bytearray) or len(buffer) <= read_bytes:
        return
    set_limits(high=max(_MIN_TLS_PENDING_BYTES, read_bytes // 4))
    protocol.max_size = read_bytes  # type: ignore[union-attr]
    protocol._ssl_buffer = bytearray(read_bytes)  # type: ignore[union-attr]
    protocol._ssl_buffer_view = memoryview(protocol._ssl_buffer)  # type: ignore[union-attr]


class StreamingResponse(_DecodedBody):
    """A successful response whose body is read chunk by chunk: ``async for chunk in resp``.

    The response is its own async iterator (no async generator to finalise). Each read
    waits at most ``stall_timeout_s`` for *some* bytes; a gap longer than that raises
    :class:`StallError`. A cut body raises :class:`RemoteProtocolError`. Iterate once; the
    owning context manager releases the connection. A ``Content-Encoding`` is decoded in
    bounded pieces (a compression bomb raises :class:`BodyTooLargeError`); the archive's
    own size bound is the extractor's business.
    """

    _buffers: _StreamBuffers | None = None
    _socket_read_bytes = 0

    def follow(self, buffers: _StreamBuffers) -> None:
        """Bound the connection's socket reads to ``buffers``' share, now and whenever it changes."""
        self._buffers = buffers
        self._socket_read_bytes = buffers.current
        _bound_socket_reads(self._response, self._socket_read_bytes)

    async def _fill(self) -> None:
        # Between reads, on the loop: no read is using the connection's buffers.
        if self._buffers is not None and self._buffers.current != self._socket_read_bytes:
            self._socket_read_bytes = self._buffers.current
            _bound_socket_reads(self._response, self._socket_read_bytes)
        await super()._fill()


class QueryBody(_DecodedBody):
    """A query answer read as a stream: decoded pieces, ``async for piece in body``.

    The whole answer must arrive within ``query_timeout_s`` and stay below
    ``max_streamed_body_bytes`` decoded (else :class:`BodyTooLargeError`); the caller parses
    the pieces as they come (:mod:`tcia_fetch.api.rowstream`).
    """

    @property
    def content_type(self) -> str | None:
        """The ``Content-Type`` header, or None."""
        return self.headers.get("Content-Type")


def _origin(parts: tuple[str, str | None, int | None]) -> str:
    scheme, host, port = parts
    return f"{scheme}://{host}:{port}"


def _origin_of(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower() or None, port


def _redirect_target(current: str, location: str | None, *, status: int) -> str:
    """The absolute URL a redirect points to; the server's fault (RedirectError) when unusable."""
    if not location or not location.strip():
        raise RedirectError(f"HTTP {status} redirect without a Location header")
    if len(location) > _MAX_LOCATION_CHARS:
        raise RedirectError(f"HTTP {status} redirect with a {len(location)}-character Location")
    try:
        target = urljoin(current, location.strip())
        parts = urlsplit(target)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise RedirectError(f"HTTP {status} redirect to a malformed Location {location[:80]!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise RedirectError(f"HTTP {status} redirect to a Location that is not http(s): {location[:80]!r}")
    return target


@dataclass(frozen=True, slots=True)
class _Route:
    """What the environment says about requests to one origin."""

    proxy: yarl.URL | None
    #: Headers of a CONNECT to the proxy (https): its ``Proxy-Authorization``, if any.
    proxy_headers: Mapping[str, str] | None
    #: Headers added to each request: through a proxy to plain http (no CONNECT: the request
    #: itself goes to the proxy), its ``Proxy-Authorization``.
    headers: Mapping[str, str]


_DIRECT = _Route(None, None, {})


class _EnvironmentRoutes:
    """Proxy settings from the environment, looked up once per origin.

    aiohttp's ``trust_env`` looks them up again for every request, and ``~/.netrc`` too: two
    thread hand-offs, two scans of the whole environment and two parses of .netrc per request,
    which cost a tiny series more CPU than its download. The environment of a run does not
    change, so each origin's answer is kept. The rules are aiohttp's own (its helper decides):
    ``NO_PROXY``, ``http_proxy``/``https_proxy``, proxy credentials in the proxy URL or .netrc.
    Unlike ``trust_env``, .netrc credentials for the server itself are not sent: the v4 API
    needs none, and the legacy API's come from tcia-fetch's settings alone.
    """

    def __init__(self) -> None:
        self._known: dict[tuple[str, str | None, int | None], _Route] = {}

    def known(self, url: str) -> _Route | None:
        """The route of ``url``'s origin when it was looked up already (or cannot be)."""
        try:
            return self._known.get(_origin_of(url))
        except ValueError:
            return _DIRECT  # not a URL: the request itself fails and says why

    def look_up(self, url: str) -> _Route:
        """Read the environment for ``url``'s origin (blocking, .netrc: call from a thread)."""
        try:
            parsed = yarl.URL(url)
            origin = _origin_of(url)
        except ValueError:
            return _DIRECT
        try:
            proxy, proxy_auth = aiohttp.helpers.get_env_proxy_for_url(parsed)
        except LookupError:
            proxy, proxy_auth = None, None
        headers: dict[str, str] = {}
        proxy_headers = None
        if proxy_auth is not None:
            if parsed.scheme == "https":
                proxy_headers = {"Proxy-Authorization": proxy_auth.encode()}
            else:
                headers["Proxy-Authorization"] = proxy_auth.encode()
        route = _Route(proxy, proxy_headers, headers)
        self._known[origin] = route
        return route


class Transport:
    """One aiohttp session with tcia-fetch's timeouts, headers, bounds and error mapping.

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
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_streamed_body_bytes: int = DEFAULT_MAX_STREAMED_BODY_BYTES,
        max_compression_ratio: float = DEFAULT_MAX_COMPRESSION_RATIO,
        cross_origin_redirects: bool = False,
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
            ("max_body_bytes", max_body_bytes),
            ("max_streamed_body_bytes", max_streamed_body_bytes),
            ("max_compression_ratio", max_compression_ratio),
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
        self._max_body_bytes = max_body_bytes
        self._max_streamed_body_bytes = max_streamed_body_bytes
        self._max_compression_ratio = max_compression_ratio
        self._cross_origin_redirects = cross_origin_redirects
        self._user_agent = user_agent or default_user_agent()
        self._session: aiohttp.ClientSession | None = None
        # aiohttp's buffer, for every response: the pool's share, as if every slot streamed.
        self._read_buffer_bytes = socket_buffers_for(self.pool_size)[1]
        self._stream_buffers = _StreamBuffers(max_connections, query_connections)
        self._slots = anyio.Semaphore(max_connections)
        self._query_slots = anyio.Semaphore(query_connections)
        self._routes = _EnvironmentRoutes()
        self._answer_times: deque[float] = deque(maxlen=_ANSWER_WINDOW)

    @property
    def pool_size(self) -> int:
        """Connections the pool may hold at once: one per stream slot plus the query headroom."""
        return self._max_connections + self._query_connections

    @property
    def fastest_answer_s(self) -> float | None:
        """The shortest time from sending a request to its response headers, over the last 32
        answers of any status (None before the first).

        At least one round trip to the server: how soon a refusal of a new download can come
        back, which paces the adaptive limiter's ramp. Recent answers only, so one freak fast
        answer is forgotten.
        """
        return min(self._answer_times) if self._answer_times else None

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
                read_bufsize=self._read_buffer_bytes,
                timeout=timeout,
                headers={
                    "Accept": "*/*",
                    "User-Agent": self._user_agent,
                    "Accept-Encoding": ACCEPT_ENCODING,
                },
                # BodyDecoder inflates, counting every byte: aiohttp's own inflating is unbounded.
                auto_decompress=False,
                trust_env=False,  # the environment is read once per origin: _EnvironmentRoutes
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

    def _decoder(
        self, response: aiohttp.ClientResponse, *, url: str, limit: int | None, hint: str
    ) -> BodyDecoder:
        return BodyDecoder(
            response.headers.get("Content-Encoding"),
            limit=limit,
            max_ratio=self._max_compression_ratio,
            what=_endpoint_name(url),
            limit_hint=hint,
        )

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
        follow_redirects: bool = True,
    ) -> aiohttp.ClientResponse:
        session = self._open()
        sent_at = anyio.current_time()
        with map_aiohttp_errors(url=display_url, series_uid=series_uid, phase="request"):
            with anyio.fail_after(self._connect_timeout_s + self._first_byte_timeout_s):
                response = await self._send(session, method, url, params=params, form=form, headers=headers)
        self._answer_times.append(anyio.current_time() - sent_at)
        origin = _origin_of(str(response.url))
        hops = 0
        while response.status in _REDIRECT_STATUSES:
            status, here, location = response.status, str(response.url), response.headers.get("Location")
            response.close()
            try:
                target = _redirect_target(here, location, status=status)
                target_origin = _origin_of(target)
                if not follow_redirects:
                    raise RedirectRefusedError(
                        f"HTTP {status} redirect to {_origin(target_origin)} not followed: a request "
                        "carrying credentials is never re-sent after a redirect"
                    )
                if _origin_of(here)[0] == "https" and target_origin[0] != "https":
                    raise RedirectRefusedError(
                        f"HTTP {status} redirect from https to {redact_url(target)} refused"
                    )
                hops += 1
                if hops > _MAX_REDIRECTS:
                    raise RedirectError(f"more than {_MAX_REDIRECTS} redirects")
                if status == 303 or (status in (301, 302) and method == "POST"):
                    method, form = "GET", None
                if target_origin != origin:
                    if not self._cross_origin_redirects:
                        raise RedirectRefusedError(
                            f"HTTP {status} redirect to another origin ({_origin(target_origin)}) refused; "
                            "set cross_origin_redirects = true in [server] to follow it"
                        )
                    if form is not None:
                        raise RedirectRefusedError(
                            f"HTTP {status} redirect to {_origin(target_origin)} refused: a request body "
                            "is never re-sent to another origin"
                        )
                    headers = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
                hop_url = redact_url(target)
                try:
                    with map_aiohttp_errors(url=hop_url, series_uid=series_uid, phase="request"):
                        with anyio.fail_after(self._connect_timeout_s + self._first_byte_timeout_s):
                            response = await self._send(
                                session, method, target, params=None, form=form, headers=headers
                            )
                except (InputError, ValueError) as exc:
                    raise RedirectError(f"HTTP {status} redirect to an unusable URL ({exc})") from None
            except RedirectError as exc:
                exc.url = exc.url or display_url
                exc.series_uid = exc.series_uid or series_uid
                raise
        return response

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None,
        form: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> aiohttp.ClientResponse:
        """One request, without redirects, through the proxy the environment names."""
        route = self._routes.known(url)
        if route is None:
            route = await anyio.to_thread.run_sync(self._routes.look_up, url)
        if route.headers:
            headers = {**route.headers, **(headers or {})}
        return await session.request(
            method,
            url,
            params=params,
            data=form,
            headers=headers,
            allow_redirects=False,
            proxy=route.proxy,
            proxy_headers=route.proxy_headers,
        )

    async def _raise_for_status(
        self, response: aiohttp.ClientResponse, *, display_url: str, series_uid: str | None
    ) -> None:
        if response.status < 400:
            return
        body = bytearray()
        try:
            decoder = self._decoder(response, url=display_url, limit=None, hint="")
            with map_aiohttp_errors(url=display_url, series_uid=series_uid, phase="body"):
                with anyio.fail_after(self._stall_timeout_s):
                    while len(body) < _ERROR_BODY_READ_BYTES:
                        piece = await response.content.read(_ERROR_BODY_READ_BYTES - len(body))
                        if not piece:
                            break
                        for decoded in decoder.feed(piece):
                            body += decoded[: _ERROR_BODY_READ_BYTES - len(body)]
        except TciaFetchError:
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

    @staticmethod
    def _finish(response: aiohttp.ClientResponse) -> None:
        """Give the connection back when the body was read to its end; close it otherwise."""
        if response.content.at_eof():
            response.release()
        else:
            response.close()

    async def request(
        self,
        method: Literal["GET", "POST"],
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        series_uid: str | None = None,
        follow_redirects: bool = True,
    ) -> BufferedResponse:
        """Perform a small request and read the whole body within ``query_timeout_s``.

        ``form`` is sent ``application/x-www-form-urlencoded``. The body may not pass
        ``max_body_bytes`` decoded (:class:`BodyTooLargeError`). ``follow_redirects=False``
        (credential requests) turns any redirect into :class:`RedirectRefusedError`. Raises a
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
                        follow_redirects=follow_redirects,
                    )
                    try:
                        await self._raise_for_status(response, display_url=display_url, series_uid=series_uid)
                        reader = _DecodedBody(
                            response,
                            url=display_url,
                            series_uid=series_uid,
                            read_bytes=_QUERY_READ_BYTES,
                            buffer_bytes=self._read_buffer_bytes,
                            stall_timeout_s=self._query_timeout_s,
                            decoder=self._decoder(
                                response, url=display_url, limit=self._max_body_bytes, hint="max_body_bytes"
                            ),
                        )
                        body = bytearray()
                        async for piece in reader:
                            body += piece
                    finally:
                        self._finish(response)
        return BufferedResponse(
            status=response.status, headers=response.headers, url=display_url, body=bytes(body)
        )

    @asynccontextmanager
    async def stream_query(
        self,
        method: Literal["GET", "POST"],
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        series_uid: str | None = None,
        max_body_bytes: int | None = None,
    ) -> AsyncIterator[QueryBody]:
        """Open a query whose answer is read as a stream of decoded pieces.

        Uses a query connection (not a download slot). The whole answer must arrive within
        ``query_timeout_s``; it may not pass ``max_body_bytes`` (default:
        ``max_streamed_body_bytes``) decoded. The connection is released (or closed, when
        the body was not read to its end) on exit.
        """
        display_url = self._display_url(url, params)
        limit = max_body_bytes or self._max_streamed_body_bytes
        hint = "max_body_bytes" if max_body_bytes else "max_streamed_body_bytes"
        async with self._query_slots:
            deadline = anyio.current_time() + self._query_timeout_s
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
                with anyio.fail_after(max(deadline - anyio.current_time(), 0.001)):
                    await self._raise_for_status(response, display_url=display_url, series_uid=series_uid)
                yield QueryBody(
                    response,
                    url=display_url,
                    series_uid=series_uid,
                    read_bytes=_QUERY_READ_BYTES,
                    buffer_bytes=self._read_buffer_bytes,
                    stall_timeout_s=self._stall_timeout_s,
                    decoder=self._decoder(response, url=display_url, limit=limit, hint=hint),
                    deadline=deadline,
                )
            finally:
                self._finish(response)

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
            self._stream_buffers.opened(anyio.current_time())
            try:
                await self._raise_for_status(response, display_url=display_url, series_uid=series_uid)
                body = StreamingResponse(
                    response,
                    url=display_url,
                    series_uid=series_uid,
                    read_bytes=self._chunk_size_bytes,
                    buffer_bytes=self._read_buffer_bytes,
                    stall_timeout_s=self._stall_timeout_s,
                    decoder=self._decoder(response, url=display_url, limit=None, hint=""),
                )
                body.follow(self._stream_buffers)
                yield body
            finally:
                self._stream_buffers.closed(anyio.current_time())
                self._finish(response)
