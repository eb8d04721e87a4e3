"""Adaptive concurrency: how many series download at once (reliability.md §4.6).

Each download is a long stream, so the number of concurrent series is the control variable
(Little's law: throughput = concurrency / time per series). :class:`AimdController` is the pure
decision logic (times passed in, no awaits); :class:`AdaptiveLimiter` is the async gate the
workers enter. Lowering the limit never cancels work in flight: it only holds back new starts.

What the controller does, and why:

* **Ramp.** From the start (and after an outage) the limit rises by one slot per step while
  every slot is busy, up to the user's ``--concurrency``. Starts are spaced rather than sent in
  waves, so a server with a concurrency cap refuses one request, not a whole wave: its 429 comes
  back before the next start. A step is two round trips (the fastest recent answer to any
  request, ``observe_round_trip``), between 5 ms and ``ramp_interval_s`` (50 ms). Against a
  server that answers in a millisecond or two, a fixed 50 ms started the 24th slot a second
  after the first, and a slot that starts late finishes its share of the job late: the cap24
  benchmark (24 slots, two series each) took 8.53 s with it and 8.20 s with 5 ms steps.
* **Learn the cap.** A throttle (429) says the server would not take one more: the limit drops
  to the number of downloads in flight when it came (what the server did accept), and the
  level above is remembered as the server's cap. Growing back to it needs ``probe_after_epochs``
  clean epochs, doubling per failed probe, and at least ``min_probe_interval_s`` (60 s) since
  the last throttle, so a hard cap is knocked on rarely: every 429 closes the shared pacer's
  gate for everyone (Retry-After), so a probe each few epochs of 2 s cost a tiny-series job a
  second of stall each time (the tiny-latency benchmark: 2-4 s of 14).
* **No idle connections.** Without a cap, once the ramp is over the controller compares the
  goodput (body bytes per second) of whole epochs at neighbouring limits: when a quarter fewer
  streams deliver as much, the extra streams added nothing (a shared link is full), the limit
  stays lower and the next trial halves it, until fewer streams deliver less (never below the
  default concurrency, 4: ``_NO_GAIN_FLOOR``); the higher level
  is remembered like a cap (probed rarely, kept only if it really adds goodput). Epochs that
  moved fewer than ``min_measured_bytes`` say nothing about goodput and are not compared, nor
  do epochs that began during the ramp. One epoch's goodput is noisy (a reader that fell behind
  catches up on what the kernel buffered: ±10 % on a loaded machine), so a level is judged by
  the mean of its last epochs against the pooled mean of the plateau above it, a trial that
  falls only a little short is measured once more, and a trial is measured from the moment the
  downloads admitted above its limit have finished rather than from the next epoch.
* **Back off on trouble.** Timeouts and transient errors cut the limit to three quarters
  (rounded half up, always at least one slot) at most once per epoch, then freeze growth.

Epochs play TCP's round trip: an epoch lasts ``max(min_epoch_s, median recent series time)``
(capped at ``max_epoch_s``). Growth needs a clean epoch in which the limit was used (every slot
busy for ``min_used_fraction`` of it): an idle or slow-producer run does not inflate a limit it
never tested.
"""

from __future__ import annotations

import math
import statistics as stats
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import anyio

from tcia_fetch.engine.clock import Clock

__all__ = ["AdaptiveLimiter", "AimdController", "CongestionKind", "LimiterStatistics", "Slot"]

CongestionKind = Literal["throttle", "transient", "timeout"]

_DECREASE_FACTORS: dict[str, float] = {"transient": 0.75, "timeout": 0.75}
#: Measured epochs kept per limit for the no-gain comparison (older ones describe other times).
_SAMPLES_PER_LEVEL = 4
#: A trial short of its base by less than this many tolerances is measured for more epochs.
_UNSURE_TOLERANCES = 3
_TRIAL_EPOCHS_WHEN_UNSURE = 2
#: A ramp step is this many round trips: the refusal of the last start has come back by then.
_RAMP_ROUND_TRIPS = 2
#: The shortest ramp step, however fast the server answers (a step per loop wake-up is a wave).
_MIN_RAMP_STEP_S = 0.005
#: The no-gain rule never takes the limit below this: the default concurrency, a level a polite
#: user runs anyway. Below it a trial saves a connection or two and risks a quarter of the
#: throughput for an epoch; measured on the tcia-like benchmark (4 streams at 2 MB/s each), the
#: trial of 3, and once of 2, left 12-series runs at 1.39 x their limit instead of 1.05 x.
_NO_GAIN_FLOOR = 4


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """A snapshot of the controller: where the limit is and how it got there.

    ``learned_cap`` is the most downloads the server accepted when it last throttled (None if
    it never did); ``no_gain_limit`` the lowest level found to add no goodput (None if none);
    ``shortest_ramp_step_s`` the shortest wait between two ramp steps (None if it never
    stepped), which follows the server's round trip.
    """

    limit: int
    max_limit: int
    in_flight: int
    peak_in_flight: int
    increases: int
    decreases: int
    congestion_signals: int
    successes: int
    bytes_completed: int
    epoch_s: float
    learned_cap: int | None = None
    no_gain_limit: int | None = None
    shortest_ramp_step_s: float | None = None


class AimdController:
    """Pure controller over the number of concurrent series. All methods take ``now`` explicitly.

    See the module docstring for the policy. ``_ceiling`` is the remembered level (a throttle's
    learned cap plus one, or a level that added no goodput) that growth approaches only after
    ``_probe_wait_epochs`` clean epochs in a row; a failed probe doubles that wait (up to
    ``max_probe_after_epochs``).
    """

    def __init__(
        self,
        max_limit: int,
        *,
        initial: int | None = None,
        now: float = 0.0,
        min_epoch_s: float = 2.0,
        max_epoch_s: float = 120.0,
        freeze_epochs: int = 2,
        duration_window: int = 32,
        probe_after_epochs: int = 2,
        max_probe_after_epochs: int = 64,
        min_used_fraction: float = 0.5,
        ramp_interval_s: float = 0.05,
        gain_tolerance: float = 0.05,
        min_measured_bytes: int = 16 << 20,
        min_probe_interval_s: float = 60.0,
    ) -> None:
        if max_limit < 1:
            raise ValueError(f"max_limit must be >= 1, not {max_limit}")
        if initial is not None and initial < 1:
            raise ValueError(f"initial must be >= 1 when given, not {initial}")
        if not (0 < min_epoch_s <= max_epoch_s):
            raise ValueError("need 0 < min_epoch_s <= max_epoch_s")
        if ramp_interval_s < 0 or not (0 <= gain_tolerance < 1):
            raise ValueError("need ramp_interval_s >= 0 and 0 <= gain_tolerance < 1")
        self.max_limit = max_limit
        self.min_epoch_s = min_epoch_s
        self.max_epoch_s = max_epoch_s
        self.freeze_epochs = freeze_epochs
        self.probe_after_epochs = max(1, probe_after_epochs)
        self.max_probe_after_epochs = max(self.probe_after_epochs, max_probe_after_epochs)
        self.min_used_fraction = min_used_fraction
        self.ramp_interval_s = ramp_interval_s
        self.gain_tolerance = gain_tolerance
        #: An epoch that moved fewer body bytes says nothing about goodput (tiny series, idling).
        self.min_measured_bytes = min_measured_bytes
        #: No probe above a cap a throttle taught sooner than this after that throttle.
        self.min_probe_interval_s = max(0.0, min_probe_interval_s)
        self._last_throttle_at = -math.inf
        self._full_since: float | None = None
        self._full_s = 0.0
        self._ceiling: int | None = None
        self._ceiling_from_goodput = False
        self._learned_cap: int | None = None
        #: Refinements of a cap learned this epoch stay above this (at most a halving per epoch).
        self._cut_floor = 0
        self._probe_wait_epochs = self.probe_after_epochs
        self._clean_streak = 0
        self._limit = min(initial if initial is not None else 2, max_limit)
        self._ramping = self._limit < max_limit
        self._ramp_next_at = now
        self._round_trip_s: float | None = None
        self._shortest_ramp_step_s: float | None = None
        self._durations: deque[float] = deque(maxlen=max(1, duration_window))
        self._epoch_len: float | None = None
        self._epoch_start = now
        self._epoch_began_ramping = self._ramping
        self._in_flight = 0
        self._streaming = 0
        self._epoch_peak = 0
        self._epoch_over_limit = False
        self._epoch_bytes = 0
        self._overall_peak = 0
        self._congested_this_epoch = False
        self._decreased_this_epoch = False
        self._freeze_remaining = 0
        #: Goodput (bytes/s) of the last few measured epochs at each limit, for the no-gain
        #: comparison: one 2-second epoch is noisy (bytes buffered in the kernel arrive in bursts
        #: when the reader catches up: ±10 % on a loaded 2-core machine), so levels are compared
        #: by their means.
        self._goodput: dict[int, deque[float]] = {}
        #: While trying a lower limit: the limit it was tried from.
        self._trial_from: int | None = None
        #: The highest limit of the levels found to deliver no more than the ones below them.
        self._plateau_top: int | None = None
        #: Measured epochs of the trial under way.
        self._trial_epochs = 0
        #: While probing one slot above a no-gain level: the limit it probed from.
        self._probe_from: int | None = None
        #: Measured epochs to wait before the next trial of a lower limit (0: right after the
        #: ramp); doubles each time a trial finds fewer streams worse, so noise cannot pin it.
        self._trial_wait_epochs = 0
        self._epochs_since_trial = 0
        self._increases = 0
        self._decreases = 0
        self._congestion_signals = 0
        self._successes = 0
        self._bytes_completed = 0
        self._trace: list[tuple[float, int]] = [(now, self._limit)]

    @property
    def limit(self) -> int:
        """How many series may be in flight now."""
        return self._limit

    @property
    def trace(self) -> tuple[tuple[float, int], ...]:
        """Every change of the limit as ``(time, limit)``, starting with the initial value."""
        return tuple(self._trace)

    @property
    def ramping(self) -> bool:
        """True while the limit still rises one slot per ramp step."""
        return self._ramping

    def epoch_s(self) -> float:
        """The current epoch length: the median recent series time, within the configured bounds."""
        if self._epoch_len is None:  # a median per series, not per tick (tick runs per start and end)
            median = stats.median(self._durations) if self._durations else self.min_epoch_s
            self._epoch_len = min(self.max_epoch_s, max(self.min_epoch_s, median))
        return self._epoch_len

    def next_growth_at(self) -> float | None:
        """When the ramp may next add a slot (None unless ramping with every slot busy).

        The async gate sleeps until then instead of waiting for an event that would not come.
        """
        if self._ramping and self._limit < self.max_limit and self._in_flight >= self._limit:
            return self._ramp_next_at
        return None

    def observe_in_flight(self, in_flight: int, now: float) -> None:
        """The number of series in flight changed (a start or a finish)."""
        self.tick(now)
        previous, self._in_flight = self._in_flight, in_flight
        if self._trial_from is not None and self._epoch_over_limit and previous > in_flight <= self._limit:
            # A trial's lower limit is in force now that the downloads admitted above it have
            # finished: measure it from here, instead of after the rest of an epoch that can
            # measure nothing (it saves an epoch per trial; a short job has only a few).
            self._start_epoch(now)
        self._epoch_peak = max(self._epoch_peak, in_flight)
        if in_flight > self._limit:
            self._epoch_over_limit = True
        self._track_full_use(now)
        self._overall_peak = max(self._overall_peak, in_flight)

    def observe_streaming(self, streaming: int) -> None:
        """The number of downloads the server has answered (headers received) changed."""
        self._streaming = streaming

    def on_bytes(self, nbytes: int) -> None:
        """Body bytes arrived (any series): the goodput the current limit delivers."""
        self._epoch_bytes += nbytes

    def on_success(self, now: float, duration_s: float, nbytes: int = 0) -> None:
        """A series finished cleanly after ``duration_s`` seconds (feeds the epoch length)."""
        self.tick(now)
        self._successes += 1
        self._bytes_completed += max(0, nbytes)
        if math.isfinite(duration_s) and duration_s >= 0:
            self._durations.append(duration_s)
            self._epoch_len = None

    def on_congestion(self, now: float, kind: CongestionKind, *, others_in_flight: int | None = None) -> bool:
        """The server pushed back. Returns True if this signal lowered the limit.

        ``others_in_flight`` is how many downloads were in flight besides the refused one (what
        the server was serving alongside it); by default, everything in flight now (a caller
        that has already left its slot).
        """
        self.tick(now)
        others = self._in_flight if others_in_flight is None else max(0, others_in_flight)
        streaming = min(self._streaming, others)
        self._congestion_signals += 1
        self._congested_this_epoch = True
        self._ramping = False
        self._trial_from = None
        self._probe_from = None
        if self._decreased_this_epoch:
            refine = kind == "throttle" and self._learned_cap is not None
            if refine and self._cut_floor < others < self._limit:
                # A request that was already on its way when the cap was learned came back
                # refused too: the server took fewer than we thought. Refine, do not cut again.
                self._learned_cap = others
                self._ceiling = others + 1
                self._set_limit(others, now)
            return False
        if self._ceiling is not None and self._limit >= self._ceiling:
            self._probe_wait_epochs = min(self.max_probe_after_epochs, self._probe_wait_epochs * 2)
        else:
            self._probe_wait_epochs = self.probe_after_epochs
        self._clean_streak = 0
        if kind == "throttle":
            self._last_throttle_at = now
            # The server took ``in_flight`` and refused one more: hold there, remember the cap.
            # Never more than a halving, though: a lone 429 at a quiet moment is no cap of 1.
            # Throttled again at (or below) a cap already learned, the server's capacity fell:
            # then only the downloads it has really answered count (the others in flight may
            # be refused too).
            half = math.floor(self._limit * 0.5 + 0.5)
            self._cut_floor = half - 1
            repeated = self._learned_cap is not None and self._limit <= self._learned_cap
            accepted = streaming if repeated and streaming > 0 else others
            new_limit = max(1, min(self._limit - 1, max(accepted, half)))
            if accepted >= half:
                self._learned_cap = new_limit
                self._ceiling = new_limit + 1
            else:
                self._ceiling = self._limit
            self._ceiling_from_goodput = False
        else:
            factor = _DECREASE_FACTORS[kind]
            # Round half up, but always cut by at least one: x0.75 of 3 is 2.
            new_limit = max(1, min(self._limit - 1, math.floor(self._limit * factor + 0.5)))
            self._ceiling = self._limit
            self._ceiling_from_goodput = False
        self._decreased_this_epoch = True
        self._freeze_remaining = self.freeze_epochs
        self._start_epoch(now)
        self._decreases += 1
        self._set_limit(new_limit, now)
        return True

    def on_admitted(self, now: float) -> None:
        """The server accepted a request (response headers, no error)."""
        self.tick(now)

    def restart(self, now: float, limit: int = 1) -> None:
        """Ramp again after an outage (the circuit breaker closed): back to ``limit``, new epoch."""
        self._start_epoch(now)
        self._congested_this_epoch = False
        self._decreased_this_epoch = False
        self._freeze_remaining = 0
        self._clean_streak = 0
        self._trial_from = None
        self._probe_from = None
        self._ramping = True
        self._ramp_next_at = now
        self._set_limit(max(1, min(limit, self.max_limit)), now)

    def tick(self, now: float) -> None:
        """Close every epoch that has ended by ``now`` and advance the ramp (cheap)."""
        self._ramp(now)
        epoch = self.epoch_s()
        # Beyond max_limit + freeze epochs nothing more can change, so long idle gaps stay O(1).
        for _ in range(self.max_limit + self.freeze_epochs + 1):
            if now < self._epoch_start + epoch:
                return
            self._end_epoch(self._epoch_start + epoch)
        if now >= self._epoch_start + epoch:
            self._start_epoch(now)

    def _ramp(self, now: float) -> None:
        if not self._ramping:
            return
        if self._limit >= self.max_limit or (self._ceiling is not None and self._limit + 1 >= self._ceiling):
            self._ramping = False
            return
        if self._in_flight >= self._limit and now >= self._ramp_next_at:
            self._increases += 1
            step = self.ramp_step_s()
            self._ramp_next_at = now + step
            if self._shortest_ramp_step_s is None or step < self._shortest_ramp_step_s:
                self._shortest_ramp_step_s = step
            self._set_limit(self._limit + 1, now)
            if self._limit >= self.max_limit:
                self._ramping = False

    def observe_round_trip(self, seconds: float | None) -> None:
        """The fastest recent answer to any request (None: none yet), which sets the ramp's step."""
        self._round_trip_s = seconds

    def ramp_step_s(self) -> float:
        """Time between two ramp steps: two round trips, within [5 ms, ``ramp_interval_s``]."""
        if self._round_trip_s is None:
            return self.ramp_interval_s
        step = max(_MIN_RAMP_STEP_S, _RAMP_ROUND_TRIPS * self._round_trip_s)
        return min(self.ramp_interval_s, step)

    def _start_epoch(self, now: float) -> None:
        self._epoch_start = now
        # An epoch that began while the limit still climbed measures the climb, not a level.
        self._epoch_began_ramping = self._ramping
        self._epoch_peak = self._in_flight
        self._epoch_over_limit = self._in_flight > self._limit
        self._epoch_bytes = 0
        self._full_s = 0.0
        self._full_since = now if self._in_flight >= self._limit else None

    def _track_full_use(self, now: float) -> None:
        """Accumulate the time during which every slot was busy (in flight >= limit)."""
        full = self._in_flight >= self._limit
        if full and self._full_since is None:
            self._full_since = now
        elif not full and self._full_since is not None:
            self._full_s += now - self._full_since
            self._full_since = None

    def _end_epoch(self, end: float) -> None:
        clean = not self._congested_this_epoch
        if self._full_since is not None:
            self._full_s += end - self._full_since
            self._full_since = end
        length = end - self._epoch_start
        used = self._full_s >= self.min_used_fraction * length - 1e-9
        # A goodput sample counts only for an epoch spent at its limit: busy, and never above
        # it (just after a cut, downloads admitted under the old limit are still running).
        measured = (
            clean
            and used
            and not self._epoch_over_limit
            and not self._ramping
            and not self._epoch_began_ramping
            and length > 0
            and self._epoch_bytes >= self.min_measured_bytes
        )
        goodput = self._epoch_bytes / length if length > 0 else 0.0
        limit = self._limit
        self._start_epoch(end)
        self._congested_this_epoch = False
        self._decreased_this_epoch = False
        if not clean:
            self._clean_streak = 0
        if self._freeze_remaining > 0:
            self._freeze_remaining -= 1
            return
        if measured:
            self._goodput.setdefault(limit, deque(maxlen=_SAMPLES_PER_LEVEL)).append(goodput)
            if self._judge_goodput(limit, end):
                return
        pending = self._trial_from is not None or self._probe_from is not None
        if self._ramping or not (clean and used) or pending:
            return  # a pending goodput comparison waits for its measured epoch
        self._clean_streak += 1
        if self._ceiling is not None and limit >= self._ceiling and not self._ceiling_from_goodput:
            # A whole clean epoch at the old trouble level: the server has room again.
            self._ceiling = None
            self._probe_wait_epochs = self.probe_after_epochs
        if limit >= self.max_limit:
            return
        approaching = self._ceiling is not None and limit + 1 >= self._ceiling
        if approaching and self._clean_streak < self._probe_wait_epochs:
            return
        if (
            approaching
            and not self._ceiling_from_goodput
            and end - self._last_throttle_at < self.min_probe_interval_s
        ):
            return  # the streak is kept: the probe goes at the first epoch end past the interval
        self._clean_streak = 0
        if approaching and self._ceiling_from_goodput:
            self._probe_from = limit
        self._increases += 1
        self._set_limit(limit + 1, end)

    def _mean_goodput(self, low: int, high: int) -> float | None:
        """Mean goodput of the measured epochs at limits in ``[low, high]`` (None: none measured)."""
        samples = [
            value for level, values in self._goodput.items() if low <= level <= high for value in values
        ]
        return sum(samples) / len(samples) if samples else None

    def _judge_goodput(self, limit: int, end: float) -> bool:
        """The no-gain rule, after an epoch measured at ``limit``. True if it moved the limit.

        Applies only to servers that never throttled (a learned cap already says where to be).
        """
        if self._learned_cap is not None:
            return False
        tolerance = self.gain_tolerance
        if self._probe_from is not None:
            base = self._mean_goodput(self._probe_from, self._probe_from)
            goodput = self._mean_goodput(limit, limit) or 0.0
            source, self._probe_from = self._probe_from, None
            if base is not None and goodput <= base * (1 + tolerance):
                # One more stream added nothing: back down, and probe that level more rarely.
                self._probe_wait_epochs = min(self.max_probe_after_epochs, self._probe_wait_epochs * 2)
                self._clean_streak = 0
                self._decreases += 1
                self._set_limit(source, end)
                return True
            self._ceiling = None  # it did add goodput: no ceiling any more
            self._ceiling_from_goodput = False
            self._plateau_top = None
            self._probe_wait_epochs = self.probe_after_epochs
            return False
        if self._trial_from is not None:
            # Every level from just above this one up to where the trial started was found no
            # better than the next one down (or is that start): their epochs are one plateau,
            # and their pooled mean is a steadier base than the last epoch at the start alone.
            top = max(self._trial_from, self._plateau_top or 0)
            base = self._mean_goodput(limit + 1, top)
            goodput = self._mean_goodput(limit, limit) or 0.0
            self._trial_epochs += 1
            if (
                base is not None
                and base * (1 - _UNSURE_TOLERANCES * tolerance) <= goodput < base * (1 - tolerance)
                and self._trial_epochs < _TRIAL_EPOCHS_WHEN_UNSURE
            ):
                # A little short: within what one noisy epoch can be off by, where a level that
                # really needs its streams falls short by a quarter or more. Measure again.
                return True
            source, self._trial_from = self._trial_from, None
            if base is not None and goodput >= base * (1 - tolerance):
                # A quarter fewer streams delivered as much: the extra ones added nothing.
                self._plateau_top = top
                self._ceiling = source
                self._ceiling_from_goodput = True
                self._probe_wait_epochs = self.probe_after_epochs
                self._clean_streak = 0
                return self._try_lower(limit, end, step=max(1, limit // 2))
            # Fewer streams delivered less: go back, and try again later (rarer each time). If
            # an earlier trial found that more streams than ``source`` add nothing, nothing above
            # it is worth holding either.
            if self._ceiling_from_goodput:
                self._ceiling = source + 1
            self._trial_wait_epochs = min(
                self.max_probe_after_epochs, max(self.probe_after_epochs, self._trial_wait_epochs * 2)
            )
            self._clean_streak = 0
            self._increases += 1
            self._set_limit(source, end)
            return True
        self._epochs_since_trial += 1
        if self._epochs_since_trial > self._trial_wait_epochs:
            # Is every stream of this limit worth having? Try a quarter fewer for an epoch.
            return self._try_lower(limit, end, step=max(1, limit // 4))
        return False

    def _try_lower(self, limit: int, end: float, *, step: int) -> bool:
        """Try ``limit - step`` for an epoch (a quarter first; half after a trial that passed),
        never below :data:`_NO_GAIN_FLOOR`."""
        target = max(_NO_GAIN_FLOOR, limit - step)
        if target >= limit:
            return False
        self._epochs_since_trial = 0
        self._trial_epochs = 0
        self._trial_from = limit
        self._decreases += 1
        self._set_limit(target, end)
        return True

    def _set_limit(self, limit: int, now: float) -> None:
        if limit != self._limit:
            self._limit = limit
            self._trace.append((now, limit))
            if self._in_flight > limit:
                self._epoch_over_limit = True
            self._track_full_use(now)

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(
            limit=self._limit,
            max_limit=self.max_limit,
            in_flight=self._in_flight,
            peak_in_flight=self._overall_peak,
            increases=self._increases,
            decreases=self._decreases,
            congestion_signals=self._congestion_signals,
            successes=self._successes,
            bytes_completed=self._bytes_completed,
            epoch_s=self.epoch_s(),
            learned_cap=self._learned_cap,
            no_gain_limit=self._ceiling if self._ceiling_from_goodput else None,
            shortest_ramp_step_s=self._shortest_ramp_step_s,
        )


class _Waiter:
    """A task queued for a slot: ``event`` fires when it is granted one or must keep the ramp's time."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class Slot:
    """One held download slot (see :meth:`AdaptiveLimiter.slot`)."""

    __slots__ = ("_limiter", "is_admitted")

    def __init__(self, limiter: AdaptiveLimiter) -> None:
        self._limiter = limiter
        self.is_admitted = False

    def congestion(self, kind: CongestionKind) -> None:
        """This download was refused or failed (``throttle``, ``transient``, ``timeout``)."""
        limiter = self._limiter
        limiter.on_congestion(kind, others_in_flight=limiter.in_flight - 1)

    def admitted(self) -> None:
        """The server answered this download (response headers, no error)."""
        if not self.is_admitted:
            self.is_admitted = True
            self._limiter._streaming += 1
            self._limiter.controller.observe_streaming(self._limiter._streaming)
            self._limiter.on_admitted()


class AdaptiveLimiter:
    """An adjustable-capacity gate for downloads, driven by :class:`AimdController`.

    ``async with limiter.slot():`` waits (FIFO) until fewer than ``limit`` downloads are in
    flight. The limit never exceeds ``max_limit`` (the user's ``--concurrency``). When the limit
    drops, downloads already inside keep running; new ones wait until enough have left.
    """

    def __init__(
        self,
        max_limit: int,
        *,
        initial: int | None = None,
        clock: Clock,
        min_epoch_s: float = 2.0,
        max_epoch_s: float = 120.0,
        freeze_epochs: int = 2,
        probe_after_epochs: int = 2,
        max_probe_after_epochs: int = 64,
        min_used_fraction: float = 0.5,
        ramp_interval_s: float = 0.05,
        gain_tolerance: float = 0.05,
        min_measured_bytes: int = 16 << 20,
        min_probe_interval_s: float = 60.0,
    ) -> None:
        self._clock = clock
        self.controller = AimdController(
            max_limit,
            initial=initial,
            now=clock.monotonic(),
            min_epoch_s=min_epoch_s,
            max_epoch_s=max_epoch_s,
            freeze_epochs=freeze_epochs,
            probe_after_epochs=probe_after_epochs,
            max_probe_after_epochs=max_probe_after_epochs,
            min_used_fraction=min_used_fraction,
            ramp_interval_s=ramp_interval_s,
            gain_tolerance=gain_tolerance,
            min_measured_bytes=min_measured_bytes,
            min_probe_interval_s=min_probe_interval_s,
        )
        self._in_flight = 0
        self._streaming = 0
        self._waiters: deque[_Waiter] = deque()
        self._round_trip: Callable[[], float | None] | None = None

    @property
    def limit(self) -> int:
        return self.controller.limit

    @property
    def max_limit(self) -> int:
        return self.controller.max_limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def follow_round_trips(self, fastest_answer_s: Callable[[], float | None]) -> None:
        """Pace the ramp by the server's answers: ``fastest_answer_s()`` is read at each step
        (the client's :attr:`~tcia_fetch.transport.Transport.fastest_answer_s`)."""
        self._round_trip = fastest_answer_s

    def _tick(self) -> None:
        # Only a ramp step needs the round trip: no scan of the answers on every slot otherwise.
        if self._round_trip is not None and self.controller.ramping:
            self.controller.observe_round_trip(self._round_trip())
        self.controller.tick(self._clock.monotonic())

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Hold one download slot for the duration of the block.

        Call ``admitted()`` on the yielded :class:`Slot` when the server answers (headers): the
        controller then counts that download as one the server accepted.
        """
        await self._acquire()
        held = Slot(self)
        try:
            yield held
        finally:
            if held.is_admitted:
                self._streaming -= 1
                self.controller.observe_streaming(self._streaming)
            self._release()

    async def _acquire(self) -> None:
        self._tick()
        if not self._waiters and self._in_flight < self.controller.limit:
            self._take()
            return
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            while not waiter.granted:
                grow_at = self.controller.next_growth_at()
                if grow_at is not None and self._waiters and self._waiters[0] is waiter:
                    # Ramping with every slot busy: the limit grows by the clock, not by an
                    # event, so the first in line sleeps until then and hands the slot out.
                    await self._clock.sleep(max(0.0, grow_at - self._clock.monotonic()))
                    self._hand_out()
                    continue
                await waiter.event.wait()
                if not waiter.granted:
                    waiter.event = anyio.Event()  # woken to become the ramp's timekeeper
        except BaseException:
            if waiter.granted:
                # The slot was handed to us just as we were cancelled: pass it on.
                self._release()
            else:
                self._waiters.remove(waiter)
                self._hand_out()  # if we kept the ramp's time, the next in line takes over
            raise

    def _take(self) -> None:
        self._in_flight += 1
        self.controller.observe_in_flight(self._in_flight, self._clock.monotonic())

    def _release(self) -> None:
        self._in_flight -= 1
        self.controller.observe_in_flight(self._in_flight, self._clock.monotonic())
        self._hand_out()

    def _hand_out(self) -> None:
        self._tick()
        while self._waiters and self._in_flight < self.controller.limit:
            waiter = self._waiters.popleft()
            self._take()
            waiter.granted = True
            waiter.event.set()
        if self._waiters and self.controller.next_growth_at() is not None:
            self._waiters[0].event.set()

    def on_success(self, duration_s: float, nbytes: int = 0) -> None:
        """A download finished cleanly; the limit may grow at an epoch boundary."""
        self.controller.on_success(self._clock.monotonic(), duration_s, nbytes)
        self._hand_out()

    def on_admitted(self) -> None:
        """A download's response headers arrived."""
        self.controller.on_admitted(self._clock.monotonic())
        self._hand_out()

    def observe_streaming(self, streaming: int) -> None:
        """The number of downloads the server has answered (headers received) changed."""
        self._streaming = streaming

    def on_bytes(self, nbytes: int) -> None:
        """Body bytes arrived (for the goodput comparison)."""
        self.controller.on_bytes(nbytes)

    def on_congestion(self, kind: CongestionKind, *, others_in_flight: int | None = None) -> None:
        """The server pushed back (``throttle``, ``transient`` or ``timeout``)."""
        self.controller.on_congestion(self._clock.monotonic(), kind, others_in_flight=others_in_flight)

    def restart(self, limit: int = 1) -> None:
        """Ramp again from ``limit`` (after the circuit breaker closes)."""
        self.controller.restart(self._clock.monotonic(), limit)
        self._hand_out()

    def statistics(self) -> LimiterStatistics:
        return self.controller.statistics()

    @property
    def trace(self) -> tuple[tuple[float, int], ...]:
        return self.controller.trace
