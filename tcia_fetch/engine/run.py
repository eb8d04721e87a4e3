"""A whole run: job → plan → bounded channel → workers → verified series on disk → report.

``fetch`` is the library entry point (``run`` is its synchronous twin for scripts). One task
group holds the planner, the workers and the lock heartbeat; the planner feeds a bounded
memory stream (backpressure: it never runs far ahead of the downloads) and each worker owns a
clone of the receiving end, so workers finish when the planner closes its end. Per-series
failures are recorded by the workers; only fatal errors (disk full, destination unusable,
credentials refused) cancel the group, and they leave as one ``TciaFetchError``.

Whatever happens, including cancellation by SIGINT/SIGTERM, the ``finally`` block (shielded)
compacts the journal, rewrites metadata.csv and writes the report: the state on disk is
consistent and a rerun of the same command resumes.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.cluster.address import parse_scheduler
from tcia_fetch.config import DEFAULT_BASE_URL, ClientSettings, load_client_settings
from tcia_fetch.engine.breaker import CircuitBreaker
from tcia_fetch.engine.clock import Clock, SystemClock
from tcia_fetch.engine.concurrency import AdaptiveLimiter
from tcia_fetch.engine.pacer import ByteRateLimiter, Pacer
from tcia_fetch.engine.report import RunEvent, RunReport, RunStats, SeriesFailure
from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.worker import SeriesJob, SeriesWorker
from tcia_fetch.errors import InputError, TciaFetchError, redact_url
from tcia_fetch.job.jobfile import JobSpec, load_job
from tcia_fetch.plan.model import PlannedSeries, PlanSummary
from tcia_fetch.plan.planner import Planner, PlannerOptions
from tcia_fetch.plan.shard import Shard, parse_shard, split_count, split_rate
from tcia_fetch.store.atomic import write_text_atomic
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.metadata_csv import metadata_csv_row, write_metadata_csv
from tcia_fetch.store.reconcile import DAMAGED_ON_DISK, reconcile
from tcia_fetch.store.records import SeriesRecord
from tcia_fetch.store.runlock import acquire_run_lock

__all__ = ["RunOptions", "fetch", "plan", "resolve_client_settings", "run"]

_HEARTBEAT_S = 30.0
#: An outage longer than this ends the run (exit 3) instead of waiting forever on a login node.
_MAX_OUTAGE_S = 1800.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Command-line overrides of a job (each ``None`` keeps the job file's value).

    ``base_url`` is the API root (as for ``tcia-fetch query``) and beats the job file and
    ``TCIA_FETCH_BASE_URL``; ``concurrency`` is the most downloads in flight at once.
    """

    out: Path | str | None = None
    base_url: str | None = None
    config_file: Path | str | None = None
    concurrency: int | None = None
    report_path: Path | str | None = None
    retry_failed: bool = False
    max_requests_per_s: float | None = None
    max_bytes_per_s: float | None = None
    layout: str | None = None
    keep: Literal["dicom", "zip"] | None = None
    verify_md5: bool | None = None
    fsync: bool = True
    skip_invalid: bool = False
    #: This run is shard K of N of the job (``Shard`` or ``"K/N"``): it downloads the series whose
    #: UID hashes to K, with 1/N of the concurrency, rate and bandwidth budget.
    shard: Shard | str | None = None
    #: Run the downloads on a Dask cluster: ``tcp://host:port`` or ``local:N`` (tcia_fetch.cluster).
    scheduler: str | None = None

    def __post_init__(self) -> None:
        # Accept plain strings from scripts; store Paths.
        for name in ("out", "config_file", "report_path"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.shard, str):
            object.__setattr__(self, "shard", parse_shard(self.shard))
        if self.shard is not None and self.scheduler is not None:
            raise InputError("--shard and --scheduler do not mix: a Dask run already spreads the whole job")
        if self.scheduler is not None:
            parse_scheduler(self.scheduler)  # a bad address is exit 2 before any connection

    @property
    def split(self) -> Shard | None:
        """The shard of a split job, or None for the whole job (a split of 1 is the whole job)."""
        shard = self.shard
        return shard if isinstance(shard, Shard) and shard.count > 1 else None


def resolve_client_settings(job: JobSpec, options: RunOptions, env: Mapping[str, str]) -> ClientSettings:
    """``--base-url`` > ``TCIA_FETCH_BASE_URL`` > the job's ``[server]`` > config file > default."""
    # The job's [server] table counts only when the job file really sets it (its default must not
    # shadow a config file).
    from_job = job.server.base_url if "base_url" in job.server.model_fields_set else None
    explicit = options.base_url or env.get("TCIA_FETCH_BASE_URL") or from_job
    settings = load_client_settings(base_url=explicit, config_file=_path(options.config_file), env=env)
    download = job.download
    return settings.model_copy(
        update={
            "connect_timeout_s": download.connect_timeout_s,
            "first_byte_timeout_s": download.first_byte_timeout_s,
            "stall_timeout_s": download.stall_timeout_s,
        }
    )


def _path(value: Path | str | None) -> Path | None:
    return Path(value) if value is not None else None


def _new_run_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _as_job(job: JobSpec | Path | str, options: RunOptions) -> JobSpec:
    """Load a job unless given one; ``skip_invalid`` reports bad list lines instead of refusing."""
    return job if isinstance(job, JobSpec) else load_job(Path(job), strict=not options.skip_invalid)


async def plan(
    job: JobSpec | Path | str,
    options: RunOptions | None = None,
    *,
    clock: Clock | None = None,
) -> tuple[list[PlannedSeries], PlanSummary]:
    """Expand a job into its plan without downloading anything (``tcia-fetch plan``)."""
    options = options or RunOptions()
    spec = _as_job(job, options)
    clock = clock or SystemClock()
    settings = await anyio.to_thread.run_sync(resolve_client_settings, spec, options, dict(os.environ))
    items: list[PlannedSeries] = []

    async def collect(item: PlannedSeries) -> None:
        items.append(item)

    async with NBIAClient(settings) as client:
        planner = Planner(
            client,
            spec,
            retry_policy=_retry_policy(spec),
            clock=clock,
            options=PlannerOptions(
                full_metadata=(options.layout or spec.output.layout) == "descriptive",
                nlst_fallback=_is_production(settings),
                bulk_metadata=client.api_version == "v4",
            ),
        )
        summary = await planner.run(collect)
    return items, summary


def _is_production(settings: ClientSettings) -> bool:
    """True when the run talks to TCIA's own archive (where NLST has a host of its own)."""
    return urlsplit(settings.base_url).hostname == urlsplit(DEFAULT_BASE_URL).hostname


def _retry_policy(job: JobSpec) -> RetryPolicy:
    return RetryPolicy(attempts=job.download.attempts, integrity_attempts=job.download.integrity_attempts)


async def fetch(
    job: JobSpec | Path | str,
    options: RunOptions | None = None,
    *,
    stats: RunStats | None = None,
    on_event: Callable[[RunEvent], None] | None = None,
    clock: Clock | None = None,
    retry_policy: RetryPolicy | None = None,
) -> RunReport:
    """Run a job to the end and return its report.

    Raises ``InputError`` for bad input (before any traffic) and fatal ``TciaFetchError``s
    (``StorageError``, ``UnauthorizedError``, ``DestinationBusyError``, ...); every per-series
    failure is in the report instead. Cancellation (Ctrl-C) leaves a consistent destination
    and a report marked ``interrupted`` before it propagates.
    """
    options = options or RunOptions()
    if options.scheduler is not None:
        from tcia_fetch.cluster.runner import fetch_on_cluster

        return await fetch_on_cluster(job, options, stats=stats, on_event=on_event)
    spec = _as_job(job, options)
    stats = stats or RunStats()
    clock = clock or SystemClock()
    out = _path(options.out) or (Path(spec.output.dest) if spec.output.dest else None)
    if out is None:
        raise InputError("no destination: give --out DIR or set [output].dest in the job file")
    settings = await anyio.to_thread.run_sync(resolve_client_settings, spec, options, dict(os.environ))
    concurrency = options.concurrency or spec.download.concurrency
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, got {concurrency}")
    shard = options.split
    job_concurrency = concurrency
    if shard is not None:
        concurrency = split_count(concurrency, shard.count, shard.index)
    layout = options.layout or spec.output.layout
    series_job = SeriesJob(
        layout=layout,
        keep=options.keep or spec.output.keep,
        verify_md5=spec.verify.md5 if options.verify_md5 is None else options.verify_md5,
        new_file_names=spec.output.new_file_names,
        fsync=options.fsync,
    )
    policy = retry_policy or _retry_policy(spec)
    run_id = _new_run_id()
    started = time.monotonic()
    report = RunReport(
        run_id=run_id,
        destination=str(out),
        base_url=redact_url(settings.base_url),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        duplicates=spec.duplicates,
        input_problems=[str(problem) for problem in spec.problems],
        shard=shard.label if shard is not None else None,
    )

    destination = await anyio.to_thread.run_sync(Destination, out)
    await anyio.to_thread.run_sync(destination.prepare)
    lock = await anyio.to_thread.run_sync(
        lambda: acquire_run_lock(destination.state_dir, run_id=run_id, shard=shard)
    )
    journal: Journal | None = None
    worker: SeriesWorker | None = None
    planner: Planner | None = None
    try:
        journal = await anyio.to_thread.run_sync(lambda: Journal.open(destination.state_dir, run_id=run_id))
        reconciliation = await anyio.to_thread.run_sync(reconcile, destination, journal)
        latest = journal.latest()
        damaged = frozenset(item.series_uid for item in reconciliation.damaged) | frozenset(
            uid for uid, rec in latest.items() if rec.status == "failed" and rec.reference == DAMAGED_ON_DISK
        )
        done_uids = frozenset(uid for uid, rec in latest.items() if rec.status == "done") - damaged
        only = (
            frozenset(uid for uid, rec in latest.items() if rec.status == "failed") | damaged
            if options.retry_failed
            else None
        )
        max_rps = options.max_requests_per_s or spec.download.max_requests_per_s or None
        max_bps = options.max_bytes_per_s or spec.download.max_bytes_per_s or None
        if shard is not None:  # the budget is the job's: each shard takes its share
            max_rps = split_rate(max_rps, shard.count)
            max_bps = split_rate(max_bps, shard.count)
        limiter = AdaptiveLimiter(concurrency, clock=clock)
        async with NBIAClient(settings) as client:
            planner = Planner(
                client,
                spec,
                retry_policy=policy,
                clock=clock,
                skip_uids=done_uids,
                only_uids=only,
                options=PlannerOptions(
                    full_metadata=layout == "descriptive",
                    nlst_fallback=_is_production(settings),
                    bulk_metadata=client.api_version == "v4",
                ),
                share=shard.owns if shard is not None else None,
            )
            worker = SeriesWorker(
                source=client,
                destination=destination,
                journal=journal,
                job=series_job,
                run_id=run_id,
                retry_policy=policy,
                clock=clock,
                pacer=Pacer(clock, max_requests_per_s=max_rps),
                limiter=limiter,
                breaker=CircuitBreaker(
                    clock, max_outage_s=_MAX_OUTAGE_S, on_close=lambda: limiter.restart(1)
                ),
                bandwidth=ByteRateLimiter(max_bps, clock) if max_bps else None,
                stats=stats,
                on_event=on_event,
                damaged=damaged,
            )
            await _run_pool(planner, worker, concurrency, lock.heartbeat, stats)
        report.engine = {
            "concurrency_cap": concurrency,
            "job_concurrency": job_concurrency,
            # Every shard needs one slot: with more shards than the budget, the array runs one each.
            "budget_exceeded_by_shards": shard is not None and shard.count > job_concurrency,
            "max_requests_per_s": max_rps,
            "max_bytes_per_s": max_bps,
            "limiter": _stats_dict(limiter.statistics()),
            "pacer": _stats_dict(worker.pacer.statistics()),
            "breaker": _stats_dict(worker.breaker.statistics()),
        }
    except anyio.get_cancelled_exc_class():
        report.interrupted = True
        raise
    except BaseExceptionGroup as group:
        fatal = _first_fatal(group)
        if fatal is None:
            raise
        report.fatal_error = str(fatal)
        raise fatal from None
    except TciaFetchError as exc:
        report.fatal_error = str(exc)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await _finish(report, stats, planner, worker, journal, destination, spec, options, started)
            await anyio.to_thread.run_sync(lock.release)
    return report


async def _run_pool(
    planner: Planner,
    worker: SeriesWorker,
    concurrency: int,
    heartbeat: Callable[[], None],
    stats: RunStats,
) -> None:
    """The one task group of a run: planner → bounded channel → ``concurrency`` workers."""
    send, receive = anyio.create_memory_object_stream[PlannedSeries](max_buffer_size=concurrency)
    finished = anyio.Event()
    active_workers = concurrency

    async def produce(send_end: ObjectSendStream[PlannedSeries]) -> None:
        async with send_end:

            async def emit(item: PlannedSeries) -> None:
                stats.planned_series += 1
                stats.planned_bytes += item.expectation.total_bytes
                await send_end.send(item)

            await planner.run(emit)
            stats.planning_done = True
            stats.skipped_series = len(planner.skipped)

    async def consume(receive_end: ObjectReceiveStream[PlannedSeries]) -> None:
        nonlocal active_workers
        try:
            async with receive_end:
                async for item in receive_end:
                    await worker.fetch(item)
        finally:
            active_workers -= 1
            if active_workers == 0:
                finished.set()

    async def keep_lock_alive() -> None:
        while not finished.is_set():
            with anyio.move_on_after(_HEARTBEAT_S):
                await finished.wait()
            await anyio.to_thread.run_sync(heartbeat)

    async with anyio.create_task_group() as group:
        group.start_soon(keep_lock_alive)
        group.start_soon(produce, send)
        for _ in range(concurrency):
            group.start_soon(consume, receive.clone())
        receive.close()
    stats.concurrency_limit = concurrency


async def _finish(
    report: RunReport,
    stats: RunStats,
    planner: Planner | None,
    worker: SeriesWorker | None,
    journal: Journal | None,
    destination: Destination,
    spec: JobSpec,
    options: RunOptions,
    started: float,
) -> None:
    """Close the books: report figures, journal compaction, metadata.csv, report files."""
    summary = planner.summary if planner is not None else PlanSummary()
    skipped = len(planner.skipped) if planner is not None else 0
    failures: list[SeriesFailure] = list(worker.failures) if worker is not None else []
    failures += [SeriesFailure(p.series_uid, p.reason, p.reference, 0, p.origin) for p in summary.problems]
    report.planned = summary.series + skipped + len(summary.problems)
    report.done = stats.done_series
    report.skipped = skipped
    report.failed = len(failures)
    report.failures = failures
    report.dicom_bytes = stats.done_bytes
    report.archive_bytes = stats.archive_bytes
    report.retries = stats.retries
    report.throttled = stats.throttled
    report.duplicates = summary.duplicates
    report.plan = summary.as_dict()
    report.plan_errors = list(summary.query_errors)
    report.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    report.duration_s = time.monotonic() - started
    if journal is not None:
        latest = journal.latest()
        report.instances = sum(
            rec.instance_count or 0
            for rec in latest.values()
            if rec.status == "done" and rec.run_id == report.run_id
        )
        write_csv = (
            functools.partial(write_metadata_csv_from, destination) if spec.output.metadata_csv else None
        )
        # Under the compaction lease, from the view re-read under it: shards finishing at the same
        # moment write metadata.csv one after another, and the last one has seen every row.
        shard = options.split
        await anyio.to_thread.run_sync(
            functools.partial(journal.compact, exclusive=shard is None, under_lease=write_csv)
        )
    await write_run_files(report, destination, options, planner.named if planner is not None else None)


def write_metadata_csv_from(destination: Destination, latest: Mapping[str, SeriesRecord]) -> None:
    """metadata.csv of every series the journal calls done (one row each), written atomically."""
    rows = [
        metadata_csv_row(
            rec.metadata or {},
            instance_count=rec.instance_count or 0,
            dicom_bytes=rec.dicom_bytes or 0,
            location=rec.path or "",
            sop_class_uid=rec.sop_class_uid,
            downloaded_at=datetime.fromtimestamp(rec.at, UTC),
            root=destination.root,
        )
        for rec in sorted(latest.values(), key=lambda r: r.path or "")
        if rec.status == "done"
    ]
    write_metadata_csv(destination.root / "metadata.csv", rows)


async def write_run_files(
    report: RunReport, destination: Destination, options: RunOptions, named: list[str] | None
) -> None:
    """The report (per run, latest, and ``--report``) and the plan ``status`` counts pending from.

    A shard also writes ``last-report.shard-K-of-N.json`` and its own ``last-plan.shard-K-of-N.json``
    (its share of the job), so ``status`` can show every shard and the whole job.
    """
    text = json.dumps(report.as_dict(), indent=2) + "\n"
    reports_dir = destination.state_dir / "reports"
    await anyio.to_thread.run_sync(lambda: reports_dir.mkdir(parents=True, exist_ok=True))
    await write_text_atomic(reports_dir / f"{report.run_id}.json", text)
    await write_text_atomic(destination.state_dir / "last-report.json", text)
    shard = options.split
    suffix = f".{shard.name}" if shard is not None else ""
    if shard is not None:
        await write_text_atomic(destination.state_dir / f"last-report{suffix}.json", text)
    report_path = _path(options.report_path)
    if report_path is not None:
        await write_text_atomic(report_path, text)
    if named is not None and not report.interrupted:
        document: dict[str, object] = {"run_id": report.run_id, "series": named}
        if shard is not None:
            document["shard"] = shard.label
        await write_text_atomic(
            destination.state_dir / f"last-plan{suffix}.json", json.dumps(document) + "\n"
        )


def _first_fatal(group: BaseExceptionGroup[BaseException]) -> TciaFetchError | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first_fatal(exc)
            if found is not None:
                return found
        elif isinstance(exc, TciaFetchError):
            return exc
    return None


def _stats_dict(value: object) -> dict[str, object]:
    """A statistics snapshot as JSON-safe values (enums and other objects become strings)."""
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is None:
        return {"value": str(value)}
    result: dict[str, object] = {}
    for name in fields:
        item = getattr(value, name)
        if isinstance(item, (tuple, list)):
            continue  # traces are long; the report keeps the summary figures
        result[name] = item if isinstance(item, (int, float, str, bool)) or item is None else str(item)
    return result


def run(job: JobSpec | Path | str, options: RunOptions | None = None) -> RunReport:
    """Synchronous twin of :func:`fetch` for scripts and notebooks."""

    async def main() -> RunReport:
        return await fetch(job, options)

    return anyio.run(main, backend="asyncio")
