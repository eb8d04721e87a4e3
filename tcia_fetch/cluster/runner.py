"""A whole run on a Dask cluster (``--scheduler``): plan once here, download on the workers.

The client does what a single-process run does around the downloads: it prepares and locks the
destination (the whole-destination lock: no shard may run beside it), reconciles the journal,
plans the job once, and at the end compacts the journal, writes metadata.csv and one report for
everything. The downloads are Dask tasks, one per series, running the ordinary ``SeriesWorker`` on
the workers (remote.py). The politeness budget stays the job's:

* at most ``--concurrency`` downloads are in flight on the whole cluster: every task holds a lease
  of one ``distributed.Semaphore(max_leases=concurrency)`` while it downloads (a worker hands its
  leases from one series to the next and returns the idle ones, leases.py; a dead worker's
  leases expire and return to the pool);
* ``--max-rate`` and ``--max-bandwidth`` are split evenly over the workers connected at the start.

The destination must be shared by every worker: a directory on a filesystem they all mount, or
an ``s3://bucket/prefix`` they all reach (each with the AWS settings of its own environment; the
destination goes to the workers as its URL, never with a credential). The client prepares it
as a single-process run does (store/home.py: the same lock, journal and reconciliation for
either home). Before any series is submitted, the client writes a probe with a random nonce into
the state area (a file, or an object) and every worker must read it back and answer with one of
its own, or the run stops and says which worker sees something else. Tasks are submitted in a
bounded window (a few per download slot), so a 600,000-series job does not put 600,000 tasks on
the scheduler at once.

Time before the first byte is what made a Dask run slower than one process (issue 11): so the
planner runs while Dask is imported and the local forkserver starts (one task group: the
planner, the lock's heartbeat, the submitter and the collector), the cluster is reached (or
started) as soon as the first series is planned, planned series go to it as they come, and each
worker's runtime (session, journal writer) is opened as soon as the worker is known. A plan with
nothing to download (the rerun of a finished job) never starts or reaches a cluster at all.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup

from tcia_fetch.api.client import NBIAClient
from tcia_fetch.cluster import _distributed
from tcia_fetch.cluster.address import SchedulerAddress, parse_scheduler
from tcia_fetch.cluster.remote import (
    WorkerConfig,
    close_runtime,
    fetch_series,
    open_runtime,
    probe_bucket,
    probe_destination,
    series_payload,
)
from tcia_fetch.engine.clock import SystemClock
from tcia_fetch.engine.report import RunEvent, RunReport, RunStats, SeriesFailure
from tcia_fetch.engine.retry import RetryPolicy
from tcia_fetch.engine.run import (
    RunOptions,
    _as_job,
    _first_fatal,
    _new_run_id,
    _retry_policy,
    close_books,
    journal_bad_rows,
    journal_sets,
    planner_options,
    resolve_client_settings,
    write_run_files,
)
from tcia_fetch.engine.worker import SeriesJob
from tcia_fetch.errors import ClusterError, DestinationError, InputError, TciaFetchError, redact_url
from tcia_fetch.job.jobfile import JobSpec
from tcia_fetch.plan.model import PlannedSeries, PlanSummary
from tcia_fetch.plan.planner import Planner
from tcia_fetch.plan.shard import split_rate
from tcia_fetch.plan.suggest import unmatched_tables
from tcia_fetch.store.destination import Destination
from tcia_fetch.store.home import (
    RunLock,
    close_home,
    home_journal,
    home_lock,
    open_home,
    open_portal,
    reconcile_home,
)
from tcia_fetch.store.journal import Journal
from tcia_fetch.store.location import DestinationLocation, parse_destination
from tcia_fetch.store.seriespath import blocked_root_outputs, recorded_damaged_paths

if TYPE_CHECKING:
    from tcia_fetch.store.objhome import BucketDestination

__all__ = ["fetch_on_cluster", "run_on_cluster"]

#: Tasks queued on the scheduler per download slot: enough to keep every slot busy.
_WINDOW_PER_SLOT: Final = 4
#: Task retries for errors raised inside a task (a dead worker is retried by the scheduler itself).
_TASK_RETRIES: Final = 2
_HEARTBEAT_S: Final = 30.0
#: How long the end of a run waits for the workers' runtimes to finish opening before closing them.
_WARM_UP_WAIT_S: Final = 60.0


async def fetch_on_cluster(
    job: JobSpec | Path | str,
    options: RunOptions,
    *,
    stats: RunStats | None = None,
    on_event: Callable[[RunEvent], None] | None = None,
) -> RunReport:
    """``fetch`` with ``options.scheduler`` set: the same contract, the downloads on Dask workers."""
    if options.scheduler is None:
        raise InputError("fetch_on_cluster needs RunOptions(scheduler=...)")
    address = parse_scheduler(options.scheduler)
    _distributed.require()
    spec = _as_job(job, options)
    stats = stats or RunStats()
    clock = SystemClock()
    out = _cluster_destination(options, spec)
    settings = await anyio.to_thread.run_sync(resolve_client_settings, spec, options, dict(os.environ))
    concurrency = options.concurrency or spec.download.concurrency
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, got {concurrency}")
    layout = options.layout or spec.output.layout
    series_job = SeriesJob(
        layout=layout,
        keep=options.keep or spec.output.keep,
        verify_md5=spec.verify.md5 if options.verify_md5 is None else options.verify_md5,
        new_file_names=spec.output.new_file_names,
        fsync=options.fsync,
    )
    policy = _retry_policy(spec)
    run_id = _new_run_id()
    started = time.monotonic()
    report = RunReport(
        run_id=run_id,
        destination=str(out),
        base_url=redact_url(settings.base_url),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        duplicates=spec.duplicates,
        input_problems=[str(problem) for problem in spec.problems],
    )
    # A bucket's client lives on this event loop, as in a single-process run (engine/run.py).
    portal = await open_portal(out)
    destination = await anyio.to_thread.run_sync(
        lambda: open_home(out, keep=series_job.keep, policy=policy, portal=portal)
    )
    try:
        lock = await _lock_whole_destination(destination, run_id)
    except BaseException:
        await close_home(destination)
        raise
    journal: Journal | None = None
    planner: Planner | None = None
    failures: list[SeriesFailure] = []
    try:
        journal = await anyio.to_thread.run_sync(home_journal, destination, run_id)
        reconciliation = await anyio.to_thread.run_sync(reconcile_home, destination, journal)
        done_uids, damaged, only = await journal_sets(
            journal, reconciliation.damaged, retry_failed=options.retry_failed
        )
        # A repaired series goes back where it was published, whatever the layout renders now.
        damaged_paths = await anyio.to_thread.run_sync(
            recorded_damaged_paths, journal, reconciliation.damaged
        )
        max_rps = options.max_requests_per_s or spec.download.max_requests_per_s or None
        max_bps = options.max_bytes_per_s or spec.download.max_bytes_per_s or None
        window = max(2, concurrency * _WINDOW_PER_SLOT)
        # Planned series wait here for the cluster (at most a window of them: a 600,000-series
        # job is never held in memory); the planner runs while the cluster starts.
        send, receive = anyio.create_memory_object_stream[PlannedSeries](max_buffer_size=window)
        async with NBIAClient(settings) as client:
            planner = Planner(
                client,
                spec,
                retry_policy=policy,
                clock=clock,
                skip_uids=done_uids,
                only_uids=only,
                options=planner_options(layout, settings, client),
            )
            async with receive, anyio.create_task_group() as group:
                group.start_soon(_keep_lock_alive, lock.heartbeat)
                group.start_soon(_plan_into, planner, send, stats)
                group.start_soon(_distributed.prepare, address)
                # No cluster before there is a series to send it: a rerun of a finished job
                # plans, finds nothing to do and ends without starting (or reaching) one.
                first = await _first_planned(receive)
                if first is None:
                    report.engine = {
                        "scheduler": address.describe(),
                        "workers": 0,
                        "concurrency_cap": concurrency,
                    }
                else:

                    def config_for(workers: dict[str, int], semaphore: Callable[[], Any]) -> WorkerConfig:
                        return WorkerConfig(
                            run_id=run_id,
                            destination=_destination_text(destination),
                            settings=settings,
                            series_job=series_job,
                            retry_policy=policy,
                            concurrency=concurrency,
                            slots=min(concurrency, max(workers.values())),
                            max_requests_per_s=split_rate(max_rps, len(workers)),
                            max_bytes_per_s=split_rate(max_bps, len(workers)),
                            damaged=damaged,
                            damaged_paths=damaged_paths,
                            semaphore=semaphore,
                            max_outage_s=spec.download.max_outage_s,
                            min_free_bytes=options.min_free_bytes,
                        )

                    cluster_tasks = _Tasks(first, receive, window, stats, failures, on_event)
                    report.engine = await _download_on_cluster(
                        address, run_id, destination, policy, concurrency, config_for, cluster_tasks, group
                    )
                group.cancel_scope.cancel()
            stats.concurrency_limit = concurrency
    except anyio.get_cancelled_exc_class():
        report.interrupted = True
        raise
    except BaseExceptionGroup as errors:  # the run's task group: planner, lock, tasks
        fatal = _first_fatal(errors)
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
                await _finish(report, stats, planner, failures, journal, destination, spec, options, started)
                await anyio.to_thread.run_sync(lock.release)
            finally:
                await close_home(destination)
    return report


def _cluster_destination(options: RunOptions, spec: JobSpec) -> DestinationLocation:
    """The run's directory or bucket (a bad URL is exit 2 before any connection)."""
    value = options.out if options.out is not None else spec.output.dest
    source = "--out" if options.out is not None else "output.dest"
    if value is None:
        raise InputError("no destination: give --out DIR or set [output].dest in the job file")
    return parse_destination(value, source=source)


async def _lock_whole_destination(destination: Destination | BucketDestination, run_id: str) -> RunLock:
    """Prepare the destination (access checked before any traffic) and take the whole-job lock:
    no shard, and no other run, may write beside a Dask run."""
    await anyio.to_thread.run_sync(destination.prepare)
    return await anyio.to_thread.run_sync(home_lock, destination, run_id)


def _destination_text(destination: Destination | BucketDestination) -> str:
    """The destination as the workers' ``parse_destination`` reads it: never a credential (an
    s3:// URL names a bucket and a prefix only; each worker's AWS settings are its own)."""
    if isinstance(destination, Destination):
        return str(destination.root)
    return destination.location.url


async def _first_planned(planned: ObjectReceiveStream[PlannedSeries]) -> PlannedSeries | None:
    """The first series to download, once planned; None when the plan has none."""
    try:
        return await planned.receive()
    except anyio.EndOfStream:
        return None


@dataclasses.dataclass(slots=True)
class _Tasks:
    """The series for the cluster (the first one already taken off the planner's stream) and
    where their outcomes go."""

    first: PlannedSeries
    planned: ObjectReceiveStream[PlannedSeries]
    window: int
    stats: RunStats
    failures: list[SeriesFailure]
    on_event: Callable[[RunEvent], None] | None


async def _download_on_cluster(
    address: SchedulerAddress,
    run_id: str,
    destination: Destination | BucketDestination,
    policy: RetryPolicy,
    concurrency: int,
    config_for: Callable[[dict[str, int], Callable[[], Any]], WorkerConfig],
    tasks: _Tasks,
    group: TaskGroup,
) -> dict[str, Any]:
    """Connect (or start the local cluster), check the destination is shared, run every series
    as a task, close the workers' runtimes; the report's ``engine`` figures."""
    began = time.monotonic()
    workers_hint = address.local_workers or 1
    async with _distributed.connect(
        address, threads_per_worker=_distributed.threads_for(concurrency, workers_hint)
    ) as cluster:
        scheduler_address = cluster.address
        workers = await cluster.workers()
        if not workers:
            raise ClusterError(f"the Dask cluster at {scheduler_address} has no workers")
        await _check_shared_destination(cluster, destination, policy)
        semaphore = await cluster.semaphore(f"tcia-fetch-{run_id}", concurrency)
        config = config_for(workers, semaphore)
        ready_s = time.monotonic() - began
        warmed = anyio.Event()
        try:
            group.start_soon(_warm_up, cluster, config, warmed)
            await _run_tasks(cluster, tasks, config)
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(_WARM_UP_WAIT_S):
                    await warmed.wait()  # never close a runtime still opening
                closed = await cluster.run_on_workers(close_runtime, config.run_id)
    return {
        "scheduler": scheduler_address if address.url else address.describe(),
        "workers": len(workers),
        "concurrency_cap": concurrency,
        "cluster_semaphore_max_leases": concurrency,
        "slots_per_worker": config.slots,
        # From the first planned series to the cluster ready for it (connected or started,
        # the destination checked): where a short job's time goes (benchmarks/scaleout.py).
        "cluster_ready_s": round(ready_s, 3),
        # Leases of the semaphore taken from the scheduler vs handed on within a worker.
        "leases": _lease_figures(closed.values()),
        "max_requests_per_s_per_worker": config.max_requests_per_s,
        "max_bytes_per_s_per_worker": config.max_bytes_per_s,
    }


async def _check_shared_destination(
    cluster: _distributed.Cluster,
    destination: Destination | BucketDestination,
    policy: RetryPolicy | None = None,
) -> None:
    """Every worker must read the client's probe and write its reply, or the run stops here.

    A directory: a file in the state directory, read through each worker's filesystem (a shared
    mount). A bucket: an object in the state area, read through each worker's own client, which
    proves every worker reaches the same endpoint and bucket with working credentials from its
    own environment before any series is sent.
    """
    name = f"cluster-probe-{secrets.token_hex(8)}"
    nonce = secrets.token_hex(16)
    await anyio.to_thread.run_sync(_write_probe, destination, name, nonce)
    try:
        if isinstance(destination, Destination):
            answers = await cluster.run_on_workers(probe_destination, str(destination.root), name, nonce)
        else:
            answers = await cluster.run_on_workers(
                probe_bucket, destination.location.url, name, nonce, policy or RetryPolicy()
            )
        problems = {
            worker: (repr(answer) if isinstance(answer, BaseException) else answer)
            for worker, answer in answers.items()
            if answer is not None
        }
        if problems:
            listed = "; ".join(f"{worker}: {problem}" for worker, problem in sorted(problems.items()))
            raise DestinationError(_not_shared_message(destination, listed))
    finally:
        await anyio.to_thread.run_sync(_remove_probes, destination, name)


def _not_shared_message(destination: Destination | BucketDestination, listed: str) -> str:
    if isinstance(destination, Destination):
        return (
            f"the destination {destination.root} is not shared with every Dask worker ({listed}); "
            "use a directory on a filesystem all workers mount (NFS, Lustre, GPFS)"
        )
    return (
        f"the destination {destination.location.url} is not reachable alike from every Dask worker "
        f"({listed}); every worker needs the same endpoint (AWS_ENDPOINT_URL), region and working "
        "credentials for the bucket in its own environment"
    )


def _write_probe(destination: Destination | BucketDestination, name: str, nonce: str) -> None:
    if isinstance(destination, Destination):
        (destination.state_dir / name).write_text(nonce, encoding="utf-8")
    else:
        destination.state.write(name, nonce.encode("utf-8"))


def _remove_probes(destination: Destination | BucketDestination, name: str) -> None:
    """The probe and every worker's reply (named ``<probe>.<host>.<pid>``)."""
    if isinstance(destination, Destination):
        for path in destination.state_dir.glob(f"{name}*"):
            path.unlink(missing_ok=True)
        return
    for found in destination.state.list(name):
        destination.state.delete(found)


async def _warm_up(cluster: _distributed.Cluster, config: WorkerConfig, warmed: anyio.Event) -> None:
    """Open every worker's runtime beside the first tasks (which wait for it on their worker).

    A failure here is not the run's: the same error reaches each task and is reported per
    series, where it belongs."""
    try:
        await cluster.run_on_workers(open_runtime, config)
    finally:
        warmed.set()


async def _plan_into(planner: Planner, send: ObjectSendStream[PlannedSeries], stats: RunStats) -> None:
    async with send:

        async def emit(item: PlannedSeries) -> None:
            stats.planned_series += 1
            stats.planned_bytes += item.expectation.total_bytes
            await send.send(item)

        await planner.run(emit)
        stats.planning_done = True
        stats.skipped_series = planner.skipped_count


async def _run_tasks(cluster: _distributed.Cluster, tasks: _Tasks, config: WorkerConfig) -> None:
    """Submit series as they are planned, at most ``tasks.window`` on the scheduler at once, and
    fold every outcome into the run's figures and failures.

    Two tasks: the submitter never waits for a completion to hand a newly planned series over
    (so slots do not idle while the planner is slower than the downloads), and the collector
    takes exactly one completion per submitted task (one notice each), so it never waits on an
    empty set.
    """
    by_key: dict[str, PlannedSeries] = {}
    room = anyio.Semaphore(tasks.window)
    notices, notified = anyio.create_memory_object_stream[None](max_buffer_size=tasks.window)

    async def submit(item: PlannedSeries) -> None:
        await room.acquire()
        key = f"tcia-fetch-{item.series_uid}-{config.run_id}"
        by_key[key] = item
        cluster.submit(fetch_series, series_payload(item), config, key=key, retries=_TASK_RETRIES)
        await notices.send(None)

    async def submit_all() -> None:
        async with notices, tasks.planned:
            await submit(tasks.first)
            async for item in tasks.planned:
                await submit(item)

    async def collect_all() -> None:
        async with notified:
            async for _ in notified:
                outcome = await cluster.next_completed()
                room.release()
                _fold(by_key.pop(outcome.key), outcome, tasks.stats, tasks.failures, tasks.on_event)

    async with anyio.create_task_group() as group:
        group.start_soon(submit_all)
        group.start_soon(collect_all)


def _fold(
    item: PlannedSeries,
    outcome: _distributed.TaskOutcome,
    stats: RunStats,
    failures: list[SeriesFailure],
    on_event: Callable[[RunEvent], None] | None,
) -> None:
    """One task's outcome into the run's figures (a fatal error on a worker ends the run)."""
    result = outcome.result
    if outcome.error is not None:
        failures.append(SeriesFailure(item.series_uid, outcome.error, "cluster", 0, item.origin))
        stats.failed_series += 1
        _emit(on_event, RunEvent("failed", item.series_uid, outcome.error))
        return
    if result.get("fatal"):
        raise ClusterError(f"worker {result.get('worker')}: {result['fatal']}")
    if result.get("done"):
        stats.done_series += 1
        stats.done_bytes += int(result.get("dicom_bytes", 0))
        stats.dicom_bytes += int(result.get("dicom_bytes", 0))
        stats.archive_bytes += int(result.get("archive_bytes", 0))
        _emit(on_event, RunEvent("done", item.series_uid, "adopted" if result.get("adopted") else ""))
    else:
        failure = result.get("failure") or {}
        failures.append(
            SeriesFailure(
                item.series_uid,
                str(failure.get("reason", "failed")),
                str(failure.get("reference", "error")),
                int(failure.get("attempts", 0)),
                item.origin,
            )
        )
        stats.failed_series += 1
        _emit(on_event, RunEvent("failed", item.series_uid, str(failure.get("reason", ""))))
    stats.retries += int(result.get("retries", 0))
    stats.throttled += int(result.get("throttled", 0))


def _lease_figures(results: Iterable[object]) -> dict[str, int]:
    totals = {"acquired": 0, "reused": 0, "released": 0}
    for result in results:
        if isinstance(result, dict):
            for name in totals:
                totals[name] += int(result.get(name, 0))
    return totals


async def _keep_lock_alive(heartbeat: Callable[[], None]) -> None:
    """Prove the client is alive to other hosts while series run for a long time."""
    while True:
        await anyio.sleep(_HEARTBEAT_S)
        await anyio.to_thread.run_sync(heartbeat)


def _emit(on_event: Callable[[RunEvent], None] | None, event: RunEvent) -> None:
    if on_event is not None:
        on_event(event)


async def _finish(
    report: RunReport,
    stats: RunStats,
    planner: Planner | None,
    failures: list[SeriesFailure],
    journal: Journal | None,
    destination: Destination | BucketDestination,
    spec: JobSpec,
    options: RunOptions,
    started: float,
) -> None:
    """One report for the whole cluster; journal compaction and metadata.csv under the lease."""
    summary = planner.summary if planner is not None else PlanSummary()
    skipped = planner.skipped_count if planner is not None else 0
    failures = failures + [
        SeriesFailure(p.series_uid, p.reason, p.reference, 0, p.origin) for p in summary.problems
    ]
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
    # The same plan errors as a single-process run (engine/run.py): a [[query]] that matched
    # nothing, and a directory standing where metadata.csv or the catalog goes.
    unmatched = [finding.message for finding in unmatched_tables(summary.empty_queries)]
    report.plan_errors = list(summary.query_errors) + unmatched
    report.plan_errors += list((await anyio.to_thread.run_sync(blocked_root_outputs, destination)).values())
    report.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    report.duration_s = time.monotonic() - started
    if journal is not None:
        # Killed workers may have left staging behind; this host's dead ones are removed now.
        # On a bucket also every multipart upload still open under the prefix: this run holds
        # the whole-destination lock and its workers' runtimes are closed, so each is a killed
        # worker's (invisible, never completed) series.
        await anyio.to_thread.run_sync(_cleanup_leftovers, destination)
        report.instances = await _close_books(journal, destination, report.run_id, spec, summary)
    await write_run_files(report, destination, options, planner)


def _cleanup_leftovers(destination: Destination | BucketDestination) -> None:
    destination.cleanup_leftovers()
    if not isinstance(destination, Destination):
        from tcia_fetch.store.objhome import remove_dead_worker_dirs

        remove_dead_worker_dirs(destination.location)


async def _close_books(
    journal: Journal,
    destination: Destination | BucketDestination,
    run_id: str,
    spec: JobSpec,
    summary: PlanSummary,
) -> int:
    """Bad server rows journaled, then compaction, metadata.csv and the catalog from a view that
    includes the workers' records.

    The client's own view was read before any task ran: it knows nothing of the segments the
    workers appended to since, and it appended (almost) nothing itself. So it is closed, and a
    fresh view is read now that the workers have closed their writers (their segments are
    finished, so the compaction folds them). Under the compaction lease; a worker the scheduler
    lost may still be alive somewhere and writing: its segment is merged, never folded.
    """
    await anyio.to_thread.run_sync(journal.close)
    fresh = await anyio.to_thread.run_sync(home_journal, destination, run_id)
    try:
        # Records in segments are appends the snapshot (and so metadata.csv) may not reflect yet.
        workers_appended = fresh.statistics.segment_records > 0
        # Series whose server row was unusable never reached a worker: the client records them
        # as failed, with the very function a single-process run uses (so status and
        # --retry-failed see them alike), in the fresh view that knows the workers' records.
        await journal_bad_rows(fresh, summary, run_id)
        return await close_books(
            fresh, destination, run_id, write_csv=spec.output.metadata_csv, force=workers_appended
        )
    finally:
        await anyio.to_thread.run_sync(fresh.close)


def run_on_cluster(job: JobSpec | Path | str, options: RunOptions, scheduler: str | None = None) -> RunReport:
    """Synchronous entry point for scripts: ``run_on_cluster("job.toml", RunOptions(out=...), "local:4")``."""
    if scheduler is not None:
        options = _with_scheduler(options, scheduler)

    async def main() -> RunReport:
        return await fetch_on_cluster(job, options)

    return anyio.run(main, backend="asyncio")


def _with_scheduler(options: RunOptions, scheduler: str) -> RunOptions:
    return dataclasses.replace(options, scheduler=scheduler)
