"""The pacing controls of one downloading process, built in one place.

A single-process run (engine/run.py) and every Dask worker process (cluster/remote.py) need the
same set: the AIMD limiter, the request pacer, the circuit breaker that restarts the limiter
after an outage, the optional byte-rate limiter and the body-byte budget. Building them here
keeps the two from drifting apart (they were two copies before, and the Dask copy had lost the
run-wide byte budget and the connection pool sizing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tcia_fetch.engine.breaker import CircuitBreaker
from tcia_fetch.engine.budget import ByteBudget, budget_for
from tcia_fetch.engine.clock import Clock
from tcia_fetch.engine.concurrency import AdaptiveLimiter
from tcia_fetch.engine.pacer import ByteRateLimiter, Pacer

__all__ = ["MAX_OUTAGE_S", "PacingControls", "pacing_controls"]

#: How long the breaker waits out an archive outage (or a throttle storm) before the run gives up,
#: unless the job says otherwise (``download.max_outage_s``).
MAX_OUTAGE_S: Final = 1800.0


@dataclass(frozen=True, slots=True)
class PacingControls:
    """What every ``SeriesWorker`` of one process shares."""

    limiter: AdaptiveLimiter
    pacer: Pacer
    breaker: CircuitBreaker
    bandwidth: ByteRateLimiter | None
    budget: ByteBudget


def pacing_controls(
    concurrency: int,
    *,
    max_requests_per_s: float | None,
    max_bytes_per_s: float | None,
    clock: Clock,
    max_outage_s: float = MAX_OUTAGE_S,
) -> PacingControls:
    """Controls for ``concurrency`` downloads at once under the given rate caps (None: no cap).

    The breaker is the one the planner shares too: planner throttles count on its storm clock.
    """
    limiter = AdaptiveLimiter(concurrency, clock=clock)
    return PacingControls(
        limiter=limiter,
        pacer=Pacer(clock, max_requests_per_s=max_requests_per_s),
        breaker=CircuitBreaker(clock, max_outage_s=max_outage_s, on_close=lambda: limiter.restart(1)),
        bandwidth=ByteRateLimiter(max_bytes_per_s, clock) if max_bytes_per_s else None,
        budget=budget_for(concurrency),
    )
