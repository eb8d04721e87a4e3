"""Decode a response body's ``Content-Encoding`` ourselves, with every byte counted (sans-I/O).

aiohttp would inflate gzip and deflate on its own, invisibly: a 1 MB gzip of zeros became 1 GiB in
memory before tcia-fetch saw a byte (issue 14). The transport turns that off and feeds the raw
bytes through a :class:`BodyDecoder`, which

* inflates in pieces of at most :data:`PIECE_BYTES` (``decompress(max_length=...)``), so one
  compressed chunk never turns into one huge buffer;
* counts decoded bytes and ends the body past its ceiling (``limit``), whatever Content-Length
  claimed and however the body was framed (an endless chunked body ends here, not at a timeout);
* refuses an absurd compression ratio: once past :data:`RATIO_FLOOR_BYTES` decoded, more than
  ``max_ratio`` decoded bytes per compressed byte consumed is a decompression bomb (real JSON and
  CSV answers compress 5-20x, zeros about 1000x).

Only gzip and deflate are accepted (the transport advertises exactly those); anything else is a
:class:`~tcia_fetch.errors.ResponseFormatError`.
"""

from __future__ import annotations

import zlib

from tcia_fetch.errors import BodyTooLargeError, ResponseFormatError

__all__ = ["ACCEPT_ENCODING", "PIECE_BYTES", "RATIO_FLOOR_BYTES", "BodyDecoder", "format_bytes"]

#: What the transport asks for: the encodings this module decodes.
ACCEPT_ENCODING = "gzip, deflate"
#: The most one inflate step produces.
PIECE_BYTES = 256 * 1024
#: The ratio rule applies past this many decoded bytes (small answers may compress very well).
#: It is no larger than the streamed parsers' row bound (``rowstream.MAX_ROW_BYTES``): a bomb
#: is then named a bomb however its bytes arrive, never a "row too long" when the socket
#: happened to deliver it one small read at a time (a race CI once lost).
RATIO_FLOOR_BYTES = 2**20


def format_bytes(count: float) -> str:
    """``4194304`` -> ``"4.0 MiB"``: limits in messages, readable."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _wbits_for(encoding: str | None) -> int | None:
    """zlib's window bits for a Content-Encoding; None for identity."""
    codings = [part.strip().lower() for part in (encoding or "").split(",")]
    codings = [part for part in codings if part and part != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip"):
        return 16 + zlib.MAX_WBITS
    if len(codings) == 1 and codings[0] == "deflate":
        return zlib.MAX_WBITS  # zlib-wrapped; a raw stream is detected on its first bytes
    raise ResponseFormatError(f"unsupported Content-Encoding {(encoding or '')[:40]!r}")


class BodyDecoder:
    """Decode one body chunk by chunk; raise as soon as it breaks a bound.

    Args:
        content_encoding: the response's ``Content-Encoding`` header (None: identity).
        limit: the most decoded bytes accepted (None: no ceiling; the caller bounds the body).
        max_ratio: decoded bytes per compressed byte allowed past :data:`RATIO_FLOOR_BYTES`.
        what: names the body in messages (the endpoint).
        limit_hint: where the ceiling comes from, for the message (a setting's name).
    """

    def __init__(
        self,
        content_encoding: str | None,
        *,
        limit: int | None,
        max_ratio: float,
        what: str,
        limit_hint: str = "",
    ) -> None:
        self._wbits = _wbits_for(content_encoding)
        self._inflater: zlib._Decompress | None = None
        self._head = b""  # deflate only: the first bytes, until the wrapper is known
        self._limit = limit
        self._max_ratio = max_ratio
        self._what = what
        self._limit_hint = limit_hint
        #: Compressed bytes consumed (all bytes fed, for identity).
        self.raw_bytes = 0
        #: Bytes handed out so far.
        self.decoded_bytes = 0

    @property
    def encoded(self) -> bool:
        """True when the body is compressed (the ratio rule applies)."""
        return self._wbits is not None

    def check_declared_length(self, content_length: int | None) -> None:
        """Refuse at once an identity body whose Content-Length is past the ceiling."""
        limit = self._limit
        if content_length is not None and not self.encoded and limit is not None and content_length > limit:
            raise self._too_large(f"declares {format_bytes(content_length)}")

    def _too_large(self, detail: str) -> BodyTooLargeError:
        hint = f" ({self._limit_hint})" if self._limit_hint else ""
        limit = format_bytes(self._limit) if self._limit is not None else "no"
        return BodyTooLargeError(f"{self._what}: the answer {detail}; the limit is {limit}{hint}")

    def _count(self, piece: bytes) -> bytes:
        self.decoded_bytes += len(piece)
        if (
            self.encoded
            and self.decoded_bytes > RATIO_FLOOR_BYTES
            and self.decoded_bytes > self._max_ratio * max(self.raw_bytes, 1)
        ):
            raise BodyTooLargeError(
                f"{self._what}: the answer inflates {self.decoded_bytes // max(self.raw_bytes, 1)}x "
                f"({format_bytes(self.raw_bytes)} compressed -> {format_bytes(self.decoded_bytes)}), "
                f"past the {self._max_ratio:g}x limit (max_compression_ratio): a decompression bomb"
            )
        if self._limit is not None and self.decoded_bytes > self._limit:
            raise self._too_large(f"passed {format_bytes(self._limit)}")
        return piece

    def _start(self) -> zlib._Decompress | None:
        if self._inflater is not None:
            return self._inflater
        wbits = self._wbits
        assert wbits is not None
        if wbits == zlib.MAX_WBITS:
            if len(self._head) < 2:
                return None
            first, second = self._head[0], self._head[1]
            if first & 0x0F != 8 or (first * 256 + second) % 31:
                wbits = -zlib.MAX_WBITS  # a raw deflate stream, as some servers send
        self._inflater = zlib.decompressobj(wbits)
        return self._inflater

    def feed(self, raw: bytes) -> list[bytes]:
        """Decode one chunk of the body; the decoded pieces, each at most :data:`PIECE_BYTES`."""
        if not raw:
            return []
        if not self.encoded:
            self.raw_bytes += len(raw)
            return [self._count(raw)]
        if self._inflater is None:
            self._head += raw
            inflater = self._start()
            if inflater is None:
                return []
            raw, self._head = self._head, b""
        else:
            inflater = self._inflater
        if inflater.eof:
            raise ResponseFormatError(f"{self._what}: data after the end of the compressed body")
        return self._drain(inflater, raw)

    def _drain(self, inflater: zlib._Decompress, pending: bytes) -> list[bytes]:
        pieces: list[bytes] = []
        while True:
            before = len(pending)
            try:
                piece = inflater.decompress(pending, PIECE_BYTES)
            except zlib.error as exc:
                raise ResponseFormatError(f"{self._what}: corrupt compressed body ({exc})") from None
            pending = inflater.unconsumed_tail
            self.raw_bytes += before - len(pending)
            if piece:
                pieces.append(self._count(piece))
            if inflater.eof:
                if pending or inflater.unused_data:
                    raise ResponseFormatError(f"{self._what}: data after the end of the compressed body")
                return pieces
            if len(piece) < PIECE_BYTES and (not pending or len(pending) == before):
                return pieces  # zlib needs more input

    def finish(self) -> list[bytes]:
        """The body ended: check that a compressed stream was complete; any last pieces."""
        if not self.encoded:
            return []
        if self._inflater is None:
            if not self._head:
                return []  # an empty body with a Content-Encoding header: nothing to decode
            inflater = self._start() or zlib.decompressobj(-zlib.MAX_WBITS)
            self._inflater = inflater
            pieces = self.feed(self._head)
            self._head = b""
            return pieces + self.finish()
        pieces = [] if self._inflater.eof else self._drain(self._inflater, b"")
        if not self._inflater.eof:
            raise ResponseFormatError(f"{self._what}: the compressed body ends before its end marker")
        return pieces
