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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from tcia_fetch._crashpoint import crash_point
from tcia_fetch._loop import run_sync
from tcia_fetch.api.client import NBIAClient
from tcia_fetch.cluster.address import parse_scheduler
from tcia_fetch.config import DEFAULT_BASE_URL, ClientSettings, load_client_settings
from tcia_fetch.engine.breaker import CircuitBreaker
from tcia_fetch.engine.clock import Clock, SystemClock
from tcia_fetch.engine.controls import pacing_controls
from tcia_fetch.engine.report import RunEvent, RunReport, RunStats, SeriesFailure
from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.space import SpaceGuard, space_refusal_error
from tcia_fetch.engine.worker import SeriesJob, SeriesWorker, pool_size
from tcia_fetch.errors import InputError, TciaFetchError, redact_url
from tcia_fetch.job.jobfile import JobSpec, load_job
from tcia_fetch.plan.model import PlannedSeries, PlanSummary
from tcia_fetch.plan.planner import Planner, PlannerOptions
from tcia_fetch.plan.rows import BAD_ROW_REFERENCE
from tcia_fetch.plan.shard import Shard, parse_shard, split_count, split_rate
from tcia_fetch.plan.suggest import unmatched_tables
from tcia_fetch.redaction import scrub
from tcia_fetch.store.atomic import write_bytes_atomic, write_text_atomic
from tcia_fetch.store.catalog import CATALOG_NAME, INSTANCES_NAME, write_destination_catalogs
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.digests import LAST_PLAN_DIGESTS, SortedDigests
from tcia_fetch.store.home import (
    RunLock,
    close_home,
    home_journal,
    home_lock,
    open_home,
    open_portal,
    reconcile_home,
    upload_home_outputs,
)
from tcia_fetch.store.journal import SNAPSHOT_NAME, Journal
from tcia_fetch.store.location import looks_like_url, parse_destination
from tcia_fetch.store.metadata_csv import metadata_csv_row, write_metadata_csv
from tcia_fetch.store.reconcile import Damage
from tcia_fetch.store.records import SeriesRecord
from tcia_fetch.store.seriespath import SeriesPaths, blocked_root_outputs, recorded_damaged_paths
from tcia_fetch.transport import QUERY_CONNECTIONS

if TYPE_CHECKING:
    from tcia_fetch.store.objhome import BucketDestination

__all__ = ["RunOptions", "fetch", "plan", "resolve_client_settings", "run"]

_HEARTBEAT_S = 30.0
#: How long a finishing run waits for another process's compaction (a shard) before giving up.
_FINISH_LEASE_WAIT_S = 600.0


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
    keep: Literal["dicom", "zip", "tar.zst"] | None = None
    verify_md5: bool | None = None
    fsync: bool = True
    skip_invalid: bool = False
    #: This run is shard K of N of the job (``Shard`` or ``"K/N"``): it downloads the series whose
    #: UID hashes to K, with 1/N of the concurrency, rate and bandwidth budget.
    shard: Shard | str | None = None
    #: Run the downloads on a Dask cluster: ``tcp://host:port`` or ``local:N`` (tcia_fetch.cluster).
    scheduler: str | None = None
    #: Bytes kept free on the staging filesystem (engine/space.py); None: 256 MiB or 1 % of it,
    #: whichever is smaller.
    min_free_bytes: int | None = None

    def __post_init__(self) -> None:
        # Accept plain strings from scripts; store Paths.
        for name in ("out", "config_file", "report_path"):
            value = getattr(self, name)
            if name == "out" and isinstance(value, str) and looks_like_url(value):
                continue  # parse_destination decides; Path() would mangle "s3://b" into "s3:/b"
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.shard, str):
            object.__setattr__(self, "shard", parse_shard(self.shard))
        if self.shard is not None and self.scheduler is not None:
            raise InputError("--shard and --scheduler do not mix: a Dask run already spreads the whole job")
        if self.scheduler is not None:
            parse_scheduler(self.scheduler)  # a bad address is exit 2 before any connection
        if self.min_free_bytes is not None and self.min_free_bytes < 0:
            raise InputError(f"min_free_bytes: must be 0 or more, not {self.min_free_bytes}")

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
    keep_series: bool = True,
) -> tuple[list[PlannedSeries], PlanSummary]:
    """Expand a job into its plan without downloading anything (``tcia-fetch plan``).

    With ``keep_series=False`` only the summary is kept (the list comes back empty): the totals of
    a 600,000-series plan need no per-series memory, its list of rows does.
    """
    options = options or RunOptions()
    spec = _as_job(job, options)
    clock = clock or SystemClock()
    settings = await anyio.to_thread.run_sync(resolve_client_settings, spec, options, dict(os.environ))
    items: list[PlannedSeries] = []

    async def collect(item: PlannedSeries) -> None:
        if keep_series:
            items.append(item)

    async with NBIAClient(settings) as client:
        planner = Planner(
            client,
            spec,
            retry_policy=_retry_policy(spec),
            clock=clock,
            options=planner_options(options.layout or spec.output.layout, settings, client),
            # A throttle storm ends `plan` too (exit 3) instead of retrying for hours.
            breaker=CircuitBreaker(clock, max_outage_s=spec.download.max_outage_s),
        )
        summary = await planner.run(collect)
    return items, summary


def planner_options(layout: str, settings: ClientSettings, client: NBIAClient) -> PlannerOptions:
    """How every run (plan, fetch, a cluster run) lets the planner use this server."""
    return PlannerOptions(
        full_metadata=layout == "descriptive",
        nlst_fallback=_is_production(settings),
        bulk_metadata=client.api_version == "v4",
    )


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
    out_value = options.out if options.out is not None else spec.output.dest
    if out_value is None:
        raise InputError("no destination: give --out DIR or set [output].dest in the job file")
    out = parse_destination(out_value, source="--out" if options.out is not None else "output.dest")
    settings = await anyio.to_thread.run_sync(resolve_client_settings, spec, options, dict(os.environ))
    concurrency = options.concurrency or spec.download.concurrency
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, got {concurrency}")
    shard = options.split
    job_concurrency = concurrency
    if shard is not None:
        concurrency = split_count(concurrency, shard.count, shard.index)
    warnings = _concurrency_warnings(settings, concurrency)
    for warning in warnings:
        if on_event is not None:
            on_event(RunEvent("warning", "", warning))
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

    # A bucket's client lives on this event loop (the series data path awaits it directly);
    # the portal lets the journal and the lock, in worker threads, use the same client.
    portal = await open_portal(out)
    destination = await anyio.to_thread.run_sync(
        lambda: open_home(out, keep=series_job.keep, policy=policy, portal=portal, shard=shard)
    )
    try:
        await anyio.to_thread.run_sync(destination.prepare)
        lock: RunLock = await anyio.to_thread.run_sync(
            functools.partial(home_lock, destination, run_id, shard=shard)
        )
    except BaseException:
        await close_home(destination)
        raise
    journal: Journal | None = None
    worker: SeriesWorker | None = None
    planner: Planner | None = None
    try:
        journal = await anyio.to_thread.run_sync(home_journal, destination, run_id)
        crash_point("journal.after_open")
        reconciliation = await anyio.to_thread.run_sync(reconcile_home, destination, journal)
        # Compact digest sets (8 bytes per series), never a set of UID strings (issue 13).
        done_uids, damaged, only = await journal_sets(
            journal, reconciliation.damaged, retry_failed=options.retry_failed
        )
        # A repaired series goes back where it was published, whatever the layout renders now.
        damaged_paths = await anyio.to_thread.run_sync(
            recorded_damaged_paths, journal, reconciliation.damaged
        )
        max_rps = options.max_requests_per_s or spec.download.max_requests_per_s or None
        max_bps = options.max_bytes_per_s or spec.download.max_bytes_per_s or None
        if shard is not None:  # the budget is the job's: each shard takes its share
            max_rps = split_rate(max_rps, shard.count)
            max_bps = split_rate(max_bps, shard.count)
        controls = pacing_controls(
            concurrency,
            max_requests_per_s=max_rps,
            max_bytes_per_s=max_bps,
            clock=clock,
            max_outage_s=spec.download.max_outage_s,
        )
        limiter = controls.limiter
        async with NBIAClient(
            settings, download_slots=concurrency, download_read_bytes=controls.budget.read_bytes
        ) as client:
            limiter.follow_round_trips(lambda: client.fastest_answer_s)
            planner = Planner(
                client,
                spec,
                retry_policy=policy,
                clock=clock,
                skip_uids=done_uids,
                only_uids=only,
                options=planner_options(layout, settings, client),
                share=shard.owns if shard is not None else None,
                breaker=controls.breaker,
            )
            worker = SeriesWorker(
                source=client,
                destination=destination,
                journal=journal,
                job=series_job,
                run_id=run_id,
                retry_policy=policy,
                clock=clock,
                pacer=controls.pacer,
                limiter=limiter,
                breaker=controls.breaker,
                bandwidth=controls.bandwidth,
                stats=stats,
                on_event=on_event,
                damaged=damaged,
                budget=controls.budget,
                # Staging lives beside the state directory (a bucket home's is local too).
                space=SpaceGuard(destination.state_dir, reserve_bytes=options.min_free_bytes),
                set_aside_unfit=True,
                paths=SeriesPaths(layout, destination, damaged_paths),
            )
            await _run_pool(planner, worker, concurrency, lock.heartbeat, stats)
        report.engine = {
            "concurrency_cap": concurrency,
            "warnings": warnings,
            "job_concurrency": job_concurrency,
            # Every shard needs one slot: with more shards than the budget, the array runs one each.
            "budget_exceeded_by_shards": shard is not None and shard.count > job_concurrency,
            "max_requests_per_s": max_rps,
            "max_bytes_per_s": max_bps,
            "limiter": _stats_dict(limiter.statistics()),
            "pacer": _stats_dict(worker.pacer.statistics()),
            "breaker": _stats_dict(worker.breaker.statistics()),
        }
        if worker.unfit:  # the rest of the job is done: now end as a full disk does
            raise space_refusal_error(worker.unfit)
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
            try:
                await _finish(report, stats, planner, worker, journal, destination, spec, options, started)
                await anyio.to_thread.run_sync(lock.release)
            finally:
                await close_home(destination)
    return report


async def _run_pool(
    planner: Planner,
    worker: SeriesWorker,
    concurrency: int,
    heartbeat: Callable[[], None],
    stats: RunStats,
) -> None:
    """The one task group of a run: planner → bounded channel → workers.

    ``concurrency`` download slots (the limiter's), and :func:`pool_size` workers: a few more,
    which verify and publish finished bodies while the slots serve the next downloads.
    """
    send, receive = anyio.create_memory_object_stream[PlannedSeries](max_buffer_size=concurrency)
    finished = anyio.Event()
    workers = pool_size(concurrency)
    active_workers = workers

    async def produce(send_end: ObjectSendStream[PlannedSeries]) -> None:
        async with send_end:

            async def emit(item: PlannedSeries) -> None:
                stats.planned_series += 1
                stats.planned_bytes += item.expectation.total_bytes
                await send_end.send(item)

            await planner.run(emit)
            stats.planning_done = True
            stats.skipped_series = planner.skipped_count

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
        for _ in range(workers):
            group.start_soon(consume, receive.clone())
        receive.close()
    stats.concurrency_limit = concurrency


async def _finish(
    report: RunReport,
    stats: RunStats,
    planner: Planner | None,
    worker: SeriesWorker | None,
    journal: Journal | None,
    destination: Destination | BucketDestination,
    spec: JobSpec,
    options: RunOptions,
    started: float,
) -> None:
    """Close the books: report figures, journal compaction, metadata.csv, report files."""
    summary = planner.summary if planner is not None else PlanSummary()
    skipped = planner.skipped_count if planner is not None else 0
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
    # A [[query]] that matched nothing at all is a mistake (exit 1); see plan/suggest.py.
    unmatched = [finding.message for finding in unmatched_tables(summary.empty_queries)]
    report.plan_errors = list(summary.query_errors) + unmatched
    # A directory where metadata.csv or the catalog goes (left by an older version) is reported.
    report.plan_errors += list((await anyio.to_thread.run_sync(blocked_root_outputs, destination)).values())
    report.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    report.duration_s = time.monotonic() - started
    if journal is not None:
        await journal_bad_rows(journal, summary, report.run_id)
        report.instances = await close_books(
            journal,
            destination,
            report.run_id,
            write_csv=spec.output.metadata_csv,
            # A run ending on a fatal error (a full disk, a store that keeps failing) leaves the
            # Parquet catalog to the next run or `tcia-fetch catalog`: writing it would retry
            # against the same broken destination and its error would hide the real one.
            catalog=report.fatal_error is None,
        )
    await write_run_files(report, destination, options, planner)


async def journal_bad_rows(journal: Journal, summary: PlanSummary, run_id: str) -> None:
    """Record series whose server row was unusable as failed, like any failed series.

    So ``status`` counts them as failed (not forever pending) and ``--retry-failed`` asks for
    them again. A rerun meeting the same row reports it again; the journal keeps the first record
    (appending the same failure on every rerun would only grow it) (issue 14).
    """
    problems = [problem for problem in summary.problems if problem.reference == BAD_ROW_REFERENCE]
    if not problems:
        return

    def record() -> None:
        now = time.time()
        fresh = [
            SeriesRecord(
                series_uid=problem.series_uid,
                status="failed",
                at=now,
                run_id=run_id,
                reason=problem.reason,
                reference=problem.reference,
                attempts=0,
            )
            for problem in problems
            if journal.status_of(problem.series_uid) != "failed"
        ]
        if fresh:
            journal.extend(fresh)

    await anyio.to_thread.run_sync(record)


async def write_run_files(
    report: RunReport,
    destination: Destination | BucketDestination,
    options: RunOptions,
    planner: Planner | None,
) -> None:
    """The report (per run, latest, and ``--report``) and the plan ``status`` counts pending from.

    A shard also writes ``last-report.shard-K-of-N.json`` and its own ``last-plan.shard-K-of-N.json``
    (its share of the job), so ``status`` can show every shard and the whole job. The plan is kept
    as sorted 8-byte UID digests beside a small JSON summary (4.8 MB for 600,000 series), never a
    JSON list of every UID.
    """
    # Last line of defence: no credential in a report, whatever a message quoted (redaction.py).
    text = scrub(json.dumps(report.as_dict(), indent=2) + "\n")
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
    if planner is not None and not report.interrupted:
        named = planner.named_digests()
        digests_name = f"last-plan{suffix}.digests" if shard is not None else LAST_PLAN_DIGESTS
        await write_bytes_atomic(destination.state_dir / digests_name, named.to_bytes())
        document: dict[str, object] = {
            "run_id": report.run_id,
            "series_count": len(named),
            "digests": digests_name,
        }
        if shard is not None:
            document["shard"] = shard.label
        await write_text_atomic(
            destination.state_dir / f"last-plan{suffix}.json", json.dumps(document) + "\n"
        )
    await anyio.to_thread.run_sync(upload_home_outputs, destination)


def _concurrency_warnings(settings: ClientSettings, concurrency: int) -> list[str]:
    """Say so when a config file's ``max_connections`` disagrees with the run's concurrency.

    ``--concurrency`` (or the job's ``concurrency``) is the number of downloads in flight, end
    to end: the pool is sized from it. A lower ``max_connections`` from a config file used to
    cap it silently; now it is overruled, and the user is told rather than left guessing.
    """
    configured = settings.max_connections
    if configured is None or configured >= concurrency:
        return []
    return [
        f"config max_connections = {configured} is below the run's concurrency {concurrency}; "
        f"the connection pool is sized from the concurrency ({concurrency} downloads, plus "
        f"{QUERY_CONNECTIONS} connections for queries)"
    ]


async def journal_sets(
    journal: Journal, found_damaged: Iterable[Damage], *, retry_failed: bool
) -> tuple[SortedDigests, _UidUnion, _UidUnion | None]:
    """(done, damaged, only) for the planner and worker, as compact digest sets (8 bytes per
    series), never sets of UID strings (issue 13). ``only`` is None unless ``--retry-failed``."""
    found = [item.series_uid for item in found_damaged]
    damaged = _UidUnion(await anyio.to_thread.run_sync(journal.digests, "damaged"), found)
    done = (await anyio.to_thread.run_sync(journal.digests, "done")).without(found)
    only = (
        _UidUnion(await anyio.to_thread.run_sync(journal.digests, "failed"), found) if retry_failed else None
    )
    return done, damaged, only


async def close_books(
    journal: Journal,
    destination: Destination | BucketDestination,
    run_id: str,
    *,
    write_csv: bool,
    force: bool = False,
    catalog: bool = True,
) -> int:
    """Compact the journal and write metadata.csv and the catalog, all under the compaction
    lease: another process (a shard, a Dask client) finishing at the same moment waits, so neither
    file races or drops rows. Returns the instances this run recorded as done.

    ``force`` rewrites them even when ``journal`` itself appended nothing (a Dask client, whose
    workers appended through journals of their own)."""
    books = _Books(journal, destination, run_id, write_csv=write_csv, force=force, catalog=catalog)
    await anyio.to_thread.run_sync(lambda: journal.compact(wait_s=_FINISH_LEASE_WAIT_S, then=books.write))
    return books.instances


class _UidUnion:
    """``uid in digests or uid in few``: a compact set plus the few UIDs reconciliation found."""

    __slots__ = ("_digests", "_few")

    def __init__(self, digests: SortedDigests, few: Iterable[str]) -> None:
        self._digests = digests
        self._few = frozenset(few)

    def __contains__(self, uid: object) -> bool:
        return uid in self._few or uid in self._digests


class _Books:
    """metadata.csv and the report's instance count, from one streamed pass over the journal.

    On a rerun that appended nothing and finds metadata.csv newer than the journal's snapshot,
    the pass is skipped: the file already holds exactly the journal's done series (it is written
    right after every compaction; a crash in between leaves it older, so it is written again).
    """

    def __init__(
        self,
        journal: Journal,
        destination: Destination | BucketDestination,
        run_id: str,
        *,
        write_csv: bool,
        force: bool = False,
        catalog: bool = True,
    ) -> None:
        self._journal = journal
        self._catalog = catalog
        self._destination = destination
        self._run_id = run_id
        self._write_csv = write_csv
        self._force = force
        self.instances = 0

    def write(self) -> None:
        csv_path = self._destination.root / "metadata.csv"
        blocked = blocked_root_outputs(self._destination)
        write_csv = self._write_csv and csv_path.name not in blocked
        unchanged = not self._force and self._journal.appended == 0
        if unchanged and (not write_csv or self._csv_is_current(csv_path)):
            return

        def rows() -> Iterator[dict[str, str]]:
            for rec in self._journal.iter_latest("done"):
                if rec.run_id == self._run_id:
                    self.instances += rec.instance_count or 0
                yield metadata_csv_row(
                    rec.metadata or {},
                    instance_count=rec.instance_count or 0,
                    dicom_bytes=rec.dicom_bytes or 0,
                    location=rec.path or "",
                    sop_class_uid=rec.sop_class_uid,
                    downloaded_at=datetime.fromtimestamp(rec.at, UTC),
                    root=self._destination.root if isinstance(self._destination, Destination) else None,
                )

        if write_csv:
            write_metadata_csv(csv_path, rows())
            stamp = time.time_ns()  # the snapshot's clock (fine-grained), not the filesystem's
            os.utime(csv_path, ns=(stamp, stamp))
        else:
            for _ in rows():
                pass
        if self._catalog and not blocked.keys() & {CATALOG_NAME, INSTANCES_NAME}:
            # the Parquet catalog, derived from the same (compacted) journal, beside metadata.csv
            write_destination_catalogs(self._journal.iter_latest("done"), self._destination)

    def _csv_is_current(self, csv_path: Path) -> bool:
        snapshot = self._destination.state_dir / SNAPSHOT_NAME
        try:
            return csv_path.stat().st_mtime_ns >= snapshot.stat().st_mtime_ns
        except FileNotFoundError:
            return csv_path.exists()  # no snapshot: nothing was ever recorded


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
    """Synchronous twin of :func:`fetch` for scripts and notebooks.

    Inside a running event loop (Jupyter, an async app) the run goes to a private loop in a
    worker thread (:func:`tcia_fetch._loop.run_sync`) instead of failing.
    """

    async def main() -> RunReport:
        return await fetch(job, options)

    return run_sync(main)
