"""Status → error mapping and Retry-After parsing."""

from __future__ import annotations

import datetime as dt

import pytest

from tcia_fetch.api.status import error_for_status, parse_retry_after
from tcia_fetch.errors import (
    InvalidParameterError,
    RateLimitedError,
    RequestRejectedError,
    SeriesUnavailableError,
    ServerError,
    UnauthorizedError,
)

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
URL = "https://u:secret@nbia.example/nbia-api/services/v4/getImage?SeriesInstanceUID=1.2&access_token=abc"


@pytest.mark.parametrize(
    ("value", "date", "expected"),
    [
        ("120", None, 120.0),
        ("0", None, 0.0),
        ("100000", None, 900.0),
        ("Thu, 01 Jan 2026 12:00:30 GMT", None, 30.0),
        ("Thu, 01 Jan 2026 12:00:30 GMT", "Thu, 01 Jan 2026 12:00:20 GMT", 10.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", None, 0.0),
        ("Fri, 02 Jan 2026 12:00:00 GMT", None, 900.0),
        ("Thu, 01 Jan 2026 12:00:30 GMT", "garbage", 30.0),
        ("soon", None, None),
        ("-5", None, None),
        ("1.5", None, None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_retry_after(value: str | None, date: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, date_header=date, now=NOW) == expected


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (429, "", RateLimitedError),
        (503, "busy", RateLimitedError),
        (500, "Server was not able to process your request\nnull", ServerError),
        (502, "<html>bad gateway</html>", ServerError),
        (401, "", UnauthorizedError),
        (
            400,
            "The user has not been granted the access to image with given SeriesInstanceUID,1.2. "
            "Please contact System Admin to resolve this issue.",
            SeriesUnavailableError,
        ),
        (400, "Image with given SeriesInstanceUID,1.2, is not in public domain.", SeriesUnavailableError),
        (
            400,
            "Invalid query parameter: 'format'. Allowed parameters are: [SeriesInstanceUID]",
            InvalidParameterError,
        ),
        (400, "A parameter, SeriesInstanceUID, is required for this API call.", RequestRejectedError),
        (404, "not found", RequestRejectedError),
    ],
)
def test_status_classes(status: int, body: str, kind: type[Exception]) -> None:
    error = error_for_status(status, body_text=body, headers={}, url=URL, series_uid="1.2", now=NOW)
    assert type(error) is kind
    assert error is not None
    assert error.status == status
    assert error.series_uid == "1.2"
    assert error.body_excerpt == body[:300]
    assert "secret" not in str(error) and "abc" not in str(error)


def test_success_is_no_error() -> None:
    assert error_for_status(200, body_text="", headers={}, url=URL) is None


def test_rate_limit_carries_retry_after_and_excerpt_is_bounded() -> None:
    error = error_for_status(429, body_text="x" * 5000, headers={"Retry-After": "7"}, url=URL, now=NOW)
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s == 7.0
    assert len(error.body_excerpt) == 300
    assert error.retryable and error.throttle
