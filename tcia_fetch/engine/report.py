"""What a run did, as data: live statistics while it runs and the report when it ends.

The engine only updates these values; the CLI renders them (progress bars, log lines, the
summary table) and writes the report as JSON. The report's top-level integer fields
``planned``, ``done``, ``skipped`` and ``failed`` and the ``failures`` list (objects with
``SeriesInstanceUID`` and ``reason``) are a contract other tooling reads: keep them stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tcia_fetch.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED

__all__ = ["REPORT_FORMAT_VERSION", "RunEvent", "RunReport", "RunStats", "SeriesFailure"]

REPORT_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class SeriesFailure:
    """A series that did not end verified on disk, and why."""

    series_uid: str
    reason: str
    reference: str
    attempts: int
    origin: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The report's failure object (``SeriesInstanceUID`` and ``reason`` are the contract)."""
        return {
            "SeriesInstanceUID": self.series_uid,
            "reason": self.reason,
            "reference": self.reference,
            "attempts": self.attempts,
            "origin": self.origin,
        }


@dataclass(frozen=True, slots=True)
class RunEvent:
    """A notable moment worth a log line: a retry, a failure, a finished series, a pause."""

    kind: Literal["done", "retry", "failed", "skipped", "paused", "planned", "warning"]
    series_uid: str
    message: str = ""
    delay_s: float = 0.0


@dataclass(slots=True)
class RunStats:
    """Counters the workers update and the progress display polls (no locking: one event loop).

    Bytes are DICOM bytes, the unit of the plan (``TotalSizeInBytes``), so that a progress bar
    and ETA measured against the plan are honest; ``archive_bytes`` counts what crossed the wire.
    """

    planned_series: int = 0
    planned_bytes: int = 0
    planning_done: bool = False
    skipped_series: int = 0
    skipped_bytes: int = 0
    done_series: int = 0
    done_bytes: int = 0
    failed_series: int = 0
    in_flight: int = 0
    dicom_bytes: int = 0
    archive_bytes: int = 0
    retries: int = 0
    throttled: int = 0
    concurrency_limit: int = 0


@dataclass(slots=True)
class RunReport:
    """The machine-readable outcome of one run (``--report FILE``, and ``fetch()``'s return)."""

    run_id: str
    destination: str
    base_url: str
    started_at: str
    finished_at: str = ""
    duration_s: float = 0.0
    planned: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[SeriesFailure] = field(default_factory=list)
    instances: int = 0
    dicom_bytes: int = 0
    archive_bytes: int = 0
    retries: int = 0
    throttled: int = 0
    duplicates: int = 0
    input_problems: list[str] = field(default_factory=list)
    plan_errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    fatal_error: str | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    #: ``"3/16"`` when this run was one shard of a split job (``--shard``); None for the whole job.
    shard: str | None = None

    @property
    def exit_code(self) -> int:
        """0 only when every planned series is verified on disk (done now or before)."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.fatal_error is not None:
            return EXIT_FATAL
        if self.failed or self.plan_errors or self.done + self.skipped != self.planned:
            return EXIT_SOME_FAILED
        return EXIT_OK

    @property
    def ok(self) -> bool:
        """True when the run ended with every planned series verified on disk."""
        return self.exit_code == EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form; the first keys are the stable contract."""
        return {
            "planned": self.planned,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": [failure.as_dict() for failure in self.failures],
            "exit_code": self.exit_code,
            "format_version": REPORT_FORMAT_VERSION,
            "run_id": self.run_id,
            "destination": self.destination,
            "base_url": self.base_url,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(self.duration_s, 3),
            "instances": self.instances,
            "dicom_bytes": self.dicom_bytes,
            "archive_bytes": self.archive_bytes,
            "retries": self.retries,
            "throttled": self.throttled,
            "duplicates": self.duplicates,
            "input_problems": list(self.input_problems),
            "plan_errors": list(self.plan_errors),
            "interrupted": self.interrupted,
            "fatal_error": self.fatal_error,
            "plan": self.plan,
            "engine": self.engine,
            "shard": self.shard,
        }
