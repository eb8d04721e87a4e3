"""Run one scenario: for each run and each contender, a fresh server, a fresh output dir, measure, check.

Per contender run the harness

1. starts ``python -m tcia_fetch.testing serve`` with the scenario's catalog and load model;
2. writes the job (``.tcia`` manifest and a plain UID list, same series in the same order for all);
3. runs the contender's command under :func:`benchmarks.measure.measure_command`;
4. stops the server (SIGTERM) and reads its counters (429s sent, downloads started);
5. hashes the output against the catalog (:mod:`benchmarks.integrity`) and deletes it.

Contenders are interleaved within each run (run 1: A B C D, run 2: A B C D...) so slow drift of the
machine does not favour one of them. Output lives under a temporary directory and is always removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.contenders import Contender, RunContext, TciaFetchContender, make_contender
from benchmarks.integrity import Oracle, check_output
from benchmarks.measure import ProcessMeasurement, machine_busy_cpu_s, measure_command, wait_until_quiet
from benchmarks.scenarios import Scenario
from benchmarks.server import FakeServer, ServerOptions, project_env
from tcia_fetch.testing import Catalog
from tcia_fetch.testing.__main__ import manifest_series_uids

__all__ = ["ScenarioResult", "build_catalog", "median_of", "run_scenario"]

MB = 1_000_000
GB = 1_000_000_000

Log = Callable[[str], None]


def _default_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class ScenarioResult:
    """Raw runs and context of one scenario (``report.results_document`` makes the JSON document)."""

    scenario: Scenario
    series_uids: list[str]
    dicom_bytes: int
    zip_bytes: int | None
    limit_s: float | None
    runs: list[dict[str, object]]
    skipped: dict[str, str]
    started_at: str
    duration_s: float


def build_catalog(options: ServerOptions) -> Catalog:
    """The server's catalog, rebuilt in the harness (same arguments → same UIDs, bytes and MD5s)."""
    extra: list[str] = []
    if options.manifest is not None:
        extra = manifest_series_uids(options.manifest.read_text(encoding="utf-8", errors="replace"))
    return Catalog.generate(
        seed=options.seed,
        collections=options.collections,
        patients_per_collection=options.patients_per_collection,
        studies_per_patient=options.studies_per_patient,
        series_per_study=options.series_per_study,
        instances_per_series=options.instances_per_series,
        instance_bytes=options.instance_bytes,
        extra_series_uids=extra,
        # Room for every pixel variant of a series (4 x raw + deflated): a smaller cache would rebuild
        # a 16 MB variant for every instance of the huge scenario while hashing.
        pixel_cache_bytes=512 * 1024 * 1024,
    )


def _write_job_files(work: Path, uids: list[str], base_url_hint: str) -> tuple[Path, Path]:
    manifest = work / "job.tcia"
    manifest.write_text(
        "downloadServerUrl=" + base_url_hint + "\n"
        "includeAnnotation=true\nnoOfrRetry=4\ndatabasketId=benchmark.tcia\nmanifestVersion=3.0\n"
        "ListOfSeriesToDownload=\n" + "".join(f"{uid}\n" for uid in uids),
        encoding="utf-8",
    )
    uid_list = work / "uids.txt"
    uid_list.write_text("".join(f"{uid}\n" for uid in uids), encoding="utf-8")
    return manifest, uid_list


def _zip_size(url: str) -> int:
    total = 0
    with urllib.request.urlopen(url, timeout=300) as response:
        while chunk := response.read(1024 * 1024):
            total += len(chunk)
    return total


def measure_zip_bytes(options: ServerOptions, uids: list[str], scratch: Path) -> int:
    """Sum of the getImage zip sizes (what the server paces), fetched once from an unthrottled copy."""
    unthrottled = dataclasses.replace(
        options,
        rate_bytes_per_s=None,
        first_byte_delay_s=0.0,
        max_concurrent_downloads=None,
        query_delay_s=0.0,
        total_rate_bytes_per_s=None,
        tls=False,
    )
    with FakeServer.start(unthrottled, scratch / "calibration") as server, ThreadPoolExecutor(4) as pool:
        return sum(
            pool.map(_zip_size, [f"{server.base_url}getImage?SeriesInstanceUID={uid}" for uid in uids])
        )


def _count(stats: dict[str, object], key: str) -> int:
    value = stats.get(key)
    return value if isinstance(value, int) else 0


def _server_counters(stats: dict[str, object]) -> dict[str, object]:
    """What the server counted: 429 share = 429 answers / (downloads started + 429 answers)."""
    rate_limited = _count(stats, "rate_limited_responses")
    started = _count(stats, "downloads_started")
    requests_answered = started + rate_limited
    return {
        "requests": stats.get("requests"),
        "download_requests": requests_answered,
        "downloads_started": started,
        "downloads_completed": stats.get("downloads_completed"),
        "downloads_aborted": stats.get("downloads_aborted"),
        "rate_limited_429": rate_limited,
        "share_429": (rate_limited / requests_answered) if requests_answered else 0.0,
        "peak_concurrent_downloads": stats.get("peak_concurrent_downloads"),
        "download_body_mb": round(_count(stats, "download_body_bytes") / MB, 3),
    }


def _process_numbers(measured: ProcessMeasurement, verified_bytes: int) -> dict[str, object]:
    gigabytes = verified_bytes / GB
    return {
        "wall_s": round(measured.wall_s, 3),
        "cpu_user_s": round(measured.cpu_user_s, 3),
        "cpu_sys_s": round(measured.cpu_sys_s, 3),
        "cpu_s": round(measured.cpu_s, 3),
        "mb_per_s": round(verified_bytes / MB / measured.wall_s, 2) if measured.wall_s > 0 else 0.0,
        "cpu_s_per_gb": round(measured.cpu_s / gigabytes, 2) if gigabytes > 0 else None,
        "peak_rss_mb": round(max(measured.peak_tree_rss_bytes, measured.max_single_hwm_bytes) / 2**20, 1),
        "sampled_tree_rss_mb": round(measured.peak_tree_rss_bytes / 2**20, 1),
        "max_single_hwm_mb": round(measured.max_single_hwm_bytes / 2**20, 1),
        "ru_maxrss_mb": round(measured.ru_maxrss_bytes / 2**20, 1),
        "returncode": measured.returncode,
        "timed_out": measured.timed_out,
        "rss_samples": measured.samples,
    }


@contextlib.contextmanager
def _scratch(parent: Path | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tcia-bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_download(
    scenario: Scenario,
    contender: Contender,
    run_index: int,
    uids: list[str],
    oracle: Oracle,
    scratch: Path,
    log: Log,
) -> dict[str, object]:
    work = scratch / f"{contender.name}-{run_index}"
    work.mkdir()
    out = work / "out"
    with FakeServer.start(scenario.server, work / "server") as server:
        manifest, uid_list = _write_job_files(work, uids, server.base_url)
        context = RunContext(
            base_url=server.base_url,
            series_uids=uids,
            work_dir=work,
            out_dir=out,
            manifest_path=manifest,
            uid_list_path=uid_list,
            cpu_count=os.cpu_count() or 1,
        )
        argv = contender.command(context)
        # the last run's writeback or deleted output is not this contender's work
        settle_s = wait_until_quiet()
        server_cpu_before = server.cpu_s()
        machine_before = machine_busy_cpu_s()
        load_before = os.getloadavg()[0]
        measured = measure_command(
            argv,
            env=project_env(server.client_env()),
            cwd=work,
            timeout_s=scenario.timeout_s,
            stdout_path=work / "contender.stdout",
            stderr_path=work / "contender.stderr",
        )
        server_cpu = server.cpu_s() - server_cpu_before
        background_cpu = machine_busy_cpu_s() - machine_before - server_cpu - measured.cpu_s
    integrity = check_output(oracle, out)
    row: dict[str, object] = {
        "contender": contender.name,
        "run": run_index,
        **_process_numbers(measured, integrity.verified_bytes),
        "server_cpu_s": round(server_cpu, 3),
        "background_cpu_s": round(max(0.0, background_cpu), 2),
        "settle_wait_s": round(settle_s, 2),
        "load_avg_1m_before": round(load_before, 2),
        "server": _server_counters(server.stats),
        "integrity": integrity.as_dict(),
        "extras": contender.result_extras(context),
    }
    if measured.returncode != 0 or measured.timed_out:
        stderr = (work / "contender.stderr").read_text(encoding="utf-8", errors="replace")
        row["stderr_tail"] = stderr[-600:]
    log(
        f"  {contender.name:<14} run {run_index}: {measured.wall_s:7.2f} s "
        f"{row['mb_per_s']:>8} MB/s  rss {row['peak_rss_mb']:>7} MB  "
        f"429s {row['server']['rate_limited_429']:>4}  "  # type: ignore[index]
        f"complete {integrity.series_complete}/{integrity.series_expected}  rc {measured.returncode}  "
        f"other CPU {max(0.0, background_cpu):.1f} s"
    )
    return row


def _first_download_on_disk(out: Path) -> Callable[[], bool]:
    """True once a downloaded file has bytes on disk: a staging file of tcia-fetch or any ``.dcm``."""
    staging = out / ".tcia-fetch" / "staging"

    def check() -> bool:
        with contextlib.suppress(OSError):
            for attempt in staging.iterdir():
                for entry in os.scandir(attempt):
                    if entry.is_file() and entry.stat().st_size > 0:
                        return True
        for directory, _, names in os.walk(out):
            if ".tcia-fetch" in Path(directory).parts:
                continue
            if any(name.lower().endswith(".dcm") for name in names):
                return True
        return False

    return check


def _run_planning(
    scenario: Scenario, contender: Contender, run_index: int, scratch: Path, log: Log
) -> dict[str, object]:
    if not isinstance(contender, TciaFetchContender):
        raise ValueError("the planning scenario measures tcia-fetch only")
    manifest = scenario.server.manifest
    assert manifest is not None
    work = scratch / f"{contender.name}-{run_index}"
    work.mkdir()
    out = work / "out"
    env = project_env()
    with FakeServer.start(scenario.server, work / "server") as server:
        server_cpu_before = server.cpu_s()
        plan_json = work / "plan.json"
        plan = measure_command(
            [
                sys.executable,
                "-m",
                "tcia_fetch",
                "plan",
                str(manifest),
                "--base-url",
                server.base_url,
                "--json",
                str(plan_json),
            ],
            env=env,
            cwd=work,
            timeout_s=scenario.timeout_s,
            stdout_path=work / "plan.stdout",
            stderr_path=work / "plan.stderr",
        )
        first = measure_command(
            [
                sys.executable,
                "-m",
                "tcia_fetch",
                "run",
                str(manifest),
                "--out",
                str(out),
                "--base-url",
                server.base_url,
                "--quiet",
                *(["--concurrency", str(contender.concurrency)] if contender.concurrency else []),
            ],
            env=env,
            cwd=work,
            timeout_s=scenario.timeout_s,
            stop_when=_first_download_on_disk(out),
            sample_period_s=0.01,
            stdout_path=work / "run.stdout",
            stderr_path=work / "run.stderr",
        )
        server_cpu = server.cpu_s() - server_cpu_before
    planned = None
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(plan_json.read_text(encoding="utf-8"))
        items = loaded.get("series", loaded.get("items")) if isinstance(loaded, dict) else loaded
        planned = len(items) if isinstance(items, list) else None
    row: dict[str, object] = {
        "contender": contender.name,
        "run": run_index,
        "plan_s": round(plan.wall_s, 3),
        "plan_returncode": plan.returncode,
        "plan_cpu_s": round(plan.cpu_s, 3),
        "plan_peak_rss_mb": round(max(plan.peak_tree_rss_bytes, plan.max_single_hwm_bytes) / 2**20, 1),
        "planned_series": planned,
        "first_byte_s": None if first.stopped_at_s is None else round(first.stopped_at_s, 3),
        "run_returncode": first.returncode,
        "server_cpu_s": round(server_cpu, 3),
        "server": _server_counters(server.stats),
    }
    for name, measured in (("plan", plan), ("run", first)):
        if measured.stopped_at_s is None and (measured.returncode != 0 or measured.timed_out):
            text = (work / f"{name}.stderr").read_text(encoding="utf-8", errors="replace")
            row[f"{name}_stderr_tail"] = text[-600:]
    log(
        f"  {contender.name:<14} run {run_index}: plan {plan.wall_s:6.2f} s (rc {plan.returncode}, "
        f"{planned} series)  first byte {row['first_byte_s']} s"
    )
    return row


#: Outputs are kept until the scenario ends while this many times its DICOM bytes stay free.
_KEEP_FREE_FACTOR = 4


def _remove_outputs(kept: list[Path]) -> None:
    """Delete the runs' outputs (checked already), between or after the measured runs.

    Not after each run: on ext4 a file created within a minute or so of many deletions pays for
    them (the inode allocator steps over recently freed inodes one by one, ``recently_deleted``
    in a kernel profile), so the contender run right after a deleted output was measured paying
    for the harness's cleanup: up to 1.6x its time on 600 tiny series, growing run after run.
    """
    for path in kept:
        shutil.rmtree(path, ignore_errors=True)
    kept.clear()


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def run_scenario(
    scenario: Scenario,
    *,
    runs: int,
    contender_filter: list[str] | None = None,
    temp_parent: Path | None = None,
    log: Log = _default_log,
) -> ScenarioResult:
    """Run every selected contender ``runs`` times; unavailable ones are listed in ``skipped``."""
    started_wall = time.time()
    started = time.monotonic()
    contenders: list[Contender] = []
    skipped: dict[str, str] = {}
    for spec in scenario.contenders:
        contender = make_contender(spec)
        if contender_filter and not any(
            wanted in (contender.name, contender.family) for wanted in contender_filter
        ):
            continue
        reason = contender.unavailable_reason()
        if reason is not None:
            skipped[contender.name] = reason
            continue
        contenders.append(contender)
    log(f"scenario {scenario.name}: building the catalog oracle")
    catalog = build_catalog(scenario.server)
    uids = [entry.uid for entry in catalog.series]
    oracle = Oracle(catalog, uids) if scenario.kind == "download" else None
    dicom_bytes = oracle.dicom_bytes if oracle is not None else sum(e.total_bytes for e in catalog.series)
    zip_bytes: int | None = None
    limit_s: float | None = None
    rows: list[dict[str, object]] = []
    with _scratch(temp_parent) as scratch:
        if scenario.min_free_disk_factor > 0:
            free = _free_bytes(scratch)
            if free < scenario.min_free_disk_factor * dicom_bytes:
                for contender in list(contenders):
                    if contender.family in ("aria2", "curl"):
                        contenders.remove(contender)
                        skipped[contender.name] = f"only {free / GB:.1f} GB free for zips + output"
        if scenario.limit_from_cap:
            options = scenario.server
            assert options.rate_bytes_per_s is not None and options.max_concurrent_downloads is not None
            zip_bytes = measure_zip_bytes(options, uids, scratch)
            limit_s = zip_bytes / (options.max_concurrent_downloads * options.rate_bytes_per_s)
            log(f"  limit: {zip_bytes / MB:.1f} MB of zips / (cap x rate) = {limit_s:.2f} s")
        elif scenario.limit_from_link:
            options = scenario.server
            assert options.total_rate_bytes_per_s is not None
            zip_bytes = measure_zip_bytes(options, uids, scratch)
            limit_s = zip_bytes / options.total_rate_bytes_per_s
            log(f"  limit: {zip_bytes / MB:.1f} MB of zips / total rate = {limit_s:.2f} s")
        if limit_s and scenario.limit_includes_first_byte:
            options = scenario.server
            slots = options.max_concurrent_downloads or len(uids)
            limit_s += -(-len(uids) // slots) * options.first_byte_delay_s
            log(f"  limit with first-byte waits: {limit_s:.2f} s")
        log(
            f"  {len(uids)} series, {dicom_bytes / MB:.1f} MB of DICOM; contenders: "
            f"{', '.join(c.name for c in contenders) or 'none'}"
            + (f"; skipped: {skipped}" if skipped else "")
        )
        kept: list[Path] = []
        for run_index in range(1, runs + 1):
            # Odd runs in the listed order, even runs reversed: whatever the run before leaves
            # behind (a warm cache, a busy disk) falls on each contender in turn.
            for contender in contenders if run_index % 2 else contenders[::-1]:
                if scenario.kind == "planning":
                    row = _run_planning(scenario, contender, run_index, scratch, log)
                else:
                    assert oracle is not None
                    row = _run_download(scenario, contender, run_index, uids, oracle, scratch, log)
                    if limit_s:
                        row["time_over_limit"] = round(float(row["wall_s"]) / limit_s, 3)  # type: ignore[arg-type]
                rows.append(row)
                kept.append(scratch / f"{contender.name}-{run_index}")
                # Whatever a contender left unwritten is written now, between measured runs, not
                # by the kernel's background flush during the next contender's run.
                os.sync()
                if _free_bytes(scratch) < _KEEP_FREE_FACTOR * dicom_bytes:
                    _remove_outputs(kept)
        _remove_outputs(kept)
    return ScenarioResult(
        scenario=scenario,
        series_uids=uids,
        dicom_bytes=dicom_bytes,
        zip_bytes=zip_bytes,
        limit_s=limit_s,
        runs=rows,
        skipped=skipped,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall)),
        duration_s=time.monotonic() - started,
    )


def median_of(rows: list[dict[str, object]], key: str) -> float | None:
    """Median of a numeric field (dotted keys reach into nested dicts); None when absent."""
    values: list[float] = []
    for row in rows:
        value: object = row
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            values.append(float(value))
    return statistics.median(values) if values else None
