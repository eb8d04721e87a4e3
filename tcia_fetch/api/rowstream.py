"""Query answers turned into rows chunk by chunk, as they stream (sans-I/O).

The push-parser counterpart of :func:`tcia_fetch.api.parse.parse_rows`, with the same rules
(content type decides JSON or CSV; HTML pages, wrong shapes and broken records raise
:class:`~tcia_fetch.errors.ResponseFormatError`) but without ever holding the body: each
``feed(chunk)`` returns the rows that chunk completed. One row may not pass
:data:`MAX_ROW_BYTES` of input (a real row is about 1 kB), which bounds the parser's own
buffering whatever the server sends.
"""

from __future__ import annotations

import codecs
import csv
import io
from typing import Protocol

from tcia_fetch.api._jsonstream import JsonRowStream
from tcia_fetch.api.parse import Row
from tcia_fetch.errors import BodyTooLargeError, ResponseFormatError

__all__ = ["MAX_ROW_BYTES", "CsvRowStream", "RowStream", "row_stream_for"]

#: The most input one row may take (a real getSeries row is about 1 kB; a CSV header too).
MAX_ROW_BYTES = 2**20


class RowStream(Protocol):
    """A push parser of one body."""

    def feed(self, chunk: bytes) -> list[Row]:
        """Parse one chunk; the rows it completed."""
        ...

    def close(self) -> list[Row]:
        """The body ended; the last rows (a truncated body raises ResponseFormatError)."""
        ...


class CsvRowStream:
    """Quoted or plain CSV, header first, records cut at newlines outside quotes.

    A record ends at a newline when it holds an even number of ``"`` (RFC 4180 doubles a quote
    inside a quoted field), so complete records are handed to the csv module in batches and
    a quoted newline stays inside its field. Empty fields are treated as omitted; a record
    whose field count differs from the header's is a broken body.
    """

    def __init__(self, *, max_row_bytes: int = MAX_ROW_BYTES, what: str = "response") -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._max_row_bytes = max_row_bytes
        self._what = what
        self._pending = ""  # text of the record not yet complete
        self._scanned = 0  # how much of _pending has been scanned for newlines
        self._quotes = 0  # quotes within the scanned part
        self._header: list[str] | None = None
        self._record = 1
        self._checked_start = False

    def feed(self, chunk: bytes) -> list[Row]:
        """Parse one chunk; the rows it completed."""
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError:
            raise ResponseFormatError(f"{self._what}: response is not UTF-8 text") from None
        return self._take(text, final=False)

    def close(self) -> list[Row]:
        """The body ended: the last record (it needs no final newline)."""
        try:
            text = self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ResponseFormatError(f"{self._what}: response is not UTF-8 text") from None
        return self._take(text, final=True)

    def _take(self, text: str, *, final: bool) -> list[Row]:
        self._pending += text
        if not self._checked_start:
            stripped = self._pending.lstrip()
            if not stripped:
                return []
            if stripped[:1] in ("<", "[", "{"):
                raise ResponseFormatError(f"{self._what}: expected CSV, got {stripped[:120]!r}")
            self._checked_start = True
        pending = self._pending
        cut = 0  # end of the complete records found so far
        position = self._scanned
        quotes = self._quotes
        while True:
            newline = pending.find("\n", position)
            if newline < 0:
                quotes += pending.count('"', position)
                position = len(pending)
                break
            quotes += pending.count('"', position, newline)
            position = newline + 1
            if quotes % 2 == 0:
                cut = position
                quotes = 0
        if final and pending[cut:].strip():
            if quotes % 2:
                raise ResponseFormatError(f"{self._what}: the CSV body ends inside a quoted field")
            cut = len(pending)
        complete, self._pending = pending[:cut], pending[cut:]
        self._scanned = position - cut
        self._quotes = quotes
        if len(self._pending) > self._max_row_bytes:
            raise BodyTooLargeError(
                f"{self._what}: a CSV record longer than {self._max_row_bytes} characters "
                "(no real row is that large)"
            )
        return self._rows(complete) if complete else []

    def _rows(self, text: str) -> list[Row]:
        try:
            records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
        except csv.Error as exc:
            raise ResponseFormatError(f"{self._what}: malformed CSV body: {exc}") from None
        rows: list[Row] = []
        for record in records:
            if not record:
                continue
            self._record += 1
            if self._header is None:
                if any(not name for name in record) or len(set(record)) != len(record):
                    raise ResponseFormatError(
                        f"{self._what}: CSV header is not a list of distinct names: {record[:8]!r}"
                    )
                self._header = record
                continue
            if len(record) != len(self._header):
                raise ResponseFormatError(
                    f"{self._what}: CSV record {self._record - 1} has {len(record)} fields; "
                    f"the header has {len(self._header)}"
                )
            rows.append(
                {name: value for name, value in zip(self._header, record, strict=True) if value != ""}
            )
        return rows


class _RefuseHtml:
    """An HTML page where data was due: empty is fine (no rows), anything else is refused."""

    def __init__(self, what: str) -> None:
        self._what = what

    def feed(self, chunk: bytes) -> list[Row]:
        if chunk.strip():
            excerpt = chunk.strip()[:120].decode("utf-8", "replace")
            raise ResponseFormatError(f"{self._what}: expected data, got an HTML page: {excerpt!r}")
        return []

    def close(self) -> list[Row]:
        return []


def row_stream_for(
    content_type: str | None,
    *,
    csv_expected: bool = False,
    what: str = "response",
    max_row_bytes: int = MAX_ROW_BYTES,
) -> RowStream:
    """The parser for a body of this content type (the rules of :func:`parse_rows`)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in ("text/html", "application/xhtml+xml"):
        return _RefuseHtml(what)
    if media_type in ("text/csv", "application/csv", "application/force-download"):
        return CsvRowStream(max_row_bytes=max_row_bytes, what=what)
    if csv_expected and media_type not in ("application/json", "text/json"):
        return CsvRowStream(max_row_bytes=max_row_bytes, what=what)
    return JsonRowStream(max_row_bytes=max_row_bytes, what=what)
