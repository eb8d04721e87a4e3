"""JSON query answers parsed as they stream: the only module that imports ``ijson``.

``json.loads`` needs the whole body, then the whole decoded text, then every object at once: a
300 MB ``getSeries`` answer cost about three times its size. ijson's push interface
(``items_coro``, the yajl2 C backend when installed, which ``import ijson`` picks) turns each
chunk into the rows it completes, so memory is one chunk plus one row.

What ijson does not bound, this module does: a row (or the leading bytes before the first
row) may not pass ``max_row_bytes`` of input, so a never-ending string or object or an endless
run of whitespace ends with :class:`BodyTooLargeError` after at most that much, instead of
growing ijson's buffers. Nesting is bounded too, because yajl's cost grows with the square of
the depth (16,000 ``[`` take seconds): input is handed to ijson in pieces of at most
:data:`_OPENS_PER_SEND` opening brackets, and once the brackets opened since the last complete
row (an upper bound of the depth: a real row nests 2 deep) pass :data:`MAX_NESTING`, the body is
refused before ijson sees more.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from sys import intern

import ijson  # type: ignore[import-untyped]  # no stubs; wrapped here only

from tcia_fetch.errors import BodyTooLargeError, ResponseFormatError

__all__ = ["BACKEND", "MAX_NESTING", "JsonRowStream"]

#: ijson's backend in use (``yajl2_c`` where its wheel is installed; pure Python otherwise).
BACKEND: str = str(getattr(ijson, "backend_name", getattr(ijson, "backend", "unknown")))

#: The most opening brackets one row may hold (a real row: its own ``{`` and a few ``{}`` nulls).
MAX_NESTING = 64
_OPENS_PER_SEND = 16
_OPENING = re.compile(rb"[\[{]")
_WHITESPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


class JsonRowStream:
    """Push parser: ``feed(chunk)`` returns the rows that chunk completed; ``close()`` the rest.

    Accepts what :func:`tcia_fetch.api.parse.parse_json_rows` accepts: an array of objects, one
    object, or an empty/whitespace body (no rows). Keys are kept verbatim and ``null`` values
    dropped. Anything else raises :class:`ResponseFormatError` with a short excerpt.
    """

    def __init__(self, *, max_row_bytes: int, what: str = "response") -> None:
        self._max_row_bytes = max_row_bytes
        self._what = what
        self._events: list[object] = ijson.sendable_list()
        self._coro: object | None = None  # ijson's coroutine, once the top level is known
        self._head = b""
        self._since_row = 0
        self._opens_since_row = 0
        self._index = 0
        self._started = False

    def _begin(self, chunk: bytes) -> bytes:
        """Before the first significant byte: drop a BOM, decide array or object, refuse the rest."""
        self._head += chunk
        head = self._head[len(_BOM) :] if self._head.startswith(_BOM) else self._head
        if len(self._head) < len(_BOM) and _BOM.startswith(self._head):
            return b""
        stripped = head.lstrip(_WHITESPACE)
        if not stripped:
            self._head = b""
            return b""
        first = stripped[:1]
        if first not in (b"[", b"{"):
            excerpt = stripped[:120].decode("utf-8", "replace")
            raise ResponseFormatError(f"{self._what}: expected JSON, got {excerpt!r}")
        prefix = "item" if first == b"[" else ""
        self._coro = ijson.items_coro(self._events, prefix, use_float=True)
        self._started = True
        self._head = b""
        return stripped

    def feed(self, chunk: bytes) -> list[dict[str, object]]:
        """Parse one chunk; the rows it completed."""
        if not chunk:
            return []
        self._since_row += len(chunk)
        if not self._started:
            chunk = self._begin(chunk)
            if not chunk:
                self._check_row_size()
                return []
        rows: list[dict[str, object]] = []
        for piece, opens in _pieces(chunk):
            # Rows completing in every piece keep this at most two pieces' worth; a nesting that
            # never closes a row grows it piece by piece until it passes the bound.
            self._opens_since_row += opens
            if self._opens_since_row > MAX_NESTING:
                raise BodyTooLargeError(
                    f"{self._what}: a row opening more than {MAX_NESTING} brackets (a real row nests 2 deep)"
                )
            try:
                self._coro.send(piece)  # type: ignore[union-attr]
            except ijson.JSONError as exc:
                raise ResponseFormatError(f"{self._what}: malformed JSON body ({_short(exc)})") from None
            completed = list(self._take())
            if completed:
                rows += completed
                self._opens_since_row = opens  # the last row began within this piece, at worst
        if rows:
            self._since_row = 0
        else:
            self._check_row_size()
        return rows

    def close(self) -> list[dict[str, object]]:
        """The body ended: the last rows; a truncated document raises ResponseFormatError."""
        if not self._started:
            if self._head.strip(_WHITESPACE):  # a lone partial BOM, say
                raise ResponseFormatError(f"{self._what}: expected JSON, got {self._head[:20]!r}")
            return []
        try:
            self._coro.close()  # type: ignore[union-attr]
        except ijson.JSONError as exc:
            raise ResponseFormatError(
                f"{self._what}: malformed or truncated JSON body ({_short(exc)})"
            ) from None
        return list(self._take())

    def _check_row_size(self) -> None:
        if self._since_row > self._max_row_bytes:
            raise BodyTooLargeError(
                f"{self._what}: more than {self._max_row_bytes} bytes without a complete row "
                "(no real row is that large)"
            )

    def _take(self) -> Iterator[dict[str, object]]:
        events, self._events[:] = list(self._events), []
        for item in events:
            if not isinstance(item, dict):
                raise ResponseFormatError(
                    f"{self._what}: row {self._index} is {type(item).__name__}, not an object"
                )
            self._index += 1
            # Nulls dropped as the server would omit them. Keys interned: json.loads shares one
            # key object per document, ijson makes one per row, and the row models keep their row
            # (30 keys: about 1 kB a row, 12% more memory for a collected getSeries without it).
            yield {intern(key): value for key, value in item.items() if value is not None}


def _pieces(chunk: bytes) -> Iterator[tuple[bytes, int]]:
    """``chunk`` cut so that each piece holds at most ``_OPENS_PER_SEND`` opening brackets."""
    total = chunk.count(b"{") + chunk.count(b"[")
    if total <= _OPENS_PER_SEND:
        yield chunk, total
        return
    start = 0
    opens = 0
    for match in _OPENING.finditer(chunk):
        if opens == _OPENS_PER_SEND:
            yield chunk[start : match.start()], opens
            start, opens = match.start(), 0
        opens += 1
    yield chunk[start:], opens


def _short(exc: Exception) -> str:
    return str(exc).strip()[:160] or type(exc).__name__
