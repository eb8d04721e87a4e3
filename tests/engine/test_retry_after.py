"""Retry-After parsing (reliability.md A1, A1b, A1c, F4): seconds, HTTP-dates, skew, garbage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcia_fetch.engine.retry import parse_retry_after

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), (" 120 ", 120.0), ("0", 0.0), ("1.5", 1.5), ("900", 900.0), ("00030", 30.0)],
)
def test_delta_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW.timestamp(), date_header=None) == expected


@pytest.mark.parametrize("value", ["86400", "999999999999999999999999999"])
def test_huge_delta_is_clamped_to_the_maximum(value: str) -> None:
    assert parse_retry_after(value, now=NOW.timestamp(), date_header=None) == 900.0
    assert parse_retry_after(value, now=NOW.timestamp(), date_header=None, max_s=60.0) == 60.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-5",
        "-0.5",
        "soon",
        "7s",
        "1e3",
        "inf",
        "nan",
        "0x10",
        "7, 8",
        "Mon, 99 Foo 2026 99:99:99 GMT",
    ],
)
def test_garbage_and_negative_deltas_are_ignored(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW.timestamp(), date_header=None) is None


def test_http_date_measured_against_the_servers_own_date_header() -> None:
    # The server's clock is 10 minutes behind ours: its Date says 11:50, Retry-After says 11:50:30.
    server_now = NOW - timedelta(minutes=10)
    retry_at = server_now + timedelta(seconds=30)
    seconds = parse_retry_after(_http_date(retry_at), now=NOW.timestamp(), date_header=_http_date(server_now))
    assert seconds == 30.0
    # Without the Date header the same value would look like the past (clamped to 0), which is
    # exactly the mistake the Date header prevents.
    assert parse_retry_after(_http_date(retry_at), now=NOW.timestamp(), date_header=None) == 0.0


def test_http_date_server_ahead_of_us_is_not_inflated() -> None:
    server_now = NOW + timedelta(minutes=10)
    retry_at = server_now + timedelta(seconds=45)
    assert (
        parse_retry_after(_http_date(retry_at), now=NOW.timestamp(), date_header=_http_date(server_now)) == 45
    )
    assert parse_retry_after(_http_date(retry_at), now=NOW.timestamp(), date_header=None) == 645.0


def test_http_date_without_date_header_uses_local_wall_clock() -> None:
    retry_at = NOW + timedelta(seconds=90)
    assert parse_retry_after(_http_date(retry_at), now=NOW.timestamp(), date_header=None) == 90.0


def test_unparseable_date_header_falls_back_to_local_clock() -> None:
    retry_at = NOW + timedelta(seconds=90)
    assert parse_retry_after(_http_date(retry_at), now=NOW.timestamp(), date_header="yesterday-ish") == 90.0


@pytest.mark.parametrize(
    "value",
    ["Sun, 01 Mar 2026 12:01:00 GMT", "Sunday, 01-Mar-26 12:01:00 GMT", "Sun Mar  1 12:01:00 2026"],
)
def test_all_three_http_date_formats(value: str) -> None:
    assert parse_retry_after(value, now=NOW.timestamp(), date_header=None) == 60.0


def test_past_dates_mean_now_and_far_dates_are_clamped() -> None:
    assert (
        parse_retry_after(_http_date(NOW - timedelta(hours=3)), now=NOW.timestamp(), date_header=None) == 0.0
    )
    far = _http_date(NOW + timedelta(days=2))
    assert parse_retry_after(far, now=NOW.timestamp(), date_header=None) == 900.0


@given(st.text(max_size=40))
def test_never_raises_and_always_in_range(value: str) -> None:
    result = parse_retry_after(value, now=NOW.timestamp(), date_header=None)
    assert result is None or 0.0 <= result <= 900.0
