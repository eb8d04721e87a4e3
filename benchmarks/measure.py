"""Run one command and measure it: wall time, CPU of its whole process tree, peak memory.

Why these mechanics:

* CPU comes from ``os.wait4`` on the direct child: the kernel folds into it the user+sys time of every
  descendant the child waited for (xargs waits for its curls, bash for its pipeline), so a contender
  that forks helpers is charged for them, exactly once.
* Memory is sampled from ``/proc`` at ~20 Hz: the sum of RSS over every process in the child's session
  (the child is started with ``start_new_session=True``, so the session id equals its pid and groups all
  descendants that did not detach). Each process's ``VmHWM`` (its own high-water mark) is sampled too,
  which catches a spike shorter than the sampling period. ``ru_maxrss`` from ``wait4`` is recorded but
  NOT used for the peak: Linux carries the parent's RSS across fork+exec into it, so every child of a
  big harness would "peak" at (at least) the harness's size.
* A caller may stop the command early with ``stop_when`` (checked at every sample), e.g. once the first
  downloaded byte is on disk; the stop time is recorded and the whole session is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ProcessMeasurement",
    "cpu_seconds_of",
    "machine_busy_cpu_s",
    "measure_command",
    "session_rss_bytes",
]

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_PERIOD_S = 0.05


@dataclass(frozen=True)
class ProcessMeasurement:
    """What one measured command cost. ``stopped_at_s`` is set when ``stop_when`` fired."""

    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    peak_tree_rss_bytes: int
    max_single_hwm_bytes: int
    ru_maxrss_bytes: int
    returncode: int
    timed_out: bool
    stopped_at_s: float | None
    samples: int

    @property
    def cpu_s(self) -> float:
        """User + system seconds of the whole tree."""
        return self.cpu_user_s + self.cpu_sys_s


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (which may contain spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _session_pids(session_id: int) -> list[tuple[int, int]]:
    """``(pid, rss_bytes)`` of every live process whose session id is ``session_id``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        # After the name: state(0) ppid(1) pgrp(2) session(3) ... rss is field 24 of stat = index 21 here.
        if fields is None or len(fields) < 22 or int(fields[3]) != session_id:
            continue
        found.append((int(name), int(fields[21]) * _PAGE_BYTES))
    return found


def session_rss_bytes(session_id: int) -> int:
    """Sum of the resident set sizes of every live process whose session id is ``session_id``."""
    return sum(rss for _, rss in _session_pids(session_id))


def _high_water_bytes(pid: int) -> int:
    """``VmHWM`` of a live process (peak RSS of its current program), 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds a live process (all its threads) has used so far; 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 13:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def wait_until_quiet(
    *, busy_fraction: float = 0.15, window_s: float = 0.5, max_wait_s: float = 30.0
) -> float:
    """Wait until the machine is nearly idle (busy CPU over one window under ``busy_fraction`` of
    one core), at most ``max_wait_s``; returns the seconds waited.

    Removing a scenario's gigabytes of output, or the writeback a contender left behind, goes on
    in kernel threads after the call returns: measured once, it put 11-16 s of other CPU into the
    next scenario's first run, whoever ran it.
    """
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        before = machine_busy_cpu_s(count_steal=False)
        time.sleep(window_s)
        if machine_busy_cpu_s(count_steal=False) - before < busy_fraction * window_s:
            break
    return time.monotonic() - started


def machine_busy_cpu_s(*, count_steal: bool = True) -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, not idle/iowait) since boot;
    without ``count_steal``, only this machine's own work (a VM's host may take CPU at any time).

    Deltas of this, minus the contender's and the server's CPU, show how much *other* work shared the
    machine during a measurement: benchmarks on a shared box are only comparable when that is small.
    """
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return 0.0
    # cpu user nice system idle iowait irq softirq steal ...
    skipped = (3, 4) if count_steal else (3, 4, 7)
    busy = sum(int(value) for index, value in enumerate(fields[1:9]) if index not in skipped)
    return busy / _CLOCK_TICKS


def _kill_session(process: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """SIGTERM the whole session, then SIGKILL what is left after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and session_rss_bytes(process.pid) > 0:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def measure_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 600.0,
    stop_when: Callable[[], bool] | None = None,
    stdout_path: Path | None = None,
    stderr_path: Path | None = None,
    sample_period_s: float = SAMPLE_PERIOD_S,
) -> ProcessMeasurement:
    """Run ``argv`` to completion (or timeout / ``stop_when``) and return what it cost.

    Output goes to the given files (or ``/dev/null``) so a chatty contender cannot slow itself down on
    a pipe nobody reads. The child runs in its own session so that it and all its helpers can be
    measured and, if needed, killed together.
    """
    with contextlib.ExitStack() as stack:
        stdout = stack.enter_context(open(stdout_path or os.devnull, "wb"))
        stderr = stack.enter_context(open(stderr_path or os.devnull, "wb"))
        started = time.monotonic()
        process = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def reap() -> None:
            _, status, usage = os.wait4(process.pid, 0)
            outcome["ended"] = time.monotonic()
            outcome["status"] = status
            outcome["usage"] = usage
            done.set()

        reaper = threading.Thread(target=reap, name=f"wait4-{process.pid}", daemon=True)
        reaper.start()
        peak = 0
        high_water = 0
        samples = 0
        timed_out = False
        stopped_at: float | None = None
        try:
            while not done.is_set():
                members = _session_pids(process.pid)
                peak = max(peak, sum(rss for _, rss in members))
                for pid, _ in members:
                    high_water = max(high_water, _high_water_bytes(pid))
                samples += 1
                now = time.monotonic()
                if stopped_at is None and stop_when is not None and stop_when():
                    stopped_at = now - started
                    _kill_session(process)
                    break
                if now - started > timeout_s:
                    timed_out = True
                    _kill_session(process)
                    break
                done.wait(sample_period_s)
        except BaseException:
            # Ctrl-C reaches only the harness (the contender has its own session): take it down too.
            _kill_session(process, grace_s=0.5)
            raise
        reaper.join()
        # Helpers that outlived the child (rare) are still in the session: do not leave them running.
        if session_rss_bytes(process.pid) > 0:
            _kill_session(process, grace_s=0.5)
    ended = outcome["ended"]
    status = outcome["status"]
    usage = outcome["usage"]
    assert isinstance(ended, float) and isinstance(status, int)
    returncode = os.waitstatus_to_exitcode(status)
    process.returncode = returncode  # reaped by wait4: tell Popen so it does not warn
    return ProcessMeasurement(
        wall_s=ended - started,
        cpu_user_s=float(usage.ru_utime),
        cpu_sys_s=float(usage.ru_stime),
        peak_tree_rss_bytes=peak,
        max_single_hwm_bytes=high_water,
        ru_maxrss_bytes=int(usage.ru_maxrss) * 1024,
        returncode=returncode,
        timed_out=timed_out,
        stopped_at_s=stopped_at,
        samples=samples,
    )
