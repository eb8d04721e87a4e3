"""The fake server's load model (pacing, first-byte delay, download cap) and its counters.

The real NBIA has no documented rate limit; benchmarks still need a server that behaves like a busy
one: each download connection is paced to ``bytes_per_s_per_connection``, the first body byte waits
``first_byte_delay_s`` (the real server runs its DB query inside the stream), queries wait
``query_delay_s``, and more than ``max_concurrent_downloads`` simultaneous downloads get ``429`` with
``Retry-After`` (what a front-end limiter would send). ``total_bytes_per_s`` caps the bytes of every
download together (a full uplink): the per-stream rate then falls as streams are added, and a client
that opens more connections gains nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

__all__ = ["LoadModel", "Pacer", "ServerStats", "SharedLink", "StatsCounter", "retry_after_header"]


@dataclass(frozen=True)
class LoadModel:
    """How busy the fake server pretends to be. ``None`` disables a limit."""

    bytes_per_s_per_connection: float | None = None
    first_byte_delay_s: float = 0.0
    max_concurrent_downloads: int | None = None
    retry_after_s: float = 1.0
    query_delay_s: float = 0.0
    total_bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.bytes_per_s_per_connection is not None and self.bytes_per_s_per_connection <= 0:
            raise ValueError("bytes_per_s_per_connection must be positive")
        if self.total_bytes_per_s is not None and self.total_bytes_per_s <= 0:
            raise ValueError("total_bytes_per_s must be positive")
        if self.max_concurrent_downloads is not None and self.max_concurrent_downloads < 1:
            raise ValueError("max_concurrent_downloads must be at least 1")
        if min(self.first_byte_delay_s, self.retry_after_s, self.query_delay_s) < 0:
            raise ValueError("delays must not be negative")

    def chunk_bytes(self, default: int) -> int:
        """Write size: small enough that pacing is smooth (about 20 writes per second when paced)."""
        rates = [r for r in (self.bytes_per_s_per_connection, self.total_bytes_per_s) if r is not None]
        if not rates:
            return default
        return max(512, min(default, int(min(rates) / 20)))


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` as HTTP wants it: whole seconds, rounded up."""
    return str(max(0, math.ceil(seconds)))


class Pacer:
    """Keeps one connection's average byte rate at or below ``bytes_per_s`` (sleep-based)."""

    def __init__(self, bytes_per_s: float | None) -> None:
        self._rate = bytes_per_s
        self._start = time.monotonic()
        self._sent = 0

    def delay_after(self, sent_bytes: int) -> float:
        """Seconds to wait after sending ``sent_bytes`` more bytes (0 when unpaced or behind)."""
        self._sent += sent_bytes
        if self._rate is None:
            return 0.0
        due = self._start + self._sent / self._rate
        return max(0.0, due - time.monotonic())


class SharedLink:
    """One link of ``bytes_per_s`` shared by every download (event-loop thread only).

    Each write books its bytes on the link after the bytes already booked: the delay returned
    is when the link will have carried them. With k streams writing, each gets about 1/k.
    """

    def __init__(self, bytes_per_s: float | None) -> None:
        self._rate = bytes_per_s
        self._free_at = 0.0

    def delay_after(self, sent_bytes: int) -> float:
        """Seconds to wait after sending ``sent_bytes`` more bytes (0 when unlimited)."""
        if self._rate is None:
            return 0.0
        now = time.monotonic()
        self._free_at = max(self._free_at, now) + sent_bytes / self._rate
        return self._free_at - now


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of the server's counters (``as_dict()`` is what ``--stats-file`` writes)."""

    requests: int
    downloads_started: int
    downloads_completed: int
    downloads_aborted: int
    download_body_bytes: int
    rate_limited_responses: int
    peak_concurrent_downloads: int
    active_downloads: int
    token_grants: int
    token_refreshes: int
    token_rejections: int
    faults_fired: dict[str, int] = field(default_factory=dict)
    status_counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-able dict."""
        return asdict(self)


@dataclass
class StatsCounter:
    """Mutable counters owned by the server (event-loop thread only)."""

    requests: int = 0
    downloads_started: int = 0
    downloads_completed: int = 0
    downloads_aborted: int = 0
    download_body_bytes: int = 0
    rate_limited_responses: int = 0
    peak_concurrent_downloads: int = 0
    active_downloads: int = 0
    token_grants: int = 0
    token_refreshes: int = 0
    token_rejections: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)

    def count_status(self, status: int) -> None:
        """Tally one response status (429s also counted in ``rate_limited_responses``)."""
        key = str(status)
        self.status_counts[key] = self.status_counts.get(key, 0) + 1
        if status == 429:
            self.rate_limited_responses += 1

    def enter_download(self) -> None:
        """A download starts streaming."""
        self.active_downloads += 1
        self.downloads_started += 1
        self.peak_concurrent_downloads = max(self.peak_concurrent_downloads, self.active_downloads)

    def leave_download(self, *, completed: bool) -> None:
        """A download ended (completed or aborted by a fault or the client)."""
        self.active_downloads -= 1
        if completed:
            self.downloads_completed += 1
        else:
            self.downloads_aborted += 1

    def snapshot(self, faults_fired: dict[str, int]) -> ServerStats:
        """Frozen copy."""
        return ServerStats(
            requests=self.requests,
            downloads_started=self.downloads_started,
            downloads_completed=self.downloads_completed,
            downloads_aborted=self.downloads_aborted,
            download_body_bytes=self.download_body_bytes,
            rate_limited_responses=self.rate_limited_responses,
            peak_concurrent_downloads=self.peak_concurrent_downloads,
            active_downloads=self.active_downloads,
            token_grants=self.token_grants,
            token_refreshes=self.token_refreshes,
            token_rejections=self.token_rejections,
            faults_fired=dict(faults_fired),
            status_counts=dict(self.status_counts),
        )
