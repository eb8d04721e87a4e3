"""Download endpoints of the fake NBIA: getImage, getImageWithMD5Hash, getSingleImage.

Zips are built while they stream (reference/nbia-api.md §5.1-5.3): ``200``,
``application/octet-stream``, ``Content-Disposition: attachment; filename="<uid>.zip"``, chunked, no
Content-Length, Range ignored. Members are DEFLATE with data descriptors; ``LICENSE`` first (getImage
only), then the instances in database order as ``0000000N.dcm`` or, with ``NewFileNames=Yes``, in
InstanceNumber order as ``<acq>-<inst>.dcm``, then ``md5hashes.csv`` when asked for.

Each DICOM member is sent as a *stored* DEFLATE block holding the instance header (about 1 kB) followed
by the cached DEFLATE stream of the series' pixel variant, so serving costs a CRC-32 (and an MD5 when
the zip lists hashes) per instance, never a recompression; CRC/MD5 of large members run in a worker
thread. FLIP_BYTE flips a preamble byte inside that stored block, so the member inflates cleanly and
fails its CRC check, exactly what a corrupted transfer looks like to a verifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate

from aiohttp import web

from tcia_fetch.testing._catalog import InstanceFile, SeriesEntry
from tcia_fetch.testing._faults import FaultKind, FaultRule
from tcia_fetch.testing._formats import (
    MISSING_SINGLE_IMAGE,
    MISSING_UID_DOWNLOAD,
    NOT_GRANTED,
    NOT_PUBLIC_V1,
    SERVER_ERROR_NULL,
)
from tcia_fetch.testing._hostile_secrets import secrets_guard
from tcia_fetch.testing._load import Pacer, retry_after_header
from tcia_fetch.testing._state import COMPLETED_KEY, ServerState, check_allowed, text_response
from tcia_fetch.testing._zipwriter import ZipStreamWriter

__all__ = ["DOWNLOAD_ENDPOINTS", "MAINTENANCE_PAGE", "outage_guard"]

MAINTENANCE_PAGE = (
    "<!DOCTYPE html><html><head><title>Scheduled Maintenance</title></head><body>"
    "<h1>The Cancer Imaging Archive is undergoing scheduled maintenance</h1>"
    "<p>Please try again later.</p></body></html>"
)
_UNAVAILABLE_PAGE = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_BAD_GATEWAY_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_GATEWAY_TIMEOUT_PAGE = (
    "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    "<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
# Members at least this big get their CRC/MD5 computed in a worker thread.
_THREAD_THRESHOLD_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class _Member:
    stored_header: bytes
    pixel_deflated: bytes
    crc: int
    uncompressed_size: int
    md5: str | None

    @property
    def compressed_size(self) -> int:
        return len(self.stored_header) + len(self.pixel_deflated)


def _stored_block(data: bytes) -> bytes:
    """``data`` as stored (uncompressed) DEFLATE blocks ending on a byte boundary, stream not final."""
    compressor = zlib.compressobj(0, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def _build_member(instance: InstanceFile, want_md5: bool) -> _Member:
    series = instance.series
    header = instance.header()
    variant = series.store.variant(series.key, instance.pixel_variant, series.pixel_length)
    crc = zlib.crc32(variant.raw, zlib.crc32(header))
    return _Member(
        stored_header=_stored_block(header),
        pixel_deflated=variant.deflated,
        crc=crc,
        uncompressed_size=len(header) + len(variant.raw),
        md5=instance.md5 if want_md5 else None,
    )


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH)


def _flip_preamble_byte(stored: bytes) -> bytes:
    """Flip one byte of the 128-byte zero preamble inside a stored block (CRC now fails)."""
    position = stored.find(bytes(128))
    if position < 0:
        raise RuntimeError("stored DICOM header without its preamble")
    flipped = bytearray(stored)
    flipped[position + 64] ^= 0xFF
    return bytes(flipped)


def _dos_stamp(entry: SeriesEntry) -> tuple[int, int]:
    day = entry.max_submission
    return ((day.year - 1980) << 9) | (day.month << 5) | day.day, 12 << 11


@dataclass(frozen=True, slots=True)
class _ZipRequest:
    entry: SeriesEntry
    include_license: bool
    new_file_names: bool
    include_md5: bool
    fault: FaultRule | None


async def _zip_pieces(request: _ZipRequest) -> AsyncGenerator[bytes, None]:
    """The archive's bytes, in order, one piece at a time."""
    entry = request.entry
    fault = request.fault
    kind = fault.kind if fault is not None else None
    dos_date, dos_time = _dos_stamp(entry)
    writer = ZipStreamWriter(dos_date=dos_date, dos_time=dos_time)
    loop = asyncio.get_running_loop()

    def small_member(name: str, data: bytes) -> list[bytes]:
        compressed = _deflate(data)
        pieces = [writer.local_header(name), compressed]
        writer.add_data(len(compressed))
        pieces.append(writer.data_descriptor(zlib.crc32(data), len(compressed), len(data)))
        return pieces

    if request.include_license:
        for piece in small_member("LICENSE", entry.license_text().encode("utf-8")):
            yield piece

    files = list(entry.instances()) if request.new_file_names else entry.instance_files()
    short = False
    if kind is FaultKind.SHORT_ZIP and fault is not None:
        keep = max(0, len(files) - fault.param_int("missing"))
        short = keep < len(files)
        files = files[:keep]

    def prepare(instance: InstanceFile) -> asyncio.Future[_Member]:
        if entry.instance_size >= _THREAD_THRESHOLD_BYTES:
            return loop.run_in_executor(None, _build_member, instance, request.include_md5)
        ready: asyncio.Future[_Member] = loop.create_future()
        ready.set_result(_build_member(instance, request.include_md5))
        return ready

    names: dict[int, str] = {}
    # One member ahead: the next member's CRC/MD5 runs in a thread while this one is being sent.
    upcoming = prepare(files[0]) if files else None
    try:
        for index, instance in enumerate(files):
            name = instance.new_name if request.new_file_names else instance.db_name
            if index == 0 and kind is FaultKind.ZIP_SLIP and fault is not None:
                name = fault.param_text("name") or "../evil.dcm"
            names[instance.position] = name
            assert upcoming is not None
            member = await upcoming
            upcoming = prepare(files[index + 1]) if index + 1 < len(files) else None
            stored = member.stored_header
            if index == 0 and kind is FaultKind.FLIP_BYTE:
                stored = _flip_preamble_byte(stored)
            yield writer.local_header(name)
            yield stored
            yield member.pixel_deflated
            writer.add_data(member.compressed_size)
            yield writer.data_descriptor(member.crc, member.compressed_size, member.uncompressed_size)
    finally:
        if upcoming is not None:
            upcoming.cancel()
            if upcoming.done() and not upcoming.cancelled():
                upcoming.exception()

    # The real server's FileNotFoundException path stops adding entries, md5hashes.csv included.
    if request.include_md5 and not short:
        lines = ["Filename,MD5Hash"]
        wrong_done = False
        for instance in entry.md5_order():
            if instance.position not in names:
                continue
            digest = instance.md5
            if kind is FaultKind.WRONG_MD5 and not wrong_done:
                digest = format(int(digest, 16) ^ 0x1, "032x")
                wrong_done = True
            lines.append(f"{names[instance.position]},{digest}")
        rows = ("\n".join(lines) + "\n").encode("ascii")
        if kind is FaultKind.MD5_LIST_BOMB and fault is not None:
            for piece in _md5_list_bomb(writer, rows, fault.param_int("inflated_bytes")):
                yield piece
        else:
            for piece in small_member("md5hashes.csv", rows):
                yield piece
    yield writer.finish()


#: One MiB of blank lines, deflated once from a fresh compressor and full-flushed: a block that
#: references nothing before it, so it can be repeated to inflate to any size.
_BLANK_MIB = b"\n" * (1 << 20)
_BLANK_BLOCK: bytes | None = None


def _md5_list_bomb(writer: ZipStreamWriter, rows: bytes, inflated_bytes: int) -> Iterator[bytes]:
    """md5hashes.csv: the real ``rows``, then blank lines up to ``inflated_bytes`` (MD5_LIST_BOMB).

    About 1 KiB on the wire per MiB inflated. The CRC is computed as the pieces are sent (about a
    millisecond per MiB), so a client that gives up early costs the server nothing more.
    """
    global _BLANK_BLOCK
    if _BLANK_BLOCK is None:
        blank = zlib.compressobj(9, zlib.DEFLATED, -15)
        _BLANK_BLOCK = blank.compress(_BLANK_MIB) + blank.flush(zlib.Z_FULL_FLUSH)
    head = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = head.compress(rows) + head.flush(zlib.Z_FULL_FLUSH)
    yield writer.local_header("md5hashes.csv")
    yield first
    compressed = len(first)
    crc = zlib.crc32(rows)
    size = len(rows)
    while size + len(_BLANK_MIB) <= inflated_bytes:
        yield _BLANK_BLOCK
        crc = zlib.crc32(_BLANK_MIB, crc)
        size += len(_BLANK_MIB)
        compressed += len(_BLANK_BLOCK)
    final = zlib.compressobj(6, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    yield final
    compressed += len(final)
    writer.add_data(compressed)
    yield writer.data_descriptor(crc, compressed, size)


def _yes(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "yes"


async def _refuse_if_busy(state: ServerState) -> web.Response | None:
    cap = state.load.max_concurrent_downloads
    if cap is not None and state.stats.active_downloads >= cap:
        response = text_response(429, "Too Many Requests")
        response.headers["Retry-After"] = retry_after_header(state.load.retry_after_s)
        return response
    return None


def _fault_response(state: ServerState, entry: SeriesEntry, fault: FaultRule) -> web.Response | None:
    """Faults answered instead of a zip; None when the fault changes the stream itself."""
    kind = fault.kind
    if kind is FaultKind.REDIRECT:  # issue 14 (bodies): a redirect to a bad or foreign Location
        return web.Response(
            status=fault.param_int("status"), headers={"Location": fault.param_text("location") or ""}
        )
    if kind is FaultKind.RATE_LIMIT:
        response = text_response(429, "Too Many Requests")
        response.headers["Retry-After"] = fault.param_text("retry_after") or "1"
        return response
    if kind is FaultKind.SERVER_ERROR:
        return text_response(500, SERVER_ERROR_NULL)
    if kind is FaultKind.UNAVAILABLE:
        response = text_response(503, _UNAVAILABLE_PAGE, "text/html")
        retry_after = fault.param_text("retry_after")
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response
    if kind is FaultKind.REQUEST_REJECTED:
        return text_response(400, NOT_GRANTED.format(uid=entry.uid))
    if kind is FaultKind.BAD_GATEWAY:
        return text_response(502, _BAD_GATEWAY_PAGE, "text/html")
    if kind is FaultKind.GATEWAY_TIMEOUT:
        return text_response(504, _GATEWAY_TIMEOUT_PAGE, "text/html")
    if kind is FaultKind.RATE_LIMIT_DATE:
        return _rate_limited_until_date(fault)
    if kind is FaultKind.HOSTILE_ERROR:
        return text_response(400, fault.param_text("text") or "")
    if kind is FaultKind.HTML_200:
        return text_response(200, MAINTENANCE_PAGE, "text/html")
    del state
    return None


def _rate_limited_until_date(fault: FaultRule) -> web.Response:
    """429 with ``Date`` = the (possibly skewed) server clock and ``Retry-After`` = Date + retry_in_s.

    Both headers come from the same whole second, so a client that measures the HTTP-date against
    this response's ``Date`` waits exactly ``retry_in_s``, whatever the skew.
    """
    server_now = int(time.time() + fault.param_float("clock_skew_s"))
    response = text_response(429, "Too Many Requests")
    response.headers["Date"] = formatdate(server_now, usegmt=True)
    response.headers["Retry-After"] = formatdate(server_now + fault.param_float("retry_in_s"), usegmt=True)
    return response


def _reset_connection(request: web.Request) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed proxy does: ECONNRESET."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _CutError(Exception):
    """The CUT fault closed the connection (internal control flow of :func:`_stream`)."""


class _TruncatedError(Exception):
    """The TRUNCATE fault reached its byte count: end the body cleanly here."""


class _BodySender:
    """Writes one response body in chunks: paced, with the STALL pause and the CUT applied once."""

    def __init__(
        self, state: ServerState, request: web.Request, response: web.StreamResponse, fault: FaultRule | None
    ):
        kind = fault.kind if fault is not None else None
        self._request = request
        self._response = response
        cuts = kind in (FaultKind.CUT, FaultKind.RESET)
        self._cut_at = fault.param_int("after_bytes") if fault is not None and cuts else None
        self._reset = kind is FaultKind.RESET
        self._truncate_at = (
            fault.param_int("after_bytes") if fault is not None and kind is FaultKind.TRUNCATE else None
        )
        self._stall_at = (
            fault.param_int("after_bytes") if fault is not None and kind is FaultKind.STALL else None
        )
        self._stall_s = fault.param_float("stall_s") if fault is not None and kind is FaultKind.STALL else 0.0
        self._chunk = state.load.chunk_bytes(state.chunk_bytes)
        self._pacer = Pacer(state.load.bytes_per_s_per_connection)
        self._link = state.link
        self.sent = 0

    async def _write(self, part: memoryview) -> None:
        if part:
            await self._response.write(part)
            self.sent += len(part)

    async def send(self, piece: bytes) -> None:
        """Send one piece; raises _CutError once the CUT point is reached (connection closed)."""
        view = memoryview(piece)
        for start in range(0, len(view), self._chunk):
            part = view[start : start + self._chunk]
            if self._stall_at is not None and self.sent + len(part) >= self._stall_at:
                head = part[: self._stall_at - self.sent]
                await self._write(head)
                await asyncio.sleep(self._stall_s)
                self._stall_at = None
                part = part[len(head) :]
            if self._truncate_at is not None and self.sent + len(part) >= self._truncate_at:
                await self._write(part[: self._truncate_at - self.sent])
                raise _TruncatedError
            if self._cut_at is not None and self.sent + len(part) >= self._cut_at:
                await self._write(part[: self._cut_at - self.sent])
                if self._reset:
                    _reset_connection(self._request)
                elif self._request.transport is not None:
                    self._request.transport.close()
                raise _CutError
            await self._write(part)
            delay = max(self._pacer.delay_after(len(part)), self._link.delay_after(len(part)))
            if delay > 0:
                await asyncio.sleep(delay)


async def _stream(
    state: ServerState,
    request: web.Request,
    response: web.StreamResponse,
    pieces: AsyncGenerator[bytes, None],
    fault: FaultRule | None,
) -> web.StreamResponse:
    """Send the pieces (first-byte delay, pacing, CUT/STALL) and count the download.

    A client that goes away, or a CUT, ends the stream quietly: the response is returned with the
    connection closed, which aiohttp treats as a premature disconnect.
    """
    sender = _BodySender(state, request, response, fault)
    completed = False
    state.stats.enter_download()
    try:
        if state.load.first_byte_delay_s > 0:
            await asyncio.sleep(state.load.first_byte_delay_s)
        await response.prepare(request)
        async with contextlib.aclosing(pieces):
            try:
                async for piece in pieces:
                    await sender.send(piece)
            except _TruncatedError:
                pass  # a well-terminated response whose archive simply stops (reliability.md A12)
        await response.write_eof()
        completed = True
    except (_CutError, ConnectionError):
        pass
    finally:
        state.stats.download_body_bytes += sender.sent
        state.stats.leave_download(completed=completed)
        request[COMPLETED_KEY] = completed
    return response


def _zip_response(entry: SeriesEntry) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{entry.uid}.zip"',
        },
    )
    response.enable_chunked_encoding()
    return response


async def _download(
    state: ServerState, generation: int, request: web.Request, *, md5_endpoint: bool
) -> web.StreamResponse:
    if md5_endpoint:
        allowed: tuple[str, ...] = ("SeriesInstanceUID",)
    elif state.include_md5_supported:
        allowed = ("SeriesInstanceUID", "NewFileNames", "IncludeMD5")
    else:
        allowed = ("SeriesInstanceUID", "NewFileNames")
    rejected = check_allowed(request, allowed if generation == 4 else None)
    if rejected:
        return rejected
    uid = request.query.get("SeriesInstanceUID")
    if not uid:
        return text_response(400, MISSING_UID_DOWNLOAD, "application/json")
    entry = state.visible_series(uid)
    if entry is None:
        template = NOT_PUBLIC_V1 if generation == 1 else NOT_GRANTED
        return text_response(400, template.format(uid=uid))
    busy = await _refuse_if_busy(state)
    if busy is not None:
        return busy
    fault = state.faults.download_fault(entry.uid)
    if fault is not None:
        answered = _fault_response(state, entry, fault)
        if answered is not None:
            return answered
    response = _zip_response(entry)
    if fault is not None and fault.kind is FaultKind.EMPTY_200:
        return await _stream(state, request, response, _nothing(), None)
    zip_request = _ZipRequest(
        entry=entry,
        include_license=not md5_endpoint,
        new_file_names=not md5_endpoint and _yes(request.query.get("NewFileNames")),
        include_md5=md5_endpoint or _yes(request.query.get("IncludeMD5")),
        fault=fault,
    )
    return await _stream(state, request, response, _zip_pieces(zip_request), fault)


async def _nothing() -> AsyncGenerator[bytes, None]:
    empty: tuple[bytes, ...] = ()
    for piece in empty:
        yield piece


async def get_image(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
    """The series as a zip (LICENSE, instances, optional md5hashes.csv)."""
    return await _download(state, generation, request, md5_endpoint=False)


async def get_image_with_md5_hash(
    state: ServerState, generation: int, request: web.Request
) -> web.StreamResponse:
    """The series as a zip of ``0000000N.dcm`` plus ``md5hashes.csv`` (no LICENSE)."""
    return await _download(state, generation, request, md5_endpoint=True)


async def get_single_image(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
    """One instance as ``application/dicom``; anything not found is the server's NPE (500 ...null)."""
    rejected = check_allowed(request, ("SeriesInstanceUID", "SOPInstanceUID") if generation == 4 else None)
    if rejected:
        return rejected
    uid = request.query.get("SeriesInstanceUID")
    sop = request.query.get("SOPInstanceUID")
    if not uid or not sop:
        return text_response(400, MISSING_SINGLE_IMAGE, "application/json")
    entry = state.visible_series(uid)
    found = None
    if entry is not None:
        found = next((item for item in entry.instances() if item.sop_instance_uid == sop.strip()), None)
    if found is None:
        return text_response(500, SERVER_ERROR_NULL)
    body = await asyncio.get_running_loop().run_in_executor(None, found.read_bytes)
    response = web.Response(status=200, body=body, content_type="application/dicom")
    response.headers["Content-Disposition"] = f"attachment; filename={found.sop_instance_uid}.dcm"
    return response


_Endpoint = Callable[[ServerState, int, web.Request], Awaitable[web.StreamResponse]]


def outage_guard(function: _Endpoint) -> _Endpoint:
    """Wrap an endpoint so that an OUTAGE window answers for it (503 page, or a dropped connection)."""

    async def guarded(state: ServerState, generation: int, request: web.Request) -> web.StreamResponse:
        rule = state.faults.outage(time.monotonic())
        if rule is None:
            return await function(state, generation, request)
        if rule.param_text("mode") == "close":
            _reset_connection(request)
            request[COMPLETED_KEY] = False
            return web.Response(status=503)  # never reaches the client: the connection is gone
        return text_response(503, _UNAVAILABLE_PAGE, "text/html")

    guarded.__doc__ = function.__doc__
    guarded.__name__ = getattr(function, "__name__", "endpoint")
    return guarded


DOWNLOAD_ENDPOINTS = {
    "getImage": outage_guard(secrets_guard(get_image, download=True)),
    "getImageWithMD5Hash": outage_guard(secrets_guard(get_image_with_md5_hash, download=True)),
    "getSingleImage": outage_guard(secrets_guard(get_single_image, download=True)),
}
