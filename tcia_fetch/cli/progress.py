"""Progress for a running job: a live display on a terminal, plain lines in batch logs.

The engine only updates :class:`RunStats` and emits :class:`RunEvent`s; this module polls the
one and prints the other. Bytes are DICOM bytes measured against the plan, so percentage and
ETA are honest even though the server's zip has no Content-Length.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import anyio
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from tcia_fetch.cli._show import shown
from tcia_fetch.engine.report import RunEvent, RunStats

__all__ = ["ProgressReporter", "format_bytes", "progress_line"]


def format_bytes(count: float) -> str:
    """Human-readable SI size (1000-based, as the NBIA tools print), e.g. ``163.31 MB``."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{value:.2f} PB"  # unreachable; keeps type checkers content


def _format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def progress_line(stats: RunStats, elapsed_s: float) -> str:
    """One self-contained status line for batch logs (no cursor tricks, greppable)."""
    total = stats.planned_bytes
    done = stats.dicom_bytes
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    percent = f"{100 * done / total:.1f}%" if total else "-"
    eta = _format_duration((total - done) / rate) if rate > 0 and stats.planning_done else "?"
    planned = f"{stats.planned_series}" + ("" if stats.planning_done else "+")
    return (
        f"series {stats.done_series}/{planned} done, {stats.failed_series} failed, "
        f"{stats.skipped_series} skipped, {stats.in_flight} active | "
        f"{format_bytes(done)} of {format_bytes(total)} ({percent}) | "
        f"{format_bytes(rate)}/s | ETA {eta} | retries {stats.retries}, throttled {stats.throttled}"
    )


class ProgressReporter:
    """Renders one run's progress in the style the output stream can take.

    ``mode`` is ``live`` (a terminal: rich bar), ``lines`` (batch logs: a line every
    ``interval_s`` plus one per notable event) or ``quiet`` (nothing until the summary).
    """

    def __init__(
        self, stats: RunStats, *, mode: str, interval_s: float = 30.0, stream: TextIO | None = None
    ) -> None:
        self._stats = stats
        self._mode = mode
        self._interval_s = interval_s
        self._stream = stream or sys.stderr
        self._started = time.monotonic()
        self._console = Console(file=self._stream, highlight=False)

    @staticmethod
    def pick_mode(*, quiet: bool, stream: TextIO | None = None) -> str:
        """``quiet`` when asked, ``live`` on a terminal, ``lines`` otherwise (logs, pipes)."""
        if quiet:
            return "quiet"
        target = stream or sys.stderr
        return "live" if target.isatty() else "lines"

    def on_event(self, event: RunEvent) -> None:
        """Print notable events: failures always (unless quiet), retries and pauses in logs."""
        if self._mode == "quiet":
            return
        # Messages and UIDs may quote the server: printed without markup, controls escaped.
        if event.kind == "warning":
            self._console.print("[yellow]warning[/yellow] ", end="", soft_wrap=True)
            self._console.print(shown(event.message, keep_newlines=True), soft_wrap=True, markup=False)
        elif event.kind == "failed":
            self._console.print("[red]failed[/red] ", end="", soft_wrap=True)
            self._console.print(
                f"{shown(event.series_uid)}: {shown(event.message)}", soft_wrap=True, markup=False
            )
        elif event.kind == "retry" and self._mode == "lines":
            message = f"retry {shown(event.series_uid)} in {event.delay_s:.1f}s: {shown(event.message)}"
            self._console.print(message, soft_wrap=True, markup=False)

    async def run(self, stop: anyio.Event) -> None:
        """Refresh the display until ``stop`` is set (then draw the final state once)."""
        if self._mode == "quiet":
            await stop.wait()
        elif self._mode == "lines":
            await self._run_lines(stop)
        else:
            await self._run_live(stop)

    async def _run_lines(self, stop: anyio.Event) -> None:
        while not stop.is_set():
            with anyio.move_on_after(self._interval_s):
                await stop.wait()
            if self._stats.planned_series or self._stats.skipped_series or not stop.is_set():
                line = progress_line(self._stats, time.monotonic() - self._started)
                self._console.print(line, soft_wrap=True, markup=False)

    async def _run_live(self, stop: anyio.Event) -> None:
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=False),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[series]}"),
            console=self._console,
            transient=False,
        )
        with progress:
            task = progress.add_task("downloading", total=None, series="")
            update: Callable[[], None] = lambda: self._update_live(progress, task)  # noqa: E731
            while not stop.is_set():
                update()
                with anyio.move_on_after(0.25):
                    await stop.wait()
            update()

    def _update_live(self, progress: Progress, task: TaskID) -> None:
        stats = self._stats
        series = (
            f"{stats.done_series}/{stats.planned_series}{'' if stats.planning_done else '+'} series"
            f"  {stats.failed_series} failed  {stats.skipped_series} skipped  {stats.in_flight} active"
        )
        progress.update(
            task,
            completed=stats.dicom_bytes,
            total=stats.planned_bytes or None,
            series=series,
        )
