"""HTTP status → tcia-fetch error, and ``Retry-After`` parsing (sans-I/O).

The rules (nbia-api.md §3.5, code-models.md Lessons §C):

* 429 and 503 → :class:`RateLimitedError` carrying ``retry_after_s`` from ``Retry-After``;
* other 5xx → :class:`ServerError`;
* 401 → :class:`UnauthorizedError` (v4 answers 401 only to a bad ``Authorization`` header);
* 400 "…not been granted the access…" / "…is not in public domain" →
  :class:`SeriesUnavailableError` (unknown and non-public series look the same);
* 400 "Invalid query parameter" / "Invalid form parameter" → :class:`InvalidParameterError`;
* any other 4xx → :class:`RequestRejectedError`.

Every error keeps the first ~300 characters of the body, with every credential the program holds
scrubbed out (a server may echo them), and the redacted URL.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
from collections.abc import Mapping

from tcia_fetch.errors import (
    HTTPStatusError,
    InvalidParameterError,
    RateLimitedError,
    RequestRejectedError,
    SeriesUnavailableError,
    ServerError,
    UnauthorizedError,
)
from tcia_fetch.redaction import scrub

__all__ = ["BODY_EXCERPT_CHARS", "MAX_RETRY_AFTER_S", "error_for_status", "parse_retry_after"]

#: Seconds; a longer Retry-After is clamped (a run should not sleep for hours on one header).
MAX_RETRY_AFTER_S = 900.0
#: Characters of an error body kept on the exception.
BODY_EXCERPT_CHARS = 300

_NO_ACCESS_MARKERS = ("not been granted the access", "is not in public domain")
_INVALID_PARAMETER_MARKERS = ("invalid query parameter", "invalid form parameter")


def parse_retry_after(value: str | None, *, date_header: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or None when absent or unusable.

    Accepts delta-seconds (``"120"``) and an HTTP-date. An HTTP-date is measured against the
    response's own ``Date`` header when that parses (so a skewed local clock does not matter),
    else against ``now`` (timezone-aware UTC). The result is clamped to [0, 900].
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return min(float(int(text)), MAX_RETRY_AFTER_S)
    try:
        float(text)
    except ValueError:
        pass
    else:  # "-5", "1.5", "nan": not delta-seconds as RFC 9110 defines them
        return None
    target = _parse_http_date(text)
    if target is None:
        return None
    reference = _parse_http_date(date_header) if date_header else None
    if reference is None:
        reference = now
    seconds = (target - reference).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _parse_http_date(text: str) -> dt.datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def error_for_status(
    status: int,
    *,
    body_text: str,
    headers: Mapping[str, str],
    url: str,
    series_uid: str | None = None,
    now: dt.datetime | None = None,
) -> HTTPStatusError | None:
    """Return the error a response with ``status`` means, or None for a success (< 400).

    ``headers`` should be case-insensitive (aiohttp's are); ``url`` is redacted by the
    error class. ``body_text`` may be the whole body; only an excerpt is kept.
    """
    if status < 400:
        return None
    # Scrubbed whole, before it is cut: a cut could leave half of an echoed secret behind.
    body_text = scrub(body_text)
    excerpt = body_text[:BODY_EXCERPT_CHARS]
    folded = body_text.casefold()
    detail = excerpt.strip().replace("\n", " ")
    suffix = f": {detail[:160]}" if detail else ""
    if status in (429, 503):
        retry_after = parse_retry_after(
            headers.get("Retry-After"), date_header=headers.get("Date"), now=now or dt.datetime.now(dt.UTC)
        )
        return RateLimitedError(
            f"HTTP {status}: server asks to slow down"
            + (f" (retry after {retry_after:g} s)" if retry_after is not None else ""),
            status=status,
            body_excerpt=excerpt,
            series_uid=series_uid,
            url=url,
            retry_after_s=retry_after,
        )
    if status >= 500:
        return ServerError(
            f"HTTP {status} server error{suffix}",
            status=status,
            body_excerpt=excerpt,
            series_uid=series_uid,
            url=url,
        )
    if status == 401:
        return UnauthorizedError(
            "HTTP 401: credentials refused",
            status=status,
            body_excerpt=excerpt,
            series_uid=series_uid,
            url=url,
        )
    if status == 400 and any(marker in folded for marker in _NO_ACCESS_MARKERS):
        return SeriesUnavailableError(
            "series unknown or not public (HTTP 400: no access granted)",
            status=status,
            body_excerpt=excerpt,
            series_uid=series_uid,
            url=url,
        )
    if status == 400 and any(marker in folded for marker in _INVALID_PARAMETER_MARKERS):
        return InvalidParameterError(
            f"HTTP 400: server refused a parameter{suffix}",
            status=status,
            body_excerpt=excerpt,
            series_uid=series_uid,
            url=url,
        )
    return RequestRejectedError(
        f"HTTP {status} request rejected{suffix}",
        status=status,
        body_excerpt=excerpt,
        series_uid=series_uid,
        url=url,
    )
