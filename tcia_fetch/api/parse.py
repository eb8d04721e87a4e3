"""Turn NBIA response bodies into rows, and NBIA scalars into Python values (sans-I/O).

Everything here is pure and synchronous so that it can be tested on arbitrary bytes. The
server's habits this module absorbs (nbia-api.md §3.3, §3.4, §8.4):

* an empty (or whitespace-only) 200 body means "no rows";
* JSON endpoints send an array of objects, null fields omitted, ``{}`` for a null value;
  a single object instead of an array is accepted defensively (§8.4 #18);
* ``getSeriesMetadata`` sends every field double-quoted CSV, ``""`` escaping a quote;
* counts and sizes arrive as numbers, numeric strings or ``"500.000000"``;
* v4 dates are ``MM-DD-YYYY``; v1/v2 dates are ``YYYY-MM-DD HH:MM:SS.f``.

A 2xx body that is none of these (an HTML page from a proxy, truncated JSON) raises
:class:`~tcia_fetch.errors.ResponseFormatError`, which callers may retry.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from decimal import Decimal, InvalidOperation

from tcia_fetch.errors import ResponseFormatError
from tcia_fetch.redaction import scrub

__all__ = [
    "Row",
    "coerce_count",
    "format_server_date",
    "parse_csv_rows",
    "parse_json_rows",
    "parse_rows",
    "parse_server_date",
]

#: One response row: keys exactly as the server named them, values as decoded.
Row = dict[str, object]

_V4_DATE = re.compile(r"(\d{2})-(\d{2})-(\d{4})")
_LEGACY_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[ T]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?)?")
_EXCERPT_CHARS = 120
#: Bytes past the excerpt read for scrubbing: longer than any token a server hands out.
_SCRUB_LOOKAHEAD_BYTES = 8192


def _excerpt(body: bytes) -> str:
    # Scrubbed before the cut, so a cut never leaves part of an echoed secret behind.
    text = body[: _EXCERPT_CHARS + _SCRUB_LOOKAHEAD_BYTES].decode("utf-8", errors="replace")
    return scrub(text)[:_EXCERPT_CHARS]


def coerce_count(value: object, *, field: str = "value") -> int:
    """Return a non-negative whole number from a JSON number or numeric string.

    Accepts ``48``, ``"48"``, ``48.0`` and ``"500.000000"``; rejects negatives, fractions,
    NaN/infinity, booleans and anything else with :class:`ResponseFormatError`. Decimal
    arithmetic keeps sizes above 2**53 exact (``int(float(x))`` would round them).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ResponseFormatError(f"{field}: expected a whole number, got {type(value).__name__}")
    if isinstance(value, int):
        number = Decimal(value)
    else:
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise ResponseFormatError(f"{field}: expected a whole number, got {str(value)[:40]!r}") from None
    if not number.is_finite() or number != number.to_integral_value():
        raise ResponseFormatError(f"{field}: expected a whole number, got {str(value)[:40]!r}")
    if number < 0:
        raise ResponseFormatError(f"{field}: negative value {str(value)[:40]!r}")
    return int(number)


def parse_server_date(value: object, *, field: str = "date") -> dt.date:
    """Parse a v4 ``MM-DD-YYYY`` or a legacy ``YYYY-MM-DD[ HH:MM:SS.f]`` date.

    Raises :class:`ResponseFormatError` for anything else, including impossible dates.
    """
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        raise ResponseFormatError(f"{field}: expected a date string, got {type(value).__name__}")
    text = value.strip()
    try:
        if match := _V4_DATE.fullmatch(text):
            month, day, year = (int(group) for group in match.groups())
            return dt.date(year, month, day)
        if match := _LEGACY_DATE.fullmatch(text):
            year, month, day = (int(group) for group in match.groups())
            return dt.date(year, month, day)
    except ValueError:
        raise ResponseFormatError(f"{field}: impossible date {text[:40]!r}") from None
    raise ResponseFormatError(f"{field}: unrecognised date {text[:40]!r}")


def format_server_date(value: dt.date) -> str:
    """Format a date the way v4 sends and accepts it (``MM-DD-YYYY``)."""
    return f"{value.month:02d}-{value.day:02d}-{value.year:04d}"


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ResponseFormatError(f"response is not UTF-8 text: {_excerpt(body)!r}") from None


def parse_json_rows(body: bytes) -> list[Row]:
    """Decode a JSON query body into rows; an empty body is an empty result.

    Accepts an array of objects or a single object. Keys are kept verbatim; ``null``
    values are dropped so that a row never differs from what the server would omit.
    """
    text = _decode(body)
    if not text.strip():
        return []
    stripped = text.lstrip()
    if stripped[:1] not in ("[", "{"):
        raise ResponseFormatError(f"expected JSON, got {_excerpt(body)!r}")
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ResponseFormatError(f"malformed JSON body: {_excerpt(body)!r}") from None
    items = document if isinstance(document, list) else [document]
    rows: list[Row] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ResponseFormatError(f"row {index} is {type(item).__name__}, not an object")
        rows.append({str(key): value for key, value in item.items() if value is not None})
    return rows


def parse_csv_rows(body: bytes) -> list[Row]:
    """Decode a CSV body (quoted or not) into rows; empty fields are treated as omitted.

    The header names the keys. NBIA's quoted CSV escapes ``"`` as ``""`` and may hold commas
    and newlines inside quotes, which the csv module handles. A row whose field count differs
    from the header is a broken body.
    """
    text = _decode(body)
    if not text.strip():
        return []
    if text.lstrip()[:1] in ("<", "[", "{"):
        raise ResponseFormatError(f"expected CSV, got {_excerpt(body)!r}")
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise ResponseFormatError(f"malformed CSV body: {exc}") from None
    records = [record for record in records if record]
    if not records:
        return []
    header = records[0]
    if any(not name for name in header) or len(set(header)) != len(header):
        raise ResponseFormatError(f"CSV header is not a list of distinct names: {header[:8]!r}")
    rows: list[Row] = []
    for line_number, record in enumerate(records[1:], start=2):
        if len(record) != len(header):
            raise ResponseFormatError(
                f"CSV record {line_number} has {len(record)} fields; the header has {len(header)}"
            )
        rows.append({name: value for name, value in zip(header, record, strict=True) if value != ""})
    return rows


def parse_rows(body: bytes, content_type: str | None, *, csv_expected: bool = False) -> list[Row]:
    """Parse a query body by its content type: CSV when the server says CSV, else JSON.

    NBIA's JSON endpoints answer ``application/json``; ``getSeriesMetadata`` answers quoted
    CSV (``text/csv``, with a download disposition). With ``csv_expected`` (the metadata
    endpoint) any type other than JSON or HTML is read as CSV; otherwise a body whose type
    says neither is parsed as JSON, which rejects HTML pages and other surprises.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in ("text/html", "application/xhtml+xml") and body.strip():
        raise ResponseFormatError(f"expected data, got an HTML page: {_excerpt(body)!r}")
    if media_type in ("text/csv", "application/csv", "application/force-download"):
        return parse_csv_rows(body)
    if csv_expected and media_type not in ("application/json", "text/json"):
        return parse_csv_rows(body)
    return parse_json_rows(body)
