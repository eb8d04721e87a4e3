"""Hostile query bodies of the fake NBIA (issue 14): decompression bombs and endless bodies.

Both are produced cheaply while they stream: a bomb repeats one precomputed deflate block of a
zero-filled MiB (about 1 kB: 1 MB on the wire per GiB, like the issue's bomb), an endless body
repeats one block of rows. Either stops as soon as the client hangs up, so a client that gives
up early costs the server almost nothing. :func:`hostile_body_guard` wraps a query endpoint so
that a QUERY_BOMB or ENDLESS_BODY rule naming it answers instead.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import zlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from tcia_fetch.testing._faults import FaultKind, FaultRule
from tcia_fetch.testing._state import COMPLETED_KEY, ServerState

__all__ = ["hostile_body_guard"]

_Endpoint = Callable[[ServerState, int, web.Request], Awaitable[web.StreamResponse]]
_MIB = 2**20
_ZEROS = bytes(_MIB)
_CSV_ENDPOINTS = frozenset({"getSeriesMetadata"})


def _bomb_blocks() -> tuple[bytes, bytes]:
    """(gzip header + the first zero MiB, the deflate block of one more zero MiB).

    After a full flush the compressor forgets its history, so every further MiB of zeros deflates
    to the same ~1 kB: a GiB bomb costs the server one compression, not 1024.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = compressor.compress(_ZEROS) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(_ZEROS) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head, block


_GZIP_HEAD, _GZIP_BLOCK = _bomb_blocks()
#: A final empty fixed-Huffman block: ends the deflate stream (the gzip trailer follows).
_FINAL_BLOCK = b"\x03\x00"


@functools.cache
def _zeros_crc(mib: int) -> int:
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(_ZEROS, crc)
    return crc


async def _send_all(
    request: web.Request, response: web.StreamResponse, pieces: Callable[[], bytes | None]
) -> None:
    await response.prepare(request)
    try:
        while (piece := pieces()) is not None:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client hung up")
            if piece:
                await response.write(piece)
        await response.write_eof()
    except (ConnectionResetError, ConnectionError, RuntimeError):
        request[COMPLETED_KEY] = False  # the client hung up: exactly what it should do


async def _bomb(request: web.Request, endpoint: str, rule: FaultRule) -> web.StreamResponse:
    total_mib = max(1, rule.param_int("inflated_bytes") // _MIB)
    gzip = (rule.param_text("encoding") or "gzip").lower() == "gzip"
    response = web.StreamResponse(status=200)
    response.content_type = "text/csv" if endpoint in _CSV_ENDPOINTS else "application/json"
    if gzip:
        response.headers["Content-Encoding"] = "gzip"
    response.enable_chunked_encoding()
    # The trailer's CRC-32 of every zero (a valid gzip to the end), off the event loop, once per size.
    crc = await asyncio.to_thread(_zeros_crc, total_mib) if gzip else 0
    sent = 0

    def next_piece() -> bytes | None:
        nonlocal sent
        if sent > total_mib:
            return None
        sent += 1
        if sent > total_mib:  # the end: the gzip trailer
            return _FINAL_BLOCK + struct.pack("<II", crc, (total_mib * _MIB) & 0xFFFFFFFF) if gzip else b""
        if gzip:
            return _GZIP_HEAD if sent == 1 else _GZIP_BLOCK
        return _ZEROS

    await _send_all(request, response, next_piece)
    return response


def _endless_block(endpoint: str) -> tuple[bytes, bytes]:
    """(the body's start, one block of rows repeated forever)."""
    if endpoint in _CSV_ENDPOINTS:
        header = b'"Series UID","Collection"\r\n'
        row = b'"1.2.3.4","ENDLESS"\r\n'
        return header, row * 4096
    row = b'{"Collection":"ENDLESS","Modality":"CT","SeriesInstanceUID":"1.2.3.4"},'
    return b"[", row * 1024


async def _endless(request: web.Request, endpoint: str) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    response.content_type = "text/csv" if endpoint in _CSV_ENDPOINTS else "application/json"
    response.enable_chunked_encoding()
    start, block = _endless_block(endpoint)
    first = [start]

    def next_piece() -> bytes | None:
        return first.pop() if first else block

    await _send_all(request, response, next_piece)
    return response


def hostile_body_guard(endpoint: str, function: _Endpoint) -> _Endpoint:
    """Wrap query ``endpoint`` so that a QUERY_BOMB or ENDLESS_BODY rule naming it answers."""

    async def guarded(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
        rule = state.faults.body_fault(endpoint)
        if rule is None:
            return await function(state, generation, request)
        if rule.kind is FaultKind.QUERY_BOMB:
            return await _bomb(request, endpoint, rule)
        return await _endless(request, endpoint)

    guarded.__doc__ = function.__doc__
    guarded.__name__ = getattr(function, "__name__", endpoint)
    return guarded
