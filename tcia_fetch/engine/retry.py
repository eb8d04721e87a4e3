"""One retry policy for the whole program: how long to wait, and when to give up.

The decision reads only the error's class attributes (``retryable``, ``fatal``) and its
``retry_after_s``; never message text (reliability.md §4.1, rclone's lesson). The maths is
synchronous and takes an injected ``random.Random``, so every schedule is reproducible in tests;
only :func:`retry_call` awaits, and it sleeps through an injected :class:`Clock`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, TypeVar

from tcia_fetch.engine.clock import Clock, SystemClock
from tcia_fetch.errors import InputError, IntegrityError, TciaFetchError

if TYPE_CHECKING:
    from tcia_fetch.engine.breaker import CircuitBreaker
    from tcia_fetch.engine.pacer import Pacer

__all__ = [
    "RetryPolicy",
    "RetryRecord",
    "RetryState",
    "parse_retry_after",
    "retry_call",
]

T = TypeVar("T")

#: The upper bound RFC-compliant servers are given for Retry-After before we stop listening.
DEFAULT_MAX_RETRY_AFTER_S = 900.0

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one series (or one query) is retried. Immutable; share it freely.

    :param attempts: network attempts per series, the first included (6 = 1 + 5 retries).
        Transport, HTTP and metadata errors count here.
    :param integrity_attempts: downloads per series that may fail verification before the
        series is given up (3 = the first download + 2 re-downloads, reliability.md B1-B5).
        Counted separately: a corrupt archive says nothing about the network.
    :param base_s: first backoff ceiling; ceilings double per retry.
    :param cap_s: the largest backoff ceiling.
    :param floor_s: the smallest backoff, so a retry never hammers the server at once.
    :param max_retry_after_s: a server's ``Retry-After`` is honoured up to this many seconds.
    :param deadline_s: optional wall time per series (monotonic), after which no retry is
        scheduled that would end past it.
    :param testing: every delay becomes 0 (attempt counting is unchanged), like stamina's
        testing mode; for tests that exercise retry paths against a real server.
    """

    attempts: int = 6
    integrity_attempts: int = 3
    base_s: float = 1.0
    cap_s: float = 60.0
    floor_s: float = 0.25
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    deadline_s: float | None = None
    testing: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.attempts < 1:
            problems.append(f"attempts must be >= 1, not {self.attempts}")
        if self.integrity_attempts < 1:
            problems.append(f"integrity_attempts must be >= 1, not {self.integrity_attempts}")
        for name in ("base_s", "cap_s", "floor_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                problems.append(f"{name} must be a finite number >= 0, not {value}")
        if self.floor_s > self.cap_s:
            problems.append(f"floor_s ({self.floor_s}) must not exceed cap_s ({self.cap_s})")
        if self.deadline_s is not None and not self.deadline_s > 0:
            problems.append(f"deadline_s must be > 0 when set, not {self.deadline_s}")
        if problems:
            raise InputError("; ".join(problems), source="retry policy")

    def backoff_ceiling_s(self, retry_index: int) -> float:
        """``min(cap, base * 2**n)`` for the 0-based retry index ``n``, without overflowing."""
        if retry_index >= 64:
            return self.cap_s
        return min(self.cap_s, self.base_s * 2.0**retry_index)


@dataclass(frozen=True, slots=True)
class RetryRecord:
    """One failed attempt, for the run report: what failed and how long we waited (None = gave up)."""

    reference: str
    delay_s: float | None
    integrity: bool


def _reference(error: BaseException) -> str:
    if isinstance(error, TciaFetchError):
        return error.reference
    return type(error).__name__


class RetryState:
    """The retry bookkeeping of ONE series (or one query): create a fresh one per series.

    Call :meth:`next_delay` with each error; it returns the seconds to wait before the next
    attempt, or ``None`` to give up. Call :meth:`note_progress` when a failed attempt had
    delivered real bytes: the network budget then starts over, because a long transfer that
    broke after progress is not a dead server (huggingface_hub's rule).

    Not thread-safe and not shared between tasks; it holds no locks and never sleeps.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        rng: random.Random | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock if clock is not None else SystemClock()
        self._started_at = self._clock.monotonic()
        self._network_failures = 0
        self._integrity_failures = 0
        self._history: list[RetryRecord] = []

    @property
    def attempts_made(self) -> int:
        """Failed attempts recorded so far; the attempt that succeeds is number ``attempts_made + 1``."""
        return len(self._history)

    @property
    def network_failures(self) -> int:
        """Network-class failures since the start or since the last :meth:`note_progress`."""
        return self._network_failures

    @property
    def integrity_failures(self) -> int:
        """Downloads that failed verification (never reset by progress)."""
        return self._integrity_failures

    @property
    def history(self) -> tuple[RetryRecord, ...]:
        """Every failed attempt in order, with the delay chosen (None = the one we gave up on)."""
        return tuple(self._history)

    def note_progress(self) -> None:
        """Bytes flowed in the attempt that just failed: refill the network budget and backoff."""
        self._network_failures = 0

    def next_delay(self, error: BaseException) -> float | None:
        """Seconds to wait before retrying after ``error``, or ``None`` when the series should stop.

        Fatal and non-retryable errors stop at once. ``IntegrityError`` counts against
        ``integrity_attempts``, everything else retryable against ``attempts``. A server's
        ``retry_after_s`` replaces the computed backoff (clamped to ``max_retry_after_s``) and
        gets a little jitter so workers released by one shared gate do not arrive together.
        """
        delay = self._decide(error)
        record = RetryRecord(_reference(error), delay, integrity=isinstance(error, IntegrityError))
        self._history.append(record)
        return delay

    def _decide(self, error: BaseException) -> float | None:
        if getattr(error, "fatal", False) or not getattr(error, "retryable", False):
            return None
        if isinstance(error, IntegrityError):
            self._integrity_failures += 1
            if self._integrity_failures >= self.policy.integrity_attempts:
                return None
            retry_index = self._integrity_failures - 1
        else:
            self._network_failures += 1
            if self._network_failures >= self.policy.attempts:
                return None
            retry_index = self._network_failures - 1

        retry_after = getattr(error, "retry_after_s", None)
        if isinstance(retry_after, int | float) and math.isfinite(retry_after) and retry_after >= 0:
            delay = self._after_server_hint(float(retry_after))
        else:
            delay = self._backoff(retry_index)
        if self.policy.testing:
            delay = 0.0
        if self.policy.deadline_s is not None:
            elapsed = self._clock.monotonic() - self._started_at
            if elapsed + delay > self.policy.deadline_s:
                return None
        return delay

    def _backoff(self, retry_index: int) -> float:
        ceiling = self.policy.backoff_ceiling_s(retry_index)
        return max(self.policy.floor_s, self._rng.uniform(0.0, ceiling))

    def _after_server_hint(self, retry_after_s: float) -> float:
        wait = min(retry_after_s, self.policy.max_retry_after_s)
        return wait + self._rng.uniform(0.0, min(5.0, 0.1 * wait + 1.0))


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    clock: Clock,
    on_retry: Callable[[BaseException, float], None] | None = None,
    rng: random.Random | None = None,
    pacer: Pacer | None = None,
    breaker: CircuitBreaker | None = None,
) -> T:
    """Await ``fn()`` until it succeeds or :class:`RetryState` gives up; re-raise the last error.

    For planner queries (metadata, series lists). When ``pacer`` is given, every attempt first
    waits its turn there and throttles close the shared gate, so queries and downloads obey
    one Retry-After. ``on_retry(error, delay_s)`` is called before each wait (for logging).
    Only ``Exception`` is caught: cancellation always propagates at once.

    When ``breaker`` is given (a run's planner), throttles and answers are reported to its
    throttle-storm watch, and a storm that outlasts the run's outage limit ends the call with
    the breaker's fatal :class:`~tcia_fetch.errors.ServerUnreachableError` instead of retrying.
    """
    state = RetryState(policy, rng, clock=clock)
    while True:
        if breaker is not None:
            breaker.check_throttle_storm()
        if pacer is not None:
            await pacer.wait_turn()
        try:
            result = await fn()
        except Exception as error:
            delay = state.next_delay(error)
            throttled = getattr(error, "throttle", False)
            if pacer is not None and throttled:
                pacer.on_throttle(getattr(error, "retry_after_s", None))
            if breaker is not None and throttled:
                breaker.on_throttle()
                breaker.check_throttle_storm()
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(error, delay)
            await clock.sleep(delay)
        else:
            if pacer is not None:
                pacer.on_success()
            if breaker is not None:
                breaker.on_progress()
            return result


def parse_retry_after(
    value: str | None,
    *,
    now: float,
    date_header: str | None = None,
    max_s: float = DEFAULT_MAX_RETRY_AFTER_S,
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value; ``None`` when absent or unusable.

    Accepts delta-seconds (``"7"``; a decimal point is tolerated) and HTTP-dates (IMF-fixdate,
    RFC 850, asctime; RFC 9110 §10.2.3). An HTTP-date is measured against the same response's
    ``Date`` header when that parses, so a server whose clock is off by minutes still means
    what it says (reliability.md A1b); otherwise against ``now`` (wall-clock epoch seconds).
    The result is clamped to ``[0, max_s]``: a date in the past means "now", an absurd value
    means "the most we are willing to wait". A negative or non-numeric delta is garbage, and
    garbage yields ``None`` so the caller falls back to its own backoff (A1c).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return min(max(seconds, 0.0), max_s) if math.isfinite(seconds) else max_s
    retry_at = _parse_http_date(text)
    if retry_at is None:
        return None
    reference = _parse_http_date(date_header) if date_header is not None else None
    seconds = retry_at - (reference if reference is not None else now)
    return min(max(seconds, 0.0), max_s)


def _parse_http_date(text: str) -> float | None:
    if not re.search(r"[A-Za-z]{3}", text):
        return None
    try:
        parsed = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
